import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { createClient } from 'redis';
import t, { type Test } from 'tap';
import { parseConfig } from '../src/config/load.js';
import type { ConfigError } from '../src/errors.js';
import { startRedis } from './helpers/redis.js';
import { RawClient, command, startRedisProxy } from './helpers/redis-mode.js';
import { until } from './helpers/util.js';

const UPSTREAM = 'up-S3cret-9f2c';
const CLIENT = 'cl-S3cret-77ab';
const READER = 'rd-S3cret-41d0';

function secrets(t: Test) {
  const dir = mkdtempSync(path.join(tmpdir(), 'sidepool-redis-auth-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, content: string): string => {
    const p = path.join(dir, name);
    writeFileSync(p, content);
    return p;
  };
  // A trailing newline, as `echo pw > file` leaves, is not part of the password.
  return {
    upstream: file('upstream', `${UPSTREAM}\n`),
    client: file('client', CLIENT),
    wrong: file('wrong', 'not-the-password'),
  };
}

/** A redis-server that requires a password, with a read-only ACL user. */
async function protectedRedis(t: Test) {
  const redis = await startRedis(['--requirepass', UPSTREAM]);
  t.teardown(() => redis.stop());
  const admin = await RawClient.connect(redis.port);
  t.same(
    await admin.send(
      Buffer.concat([
        command('AUTH', UPSTREAM),
        command('ACL', 'SETUSER', 'reader', 'on', `>${READER}`, '~*', '+@read', '+@connection'),
      ]),
      2,
    ),
    ['+OK\r\n', '+OK\r\n'],
  );
  admin.close();
  return redis;
}

void t.test('upstream AUTH on every link; clients authenticate to sidepool', async (t) => {
  const files = secrets(t);
  const redis = await protectedRedis(t);
  const proxy = await startRedisProxy(
    redis,
    { minIdle: 1, maxSize: 4 },
    { auth: { passwordFile: files.upstream } },
    { admin: { listen: '127.0.0.1:0' } },
  );
  t.teardown(() => proxy.app.stop(100));

  const raw = await RawClient.connect(proxy.port);
  t.teardown(() => raw.close());
  t.same(
    await raw.send(
      'GET k\r\nPING\r\nSELECT 1\r\nCLIENT SETNAME x\r\nAUTH nope\r\nAUTH default nope\r\n',
      6,
    ),
    [
      '-NOAUTH Authentication required.\r\n',
      '-NOAUTH Authentication required.\r\n',
      '-NOAUTH Authentication required.\r\n',
      '-NOAUTH Authentication required.\r\n',
      '-WRONGPASS invalid username-password pair or user is disabled.\r\n',
      '-WRONGPASS invalid username-password pair or user is disabled.\r\n',
    ],
    'nothing but AUTH before authenticating',
  );
  t.same(await raw.send(`AUTH ${UPSTREAM}\r\nSET k v\r\nGET k\r\nRESET\r\nGET k\r\n`, 5), [
    '+OK\r\n',
    '+OK\r\n',
    '$1\r\nv\r\n',
    '+RESET\r\n',
    '-NOAUTH Authentication required.\r\n',
  ]);
  t.match(
    (await raw.send(`HELLO 3 AUTH default ${UPSTREAM}\r\n`, 1))[0],
    /^%7\r\n/,
    'HELLO 3 AUTH',
  );
  t.same(await raw.send('GET k\r\n', 1), ['$1\r\nv\r\n']);

  // An unauthenticated client gets redis-server's small limits.
  const greedy = await RawClient.connect(proxy.port);
  t.same(await greedy.send('*11\r\n', 1), [
    '-ERR Protocol error: unauthenticated multibulk length\r\n',
  ]);
  await greedy.whenClosed();

  // Real clients with a password.
  const nodeRedis = createClient({
    socket: { host: '127.0.0.1', port: proxy.port },
    password: UPSTREAM,
  });
  nodeRedis.on('error', () => {});
  await nodeRedis.connect();
  t.teardown(() => nodeRedis.quit().catch(() => {}));
  t.equal(await nodeRedis.get('k'), 'v');
  const io = new Redis({
    host: '127.0.0.1',
    port: proxy.port,
    password: UPSTREAM,
    lazyConnect: true,
  });
  io.on('error', () => {});
  await io.connect();
  t.teardown(() => io.disconnect());
  t.equal(await io.get('k'), 'v');

  // Another Redis user: its own link, Redis checks the password and the user's rights.
  const reader = await RawClient.connect(proxy.port);
  t.teardown(() => reader.close());
  t.same(await reader.send('AUTH reader wrong\r\nGET k\r\n', 2), [
    '-WRONGPASS invalid username-password pair or user is disabled.\r\n',
    '-NOAUTH Authentication required.\r\n',
  ]);
  const asReader = await reader.send(`AUTH reader ${READER}\r\nGET k\r\nSET k no\r\n`, 3);
  t.same(asReader.slice(0, 2), ['+OK\r\n', '$1\r\nv\r\n']);
  t.match(asReader[2], /^-NOPERM /, "the reader's rights, not sidepool's");

  const metrics = await proxy.app.metrics.render();
  t.match(metrics, /sidepool_redis_pins_total\{route="test",reason="auth"\} [12]/);
  t.match(metrics, /sidepool_redis_client_errors_total\{route="test",reason="auth_failed"\} [1-9]/);

  // No password in /config, /pools or the logs.
  const admin = proxy.app.admin;
  if (admin === undefined) throw new Error('no admin server');
  for (const page of ['/config', '/pools', '/metrics']) {
    const body = await (await fetch(`http://127.0.0.1:${admin.port}${page}`)).text();
    t.notOk(body.includes(UPSTREAM), `${page} shows no password`);
  }
  const config = await (await fetch(`http://127.0.0.1:${admin.port}/config`)).text();
  t.match(config, /passwordFile/, 'the file is named');
  const logs = JSON.stringify(proxy.lines);
  t.notOk(logs.includes(UPSTREAM) || logs.includes(READER), 'no password in the logs');
});

void t.test('clientAuth: clients use their own password; false: none', async (t) => {
  const files = secrets(t);
  const redis = await protectedRedis(t);
  const proxy = await startRedisProxy(
    redis,
    { minIdle: 1 },
    {
      auth: { username: 'default', passwordFile: files.upstream },
      clientAuth: { passwordFile: files.client },
    },
  );
  t.teardown(() => proxy.app.stop(100));
  const raw = await RawClient.connect(proxy.port);
  t.teardown(() => raw.close());
  t.same(await raw.send(`AUTH ${UPSTREAM}\r\nAUTH ${CLIENT}\r\nSET c 1\r\n`, 3), [
    '-WRONGPASS invalid username-password pair or user is disabled.\r\n',
    '+OK\r\n',
    '+OK\r\n',
  ]);

  const open = await startRedisProxy(
    redis,
    { minIdle: 1 },
    {
      auth: { passwordFile: files.upstream },
      clientAuth: false,
    },
  );
  t.teardown(() => open.app.stop(100));
  const anyone = await RawClient.connect(open.port);
  t.teardown(() => anyone.close());
  t.same(await anyone.send('GET c\r\n', 1), ['$1\r\n1\r\n'], 'no AUTH needed');
});

void t.test('Redis refusing the login: clients hear why at once, no secret anywhere', async (t) => {
  const files = secrets(t);
  const redis = await protectedRedis(t);
  const proxy = await startRedisProxy(
    redis,
    { minIdle: 0, maxSize: 2, acquireTimeout: 10_000 },
    { auth: { passwordFile: files.wrong }, clientAuth: false },
  );
  t.teardown(() => proxy.app.stop(100));
  const raw = await RawClient.connect(proxy.port);
  t.teardown(() => raw.close());
  const started = Date.now();
  const [reply] = await raw.send('GET k\r\n', 1);
  t.match(
    reply,
    /^-ERR sidepool: Redis at 127\.0\.0\.1:\d+ refused AUTH: WRONGPASS .*\(SIDEPOOL_REDIS_AUTH_FAILED\)\r\n$/,
  );
  t.ok(Date.now() - started < 5000, 'long before acquireTimeout');
  t.notOk(reply?.includes('not-the-password'));
  await until(() => proxy.lines.some((l) => l.msg === 'Redis refused the login'), 5000);
  t.notOk(JSON.stringify(proxy.lines).includes('not-the-password'), 'no password in the logs');
});

void t.test('the redis config keys: defaults, and errors naming the field', (t) => {
  const files = secrets(t);
  const route = (extra: Record<string, unknown>) => ({
    routes: [{ listen: '127.0.0.1:0', upstream: '127.0.0.1:6379', ...extra }],
  });
  const config = parseConfig(route({ mode: 'redis' }));
  t.same(config.routes[0]?.redis, { maxBatchBytes: 65536, maxPending: 256 });
  t.equal(
    parseConfig(route({ mode: 'redis', redis: { maxBatchBytes: '1MiB' } })).routes[0]?.redis
      ?.maxBatchBytes,
    1048576,
  );
  t.equal(parseConfig(route({ mode: 'tcp' })).routes[0]?.redis, undefined);
  const issues = (raw: unknown) => {
    try {
      parseConfig(raw);
    } catch (err) {
      return (err as ConfigError).issues.map((i) => `${i.path}: ${i.message}`);
    }
    return [];
  };
  t.same(issues(route({ mode: 'tcp', redis: {} })), [
    'routes[0].redis: only for mode: redis (this route is mode: tcp)',
  ]);
  t.match(issues(route({ mode: 'redis', redis: { maxBatchBytes: 'lots' } })), [
    /^routes\[0\]\.redis\.maxBatchBytes: expected a size/,
  ]);
  t.match(issues(route({ mode: 'redis', redis: { maxBatchBytes: 10 } })), [
    /^routes\[0\]\.redis\.maxBatchBytes: must be between 1024/,
  ]);
  t.match(issues(route({ mode: 'redis', redis: { maxPending: 0 } })), [
    /^routes\[0\]\.redis\.maxPending: must be at least 1/,
  ]);
  t.match(issues(route({ mode: 'redis', redis: { auth: { passwordFile: '/nonexistent/pw' } } })), [
    /^routes\[0\]\.redis\.auth\.passwordFile: cannot read \/nonexistent\/pw/,
  ]);
  t.match(issues(route({ mode: 'redis', redis: { auth: { password: 'inline' } } })), [
    /^routes\[0\]\.redis\.auth/,
  ]);
  t.match(issues(route({ mode: 'redis', redis: { clientAuth: true } })), [
    /^routes\[0\]\.redis\.clientAuth/,
  ]);
  t.same(
    issues(
      route({
        mode: 'redis',
        redis: { auth: { passwordFile: files.upstream }, clientAuth: false },
      }),
    ),
    [],
  );
  t.end();
});
