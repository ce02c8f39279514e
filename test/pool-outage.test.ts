import t from 'tap';
import { startProxy } from './helpers/app.js';
import { request } from './helpers/http.js';
import { startHttpUpstream } from './helpers/http-upstream.js';
import { Backoff } from '../src/pool/backoff.js';
import { makePool } from './helpers/pool.js';
import { roundTrip, sleep, startEcho, startServer, until } from './helpers/util.js';

void t.test('a failed dial does not fail the queue while a live link will serve it', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 0, maxSize: 2, acquireTimeout: 5000 });
  t.teardown(() => pool.destroy());
  dialer.reportsDown = true;
  const held = await pool.acquire();
  dialer.failing = true;
  const queued = pool.acquire();
  await until(() => pool.totals.dialFailures >= 1, 1000, 'the dial for it failed');
  t.equal(dialer.isDown(), true, 'the connector says every endpoint is down');
  const late = pool.acquire();
  await sleep(30);
  t.equal(pool.stats().waiters, 2, 'both still queued');
  pool.release(held, true);
  t.equal(await queued, held, 'the queued caller got the link given back');
  pool.release(held, true);
  t.equal(await late, held, 'and so did the one that came while dials failed');
  t.equal(pool.totals.refused, 0, 'nobody was refused');
});

void t.test('with no live link and dials failing, queued callers fail fast', async (t) => {
  const { pool, dialer, lines } = makePool({ minIdle: 0, maxSize: 2, acquireTimeout: 5000 });
  t.teardown(() => pool.destroy());
  dialer.reportsDown = true;
  dialer.failing = true;
  const started = Date.now();
  const results = await Promise.allSettled([pool.acquire(), pool.acquire()]);
  t.match(results, [
    { status: 'rejected', reason: { code: 'SIDEPOOL_UPSTREAM_DOWN' } },
    { status: 'rejected', reason: { code: 'SIDEPOOL_UPSTREAM_DOWN' } },
  ]);
  t.ok(Date.now() - started < 2500, 'long before acquireTimeout');
  t.ok(lines.some((l) => l.msg === 'every endpoint is down: failing queued downstreams'));
});

void t.test('http: busy healthy links serve the queue although a dial was refused', async (t) => {
  let finishSlow: (() => void) | undefined;
  const upstream = await startHttpUpstream((req, res) => {
    if (req.url === '/slow') finishSlow = () => res.end('slow');
    else res.end(`fast ${req.url}`);
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 0, maxSize: 2, acquireTimeout: '5s' },
    { mode: 'http' },
  );
  t.teardown(() => proxy.app.stop(100));
  const slow = request(proxy.port, '/slow');
  await until(() => finishSlow !== undefined, 3000, 'the slow request upstream');
  // The upstream stops accepting; its open connection keeps serving.
  upstream.server.close();
  const queued = request(proxy.port, '/queued');
  await until(() => proxy.pool.totals.dialFailures >= 1, 3000, 'a refused dial');
  const late = request(proxy.port, '/late');
  await until(() => proxy.pool.stats().waiters === 2, 3000, 'both queued');
  finishSlow?.();
  const results = await Promise.all([slow, queued, late]);
  t.same(
    results.map((r) => `${r.status} ${r.body}`),
    ['200 slow', '200 fast /queued', '200 fast /late'],
    'every request was served on the one live link',
  );
  t.equal(upstream.connections, 1);
  t.equal(proxy.pool.totals.refused, 0);
});

void t.test('a caller arriving during backoff dials at once; one dial at a time', async (t) => {
  const { pool, dialer, lines } = makePool(
    { minIdle: 1, maxSize: 4, acquireTimeout: 10_000 },
    { backoff: new Backoff(5000, 10_000, () => 0.999) },
  );
  t.teardown(() => pool.destroy());
  dialer.reportsDown = true;
  dialer.manual = true;
  pool.start();
  dialer.settle(false);
  await until(() => lines.some((l) => l.msg === 'dial failed'), 1000, 'the warm-up dial failed');
  const retryInMs = lines.find((l) => l.msg === 'dial failed')?.retryInMs as number;
  t.ok(retryInMs >= 4000, `the next scheduled dial is seconds away (${retryInMs}ms)`);
  // Callers arrive while the pool backs off: one dial now, not one each, not in 5s.
  const callers = [pool.acquire(), pool.acquire(), pool.acquire()];
  await until(() => dialer.pending.length === 1, 1000, 'a dial for the callers');
  await sleep(20);
  t.equal(dialer.pending.length, 1, 'one dial at a time');
  dialer.settle(true);
  const first = await callers[0];
  t.equal(first?.state, 'active', 'the first success serves the first caller at once');
  // The success ended the outage: the others get links without waiting out the backoff.
  await until(() => dialer.pending.length >= 1, 1000, 'dials for the others');
  while (dialer.pending.length > 0) dialer.settle(true);
  await until(() => dialer.pending.length >= 1 || pool.stats().waiters === 0, 1000);
  while (dialer.pending.length > 0) dialer.settle(true);
  const rest = await Promise.all(callers.slice(1));
  t.equal(rest.length, 2);
  t.equal(pool.totals.refused, 0);
});

void t.test('after an outage the first app connection gets through at once', async (t) => {
  let upstream = await startEcho();
  const port = upstream.port;
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 1, acquireTimeout: '20s' });
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);
  await upstream.close();
  // Let the backoff grow until the next scheduled dial is seconds away.
  const LONG_MS = 1500;
  await until(
    () =>
      proxy.lines.some(
        (l) => l.msg === 'dial failed' && typeof l.retryInMs === 'number' && l.retryInMs >= LONG_MS,
      ),
    30_000,
    `a backoff of ${LONG_MS}ms or more`,
  );
  const failure = proxy.lines.findLast((l) => l.msg === 'dial failed') as {
    time: number;
    retryInMs: number;
  };
  const scheduledAt = failure.time + failure.retryInMs;
  upstream = await startServer((socket) => socket.pipe(socket), port);
  const reply = await roundTrip(proxy.port, 'first');
  const servedAt = Date.now();
  t.equal(reply.toString(), 'first', 'the first connection after the outage was served');
  t.ok(
    servedAt < scheduledAt,
    `before the pool's next scheduled dial (${scheduledAt - servedAt}ms early of ${failure.retryInMs}ms)`,
  );
});

void t.test(
  'after the upstream closes idle links, warm-up pauses; callers still get links',
  async (t) => {
    const { pool, dialer, lines } = makePool({ minIdle: 2, maxSize: 4 });
    t.teardown(() => pool.destroy());
    pool.start();
    await until(() => pool.isWarm);
    await sleep(1100); // past YOUNG_LINK_MS: these are idle losses, not failed dials
    for (const socket of dialer.sockets) socket.finish();
    await until(() => pool.stats().idle === 0, 1000, 'the idle links left the pool');
    t.match(
      lines.find((l) => l.msg === 'idle link lost'),
      { warmUpInMs: 2000 },
    );
    const dials = dialer.dials;
    await sleep(300);
    t.equal(dialer.dials, dials, 'no warm-up dial into an upstream that may be stopping');
    const link = await pool.acquire();
    t.equal(dialer.dials, dials + 1, 'a caller gets a dial at once');
    pool.release(link, false);
    await until(() => pool.stats().idle === 2, 5000, 'warm again after the pause');
  },
);
