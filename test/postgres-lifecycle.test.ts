// A postgres route's lifecycle with a real PostgreSQL 15: upstream restart, drain, reload.
import t from 'tap';
import { parseConfig } from '../src/config/load.js';
import {
  connectPg as connect,
  proxyMaker,
  startPgProxy,
  startAppCluster,
  writeAuthFile,
} from './helpers/postgres.js';
import { until } from './helpers/util.js';

const cluster = await startAppCluster(t);
const authFile = await writeAuthFile(cluster.dir, { app: 'secret' });

const proxyFor = proxyMaker(cluster, { authFile }, 2);

void t.test(
  'upstream restart (pg_ctl restart -m fast): clients recover, the shutdown is not held',
  async (t) => {
    const proxy = await proxyFor(
      t,
      { pools: [{ database: 'appdb', user: 'app' }] },
      { minIdle: 2, maxSize: 4, acquireTimeout: 20_000 },
    );
    await until(() => proxy.lines.some((l) => l.msg === 'pool warm'), 10_000, 'warm');
    const idle = await connect(proxy.port);
    t.same((await idle.query('SELECT 1 AS v')).rows, [{ v: 1 }]);
    const started = Date.now();
    await cluster.restart('fast');
    const took = Date.now() - started;
    t.ok(took < 20_000, `the restart took ${took}ms: nothing held the shutdown`);
    t.same(
      (await idle.query('SELECT 2 AS v')).rows,
      [{ v: 2 }],
      'a client idle through the restart goes on',
    );
    const fresh = await connect(proxy.port);
    t.same((await fresh.query('SELECT 3 AS v')).rows, [{ v: 3 }], 'new clients too');
    const deadline = Date.now() + 10_000;
    while ((await cluster.backends('app')) < 2 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    t.ok((await cluster.backends('app')) >= 2, 'warm again');
    await idle.end();
    await fresh.end();
  },
);

void t.test(
  'drain: idle clients get 57P01 after drain.delay; a transaction under way finishes',
  async (t) => {
    const proxy = await startPgProxy(cluster, { authFile }, { maxSize: 2 });
    const idle = await connect(proxy.port);
    const busy = await connect(proxy.port);
    const idleError = new Promise<string>((resolve) =>
      idle.once('error', (e: { code?: string }) => resolve(e.code ?? '')),
    );
    await busy.query('BEGIN');
    await busy.query('SELECT 1');
    const stopping = proxy.app.stop(10_000, 100);
    t.equal(await idleError, '57P01', 'the idle client is told the server is going away');
    t.same((await busy.query('SELECT 2 AS v')).rows, [{ v: 2 }], 'the transaction goes on');
    const busyError = new Promise<string>((resolve) =>
      busy.once('error', (e: { code?: string }) => resolve(e.code ?? '')),
    );
    await busy.query('COMMIT');
    t.equal(await busyError, '57P01', 'and is closed once it ends');
    await stopping;
    t.equal(await cluster.backends('app'), 0, 'every backend closed');
  },
);

void t.test('reload applies pool sizes in place without dropping clients', async (t) => {
  const base = {
    admin: false,
    routes: [
      {
        name: 'pg',
        listen: '127.0.0.1:0',
        mode: 'postgres',
        upstream: `127.0.0.1:${cluster.port}`,
        pool: { minIdle: 0, maxSize: 1 },
        postgres: { authFile },
      },
    ],
  };
  let next = base;
  const proxy = await startPgProxy(
    cluster,
    { authFile },
    { maxSize: 1 },
    {},
    { admin: false },
    {
      loadConfig: () =>
        Promise.resolve(
          parseConfig({ ...next, routes: [{ ...next.routes[0], listen: `127.0.0.1:${port}` }] }),
        ),
    },
  );
  const port = proxy.port;
  t.teardown(() => proxy.app.stop(1000));
  const a = await connect(port);
  await a.query('BEGIN');
  next = { ...base, routes: [{ ...base.routes[0]!, pool: { minIdle: 0, maxSize: 3 } }] };
  t.same(await proxy.app.reload(), { ok: true });
  const b = await connect(port);
  t.same((await b.query('SELECT 1 AS v')).rows, [{ v: 1 }], 'a second backend: maxSize grew');
  t.same((await a.query('SELECT 2 AS v')).rows, [{ v: 2 }], 'the client in a transaction kept it');
  await a.query('COMMIT');
  await a.end();
  await b.end();
});
