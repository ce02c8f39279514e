import t, { type Test } from 'tap';
import type { Link } from '../src/pool/link.js';
import { makePool } from './helpers/pool.js';
import { until } from './helpers/util.js';

void t.test('waiters are served first-in first-out', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 0, maxSize: 1 });
  t.teardown(() => pool.destroy());
  dialer.manual = true;
  const order: number[] = [];
  const links: Link[] = [];
  for (const n of [1, 2, 3]) {
    pool.wait((err, link) => {
      t.equal(err, null);
      order.push(n);
      links.push(link as Link);
    });
  }
  t.equal(dialer.pending.length, 1, 'one dial at maxSize 1');
  dialer.settle();
  await until(() => order.length === 1);
  pool.release(links[0] as Link, false);
  await until(() => dialer.pending.length === 1);
  dialer.settle();
  await until(() => order.length === 2);
  pool.release(links[1] as Link, false);
  await until(() => dialer.pending.length === 1);
  dialer.settle();
  await until(() => order.length === 3);
  t.same(order, [1, 2, 3]);
});

void t.test('a waiter past acquireTimeout fails with SIDEPOOL_ACQUIRE_TIMEOUT', async (t) => {
  const { pool, dialer } = makePool({ maxSize: 1, acquireTimeout: 50 });
  t.teardown(() => pool.destroy());
  dialer.manual = true;
  const started = Date.now();
  await t.rejects(pool.acquire(), { code: 'SIDEPOOL_ACQUIRE_TIMEOUT' });
  t.ok(Date.now() - started >= 45, 'not before the timeout');
  t.equal(pool.stats().waiters, 0, 'the waiter left the queue');
});

void t.test('a full queue refuses at once with SIDEPOOL_POOL_OVERFLOW', async (t) => {
  const { pool, dialer } = makePool({ maxSize: 1, maxWaiters: 2 });
  t.teardown(() => pool.destroy());
  dialer.manual = true;
  const queued = [pool.acquire().catch(() => undefined), pool.acquire().catch(() => undefined)];
  await t.rejects(pool.acquire(), { code: 'SIDEPOOL_POOL_OVERFLOW' });
  t.equal(pool.stats().waiters, 2);
  await pool.destroy();
  await Promise.all(queued);
});

void t.test('a waiter that leaves is out of the queue and never called', async (t) => {
  const { pool, dialer } = makePool({ maxSize: 1 });
  t.teardown(() => pool.destroy());
  dialer.manual = true;
  let leftCalled = false;
  const left = pool.wait(() => (leftCalled = true));
  const stayed = new Promise<Link>((resolve) => pool.wait((_e, link) => resolve(link as Link)));
  t.equal(pool.stats().waiters, 2);
  left.cancel();
  left.cancel();
  t.equal(pool.stats().waiters, 1, 'cancel is idempotent and removes one');
  dialer.settle();
  const link = await stayed;
  t.equal(link.state, 'active', 'the next waiter got the link');
  t.equal(leftCalled, false);
});

void t.test('an AbortSignal takes a waiter out of the queue', async (t) => {
  const { pool, dialer } = makePool({ maxSize: 1 });
  t.teardown(() => pool.destroy());
  dialer.manual = true;
  const controller = new AbortController();
  const acquiring = pool.acquire(controller.signal);
  controller.abort();
  await t.rejects(acquiring, { code: 'SIDEPOOL_ACQUIRE_ABORTED' });
  t.equal(pool.stats().waiters, 0);
});

void t.test('tryAcquire does not jump the queue', async (t) => {
  const { pool, dialer } = makePool({ maxSize: 2 });
  t.teardown(() => pool.destroy());
  dialer.manual = true;
  const first = pool.acquire();
  t.equal(pool.tryAcquire(), undefined, 'nothing idle');
  dialer.settle();
  const link = await first;
  t.equal(link.state, 'active');
});

void t.test('close() fails waiters, closes idle links, waits for active ones', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 2, maxSize: 3 });
  pool.start();
  await until(() => pool.isWarm);
  const active = pool.tryAcquire() as Link;
  const third = await pool.acquire();
  dialer.manual = true;
  const queued = pool.acquire();
  let closed = false;
  const closing = pool.close().then(() => (closed = true));
  await t.rejects(queued, { code: 'SIDEPOOL_POOL_CLOSED' });
  t.equal(pool.stats().idle, 0, 'idle links closed');
  await new Promise((r) => setTimeout(r, 10));
  t.equal(closed, false, 'still waiting for the active links');
  pool.release(active, true);
  pool.release(third, false);
  await closing;
  t.equal(closed, true);
  t.equal(dialer.open.length, 0, 'every socket destroyed');
  await t.rejects(pool.acquire(), { code: 'SIDEPOOL_POOL_CLOSED' });
  t.equal(pool.close(), pool.close(), 'close is idempotent');
});

void t.test('destroy() closes active links too', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 1 });
  pool.start();
  await until(() => pool.isWarm);
  const link = pool.tryAcquire() as Link;
  await pool.destroy();
  t.equal(link.state, 'closed');
  t.equal(dialer.open.length, 0);
});

void t.test('waiters queued at different times each time out at their own deadline', async (t) => {
  const { pool, dialer } = makePool({ maxSize: 1, acquireTimeout: 300 });
  t.teardown(() => pool.destroy());
  dialer.manual = true;
  const started = performance.now();
  const failedAt: number[] = [];
  const first = pool.acquire().catch(() => failedAt.push(performance.now() - started));
  await until(() => performance.now() - started >= 150);
  const secondQueuedAt = performance.now() - started;
  const second = pool.acquire().catch(() => failedAt.push(performance.now() - started));
  await until(() => failedAt.length === 1);
  t.ok((failedAt[0] as number) >= 295, `the first failed at ${failedAt[0]} ms, not before 300`);
  t.equal(pool.stats().waiters, 1, 'the second still waits');
  await Promise.all([first, second]);
  t.ok(
    (failedAt[1] as number) - secondQueuedAt >= 295,
    `the second waited ${(failedAt[1] as number) - secondQueuedAt} ms, not less than 300`,
  );
  t.equal(pool.stats().waiters, 0);
});

void t.test(
  'a shorter acquireTimeout (reload) times out the waiters that queue after it',
  async (t) => {
    const { pool, dialer } = makePool({ maxSize: 1, acquireTimeout: 60_000 });
    t.teardown(() => pool.destroy());
    dialer.manual = true;
    let firstFailed = false;
    const first = pool.acquire().catch(() => (firstFailed = true));
    pool.configure({ ...pool.options, acquireTimeout: 50 });
    const started = performance.now();
    await t.rejects(pool.acquire(), { code: 'SIDEPOOL_ACQUIRE_TIMEOUT' });
    t.ok(performance.now() - started >= 45, 'not before its own timeout');
    t.equal(firstFailed, false, 'the waiter queued before keeps its own timeout');
    await pool.destroy();
    await first;
  },
);

/** A pool of one link, which the caller holds. */
async function poolOfOneHeld(t: Test) {
  const { pool, dialer } = makePool({ minIdle: 0, maxSize: 1 });
  t.teardown(() => pool.destroy());
  dialer.manual = true;
  const holding = pool.acquire();
  dialer.settle();
  return { pool, dialer, link: await holding };
}

void t.test('a link given back while callers wait goes to the next of them, reused', async (t) => {
  const { pool, dialer, link } = await poolOfOneHeld(t);
  const got: Link[] = [];
  pool.wait((_err, l) => got.push(l as Link));
  pool.wait((_err, l) => got.push(l as Link));
  pool.release(link, true);
  t.same(
    { idle: pool.stats().idle, active: pool.stats().active, waiters: pool.stats().waiters },
    { idle: 0, active: 1, waiters: 1 },
    'handed on, never idle',
  );
  await until(() => got.length === 1);
  t.equal(got[0], link, 'the same link');
  t.equal(link.state, 'active');
  t.equal(link.uses, 2, 'a second use');
  pool.release(link, true);
  await until(() => got.length === 2);
  t.equal(link.uses, 3);
  pool.release(link, true);
  t.equal(pool.stats().idle, 1, 'with nobody waiting it goes idle');
  t.equal(dialer.pending.length, 0, 'one dial served all three');
});

void t.test(
  'a link handed on that dies before its waiter is told: the waiter queues again',
  async (t) => {
    const { pool, dialer, link } = await poolOfOneHeld(t);
    const waiting = pool.acquire();
    pool.release(link, true);
    link.close('remote_closed');
    await until(() => dialer.pending.length === 1, 5000, 'a dial for the waiter');
    dialer.settle();
    const fresh = await waiting;
    t.not(fresh, link, 'a fresh link, not the dead one');
    t.equal(fresh.state, 'active');
  },
);
