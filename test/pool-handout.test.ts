import net from 'node:net';
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
  await until(() => pool.stats().idle === 2, 1000, 'replaced');
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
  await until(() => pool.stats().idle === 1, 2000, 'replaced');
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
