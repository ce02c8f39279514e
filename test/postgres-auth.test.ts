// Client authentication to sidepool, logging in upstream (SCRAM pass-through, md5, plain),
// the auth file and its reload, authQuery, and TLS on both sides, with a real PostgreSQL 15.
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import pg from 'pg';
import t from 'tap';
import { formatVerifier, makeVerifier } from '../src/proxy/postgres/auth/scram.js';
import { md5Secret } from '../src/proxy/postgres/auth/secrets.js';
import { TestPki } from './helpers/certs.js';
import {
  RawClient,
  errorText,
  firstColumns,
  frontend,
  pgQuery,
  startPgProxy,
  startPostgres,
  startup,
  writeAuthFile,
  type RawMessage,
} from './helpers/postgres.js';
import { SecretVolume } from './helpers/secret-volume.js';
import { until } from './helpers/util.js';

const exec = promisify(execFile);

const pki = await TestPki.create();
t.teardown(() => pki.remove());
const ca = await pki.ca('test-ca');
const serverCert = await ca.issue('db.test', { dns: ['db.test'], ips: ['127.0.0.1'] });
const listenerCert = await ca.issue('sidepool.test', {
  dns: ['sidepool.test'],
  ips: ['127.0.0.1'],
});

const cluster = await startPostgres({ ssl: serverCert });
t.teardown(() => cluster.stop());
await cluster.sql(`CREATE ROLE scram LOGIN PASSWORD 'pw-scram'`);
await cluster.sql(`SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'pw-md5'`);
await cluster.sql(`CREATE ROLE plainuser LOGIN PASSWORD 'pw-plain'`);
await cluster.sql(`CREATE ROLE trusted LOGIN`);
await cluster.sql(`CREATE ROLE queried LOGIN PASSWORD 'pw-queried'`);
await cluster.sql(`CREATE ROLE sidepool_auth LOGIN SUPERUSER PASSWORD 'pw-auth'`);
await cluster.sql(`CREATE DATABASE appdb`);
await cluster.hba(['host all md5user 127.0.0.1/32 md5', 'host all trusted 127.0.0.1/32 trust']);
const verifierOf = (user: string) =>
  cluster.sql(`SELECT rolpassword FROM pg_authid WHERE rolname = '${user}'`);
const scramVerifier = await verifierOf('scram');
const md5Stored = await verifierOf('md5user');
const authFile = await writeAuthFile(cluster.dir, {
  scram: scramVerifier,
  md5user: md5Stored,
  plainuser: 'pw-plain',
  sidepool_auth: 'pw-auth',
});

async function login(
  port: number,
  user: string,
  password: string | undefined,
  database = 'appdb',
  ssl?: pg.ClientConfig['ssl'],
): Promise<string> {
  const c = new pg.Client({ host: '127.0.0.1', port, user, password, database, ssl });
  c.on('error', () => {});
  try {
    await c.connect();
    const r = await c.query('SELECT current_user AS u');
    return (r.rows[0] as { u: string }).u;
  } catch (err) {
    return `error ${(err as { code?: string }).code}`;
  } finally {
    await c.end().catch(() => {});
  }
}

void t.test(
  'scram-sha-256: verifier pass-through, and each failure with its SQLSTATE',
  async (t) => {
    const proxy = await startPgProxy(cluster, { authFile });
    t.teardown(() => proxy.app.stop(1000));
    t.equal(
      await login(proxy.port, 'scram', 'pw-scram'),
      'scram',
      'SCRAM pass-through logs in upstream',
    );
    t.equal(
      await login(proxy.port, 'plainuser', 'pw-plain'),
      'plainuser',
      'plain secret, SCRAM to the client',
    );
    t.equal(
      await login(proxy.port, 'md5user', 'pw-md5'),
      'md5user',
      'an md5 secret: md5 to the client',
    );
    t.equal(await login(proxy.port, 'scram', 'wrong'), 'error 28P01', 'wrong password');
    t.equal(await login(proxy.port, 'nobody', 'x'), 'error 28000', 'unknown user');
    t.equal(
      await login(proxy.port, 'scram', 'pw-scram', 'nodb'),
      'error 3D000',
      'unknown database',
    );
    t.equal(
      await login(proxy.port, 'scram', 'pw-scram', 'nodb'),
      'error 3D000',
      'and again, answered at once',
    );
    const failures = proxy.lines
      .filter((l) => l.msg === 'client login refused')
      .map((l) => l.reason);
    t.same(
      failures.sort(),
      ['unknown_user', 'wrong_password'],
      'refusals are logged with a reason',
    );
    const text = JSON.stringify(proxy.lines);
    for (const secret of [
      'pw-scram',
      'pw-plain',
      'pw-md5',
      scramVerifier.split('$')[2] ?? 'x',
      md5Stored,
    ]) {
      t.notOk(text.includes(secret), 'no secret in any log line');
    }
    const metrics = await proxy.app.metrics.render();
    t.match(
      metrics,
      /sidepool_postgres_auth_failures_total\{route="pg",database="appdb",user="scram",reason="wrong_password"\} 1/,
    );
    t.match(
      metrics,
      /sidepool_postgres_auth_failures_total\{route="pg",database="appdb",user="nobody",reason="unknown_user"\} 1/,
    );
  },
);

void t.test('md5 and trust routes', async (t) => {
  const md5 = await startPgProxy(cluster, { authFile, authType: 'md5' });
  t.teardown(() => md5.app.stop(1000));
  t.equal(await login(md5.port, 'md5user', 'pw-md5'), 'md5user');
  t.equal(await login(md5.port, 'plainuser', 'pw-plain'), 'plainuser', 'md5 over a plain secret');
  t.equal(
    await login(md5.port, 'scram', 'pw-scram'),
    'scram',
    'a SCRAM verifier: SCRAM even on an md5 route',
  );
  t.equal(await login(md5.port, 'md5user', 'nope'), 'error 28P01');
  const trust = await startPgProxy(cluster, { authType: 'trust' });
  t.teardown(() => trust.app.stop(1000));
  t.equal(await login(trust.port, 'trusted', undefined), 'trusted', 'trust, and upstream trust');
  t.equal(
    await login(trust.port, 'scram', undefined),
    'error 28000',
    'trust without a secret for a user the server authenticates: the login is refused',
  );
});

void t.test('SCRAM pass-through: a configured pool warms after its first client', async (t) => {
  const proxy = await startPgProxy(
    cluster,
    { authFile, pools: [{ database: 'appdb', user: 'scram' }] },
    { minIdle: 2 },
  );
  t.teardown(() => proxy.app.stop(1000));
  await new Promise((r) => setTimeout(r, 300));
  t.equal(await cluster.backends('scram'), 0, 'no keys yet: nothing dialed');
  t.equal(await login(proxy.port, 'scram', 'pw-scram'), 'scram');
  const deadline = Date.now() + 10_000;
  while ((await cluster.backends('scram')) < 2 && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 50));
  t.ok((await cluster.backends('scram')) >= 2, 'warm to minIdle with the recovered keys');
  const plain = await startPgProxy(
    cluster,
    { authFile, pools: [{ database: 'appdb', user: 'plainuser' }] },
    { minIdle: 1 },
  );
  t.teardown(() => plain.app.stop(1000));
  const until2 = Date.now() + 10_000;
  while ((await cluster.backends('plainuser')) < 1 && Date.now() < until2)
    await new Promise((r) => setTimeout(r, 50));
  t.equal(await cluster.backends('plainuser'), 1, 'a plain secret warms at start');
});

void t.test('the auth file is re-read when it changes (a Secret volume swap)', async (t) => {
  const volume = new SecretVolume(path.join(cluster.dir, 'secret'));
  const v1 = path.join(cluster.dir, 'v1.txt');
  const v2 = path.join(cluster.dir, 'v2.txt');
  await writeFile(v1, `"plainuser" "pw-plain"\n`);
  const newVerifier = formatVerifier(makeVerifier('pw-rotated'));
  await writeFile(v2, `"plainuser" "${newVerifier}"\n"scram" "${scramVerifier}"\n`);
  await volume.create({ 'userlist.txt': v1 });
  const proxy = await startPgProxy(cluster, { authFile: volume.path('userlist.txt') });
  t.teardown(() => proxy.app.stop(1000));
  t.equal(await login(proxy.port, 'plainuser', 'pw-plain'), 'plainuser');
  t.equal(await login(proxy.port, 'scram', 'pw-scram'), 'error 28000', 'not in the file yet');
  const held = new pg.Client({
    host: '127.0.0.1',
    port: proxy.port,
    user: 'plainuser',
    password: 'pw-plain',
    database: 'appdb',
  });
  await held.connect();
  await volume.update({ 'userlist.txt': v2 });
  await until(() => proxy.lines.some((l) => l.msg === 'auth file reloaded'), 10_000, 'the reload');
  t.equal(await login(proxy.port, 'scram', 'pw-scram'), 'scram', 'a user added to the file');
  t.equal(
    await login(proxy.port, 'plainuser', 'pw-plain'),
    'error 28P01',
    'the old password no longer',
  );
  t.same(
    (await held.query('SELECT 1 AS v')).rows,
    [{ v: 1 }],
    'a client logged in before keeps working',
  );
  await held.end();
  // A file that does not parse leaves the users in force.
  const broken = path.join(cluster.dir, 'broken.txt');
  await writeFile(broken, `"scram" unquoted\n`);
  await volume.update({ 'userlist.txt': broken });
  await until(
    () => proxy.lines.some((l) => l.msg === 'auth file rejected; keeping the users read before'),
    10_000,
  );
  t.equal(await login(proxy.port, 'scram', 'pw-scram'), 'scram');
});

void t.test('authQuery looks up users missing from the file, as authUser', async (t) => {
  const proxy = await startPgProxy(cluster, { authFile, authUser: 'sidepool_auth' });
  t.teardown(() => proxy.app.stop(1000));
  t.equal(
    await login(proxy.port, 'queried', 'pw-queried'),
    'queried',
    'SCRAM verifier from pg_shadow',
  );
  t.equal(await login(proxy.port, 'queried', 'bad'), 'error 28P01');
  t.equal(await login(proxy.port, 'ghost', 'x'), 'error 28000', 'a user the query does not find');
});

void t.test('password auth only over TLS; TLS on both sides verified', async (t) => {
  const proxy = await startPgProxy(
    cluster,
    { authFile, authType: 'password' },
    {},
    {
      tls: { cert: listenerCert.cert, key: listenerCert.key },
      upstream: {
        address: `127.0.0.1:${cluster.port}`,
        tls: { ca: ca.cert, servername: 'db.test' },
      },
    },
  );
  t.teardown(() => proxy.app.stop(1000));
  const env = { ...process.env, PGPASSWORD: 'pw-scram' };
  const psql = (sslmode: string) =>
    exec(
      'psql',
      [
        `host=127.0.0.1 port=${proxy.port} user=scram dbname=appdb sslmode=${sslmode} sslrootcert=${ca.cert}`,
        '-XAtqc',
        'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()',
      ],
      { env, timeout: 30_000 },
    ).then(
      (r) => r.stdout.trim(),
      (e: { stderr: string }) => `error ${e.stderr.trim()}`,
    );
  t.equal(await psql('verify-ca'), 't', 'psql with TLS to sidepool; the backend link is TLS too');
  t.match(
    await psql('disable'),
    /password authentication needs TLS/,
    'cleartext password refused without TLS',
  );
  t.equal(
    await login(proxy.port, 'md5user', 'pw-md5', 'appdb', { ca: await readCa() }),
    'md5user',
    'pg over TLS, password auth',
  );

  async function readCa(): Promise<string> {
    const { readFile } = await import('node:fs/promises');
    return readFile(ca.cert, 'utf8');
  }
});

void t.test(
  'PostgreSQL 17 direct TLS: a ClientHello with ALPN postgresql, no SSLRequest',
  async (t) => {
    const proxy = await startPgProxy(
      cluster,
      { authFile, authType: 'password' },
      {},
      { tls: { cert: listenerCert.cert, key: listenerCert.key } },
    );
    t.teardown(() => proxy.app.stop(1000));
    const caPem = await readFile(ca.cert, 'utf8');
    const direct = async (alpn: string[] | undefined): Promise<tls.TLSSocket> => {
      const socket = tls.connect({
        port: proxy.port,
        host: '127.0.0.1',
        servername: 'sidepool.test',
        ca: caPem,
        ...(alpn === undefined ? {} : { ALPNProtocols: alpn }),
      });
      await once(socket, 'secureConnect');
      return socket;
    };

    const socket = await direct(['postgresql']);
    t.equal(socket.alpnProtocol, 'postgresql', 'sidepool chose postgresql');
    const client = RawClient.over(socket);
    t.teardown(() => client.close());
    client.write(startup({ user: 'md5user', database: 'appdb' }));
    const asked = await client.readUntil('R');
    t.equal(asked.at(-1)?.body.readInt32BE(0), 3, 'cleartext password asked: the link is TLS');
    client.write(frontend('p', 'pw-md5\0'));
    const welcome = await client.readUntil('Z');
    t.notOk(
      welcome.some((m) => m.code === 'E'),
      'logged in over direct TLS',
    );
    client.write(pgQuery('SELECT current_user'));
    t.same(firstColumns(await client.readUntil('Z')), ['md5user']);

    const bare = RawClient.over(await direct(undefined));
    t.teardown(() => bare.close());
    const refused = await bare.readUntil('E');
    t.match(
      errorText(refused.at(-1) as RawMessage),
      /08P01.*without ALPN/,
      'direct TLS without ALPN is refused, as PostgreSQL 17 does',
    );
    await until(() => bare.closed, 5000, 'then closed');

    const other = tls.connect({
      port: proxy.port,
      host: '127.0.0.1',
      servername: 'sidepool.test',
      ca: caPem,
      ALPNProtocols: ['http/1.1'],
    });
    const [err] = (await once(other, 'error')) as [Error];
    t.match(err.message, /no application protocol/, 'another protocol is refused in the handshake');
    other.destroy();
  },
);

void t.test('an md5 secret computed the way PostgreSQL stores it', (t) => {
  t.equal(`md5${md5Secret('pw-md5', 'md5user')}`, md5Stored);
  t.end();
});
