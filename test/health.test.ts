import http from 'node:http';
import net from 'node:net';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { request } from './helpers/http.js';
import { startRedis } from './helpers/redis.js';
import {
  connectAndWaitClose,
  roundTrip,
  sleep,
  startEcho,
  startServer,
  until,
  type TestServer,
} from './helpers/util.js';

/**
 * Probes often, but with a timeout that a healthy server meets even when the machine is
 * loaded: a probe timing out would fail the tests where probes must pass.
 */
const FAST_HEALTH = {
  interval: '50ms',
  timeout: '5s',
  healthyThreshold: 2,
  unhealthyThreshold: 2,
};

/** Probes by result so far, from the app's metrics. */
async function probes(
  proxy: Awaited<ReturnType<typeof startProxy>>,
  result: 'success' | 'failure',
): Promise<number> {
  const text = await proxy.app.metrics.render();
  return [...text.matchAll(/^sidepool_health_probes_total\{(.*)\} (\d+)$/gm)]
    .filter((m) => (m[1] as string).includes(`result="${result}"`))
    .reduce((n, m) => n + Number(m[2]), 0);
}

/** Endpoint health as /pools reports it. */
function endpoints(
  proxy: Awaited<ReturnType<typeof startProxy>>,
): Array<{ endpoint: string; up: boolean; health: string; ejected: boolean }> {
  const view = proxy.app.poolsView() as Array<{
    endpoints: Array<{ endpoint: string; up: boolean; health: string; ejected: boolean }>;
  }>;
  return view[0]?.endpoints ?? [];
}

/** An echo server that says which one it is. */
function named(name: string, port = 0): Promise<TestServer> {
  return startServer((socket) => {
    socket.on('data', (c: Buffer) => socket.write(`${name}:${c.toString()}`));
    socket.on('end', () => socket.end());
  }, port);
}

void t.test('a killed endpoint is ejected under load; traffic moves; it comes back', async (t) => {
  const servers = [await named('a'), await named('b'), await named('c')];
  t.teardown(() => Promise.all(servers.map((s) => s.close())));
  const proxy = await startProxy(
    { addresses: servers.map((s) => s.address) },
    { minIdle: 6, maxSize: 64, maxWaiters: 1000 },
    { health: FAST_HEALTH, outlier: { consecutiveFailures: 2, baseEjectionTime: '10s' } },
  );
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);

  let ok = 0;
  let failed = 0;
  const served = new Map<string, number>();
  let running = true;
  // Sessions are counted in the phase they started in: one that was already under way when
  // b went down may end after that (its reply from b, or its failure) and says nothing about
  // the sessions sidepool placed once it knew.
  let phase = 0;
  const load = Array.from({ length: 10 }, async () => {
    while (running) {
      const startedIn = phase;
      try {
        const reply = (await roundTrip(proxy.port, 'x')).toString();
        if (startedIn !== phase) continue;
        if (/^[abc]:x$/.test(reply)) {
          ok++;
          served.set(reply[0] as string, (served.get(reply[0] as string) ?? 0) + 1);
        } else failed++;
      } catch {
        if (startedIn === phase) failed++;
      }
    }
  });
  t.teardown(() => {
    running = false;
  });
  await until(() => ok > 100);
  // Kill b: its listener and every connection to it.
  const deadPort = servers[1]?.port as number;
  await servers[1]?.close();
  await until(
    () => endpoints(proxy).find((e) => e.endpoint.endsWith(`:${deadPort}`))?.up === false,
    3000,
    'b down',
  );
  phase++;
  const downAt = { ok, failed };
  served.clear();
  await until(() => ok > downAt.ok + 200, 10_000, 'load after the failure');
  t.equal(failed - downAt.failed, 0, 'no session failed once b was out');
  t.equal(served.get('b') ?? 0, 0, 'b got no traffic while down');
  t.ok((served.get('a') ?? 0) > 0 && (served.get('c') ?? 0) > 0, 'a and c carried it');

  // b returns on the same port: probes see it, traffic reaches it again.
  servers[1] = await named('b', deadPort);
  await until(() => endpoints(proxy).every((e) => e.up), 5000, 'b healthy again');
  served.clear();
  await until(() => (served.get('b') ?? 0) > 0, 5000, 'b carries traffic again');
  running = false;
  await Promise.all(load);
  t.ok(failed <= 10, `few failures overall while b died (${failed} of ${ok + failed})`);
});

void t.test('probes: each kind against a real server', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  let status = 200;
  const web = http.createServer((req, res) => {
    res.writeHead(req.url === '/healthz' ? status : 404);
    res.end();
  });
  await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
  t.teardown(() => web.close());
  const webPort = (web.address() as net.AddressInfo).port;
  const echo = await startEcho();
  t.teardown(() => echo.close());

  const cases: Array<[string, string, unknown]> = [
    ['redis', `127.0.0.1:${redis.port}`, 'redis'],
    ['http', `127.0.0.1:${webPort}`, { http: { path: '/healthz', expectStatus: 200 } }],
    ['send/expect prefix', echo.address, { send: 'hello\r\n', expect: 'hello' }],
    ['send/expect regex', echo.address, { send: 'abc123', expect: '/^abc\\d+$/' }],
    ['tcp', echo.address, 'tcp'],
  ];
  for (const [name, upstream, probe] of cases) {
    const proxy = await startProxy(upstream, { minIdle: 0 }, { health: { ...FAST_HEALTH, probe } });
    // Three probes passed (the endpoint's state moves only after two in a row), none failed.
    await until(async () => (await probes(proxy, 'success')) >= 3, 30_000, `${name} probes`);
    t.equal(await probes(proxy, 'failure'), 0, `${name} probe passes`);
    t.equal(endpoints(proxy)[0]?.up, true);
    t.equal(proxy.lines.filter((l) => l.msg === 'probe failed').length, 0);
    await proxy.app.stop(50);
  }

  // Failing probes of each kind mark the endpoint unhealthy.
  const failing: Array<[string, string, unknown]> = [
    ['http status', `127.0.0.1:${webPort}`, { http: { path: '/other', expectStatus: 200 } }],
    ['send/expect', echo.address, { send: 'hello', expect: 'bye' }],
    ['redis against an echo server', echo.address, 'redis'],
  ];
  for (const [name, upstream, probe] of failing) {
    const proxy = await startProxy(upstream, { minIdle: 0 }, { health: { ...FAST_HEALTH, probe } });
    await until(() => endpoints(proxy)[0]?.health === 'unhealthy', 3000, name);
    t.ok(
      proxy.lines.some((l) => l.msg === 'endpoint unhealthy'),
      `${name}: unhealthy`,
    );
    await proxy.app.stop(50);
  }

  // A server that accepts and says nothing fails a probe by timeout.
  const silent = await startServer(() => {});
  t.teardown(() => silent.close());
  const proxy = await startProxy(
    silent.address,
    { minIdle: 0 },
    { health: { ...FAST_HEALTH, timeout: '200ms', probe: 'redis' } },
  );
  await until(() => endpoints(proxy)[0]?.health === 'unhealthy', 30_000, 'timeout');
  t.match(
    proxy.lines.find((l) => l.msg === 'endpoint unhealthy'),
    { code: 'SIDEPOOL_PROBE_FAILED' },
  );
  await proxy.app.stop(50);

  // The http endpoint recovers when its status does.
  status = 503;
  const flapping = await startProxy(
    `127.0.0.1:${webPort}`,
    { minIdle: 0 },
    { health: { ...FAST_HEALTH, probe: { http: { path: '/healthz' } } } },
  );
  t.teardown(() => flapping.app.stop(50));
  await until(() => endpoints(flapping)[0]?.health === 'unhealthy', 3000, 'flapping down');
  status = 200;
  await until(() => endpoints(flapping)[0]?.health === 'healthy', 3000, 'flapping up');
  t.ok(flapping.lines.some((l) => l.msg === 'endpoint healthy again'));
});

void t.test('an unhealthy endpoint loses its idle links and gets no new dials', async (t) => {
  let healthy = true;
  const upstream = await startServer((socket) => {
    socket.on('data', () => socket.write(healthy ? '+PONG\r\n' : '-ERR loading\r\n'));
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    // A long acquireTimeout: failing fast is then plainly not waiting for it.
    { minIdle: 3, acquireTimeout: '60s' },
    { health: { ...FAST_HEALTH, probe: 'redis' } },
  );
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);
  healthy = false;
  await until(() => proxy.pool.stats().idle === 0, 3000, 'idle links closed');
  const dials = proxy.pool.totals.dials;
  const refused = await connectAndWaitClose(proxy.port);
  t.ok(refused.ms < 30_000, `the only endpoint is down: fail fast (${refused.ms} ms)`);
  await sleep(100);
  t.equal(proxy.pool.totals.dials, dials, 'no dials to an unhealthy endpoint');
  healthy = true;
  await until(
    () => proxy.pool.isWarm && proxy.pool.stats().idle === 3,
    3000,
    'warm again after recovery',
  );
});

void t.test('an upstream restart: no app connection is handed a dead link', async (t) => {
  let server = await startEcho();
  const port = server.port;
  t.teardown(() => server.close());
  const proxy = await startProxy(server.address, { minIdle: 8 }, { health: FAST_HEALTH });
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);
  await server.close();
  server = await startServer((socket) => socket.pipe(socket), port);
  const replies = await Promise.all(
    Array.from({ length: 30 }, (_, i) => roundTrip(proxy.port, `r${i}`)),
  );
  t.same(
    replies.map(String),
    Array.from({ length: 30 }, (_, i) => `r${i}`),
    'every session after the restart worked',
  );
});

void t.test('readyWhen: upstreamHealthy follows the upstream', async (t) => {
  const upstream = await startEcho();
  const port = upstream.port;
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 1 },
    { readyWhen: 'upstreamHealthy', health: FAST_HEALTH },
    { admin: { listen: '127.0.0.1:0' } },
  );
  t.teardown(() => proxy.app.stop(100));
  const admin = proxy.app.admin?.port as number;
  await until(() => endpoints(proxy)[0]?.up === true && proxy.app.readiness().ready, 3000, 'ready');
  t.equal((await request(admin, '/readyz')).status, 200);
  await upstream.close();
  await until(() => !proxy.app.readiness().ready, 3000, 'not ready');
  const res = await request(admin, '/readyz');
  t.equal(res.status, 503);
  t.match(res.body, /upstream .* is not healthy/);
  const back = await startServer((socket) => socket.pipe(socket), port);
  t.teardown(() => back.close());
  await until(() => proxy.app.readiness().ready, 5000, 'ready again');
});

void t.test('when every endpoint is down, queued downstreams fail fast', async (t) => {
  const a = await startServer(() => {});
  const b = await startServer(() => {});
  const proxy = await startProxy(
    { addresses: [a.address, b.address] },
    { minIdle: 0, maxSize: 2, acquireTimeout: '120s' },
  );
  t.teardown(() => proxy.app.stop(100));
  const holders = [net.connect(proxy.port, '127.0.0.1'), net.connect(proxy.port, '127.0.0.1')];
  for (const h of holders) h.on('error', () => {});
  await until(() => proxy.pool.stats().active === 2);
  const queued = connectAndWaitClose(proxy.port);
  await until(() => proxy.pool.stats().waiters === 1);
  await a.close();
  await b.close();
  // The holders' sessions end; the replacement dials fail on both endpoints.
  const result = await queued;
  t.ok(
    result.ms < 60_000,
    `the queued downstream was closed long before acquireTimeout (${result.ms}ms)`,
  );
  t.ok(proxy.lines.some((l) => l.msg === 'every endpoint is down: failing queued downstreams'));
});
