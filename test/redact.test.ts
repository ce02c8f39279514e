// No credential reaches an admin page or a log line: a probe's payload, passwords, tokens,
// key paths, and keys a mode adds when their names say what they hold.
import { Writable } from 'node:stream';
import t from 'tap';
import { isSecretKey, redact } from '../src/config/redact.js';
import { createLogger } from '../src/log.js';
import { startProxy } from './helpers/app.js';
import { request } from './helpers/http.js';
import { startServer } from './helpers/util.js';

void t.test('/config serves no probe payload', async (t) => {
  const upstream = await startServer((socket) => {
    socket.on('data', () => socket.write('+OK\r\n'));
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    {},
    { health: { interval: '1s', probe: { send: 'AUTH s3cret-pw\r\nPING\r\n', expect: '+OK' } } },
    { admin: { listen: '127.0.0.1:0' } },
  );
  t.teardown(() => proxy.app.stop(100));
  const res = await request(proxy.app.admin?.port as number, '/config');
  t.equal(res.status, 200);
  t.notMatch(res.body, /s3cret/, 'the password in the probe is not served');
  const config = JSON.parse(res.body) as {
    routes: Array<{ health: { probe: { send: string; expect: string } } }>;
  };
  t.same(config.routes[0]?.health.probe, { send: '[redacted]', expect: '+OK' });
});

void t.test('the rule: by key name, wherever the key sits', (t) => {
  for (const key of [
    'send',
    'key',
    'password',
    'passwordFile',
    'tokenFile',
    'clientSecret',
    'passphrase',
    'auth',
    'authorization',
    'apiKey',
  ]) {
    t.ok(isSecretKey(key), `${key} is secret`);
  }
  for (const key of ['cert', 'ca', 'servername', 'expect', 'listen', 'host', 'keepAlive']) {
    t.notOk(isSecretKey(key), `${key} is not`);
  }
  t.same(
    redact({
      routes: [
        {
          upstream: { tls: { cert: '/c.pem', key: '/k.pem' } },
          postgres: { user: 'app', authFile: '/auth', password: 'x' },
          redis: { auth: { username: 'u', passwordFile: '/p' } },
        },
      ],
    }),
    {
      routes: [
        {
          upstream: { tls: { cert: '/c.pem', key: '[redacted]' } },
          postgres: { user: 'app', authFile: '[redacted]', password: '[redacted]' },
          // An object under a secret key keeps its keys; their values follow the rule.
          redis: { auth: { username: 'u', passwordFile: '[redacted]' } },
        },
      ],
    },
  );
  t.end();
});

void t.test('log lines carry no credential', (t) => {
  let out = '';
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      out += chunk.toString();
      cb();
    },
  });
  const log = createLogger('info', sink);
  log.info(
    {
      probe: { send: 'AUTH s3cret-a\r\n' },
      password: 's3cret-b',
      route: { postgres: { password: 's3cret-c' } },
      headers: { authorization: 'Bearer s3cret-d' },
      token: 's3cret-e',
    },
    'a line with secrets',
  );
  t.notMatch(out, /s3cret/);
  t.match(out, /a line with secrets/);
  t.match(out, /\[redacted\]/);
  t.end();
});
