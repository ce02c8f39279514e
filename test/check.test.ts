// `sidepool check` means `sidepool run` will start: what run refuses, check refuses (with
// exit 2 and the field), and the effective config check prints is itself a config.
import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { parseConfig } from '../src/config/load.js';
import { effectiveConfig } from '../src/config/effective.js';
import { runCli } from './helpers/cli.js';
import { configFile } from './helpers/config-file.js';

/** Configs that cover each shape a route can take. */
async function variedConfigs(): Promise<Array<{ name: string; text: string }>> {
  const dir = dirname(await configFile(''));
  const pem = join(dir, 'placeholder.pem');
  await writeFile(pem, 'check reads no more than that the file is readable\n');
  return [
    {
      name: 'tcp, flags-only shape',
      text: 'routes:\n  - listen: 127.0.0.1:6380\n    upstream: 127.0.0.1:6379\n',
    },
    {
      name: 'tcp to dns, with a send/expect probe',
      text: YAML.stringify({
        routes: [
          {
            listen: '127.0.0.1:6380',
            upstream: { dns: 'localhost:6379', resolvers: ['127.0.0.1:53'] },
            health: { probe: { send: 'PING\r\n', expect: '+PONG' } },
          },
        ],
      }),
    },
    {
      name: 'http with its keys, tcp beside it',
      text: YAML.stringify({
        admin: false,
        workers: 2,
        drain: { delay: '1s', timeout: '5s' },
        routes: [
          {
            name: 'web',
            listen: '127.0.0.1:8080',
            mode: 'http',
            upstream: { addresses: ['127.0.0.1:80', '127.0.0.1:81'], host: 'api.example' },
            upstreamKeepAlive: 0,
            forwardedHeaders: true,
            health: { probe: { http: { path: '/healthz' } } },
          },
          { name: 'db', listen: '/tmp/sidepool-check.sock', upstream: '127.0.0.1:5432' },
        ],
      }),
    },
    {
      name: 'TLS both ways',
      text: YAML.stringify({
        routes: [
          {
            listen: ':6380',
            tls: { cert: pem, key: pem, ca: pem, requireClientCert: true },
            upstream: { address: 'localhost:6379', tls: { ca: pem, servername: 'redis' } },
            outlier: { consecutiveFailures: 0 },
            readyWhen: 'upstreamHealthy',
          },
        ],
      }),
    },
  ];
}

void t.test('the effective config loads as a config, and loads to the same', async (t) => {
  for (const { name, text } of await variedConfigs()) {
    const config = parseConfig(YAML.parse(text));
    const printed = YAML.stringify(effectiveConfig(config));
    let again;
    try {
      again = parseConfig(YAML.parse(printed));
    } catch (err) {
      t.fail(`${name}: the effective config does not load: ${String(err)}\n${printed}`);
      continue;
    }
    t.same(again, config, `${name}: the same config`);
    t.same(YAML.stringify(effectiveConfig(again)), printed, `${name}: a fixed point`);
  }
});

void t.test('check prints an effective config that check accepts', async (t) => {
  for (const { name, text } of await variedConfigs()) {
    const first = await runCli(['check', '--config', await configFile(text)]);
    t.equal(first.code, 0, `${name}: ${first.stderr}`);
    const second = await runCli(['check', '--config', await configFile(first.stdout)]);
    t.equal(second.code, 0, `${name}: fed back, check accepts it: ${second.stderr}`);
    t.equal(second.stdout, first.stdout, `${name}: and prints the same`);
  }
  const tcp = await runCli([
    'check',
    '--config',
    await configFile('routes:\n  - listen: 127.0.0.1:6380\n    upstream: 127.0.0.1:6379\n'),
  ]);
  t.notMatch(tcp.stdout, /upstreamKeepAlive|responseTimeout|headersTimeout|forwardedHeaders/);
});
