import t from 'tap';
import { startProxy } from './helpers/app.js';
import { metric, parseMetrics, request } from './helpers/http.js';
import { startUpstreamProcess } from './helpers/upstream-process.js';
import { roundTrip, sleep, until } from './helpers/util.js';

const LEARNED =
  'the upstream closes idle links at about the same age: warm links are recycled before it';
const MOVED = 'upstream closed the link before answering: the session moves to another';

void t.test('an upstream idle timer is learned; then no link reaches it', async (t) => {
  // Closes every connection on which nothing arrived 2s after accept, as a login timer does.
  const upstream = await startUpstreamProcess({ minMs: 2000, maxMs: 2000 });
  t.teardown(() => upstream.stop());
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 4 },
    {},
    { admin: { listen: '127.0.0.1:0' } },
  );
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.upstreamIdleLimitMs !== undefined, 30_000, 'the limit learned');
  const limit = proxy.pool.upstreamIdleLimitMs as number;
  t.ok(limit >= 1700 && limit <= 2500, `learned ${limit}ms for a 2000ms timer`);
  const killedBefore = (await upstream.stats()).killed;
  t.ok(killedBefore >= 3, `it took a few kills (${killedBefore})`);
  const linesBefore = proxy.lines.length;

  // Three timer lengths with sessions now and then: each one gets its echo, and the
  // upstream's timer closes nothing more.
  const deadline = Date.now() + 3 * 2000;
  let sessions = 0;
  while (Date.now() < deadline) {
    t.equal((await roundTrip(proxy.port, `s${sessions}`)).toString(), `s${sessions}`);
    sessions++;
    await sleep(150 + Math.random() * 300);
  }
  const after = await upstream.stats();
  t.equal(
    after.killed - killedBefore,
    0,
    `no link killed by the upstream after learning (${sessions} sessions)`,
  );
  const later = proxy.lines.slice(linesBefore);
  t.notOk(
    later.some((l) => l.msg === MOVED || l.msg === 'idle link lost'),
    'no dead link met',
  );
  t.equal(proxy.lines.filter((l) => l.msg === LEARNED).length, 1, 'logged once');
  t.match(proxy.app.poolsView(), [{ upstreamIdleLimitMs: limit }], '/pools shows it');
  const admin = proxy.app.admin?.port as number;
  const text = parseMetrics((await request(admin, '/metrics')).body);
  t.equal(
    metric(text, 'sidepool_pool_upstream_idle_limit_seconds', { pool: upstream.address }),
    limit / 1000,
    'and the metric',
  );
});
