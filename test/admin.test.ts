import net from 'node:net';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { metric, parseMetrics, request } from './helpers/http.js';
import { connectAndWaitClose, roundTrip, startEcho, startServer, until } from './helpers/util.js';

const ADMIN = { admin: { listen: '127.0.0.1:0' } };

async function scrape(port: number): Promise<Map<string, number>> {
  const res = await request(port, '/metrics');
  if (res.status !== 200) throw new Error(`metrics: ${res.status}`);
  return parseMetrics(res.body);
}

void t.test('health, readiness and bad requests', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 1 }, {}, ADMIN);
  t.teardown(() => proxy.app.stop(100));
  const admin = proxy.app.admin?.port as number;
  t.equal((await request(admin, '/healthz')).status, 200);
  const ready = await request(admin, '/readyz');
  t.equal(ready.status, 200);
  t.equal(ready.body, 'ready\n');
  t.equal((await request(admin, '/nope')).status, 404);
  const wrong = await request(admin, '/metrics', 'POST');
  t.equal(wrong.status, 405);
  t.equal(wrong.headers.allow, 'GET, HEAD');
  t.equal((await request(admin, '/reload', 'GET')).status, 405);
  t.equal((await request(admin, '/healthz?verbose=1')).status, 200, 'query strings are ignored');
  // Garbage on the admin port gets a 400, and the server keeps serving.
  const garbage = await new Promise<string>((resolve) => {
    const s = net.connect(admin, '127.0.0.1', () => s.write('\x00\x01 not http\r\n\r\n'));
    let got = '';
    s.on('data', (c: Buffer) => (got += c.toString()));
    s.on('close', () => resolve(got));
    s.on('error', () => {});
  });
  t.match(garbage, /^HTTP\/1\.1 400/);
  t.equal((await request(admin, '/healthz')).status, 200);
});

void t.test('metrics carry the values of known traffic', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 2, maxSize: 8 }, {}, ADMIN);
  t.teardown(() => proxy.app.stop(100));
  const admin = proxy.app.admin?.port as number;
  await until(() => proxy.pool.isWarm);
  const pool = proxy.pool.name;

  for (let i = 0; i < 5; i++) await roundTrip(proxy.port, 'x'.repeat(1000));
  await until(() => proxy.route.activeSessions === 0 && proxy.pool.stats().idle === 2);
  const m = await scrape(admin);
  t.equal(metric(m, 'sidepool_downstream_connections_total', { route: 'test' }), 5);
  t.equal(metric(m, 'sidepool_bytes_total', { route: 'test', direction: 'upstream' }), 5000);
  t.equal(metric(m, 'sidepool_bytes_total', { route: 'test', direction: 'downstream' }), 5000);
  t.equal(metric(m, 'sidepool_session_duration_seconds_count', { route: 'test' }), 5);
  t.equal(metric(m, 'sidepool_downstream_active', { route: 'test' }), 0);
  t.equal(
    metric(m, 'sidepool_pool_acquires_total', { pool, result: 'idle' }),
    5,
    'all five took a warm link',
  );
  t.equal(metric(m, 'sidepool_pool_acquires_total', { pool, result: 'timeout' }), 0);
  t.equal(metric(m, 'sidepool_pool_acquire_seconds_count', { pool }), 5);
  t.equal(
    metric(m, 'sidepool_upstream_connects_total', {
      pool,
      endpoint: upstream.address,
      result: 'success',
    }),
    7,
  );
  t.equal(metric(m, 'sidepool_upstream_connect_seconds_count', { pool }), 7);
  t.equal(metric(m, 'sidepool_pool_connections', { pool, state: 'idle' }), 2);
  t.equal(metric(m, 'sidepool_pool_connections', { pool, state: 'active' }), 0);
  t.equal(metric(m, 'sidepool_pool_connections', { pool, state: 'connecting' }), 0);
  t.equal(metric(m, 'sidepool_pool_max_connections', { pool }), 8);
  t.equal(metric(m, 'sidepool_pool_waiters', { pool }), 0);
  t.equal(metric(m, 'sidepool_pool_evictions_total', { pool, reason: 'idle' }), 0);
  t.equal(metric(m, 'sidepool_config_reloads_total', { result: 'failure' }), 0);
  t.equal(metric(m, 'sidepool_draining'), 0);
  t.ok(metric(m, 'process_cpu_user_seconds_total') !== undefined, 'default process metrics');

  // The upstream drops the idle links: counted as evictions.
  for (const c of upstream.connections) c.destroy();
  await until(() => proxy.pool.stats().idle === 0 || proxy.pool.stats().connecting > 0);
  const after = await scrape(admin);
  t.equal(metric(after, 'sidepool_pool_evictions_total', { pool, reason: 'remote_closed' }), 2);
});

void t.test('bytes of a long session are counted while it runs', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 1 }, {}, ADMIN);
  t.teardown(() => proxy.app.stop(100));
  const admin = proxy.app.admin?.port as number;
  const client = net.connect(proxy.port, '127.0.0.1');
  let echoed = 0;
  client.on('data', (c: Buffer) => (echoed += c.length));
  client.write(Buffer.alloc(3000));
  await until(() => echoed === 3000);
  const m = await scrape(admin);
  t.equal(metric(m, 'sidepool_bytes_total', { route: 'test', direction: 'upstream' }), 3000);
  t.equal(metric(m, 'sidepool_downstream_active', { route: 'test' }), 1);
  t.equal(metric(m, 'sidepool_pool_connections', { pool: proxy.pool.name, state: 'active' }), 1);
  client.write(Buffer.alloc(500));
  await until(() => echoed === 3500);
  client.end();
  await until(() => proxy.route.activeSessions === 0);
  const end = await scrape(admin);
  t.equal(
    metric(end, 'sidepool_bytes_total', { route: 'test', direction: 'upstream' }),
    3500,
    'no double count at the end',
  );
  t.equal(metric(end, 'sidepool_bytes_total', { route: 'test', direction: 'downstream' }), 3500);
});

void t.test('refusals are counted by reason', async (t) => {
  const upstream = await startServer(() => {}); // holds every connection open
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 0, maxSize: 1, maxWaiters: 1, acquireTimeout: 150 },
    {},
    ADMIN,
  );
  t.teardown(() => proxy.app.stop(100));
  const admin = proxy.app.admin?.port as number;
  const pool = proxy.pool.name;
  const holder = net.connect(proxy.port, '127.0.0.1');
  holder.on('error', () => {});
  await until(() => proxy.pool.stats().active === 1);
  const queued = connectAndWaitClose(proxy.port);
  await until(() => proxy.pool.stats().waiters === 1);
  await connectAndWaitClose(proxy.port); // the queue is full
  await queued;
  const m = await scrape(admin);
  t.equal(metric(m, 'sidepool_pool_acquires_total', { pool, result: 'timeout' }), 1);
  t.equal(metric(m, 'sidepool_pool_acquires_total', { pool, result: 'overflow' }), 1);
  holder.destroy();
});

void t.test('a down upstream: dial errors and fail-fast refusals are counted', async (t) => {
  const dead = await startEcho();
  const port = dead.port;
  await dead.close();
  const proxy = await startProxy(`127.0.0.1:${port}`, { minIdle: 1 }, {}, ADMIN);
  t.teardown(() => proxy.app.stop(100));
  const admin = proxy.app.admin?.port as number;
  const pool = proxy.pool.name;
  await until(() => proxy.pool.totals.dialFailures > 0);
  await connectAndWaitClose(proxy.port);
  const m = await scrape(admin);
  t.equal(metric(m, 'sidepool_pool_acquires_total', { pool, result: 'failed' }), 1);
  const errors = metric(m, 'sidepool_upstream_connects_total', {
    pool,
    endpoint: `127.0.0.1:${port}`,
    result: 'error',
  });
  t.ok((errors ?? 0) >= 1);
  const endpoint = `127.0.0.1:${port}`;
  t.equal(
    metric(m, 'sidepool_endpoint_up', { pool, endpoint }),
    0,
    'down, as the pool that fails fast sees it, though a single endpoint is never ejected',
  );
  const [view] = JSON.parse((await request(admin, '/pools')).body) as Array<{
    endpoints: unknown[];
  }>;
  t.match(view?.endpoints, [
    { endpoint, up: false, health: 'healthy', ejected: false, lastDialFailed: true },
  ]);

  // The upstream comes back on the same port: the next dial succeeds and it is up again.
  const back = await startServer((socket) => socket.pipe(socket), port);
  t.teardown(() => back.close());
  await until(() => proxy.pool.isWarm, 15_000, 'a dial to the upstream that came back');
  t.equal(metric(await scrape(admin), 'sidepool_endpoint_up', { pool, endpoint }), 1);
});

void t.test('/pools and /config', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 2, maxSize: 5 }, {}, ADMIN);
  t.teardown(() => proxy.app.stop(100));
  const admin = proxy.app.admin?.port as number;
  await until(() => proxy.pool.isWarm);
  const pools = JSON.parse((await request(admin, '/pools')).body) as unknown[];
  t.match(pools, [
    {
      pool: upstream.address,
      destination: upstream.address,
      routes: ['test'],
      warm: true,
      idle: 2,
      active: 0,
      maxSize: 5,
      totals: { dials: 2 },
    },
  ]);
  const config = JSON.parse((await request(admin, '/config')).body) as {
    routes: Array<{ pool: { maxSize: number } }>;
  };
  t.equal(config.routes[0]?.pool.maxSize, 5);
});

void t.test(
  'draining: not ready at once, still accepting for the delay, metrics throughout',
  async (t) => {
    const upstream = await startEcho();
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 1 }, {}, ADMIN);
    const admin = proxy.app.admin?.port as number;
    const active = net.connect(proxy.port, '127.0.0.1');
    active.on('error', () => {});
    await until(() => proxy.route.activeSessions === 1);
    // A delay long enough for the checks below to happen within it on a loaded machine.
    const stopping = proxy.app.stop(10_000, 3000);
    const ready = await request(admin, '/readyz');
    t.equal(ready.status, 503);
    t.match(ready.body, /draining/);
    t.equal(metric(await scrape(admin), 'sidepool_draining'), 1);
    t.equal(
      (await roundTrip(proxy.port, 'during delay')).toString(),
      'during delay',
      'accepts during the drain delay',
    );
    await until(() => !proxy.route.isListening, 30_000, 'the listeners to close after the delay');
    t.equal(
      (await connectAndWaitClose(proxy.port)).error,
      'ECONNREFUSED',
      'listeners closed after the delay',
    );
    t.equal(
      (await request(admin, '/metrics')).status,
      200,
      'metrics still scrapeable while sessions finish',
    );
    active.end();
    active.resume();
    await stopping;
    await t.rejects(request(admin, '/healthz'), 'the admin server closes last');
  },
);

void t.test('POST /drain drains and reports when done', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  let stopped = false;
  const proxy = await startProxy(upstream.address, { minIdle: 1 }, {}, ADMIN, {
    onStopped: () => (stopped = true),
  });
  const admin = proxy.app.admin?.port as number;
  const res = await request(admin, '/drain', 'POST');
  t.equal(res.status, 202);
  await until(() => stopped, 3000, 'drained');
  t.equal((await connectAndWaitClose(proxy.port)).error, 'ECONNREFUSED');
});
