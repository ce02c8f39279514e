import t from 'tap';
import { Dialer } from '../src/upstream/dialer.js';
import { EndpointSet } from '../src/upstream/endpoints.js';
import { startProxy } from './helpers/app.js';
import { request } from './helpers/http.js';
import { startHttpUpstream, type HttpUpstream } from './helpers/http-upstream.js';
import { until } from './helpers/util.js';

const HEALTH = {
  interval: '50ms',
  timeout: '500ms',
  healthyThreshold: 1,
  unhealthyThreshold: 2,
  probe: { http: { path: '/healthz' } },
};

/** An http upstream that names itself, fails its probes on demand and can hold a request. */
async function upstream(name: string) {
  const state = { healthy: true, hits: [] as string[], holds: [] as Array<() => void> };
  const server: HttpUpstream = await startHttpUpstream((req, res) => {
    if (req.url === '/healthz') {
      res.statusCode = state.healthy ? 200 : 503;
      res.end();
      return;
    }
    state.hits.push(req.url ?? '');
    if (req.url === '/hold') state.holds.push(() => res.end(name));
    else res.end(name);
  });
  return { name, server, state };
}

void t.test('http: a link to an endpoint gone unhealthy carries no further request', async (t) => {
  const a = await upstream('a');
  const b = await upstream('b');
  t.teardown(() => Promise.all([a.server.close(), b.server.close()]));
  const proxy = await startProxy(
    { addresses: [a.server.address, b.server.address] },
    { minIdle: 0, maxSize: 4 },
    { mode: 'http', health: HEALTH, outlier: { consecutiveFailures: 0 } },
  );
  t.teardown(() => proxy.app.stop(100));
  const endpointsUp = (): boolean[] =>
    (proxy.app.poolsView() as Array<{ endpoints: Array<{ up: boolean }> }>)[0]?.endpoints.map(
      (e) => e.up,
    ) ?? [];
  await until(() => endpointsUp().every(Boolean), 3000, 'both endpoints up');

  // One request in flight on each endpoint.
  const held = [request(proxy.port, '/hold'), request(proxy.port, '/hold')];
  await until(() => a.state.holds.length === 1 && b.state.holds.length === 1, 3000, 'one on each');

  b.state.healthy = false;
  await until(() => endpointsUp()[1] === false, 3000, 'b marked unhealthy by its probes');
  for (const finish of [...a.state.holds, ...b.state.holds]) finish();
  t.same((await Promise.all(held)).map((r) => r.body).sort(), ['a', 'b'], 'in-flight ones finish');

  const bHitsBefore = b.state.hits.length;
  const bodies: string[] = [];
  for (let i = 0; i < 20; i++) bodies.push((await request(proxy.port, `/after-${i}`)).body);
  t.equal(b.state.hits.length - bHitsBefore, 0, 'no request reached b after its in-flight one');
  t.ok(
    bodies.every((body) => body === 'a'),
    'a served them all',
  );
  t.ok(
    proxy.lines.some(
      (l) =>
        l.msg === 'link to an unavailable endpoint closed on release' && l.reason === 'unhealthy',
    ),
    'the link to b was closed when released',
  );
});

void t.test('the dialer says why an endpoint takes no new links', (t) => {
  const address = (port: number) => ({ kind: 'tcp' as const, host: '127.0.0.1', port });
  const set = new EndpointSet(
    [address(1), address(2), address(3)],
    'least-active',
    {
      consecutiveFailures: 1,
      baseEjectionTime: 60_000,
      maxEjectionTime: 60_000,
      maxEjectedPercent: 50,
    },
    { down() {}, up() {}, ejected() {}, gone() {} },
  );
  t.teardown(() => set.close());
  const dialer = new Dialer({ name: 'd', endpoints: set, connectTimeout: 1000 });
  t.equal(dialer.whyUnavailable('127.0.0.1:1'), undefined, 'available');
  set.probed(set.all[0]!, false, 1, 1);
  t.equal(dialer.whyUnavailable('127.0.0.1:1'), 'unhealthy', 'failed its probes');
  set.failed(set.all[1]!, false);
  t.equal(dialer.whyUnavailable('127.0.0.1:2'), 'unhealthy', 'ejected');
  set.update([address(1), address(2)]);
  t.equal(dialer.whyUnavailable('127.0.0.1:3'), 'endpoint_removed', 'gone from discovery');
  t.end();
});
