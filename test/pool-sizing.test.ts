import t from 'tap';
import type { Link } from '../src/pool/link.js';
import { makePool } from './helpers/pool.js';
import { until } from './helpers/util.js';

void t.test('warm-up dials minIdle links and says when the pool is warm', async (t) => {
  const { pool, dialer, lines } = makePool({ minIdle: 3, maxSize: 10 });
  t.teardown(() => pool.destroy());
  t.equal(pool.isWarm, false);
  pool.start();
  t.equal(pool.stats().connecting, 3, 'three dials in flight at once');
  await until(() => pool.isWarm);
  t.equal(dialer.dials, 3);
  t.match(pool.stats(), { idle: 3, active: 0, connecting: 0, waiters: 0 });
  t.ok(
    lines.some((l) => l.msg === 'pool warm' && l.links === 3),
    'logged "pool warm"',
  );
});

void t.test('an idle link is taken at once and topped up in the background', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 2, maxSize: 10 });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  const link = pool.tryAcquire();
  t.ok(link, 'got an idle link synchronously');
  t.equal(link?.state, 'active');
  await until(() => pool.stats().idle === 2, 1000, 'top-up');
  t.equal(dialer.dials, 3, 'one replacement dial');
  t.equal(pool.stats().active, 1);
});

void t.test('dials on demand up to maxSize and never above it', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 0, maxSize: 3, maxWaiters: 10 });
  t.teardown(() => pool.destroy());
  pool.start();
  t.equal(dialer.dials, 0, 'minIdle 0 dials nothing at start');
  const got: Link[] = [];
  for (let i = 0; i < 5; i++) pool.wait((err, link) => err === null && got.push(link as Link));
  t.match(pool.stats(), { connecting: 3, waiters: 5 }, 'three dials for five waiters at maxSize 3');
  await until(() => got.length === 3);
  t.match(pool.stats(), { active: 3, waiters: 2, connecting: 0 });
  t.equal(dialer.dials, 3);
  pool.release(got[0] as Link, false);
  await until(() => got.length === 4, 1000, 'the replacement serves the next waiter');
  t.equal(dialer.dials, 4);
  t.match(pool.stats(), { active: 3, waiters: 1 });
});

void t.test('never more than maxSize links in any state', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 2, maxSize: 2, maxWaiters: 100, acquireTimeout: 0 });
  t.teardown(() => pool.destroy());
  pool.start();
  let peak = 0;
  const sample = setInterval(() => {
    const s = pool.stats();
    peak = Math.max(peak, s.idle + s.active + s.connecting);
  }, 1);
  const sessions = Array.from({ length: 20 }, async () => {
    const link = await pool.acquire();
    await new Promise((r) => setTimeout(r, 2));
    pool.release(link, false);
  });
  await Promise.all(sessions);
  clearInterval(sample);
  t.ok(peak <= 2, `peak ${peak} <= maxSize`);
  t.ok(dialer.dials >= 20, 'a fresh link for every session (tcp links are one-shot)');
});

void t.test('configure() resizes a running pool', async (t) => {
  const { pool } = makePool({ minIdle: 4, maxSize: 8 });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.stats().idle === 4);
  pool.configure({ ...pool.options, minIdle: 6 });
  await until(() => pool.stats().idle === 6, 1000, 'grow to 6');
  pool.configure({ ...pool.options, minIdle: 1, maxSize: 2 });
  t.equal(pool.stats().idle, 2, 'shrunk to the new maxSize at once');
});
