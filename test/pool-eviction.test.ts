import t from 'tap';
import type { Link } from '../src/pool/link.js';
import { lifetimeWithJitter } from '../src/pool/pool.js';
import { makePool } from './helpers/pool.js';
import { sleep, until } from './helpers/util.js';

void t.test('idle links above minIdle close after idleTimeout', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 0, maxSize: 4, idleTimeout: 40 });
  t.teardown(() => pool.destroy());
  const links = await Promise.all([pool.acquire(), pool.acquire(), pool.acquire()]);
  for (const link of links) pool.release(link, true);
  t.equal(pool.stats().idle, 3);
  await until(() => pool.stats().idle === 0, 1000, 'idle eviction');
  t.equal(dialer.open.length, 0, 'their sockets are closed');
  t.equal(dialer.dials, 3, 'nothing redialed below minIdle 0');
});

void t.test('warm links idle for idleTimeout are replaced by fresh ones', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 2, maxSize: 4, idleTimeout: 40 });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  const before = dialer.sockets.slice();
  await until(() => before.every((s) => s.destroyed), 1000, 'old links recycled');
  await until(() => pool.stats().idle === 2, 1000, 'refilled');
  t.ok(dialer.dials >= 4, `fresh dials replaced the warm ones (${dialer.dials})`);
  t.equal(pool.stats().idle + pool.stats().connecting, 2, 'stays at minIdle');
});

void t.test('a link taken before its idle timer fires is not evicted', async (t) => {
  const { pool } = makePool({ minIdle: 1, idleTimeout: 30 });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  const link = pool.tryAcquire() as Link;
  await sleep(60);
  t.equal(link.state, 'active', 'the idle timer was cleared on lease');
});

void t.test('idle links older than maxLifetime close, with jitter, and are replaced', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 3, maxSize: 6, maxLifetime: 60 });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  const first = dialer.sockets.slice(0, 3);
  // When each closed, against when it was dialed (before the link existed): timers never
  // fire early, so this holds however late a loaded machine runs them.
  const closedAt: number[] = [];
  first.forEach((s, i) => s.once('close', () => (closedAt[i] = Date.now())));
  await until(() => first.every((_, i) => closedAt[i] !== undefined), 30_000, 'lifetime eviction');
  const lived = closedAt.map((at, i) => at - (dialer.dialTimes[i] as number));
  t.ok(
    lived.every((ms) => ms >= 54),
    `not before ~90% of maxLifetime (lived ${lived.join(', ')} ms)`,
  );
  await until(() => pool.stats().idle === 3);
});

void t.test('an active link past maxLifetime is closed on release instead of reused', async (t) => {
  const { pool } = makePool({ minIdle: 0, maxLifetime: 20 });
  t.teardown(() => pool.destroy());
  const link = await pool.acquire();
  await sleep(40);
  t.equal(link.expired, true);
  pool.release(link, true);
  t.equal(link.state, 'closed');
  t.equal(pool.stats().idle, 0);
});

void t.test('a reusable link goes back to idle and is handed out again', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 0 });
  t.teardown(() => pool.destroy());
  const link = await pool.acquire();
  pool.release(link, true);
  t.equal(link.state, 'idle');
  const again = pool.tryAcquire();
  t.equal(again, link);
  t.equal(again?.uses, 2);
  t.equal(dialer.dials, 1);
});

void t.test(
  'an idle link closed by the upstream leaves at once and is never handed out',
  async (t) => {
    const { pool, dialer, lines } = makePool({ minIdle: 2 });
    t.teardown(() => pool.destroy());
    pool.start();
    await until(() => pool.isWarm);
    const [a, b] = dialer.sockets;
    a?.finish();
    b?.destroy(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }));
    await until(() => a?.destroyed === true && b?.destroyed === true);
    t.equal(pool.stats().idle, 0, 'both left the pool at once');
    await until(
      () => pool.stats().idle === 2,
      2000,
      'replaced (after a backoff: they were lost young)',
    );
    const link = pool.tryAcquire() as Link;
    t.not(link.socket, a);
    t.not(link.socket, b);
    const lost = lines.filter((l) => l.msg === 'link lost right after its dial');
    t.same(lost.map((l) => l.reason).sort(), ['error', 'remote_closed']);
  },
);

void t.test('bytes an upstream sends on an idle link reach whoever takes it (tcp)', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 1 });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  dialer.sockets[0]?.send('220 greeting\r\n');
  await sleep(5);
  const link = pool.tryAcquire() as Link;
  t.equal(Buffer.concat(link.takeIdleBytes() ?? []).toString(), '220 greeting\r\n');
  t.equal(link.takeIdleBytes(), undefined, 'handed over once');
});

void t.test('bytes on an idle link break it when the mode cannot keep them (http)', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 1 }, { keepIdleBytes: false });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  dialer.sockets[0]?.send('HTTP/1.1 408 Request Timeout\r\n\r\n');
  await until(() => dialer.sockets[0]?.destroyed === true);
  t.equal(pool.tryAcquire()?.socket === dialer.sockets[0], false);
});

void t.test('an upstream flooding an idle link is cut off', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 1 });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  dialer.sockets[0]?.send('x'.repeat(70 * 1024));
  await until(() => dialer.sockets[0]?.destroyed === true, 1000, 'flooding link closed');
});

void t.test('lifetimes are jittered ±10% in whole seconds, so timer lists stay few', (t) => {
  const seen = new Set<number>();
  for (let i = 0; i < 5000; i++) {
    const ms = lifetimeWithJitter(3_600_000);
    if (ms < 3_240_000 || ms > 3_960_000) t.fail(`out of range: ${ms}`);
    seen.add(ms);
  }
  t.ok(
    [...seen].every((ms) => ms % 1000 === 0),
    'whole seconds',
  );
  t.ok(seen.size <= 721, `at most 721 distinct durations (${seen.size})`);
  t.equal(lifetimeWithJitter(0), 0, '0 means no lifetime');
  t.equal(
    lifetimeWithJitter(1000, () => 0.5),
    1000,
    'short lifetimes keep millisecond precision',
  );
  t.equal(
    lifetimeWithJitter(1000, () => 0),
    900,
  );
  t.end();
});
