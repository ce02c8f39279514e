import net from 'node:net';
import type { Test } from 'tap';
import t from 'tap';
import type { Link } from '../src/pool/link.js';
import { Pool } from '../src/pool/pool.js';
import { makePool, SETTINGS } from './helpers/pool.js';
import { captureLogger, startEcho, until } from './helpers/util.js';

void t.test('tryAcquire never hands out a link whose socket is already destroyed', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 2, maxSize: 4 });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  // Destroyed now; its 'close' event is still pending (Node emits it on the next tick).
  dialer.sockets[0]?.destroy();
  const link = pool.tryAcquire() as Link;
  t.ok(link, 'the other idle link is taken');
  t.equal(link.socket.destroyed, false, 'the link handed out has a live socket');
  t.equal(pool.stats().idle, 0, 'the dead link left the pool instead of going back');
  await until(() => pool.stats().idle === 2, 5000, 'replaced (warm-up pauses after a lost link)');
  t.equal(pool.stats().active, 1);
});

void t.test('a real socket destroyed while idle is not handed out either', async (t) => {
  const echo = await startEcho();
  t.teardown(() => echo.close());
  const { logger } = captureLogger();
  const [host, port] = echo.address.split(':') as [string, string];
  const pool = new Pool({
    name: echo.address,
    ...SETTINGS,
    minIdle: 1,
    connector: {
      dial: () =>
        new Promise((resolve, reject) => {
          const socket = net.connect(Number(port), host, () =>
            resolve({ socket, endpoint: echo.address }),
          );
          socket.once('error', reject);
        }),
    },
    logger,
  });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  const idle = pool.tryAcquire() as Link;
  pool.release(idle, true);
  idle.socket.destroy();
  t.equal(pool.tryAcquire(), undefined, 'nothing live is idle');
  t.equal(idle.state, 'closed', 'the dead link was closed on the way');
  await until(() => pool.stats().idle === 1, 5000, 'replaced (warm-up pauses after a lost link)');
});

void t.test('a waiter is not served a released link whose socket is destroyed', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 0, maxSize: 2 });
  t.teardown(() => pool.destroy());
  const first = await pool.acquire();
  const second = await pool.acquire();
  const queued = pool.acquire();
  first.socket.destroy();
  pool.release(first, true);
  const got = await queued;
  t.not(got, first, 'the dead link went to no one');
  t.equal(got.socket.destroyed, false);
  t.equal(first.state, 'closed');
  t.equal(dialer.dials, 3, 'a fresh link was dialed for the waiter');
  pool.release(second, true);
  pool.release(got, true);
  t.same(
    { idle: pool.stats().idle, active: pool.stats().active },
    { idle: 2, active: 0 },
    'consistent afterwards',
  );
});

/** Counts what would otherwise take the test process down or go unreported. */
function escapes(t: Test): { rejections: unknown[]; exceptions: unknown[] } {
  const caught = { rejections: [] as unknown[], exceptions: [] as unknown[] };
  const onRejection = (reason: unknown): void => void caught.rejections.push(reason);
  const onException = (err: unknown): void => void caught.exceptions.push(err);
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  t.teardown(() => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  });
  return caught;
}

void t.test(
  'a waiter callback that throws is isolated; the queue behind it is served',
  async (t) => {
    const { pool, dialer, lines } = makePool({ minIdle: 0, maxSize: 1 });
    t.teardown(() => pool.destroy());
    const caught = escapes(t);
    dialer.manual = true;
    let thrown: Link | undefined;
    pool.wait((_err, link) => {
      thrown = link;
      throw new Error('a bug in session code');
    });
    const served: Link[] = [];
    for (let i = 0; i < 2; i++) pool.wait((_err, link) => void served.push(link as Link));
    dialer.settle();
    await until(() => thrown !== undefined, 1000, 'the first waiter called');
    t.equal(thrown?.state, 'closed', 'the link the throwing callback got is closed');
    await until(() => dialer.pending.length === 1, 1000, 'a replacement dial');
    dialer.settle();
    await until(() => served.length === 1, 1000, 'the second waiter served');
    pool.release(served[0] as Link, true);
    await until(() => served.length === 2, 1000, 'the third waiter served');
    t.equal(served[1], served[0], 'on the link the second gave back');
    t.same(pool.stats(), { idle: 0, active: 1, connecting: 0, waiters: 0, maxSize: 1, minIdle: 0 });
    t.match(pool.totals, { acquired: 3, refused: 0, callbackErrors: 1 });
    t.equal(dialer.open.length, 1, 'no socket leaked');
    t.match(
      lines.find((l) => l.msg === 'a waiter callback threw'),
      { level: 50, link: 1 },
    );
    t.same(caught, { rejections: [], exceptions: [] }, 'nothing escaped the pool');
  },
);

void t.test('a throwing callback for a refusal or a timeout does not escape either', async (t) => {
  const { pool, dialer } = makePool({ minIdle: 0, maxSize: 1, maxWaiters: 1, acquireTimeout: 30 });
  t.teardown(() => pool.destroy());
  const caught = escapes(t);
  dialer.manual = true;
  let calls = 0;
  const throwing = (): void => {
    calls++;
    throw new Error('a bug in session code');
  };
  pool.wait(throwing); // times out
  pool.wait(throwing); // refused: the queue is full
  await until(() => calls === 2, 1000, 'both called');
  t.match(pool.totals, { refused: 2, callbackErrors: 2 });
  t.equal(pool.stats().waiters, 0);
  t.same(caught, { rejections: [], exceptions: [] }, 'nothing escaped the pool');
});

void t.test(
  'links go out after the pool loop, and a waiter that leaves first gets none',
  async (t) => {
    const { pool } = makePool({ minIdle: 1, maxSize: 1 });
    t.teardown(() => pool.destroy());
    pool.start();
    await until(() => pool.isWarm);
    const held = pool.tryAcquire() as Link;
    let called = false;
    const waiter = pool.wait(() => (called = true));
    pool.release(held, true);
    t.equal(called, false, 'not called inside release()');
    waiter.cancel();
    await new Promise((r) => setImmediate(r));
    t.equal(called, false, 'never called after cancel()');
    t.match(pool.stats(), { idle: 1, active: 0, waiters: 0 }, 'the link it was given came back');
  },
);

void t.test(
  'a link handed out and destroyed before its waiter heard fails that waiter',
  async (t) => {
    const { pool } = makePool({ minIdle: 1, maxSize: 1 });
    pool.start();
    await until(() => pool.isWarm);
    const held = pool.tryAcquire() as Link;
    const queued = pool.acquire();
    pool.release(held, true);
    const destroyed = pool.destroy();
    await t.rejects(queued, { code: 'SIDEPOOL_POOL_CLOSED' });
    await destroyed;
    t.equal(held.state, 'closed');
  },
);
