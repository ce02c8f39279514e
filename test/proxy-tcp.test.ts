import { randomBytes } from 'node:crypto';
import net from 'node:net';
import t, { type Test } from 'tap';
import { startProxy } from './helpers/app.js';
import {
  connectAndWaitClose,
  roundTrip,
  sleep,
  startEcho,
  startServer,
  until,
} from './helpers/util.js';

void t.test('warm links exist before the first client connects', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 3 });
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);
  await until(() => upstream.accepted === 3);
  await sleep(20);
  t.equal(upstream.accepted, 3, 'three upstream connections and no client yet');
  const reply = await roundTrip(proxy.port, 'ping');
  t.equal(reply.toString(), 'ping');
  t.equal(upstream.accepted, 4, 'the client used a warm link; one replacement was dialed');
  t.ok(proxy.lines.some((l) => l.msg === 'route listening'));
  t.ok(proxy.lines.some((l) => l.msg === 'pool warm'));
});

void t.test('a link is never reused in tcp mode', async (t) => {
  // Each upstream connection announces its number, so the client sees which one it got.
  const upstream = await startServer((socket, index) => {
    socket.once('data', () => socket.end(`conn-${index}`));
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 2 });
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);
  const seen = new Set<string>();
  for (let i = 0; i < 10; i++) seen.add((await roundTrip(proxy.port, 'which?')).toString());
  t.equal(seen.size, 10, `ten sessions used ten distinct links: ${[...seen].join(' ')}`);
});

void t.test('many concurrent sessions, each echoed exactly', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 4, maxSize: 16, maxWaiters: 500 });
  t.teardown(() => proxy.app.stop(100));
  const replies = await Promise.all(
    Array.from({ length: 200 }, (_, i) => roundTrip(proxy.port, `message ${i} `.repeat(100))),
  );
  replies.forEach((reply, i) => {
    if (reply.toString() !== `message ${i} `.repeat(100))
      t.fail(`session ${i} got the wrong bytes`);
  });
  t.pass('200 sessions through a pool of at most 16 links');
  t.ok(upstream.accepted <= 200 + 4, 'no more upstream connections than sessions plus minIdle');
});

void t.test('the upstream closing idle links: no client is handed a dead link', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 4 });
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);
  for (const c of upstream.connections) c.destroy();
  // No wait: clients arrive while the pool is noticing and redialing.
  const replies = await Promise.all(
    Array.from({ length: 8 }, (_, i) => roundTrip(proxy.port, `x${i}`)),
  );
  t.same(
    replies.map(String),
    Array.from({ length: 8 }, (_, i) => `x${i}`),
  );
  t.ok(proxy.lines.some((l) => /link lost/.test(String(l.msg))));
});

void t.test(
  'an unreachable upstream: clients fail fast, it is logged, the pool keeps retrying',
  async (t) => {
    const dead = await startEcho();
    const port = dead.port;
    await dead.close();
    // A long acquireTimeout: failing fast is then plainly not waiting for it.
    const proxy = await startProxy(`127.0.0.1:${port}`, { minIdle: 1, acquireTimeout: '60s' });
    t.teardown(() => proxy.app.stop(100));
    await until(() => proxy.lines.some((l) => l.msg === 'dial failed'));
    const result = await connectAndWaitClose(proxy.port);
    t.ok(result.ms < 30_000, `closed at once, not after acquireTimeout (${result.ms}ms)`);
    t.ok(
      proxy.lines.some(
        (l) =>
          l.msg === 'dial failed' &&
          l.code === 'SIDEPOOL_CONNECT_FAILED' &&
          l.cause === 'ECONNREFUSED',
      ),
    );
    t.ok(
      proxy.lines.some(
        (l) => l.msg === 'downstream closed without a link' && l.code === 'SIDEPOOL_UPSTREAM_DOWN',
      ),
    );
    // The upstream comes back on the same port: the pool's retries find it.
    const back = await startServer((socket) => socket.pipe(socket), port);
    t.teardown(() => back.close());
    await until(() => proxy.pool.isWarm, 5000, 'warm again');
    t.equal((await roundTrip(proxy.port, 'back')).toString(), 'back');
  },
);

void t.test('a downstream queued past acquireTimeout is closed, and it is logged', async (t) => {
  const upstream = await startServer(() => {}); // holds every connection open
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0, maxSize: 1, acquireTimeout: 200 });
  t.teardown(() => proxy.app.stop(100));
  const holder = net.connect(proxy.port, '127.0.0.1');
  holder.on('error', () => {});
  await until(() => proxy.pool.stats().active === 1);
  const result = await connectAndWaitClose(proxy.port);
  // Not before the timeout (timers never fire early); after it, however late the machine runs.
  t.ok(result.ms >= 180 && result.ms < 30_000, `closed after the acquire timeout (${result.ms}ms)`);
  t.ok(
    proxy.lines.some(
      (l) => l.msg === 'downstream closed without a link' && l.code === 'SIDEPOOL_ACQUIRE_TIMEOUT',
    ),
  );
  holder.destroy();
});

void t.test('a full queue closes new downstreams at once', async (t) => {
  const upstream = await startServer(() => {}); // holds every connection open
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, {
    minIdle: 0,
    maxSize: 1,
    maxWaiters: 1,
    acquireTimeout: '60s',
  });
  t.teardown(() => proxy.app.stop(100));
  const holder = net.connect(proxy.port, '127.0.0.1');
  holder.on('error', () => {});
  await until(() => proxy.pool.stats().active === 1);
  const queued = net.connect(proxy.port, '127.0.0.1');
  queued.on('error', () => {});
  await until(() => proxy.pool.stats().waiters === 1);
  const refused = await connectAndWaitClose(proxy.port);
  t.ok(refused.ms < 30_000, `refused at once, not after acquireTimeout (${refused.ms} ms)`);
  t.ok(proxy.lines.some((l) => l.code === 'SIDEPOOL_POOL_OVERFLOW'));
  // The queued downstream leaves: it leaves the queue.
  queued.resetAndDestroy();
  await until(() => proxy.pool.stats().waiters === 0, 2000, 'the waiter left');
  holder.destroy();
});

/** A proxy to an echo server with one link, held by `holder`: the next downstream queues. */
async function oneLinkHeld(t: Test) {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0, maxSize: 1 });
  t.teardown(() => proxy.app.stop(100));
  const holder = net.connect(proxy.port, '127.0.0.1');
  await until(() => proxy.pool.stats().active === 1);
  return { proxy, holder };
}

void t.test(
  'a queued downstream that half-closes gets its request through when a link comes',
  async (t) => {
    const { proxy, holder } = await oneLinkHeld(t);
    const queued = roundTrip(proxy.port, 'early bytes');
    await until(() => proxy.pool.stats().waiters === 1);
    await sleep(20);
    holder.end();
    holder.resume();
    t.equal((await queued).toString(), 'early bytes');
  },
);

void t.test(
  'what a queued downstream sends in many reads of mixed sizes reaches the upstream intact',
  async (t) => {
    const { proxy, holder } = await oneLinkHeld(t);
    // The queued session keeps each chunk it reads until a link comes; the proxy reads
    // small ones into a shared buffer and large ones into a buffer of the socket's own.
    const client = net.connect(proxy.port, '127.0.0.1');
    const echoed: Buffer[] = [];
    client.on('data', (c: Buffer) => echoed.push(c));
    await until(() => proxy.pool.stats().waiters === 1);
    const sent: Buffer[] = [];
    for (const size of [7, 20_000, 3, 3, 3, 30_000, 5]) {
      const chunk = randomBytes(size);
      sent.push(chunk);
      client.write(chunk);
      await sleep(5);
    }
    holder.end();
    holder.resume();
    const expected = Buffer.concat(sent);
    await until(() => Buffer.concat(echoed).length >= expected.length);
    t.ok(Buffer.concat(echoed).equals(expected), 'echoed byte for byte');
    client.destroy();
  },
);

void t.test('bytes the upstream sends first (a greeting) reach the client', async (t) => {
  const upstream = await startServer((socket) => {
    socket.write('220 hello\r\n');
    socket.pipe(socket);
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 2 });
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);
  await sleep(20);
  t.equal((await roundTrip(proxy.port, 'QUIT\r\n')).toString(), '220 hello\r\nQUIT\r\n');
});

void t.test('garbage, resets and vanishing peers never take the process down', async (t) => {
  let n = 0;
  const upstream = await startServer((socket) => {
    const kind = n++ % 3;
    socket.on('data', () => {
      if (kind === 0) socket.resetAndDestroy();
      else if (kind === 1) socket.destroy();
      else socket.write(Buffer.from([0, 255, 13, 10, 0]));
    });
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 4, maxSize: 32, maxWaiters: 1000 },
    { halfCloseTimeout: '300ms' },
  );
  t.teardown(() => proxy.app.stop(100));
  const clients = Array.from(
    { length: 100 },
    (_, i) =>
      new Promise<void>((resolve) => {
        const socket = net.connect(proxy.port, '127.0.0.1', () => {
          socket.write(Buffer.from([i, 0, 0xff, 0xfe]));
          if (i % 4 === 0) socket.resetAndDestroy();
          else if (i % 4 === 1) socket.destroy();
        });
        socket.on('error', () => {});
        socket.on('data', () => socket.end());
        socket.on('close', () => resolve());
        setTimeout(() => socket.destroy(), 1000);
      }),
  );
  await Promise.all(clients);
  await until(() => proxy.route.activeSessions === 0, 3000, 'every session ended');
  t.equal((await roundTrip(proxy.port, 'still ok')).length >= 0, true, 'the proxy still serves');
  // The app may see the end of its session a moment before both of its sockets close.
  await until(() => proxy.pool.stats().active === 0, 3000, 'no link leaked');
  t.equal(proxy.pool.stats().active, 0, 'no link leaked');
});

void t.test('stop() lets active sessions finish, then closes', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 1 });
  const client = net.connect(proxy.port, '127.0.0.1');
  client.on('error', () => {});
  await until(() => proxy.route.activeSessions === 1);
  let stopped = false;
  const stopping = proxy.app.stop(5000).then(() => (stopped = true));
  await sleep(50);
  t.equal(stopped, false, 'waits for the active session');
  const refused = await connectAndWaitClose(proxy.port);
  t.equal(refused.error, 'ECONNREFUSED', 'no new connections once draining');
  const echoed = new Promise<string>((resolve) =>
    client.once('data', (c: Buffer) => resolve(c.toString())),
  );
  client.write('still here');
  t.equal(await echoed, 'still here', 'the active session still works');
  client.end();
  await stopping;
  t.equal(stopped, true);
});

void t.test('stop() ends sessions that outlive the drain timeout', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 1 });
  const client = net.connect(proxy.port, '127.0.0.1');
  client.on('error', () => {});
  client.resume();
  await until(() => proxy.route.activeSessions === 1);
  const closed = new Promise<void>((resolve) => client.once('end', () => resolve()));
  await proxy.app.stop(50);
  await closed;
  t.ok(proxy.lines.some((l) => l.msg === 'drain timeout: ending the remaining sessions'));
  client.destroy();
});

void t.test(
  'an upstream that closes every link at once is not redialed in a hot loop',
  async (t) => {
    const upstream = await startServer((socket) => socket.destroy());
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 4 });
    t.teardown(() => proxy.app.stop(100));
    await sleep(400);
    t.ok(upstream.accepted < 20, `backed off: ${upstream.accepted} connections in 400ms`);
    t.ok(proxy.lines.some((l) => l.msg === 'link lost right after its dial'));
  },
);
