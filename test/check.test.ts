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
import { freePort } from './helpers/redis.js';

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

/** Runs `each` over `items`, a few at a time: every CLI run is a Node start on a loaded machine. */
async function fewAtATime<T>(items: readonly T[], each: (item: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    [1, 2, 3].map(async () => {
      for (let item = queue.shift(); item !== undefined; item = queue.shift()) await each(item);
    }),
  );
}

const SLOW = { timeoutMs: 60_000 };

void t.test('check prints an effective config that check accepts', async (t) => {
  await fewAtATime(await variedConfigs(), async ({ name, text }) => {
    const first = await runCli(['check', '--config', await configFile(text)], SLOW);
    t.equal(first.code, 0, `${name}: ${first.stderr}`);
    const second = await runCli(['check', '--config', await configFile(first.stdout)], SLOW);
    t.equal(second.code, 0, `${name}: fed back, check accepts it: ${second.stderr}`);
    t.equal(second.stdout, first.stdout, `${name}: and prints the same`);
  });
  const tcp = await runCli(
    [
      'check',
      '--config',
      await configFile('routes:\n  - listen: 127.0.0.1:6380\n    upstream: 127.0.0.1:6379\n'),
    ],
    SLOW,
  );
  t.notMatch(tcp.stdout, /upstreamKeepAlive|responseTimeout|headersTimeout|forwardedHeaders/);
});

/** A config run must refuse; check must refuse it too, naming the field. */
interface Refused {
  name: string;
  text: (port: number) => string;
  path: RegExp;
  message: RegExp;
}

const refused: Refused[] = [
  {
    name: 'admin and a route on one port',
    text: (p) =>
      `admin: { listen: 127.0.0.1:${p} }\nroutes:\n  - listen: 127.0.0.1:${p}\n    upstream: 127.0.0.1:1\n`,
    path: /routes\[0\]\.listen/,
    message: /already the listen address of the admin server \(admin\.listen\)/,
  },
  {
    name: '127.0.0.1:P beside :P',
    text: (p) =>
      `admin: false\nroutes:\n  - listen: :${p}\n    upstream: 127.0.0.1:1\n  - listen: 127.0.0.1:${p}\n    upstream: 127.0.0.1:1\n`,
    path: /routes\[1\]\.listen/,
    message: /overlaps :\d+, the listen address of routes\[0\]: a listener on every address/,
  },
  {
    name: '0.0.0.0:P beside [::]:P',
    text: (p) =>
      `admin: false\nroutes:\n  - listen: "[::]:${p}"\n    upstream: 127.0.0.1:1\n  - listen: 0.0.0.0:${p}\n    upstream: 127.0.0.1:1\n`,
    path: /routes\[1\]\.listen/,
    message: /overlaps \[::\]:\d+/,
  },
  {
    name: 'localhost:P beside 127.0.0.1:P',
    text: (p) =>
      `admin: false\nroutes:\n  - listen: 127.0.0.1:${p}\n    upstream: 127.0.0.1:1\n  - listen: localhost:${p}\n    upstream: 127.0.0.1:1\n`,
    path: /routes\[1\]\.listen/,
    message:
      /overlaps 127\.0\.0\.1:\d+, the listen address of routes\[0\]: localhost is 127\.0\.0\.1 here/,
  },
  {
    name: 'a unix socket in a missing directory',
    text: () =>
      `admin: false\nroutes:\n  - listen: /nonexistent-sidepool-dir/app.sock\n    upstream: 127.0.0.1:1\n`,
    path: /routes\[0\]\.listen/,
    message: /the directory \/nonexistent-sidepool-dir does not exist/,
  },
];

void t.test('check refuses what run refuses, naming the field; run says the same', async (t) => {
  await fewAtATime(refused, async (c) => {
    const port = await freePort();
    const path = await configFile(c.text(port));
    const checked = await runCli(['check', '--config', path], SLOW);
    const ran = await runCli(['run', '--config', path], SLOW);
    t.equal(checked.code, 2, `${c.name}: check exits 2`);
    t.match(checked.stderr, c.path, `${c.name}: names the field`);
    t.match(checked.stderr, c.message, `${c.name}: says why`);
    t.equal(ran.code, 2, `${c.name}: run refuses it before binding anything`);
    t.match(ran.stderr, c.message);
  });
});

void t.test('a unix socket that cannot be bound says why, not "ports below 1024"', async (t) => {
  const { listenOn } = await import('../src/net/listen.js');
  const net = await import('node:net');
  const server = net.createServer();
  const err = await listenOn(
    server,
    { kind: 'unix', path: '/nonexistent-sidepool-dir/app.sock' },
    'route app',
  ).catch((e: unknown) => e as Error & { code: string });
  t.match(err, {
    code: 'SIDEPOOL_LISTEN_FAILED',
    message:
      /^route app: cannot listen on \/nonexistent-sidepool-dir\/app\.sock: EACCES, the directory \/nonexistent-sidepool-dir does not exist$/,
  });
  t.notMatch(String(err?.message), /ports below 1024/);
});

void t.test('a taken admin port names the admin server', async (t) => {
  const net = await import('node:net');
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  t.teardown(() => blocker.close());
  const port = (blocker.address() as import('node:net').AddressInfo).port;
  const result = await runCli(
    ['run', '--listen', '127.0.0.1:0', '--upstream', '127.0.0.1:1', '--admin', `127.0.0.1:${port}`],
    SLOW,
  );
  t.equal(result.code, 1);
  t.match(
    result.stderr,
    new RegExp(`admin server: cannot listen on 127\\.0\\.0\\.1:${port}: EADDRINUSE`),
  );
  t.notMatch(result.stderr, /route admin/);
});
