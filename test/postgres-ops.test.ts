// Operating a postgres route with a real PostgreSQL 15: bad input from clients and
// backends, timeouts, metrics and /pools, and `check`.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { runCli } from './helpers/cli.js';
import {
  RawClient,
  connectPg as connect,
  errorText,
  frontend,
  pgQuery,
  proxyMaker,
  startAppCluster,
  startup,
  writeAuthFile,
} from './helpers/postgres.js';
import { until } from './helpers/util.js';

const cluster = await startAppCluster(t);
const authFile = await writeAuthFile(cluster.dir, { app: 'secret' });

const proxyFor = proxyMaker(cluster, { authFile }, 2);

const errorCode = (p: Promise<unknown>): Promise<string> =>
  p.then(
    () => 'ok',
    (e: { code?: string }) => e.code ?? 'no code',
  );

void t.test(
  'bad input: refused with an ErrorResponse, counted, nothing upstream, process up',
  async (t) => {
    const proxy = await proxyFor(t, { authType: 'trust' });
    const answer = async (bytes: Buffer): Promise<string> => {
      const raw = await RawClient.connect(proxy.port);
      raw.write(bytes);
      const got = await raw.readToClose();
      const error = got.find((m) => m.code === 'E');
      return error === undefined ? got.map((m) => m.code).join('') : errorText(error);
    };
    t.match(
      await answer(Buffer.from([0, 0, 0, 3, 1, 2, 3, 4])),
      /^08P01 /,
      'startup length below 8',
    );
    t.match(
      await answer(Buffer.from([0, 1, 0, 0, 0, 3, 0, 0])),
      /^08P01 /,
      'startup packet above 10000 bytes',
    );
    t.match(
      await answer(Buffer.concat([Buffer.from([0, 0, 0, 12, 0, 3, 0, 0]), Buffer.from('user')])),
      /^08P01 /,
      'garbage parameters',
    );
    t.match(
      await answer(startup({ user: 'app' }, 131072)),
      /^0A000 unsupported frontend protocol 2\.0/,
      'protocol 2.0',
    );
    t.match(await answer(startup({ database: 'appdb' })), /^28000 /, 'no user');
    // Speaking before authentication completes (a SCRAM route asks for a SASL response).
    const scram = await proxyFor(t);
    const early = await RawClient.connect(scram.port);
    early.write(Buffer.concat([startup({ user: 'app', database: 'appdb' }), pgQuery('SELECT 1')]));
    const earlyGot = await early.readToClose();
    t.match(
      errorText(earlyGot.find((m) => m.code === 'E') ?? { code: 'E', body: Buffer.alloc(1) }),
      /^08P01 /,
      'a query before authentication',
    );
    // Once logged in: a length below 4, an unknown type, an oversized Query.
    for (const [what, bytes] of [
      ['length below 4', Buffer.from([0x51, 0, 0, 0, 2])],
      ['unknown message type', frontend('z', 'x')],
      ['oversized Query', Buffer.from([0x51, 0x7f, 0, 0, 0])],
    ] as const) {
      const raw = await RawClient.login(proxy.port, 'app', 'appdb');
      raw.write(pgQuery('SELECT 1'));
      await raw.readUntil('Z');
      raw.write(bytes);
      const got = await raw.readToClose();
      t.match(
        errorText(got.find((m) => m.code === 'E') ?? { code: 'E', body: Buffer.alloc(1) }),
        /^08P01 /,
        what,
      );
    }
    // Protocol 3.2 is answered with NegotiateProtocolVersion 3.0 and goes on.
    const newer = await RawClient.connect(proxy.port);
    newer.write(startup({ user: 'app', database: 'appdb', '_pq_.x': '1' }, 196610));
    const hello = await newer.readUntil('Z');
    t.equal(hello[0]?.code, 'v', 'NegotiateProtocolVersion first');
    t.equal(hello[0]?.body.readInt32BE(0), 0, 'minor version 0');
    newer.write(pgQuery('SELECT 7'));
    t.ok((await newer.readUntil('Z')).some((m) => m.code === 'D'));
    newer.close();
    const metrics = await proxy.app.metrics.render();
    t.match(metrics, /sidepool_postgres_protocol_errors_total\{route="pg",side="client"\} [6-9]/);
    const c = await connect(scram.port);
    t.same((await c.query('SELECT 1 AS v')).rows, [{ v: 1 }], 'the process serves on');
    await c.end();
  },
);

void t.test(
  'a backend that speaks while idle (terminated) is closed, never handed out',
  async (t) => {
    const proxy = await proxyFor(t, {}, { maxSize: 1 });
    const c = await connect(proxy.port);
    const pid = (await c.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]?.p;
    await cluster.sql(`SELECT pg_terminate_backend(${pid})`);
    await until(
      () => proxy.lines.some((l) => l.msg === 'idle link lost'),
      5000,
      'the idle link closed',
    );
    const after = (await c.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]?.p;
    t.not(after, pid, 'a fresh backend');
    await c.end();
  },
);

void t.test('timeouts: clientIdleTimeout, idleTransactionTimeout, queryTimeout', async (t) => {
  const proxy = await proxyFor(
    t,
    { clientIdleTimeout: 300, idleTransactionTimeout: 300, queryTimeout: 500 },
    { maxSize: 1 },
  );
  const idle = await connect(proxy.port);
  const idleError = new Promise<string>((resolve) =>
    idle.once('error', (e: { code?: string }) => resolve(e.code ?? '')),
  );
  t.equal(await idleError, '57P05', 'an idle client is closed with 57P05');
  const tx = await connect(proxy.port);
  const txError = new Promise<string>((resolve) =>
    tx.once('error', (e: { code?: string }) => resolve(e.code ?? '')),
  );
  await tx.query('BEGIN');
  t.equal(await txError, '25P03', 'idle in a transaction: 25P03');
  const slow = await connect(proxy.port);
  const started = Date.now();
  t.equal(await errorCode(slow.query('SELECT pg_sleep(10)')), '57014', 'a long query: 57014');
  t.ok(Date.now() - started < 5000);
  const next = await connect(proxy.port);
  t.same((await next.query('SELECT 1 AS v')).rows, [{ v: 1 }], 'the pool serves on');
  await next.end();
});

void t.test('metrics and /pools show clients and backends per (database, user)', async (t) => {
  const proxy = await proxyFor(t, {}, { maxSize: 2 });
  const a = await connect(proxy.port);
  const b = await connect(proxy.port);
  await a.query('BEGIN');
  await a.query('SELECT 1');
  await b.query('SELECT 1');
  await b.query('SELECT $1::int', [2]);
  const view = proxy.app.poolsView() as Array<Record<string, unknown>>;
  const entry = view.find((p) => p.pool === 'pg/appdb/app');
  t.match(entry, {
    database: 'appdb',
    user: 'app',
    poolMode: 'transaction',
    clients: { active: 1, waiting: 0, idle: 1 },
    backends: { active: 1 },
  });
  const metrics = await proxy.app.metrics.render();
  const labels = 'route="pg",database="appdb",user="app"';
  t.match(metrics, new RegExp(`sidepool_postgres_clients\\{${labels},state="active"\\} 1`));
  t.match(metrics, new RegExp(`sidepool_postgres_clients\\{${labels},state="idle"\\} 1`));
  t.match(metrics, new RegExp(`sidepool_postgres_backends\\{${labels},state="active"\\} 1`));
  t.match(metrics, new RegExp(`sidepool_postgres_transactions_total\\{${labels}\\} 2`));
  t.match(metrics, new RegExp(`sidepool_postgres_queries_total\\{${labels}\\} 4`));
  t.match(metrics, new RegExp(`sidepool_postgres_client_wait_seconds_count\\{${labels}\\} [3-9]`));
  t.match(metrics, /sidepool_pool_connections\{pool="pg\/appdb\/app",state="active"\} 1/);
  await a.query('COMMIT');
  await a.end();
  await b.end();
});

void t.test('check refuses workers > 1 with a postgres route, naming why', async (t) => {
  const file = path.join(cluster.dir, 'workers.yaml');
  await writeFile(
    file,
    `workers: 2\nroutes:\n  - listen: 127.0.0.1:6432\n    mode: postgres\n    upstream: 127.0.0.1:5432\n    postgres: { authFile: ${authFile} }\n`,
  );
  const result = await runCli(['check', '--config', file], { timeoutMs: 60_000 });
  t.equal(result.code, 2);
  t.match(result.stderr, /workers: a postgres route needs workers: 1/);
  await writeFile(
    file,
    `routes:\n  - listen: 127.0.0.1:6432\n    mode: tcp\n    upstream: 127.0.0.1:5432\n    postgres: { authType: trust }\n`,
  );
  const other = await runCli(['check', '--config', file], { timeoutMs: 60_000 });
  t.equal(other.code, 2);
  t.match(other.stderr, /routes\[0\]\.postgres: only for mode: postgres/);
});
