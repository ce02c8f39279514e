import t from 'tap';
import { startProxy } from './helpers/app.js';
import { psql, startPostgres } from './helpers/postgres.js';
import { until } from './helpers/util.js';

void t.test(
  'PostgreSQL fast shutdown and restart take no longer with sidepool idle in front',
  async (t) => {
    // A connection PostgreSQL accepts while it stops waits up to authentication_timeout for
    // its startup packet, and the shutdown waits for it: every warm link dialed into a
    // stopping server holds it up that long.
    const pg = await startPostgres({ conf: ['authentication_timeout = 20s'] });
    t.teardown(() => pg.stop());
    const direct = await pg.stopServer('fast');
    await pg.startServer();

    const proxy = await startProxy(`127.0.0.1:${pg.port}`, { minIdle: 4 });
    t.teardown(() => proxy.app.stop(100));
    await until(() => proxy.pool.stats().idle === 4, 20_000, 'warm');
    t.equal(await psql(proxy.port, 'SELECT 1'), '1', 'a query through sidepool');
    await until(() => proxy.pool.stats().idle === 4, 20_000, 'warm again');

    const through = await pg.stopServer('fast');
    t.ok(
      through < 10_000,
      `pg_ctl stop -m fast: ${Math.round(through)}ms through sidepool, ${Math.round(direct)}ms without`,
    );

    await pg.startServer();
    await until(() => proxy.pool.stats().idle === 4, 30_000, 'links back after the restart');
    t.equal(await psql(proxy.port, 'SELECT 2'), '2', 'queries work again');

    await until(() => proxy.pool.stats().idle === 4, 20_000, 'warm before the restart');
    const restartStarted = performance.now();
    await pg.stopServer('fast');
    await pg.startServer();
    const restart = performance.now() - restartStarted;
    t.ok(restart < 15_000, `pg_ctl stop -m fast, then start: ${Math.round(restart)}ms`);
    await until(() => proxy.pool.stats().idle === 4, 30_000, 'links back after the second restart');
    t.equal(await psql(proxy.port, 'SELECT 3'), '3');
  },
);
