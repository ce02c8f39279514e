import { Redis } from 'ioredis';
import { createClient } from 'redis';
import t from 'tap';
import { startRedis } from './helpers/redis.js';
import { RawClient, startRedisProxy, upstreamConnections } from './helpers/redis-mode.js';
import { until } from './helpers/util.js';

function ioredis(port: number): Redis {
  const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0 });
  client.on('error', () => {});
  return client;
}

void t.test(
  'transactions under concurrency: MULTI/EXEC and WATCH retries while others GET',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(
      redis,
      { minIdle: 2, maxSize: 8, acquireTimeout: 20_000 },
      { maxPending: 64 },
    );
    t.teardown(() => proxy.app.stop(100));

    const transactors = Array.from({ length: 50 }, () => ioredis(proxy.port));
    const readers = Array.from({ length: 10 }, () => ioredis(proxy.port));
    t.teardown(() => [...transactors, ...readers].forEach((c) => c.disconnect()));
    await Promise.all([...transactors, ...readers].map((c) => c.connect()));
    await readers[0]!.set('steady', 'yes');

    let peak = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        peak = Math.max(peak, await upstreamConnections(redis.port));
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    let reading = true;
    let reads = 0;
    let badReads = 0;
    const readLoops = readers.map(async (client) => {
      while (reading) {
        const v = await client.get('steady');
        reads++;
        if (v !== 'yes') badReads++;
      }
    });

    const rounds = 5;
    let retries = 0;
    await Promise.all(
      transactors.map(async (client, i) => {
        for (let r = 0; r < rounds; r++) {
          // MULTI/INCR/EXEC: atomic, two increments per transaction.
          const exec = await client.multi().incr('multi').incr('multi').exec();
          if (exec === null || exec.some(([err]) => err !== null)) throw new Error('EXEC failed');
          // WATCH, read, write in MULTI, retry while someone else wrote in between.
          for (;;) {
            await client.watch('watched');
            const value = Number((await client.get('watched')) ?? '0');
            const result = await client
              .multi()
              .set('watched', String(value + 1))
              .exec();
            if (result !== null) break;
            retries++;
          }
          await client.set(`own:${i}`, String(r));
        }
      }),
    );
    reading = false;
    await Promise.all(readLoops);
    sampling = false;
    await sampler;
    t.equal(
      await readers[0]!.get('multi'),
      String(50 * rounds * 2),
      'every MULTI/EXEC applied whole',
    );
    t.equal(await readers[0]!.get('watched'), String(50 * rounds), 'no lost WATCH update');
    t.ok(reads > 0 && badReads === 0, `readers went on meanwhile (${reads} reads)`);
    t.ok(peak <= 8, `Redis saw at most maxSize connections (peak ${peak}, ${retries} retries)`);
    const metrics = await proxy.app.metrics.render();
    t.match(metrics, /sidepool_redis_pins_total\{route="test",reason="transaction"\} [1-9]/);
    await until(() => proxy.pool(0).stats().active <= 2, 5000, 'pins back in the pool');
  },
);

void t.test(
  'BLPOP waiters, each on a link of its own, woken by LPUSH from another client',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 12 });
    t.teardown(() => proxy.app.stop(100));

    const waiters = Array.from({ length: 8 }, () => ioredis(proxy.port));
    const pusher = ioredis(proxy.port);
    t.teardown(() => [...waiters, pusher].forEach((c) => c.disconnect()));
    await Promise.all([...waiters, pusher].map((c) => c.connect()));
    const popped = waiters.map((c) => c.blpop('queue', 10));
    await until(
      () => [...proxy.mode.pools()].reduce((n, p) => n + p.stats().active, 0) >= 8,
      5000,
      'eight pinned links',
    );
    // The shared link still serves the others while eight clients block.
    t.equal(await pusher.set('meanwhile', 'ok'), 'OK');
    t.equal(await pusher.get('meanwhile'), 'ok');
    t.equal(await pusher.lpush('queue', ...Array.from({ length: 8 }, (_, i) => `job${i}`)), 8);
    const results = await Promise.all(popped);
    t.same(
      results.map((r) => r?.[1]).sort(),
      Array.from({ length: 8 }, (_, i) => `job${i}`).sort(),
      'every waiter woken with one job',
    );
    // A BLPOP that times out answers nil, then the link goes back.
    t.equal(await waiters[0]!.blpop('empty', 0.1), null);
    const raw = await RawClient.connect(proxy.port);
    t.teardown(() => raw.close());
    t.same(
      await raw.send('BLPOP nothing 0.05\r\nGET meanwhile\r\nXREAD BLOCK 50 STREAMS s $\r\n', 3),
      ['*-1\r\n', '$2\r\nok\r\n', '*-1\r\n'],
    );
    await until(() => proxy.pool(0).stats().active <= 1, 5000, 'blocking pins released');
    const metrics = await proxy.app.metrics.render();
    t.match(metrics, /sidepool_redis_pins_total\{route="test",reason="blocking"\} (9|1\d)/);
  },
);

void t.test('pub/sub fan-out: subscribers pinned, everyone else still shares', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 16 });
  t.teardown(() => proxy.app.stop(100));

  const received: string[][] = [];
  const subscribers = await Promise.all(
    Array.from({ length: 10 }, async (_, i) => {
      const client = createClient({ socket: { host: '127.0.0.1', port: proxy.port } });
      client.on('error', () => {});
      await client.connect();
      received[i] = [];
      await client.subscribe('news', (message) => received[i]!.push(message));
      await client.pSubscribe('n*', () => {});
      return client;
    }),
  );
  const others = await Promise.all(
    Array.from({ length: 30 }, async () => {
      const client = createClient({ socket: { host: '127.0.0.1', port: proxy.port } });
      client.on('error', () => {});
      await client.connect();
      return client;
    }),
  );
  t.teardown(() => Promise.all([...subscribers, ...others].map((c) => c.quit().catch(() => {}))));
  const publisher = others[0]!;
  for (let i = 0; i < 50; i++) {
    t.equal(await publisher.publish('news', `m${i}`), 20, 'ten subscribers, ten patterns');
    await Promise.all(others.map((c) => c.get('x')));
  }
  await until(() => received.every((r) => r.length === 50), 5000, 'every message delivered');
  t.ok(
    received.every((r) => r.every((m, i) => m === `m${i}`)),
    'each subscriber got them all, in order',
  );
  const connections = await upstreamConnections(redis.port);
  t.ok(connections <= 13, `10 subscribers + a few shared links (${connections}) for 40 clients`);
  // A subscriber unsubscribing stays pinned (the session's state) and can subscribe again.
  await subscribers[0]!.unsubscribe('news');
  t.equal(await publisher.publish('news', 'after'), 19);
  const metrics = await proxy.app.metrics.render();
  t.match(metrics, /sidepool_redis_pins_total\{route="test",reason="pubsub"\} 10/);
  t.match(metrics, /sidepool_redis_clients\{route="test",state="pinned"\} 10/);
  // Subscribers leave: their links are RESET and go back to the pool.
  await Promise.all(subscribers.map((c) => c.quit()));
  await until(
    () => proxy.pool(0).stats().active <= 3,
    5000,
    'subscribers links reset and returned',
  );
  t.equal(await publisher.publish('news', 'nobody'), 0, 'no link kept a subscription');
});

void t.test(
  'CLIENT REPLY, MONITOR, tracking and RESET: connection state on a link of its own',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 6 });
    t.teardown(() => proxy.app.stop(100));

    const quiet = await RawClient.connect(proxy.port);
    t.teardown(() => quiet.close());
    t.same(
      await quiet.send(
        'CLIENT REPLY OFF\r\nSET a 1\r\nINCR a\r\nCLIENT REPLY SKIP\r\nPING\r\nCLIENT REPLY ON\r\nGET a\r\n',
        2,
      ),
      ['+OK\r\n', '$1\r\n2\r\n'],
      'no replies while off, the next skipped',
    );
    t.same(await quiet.send('RESET\r\nCLIENT GETNAME\r\nGET a\r\n', 3), [
      '+RESET\r\n',
      '$-1\r\n',
      '$1\r\n2\r\n',
    ]);

    const monitor = await RawClient.connect(proxy.port);
    t.teardown(() => monitor.close());
    t.same(await monitor.send('MONITOR\r\n', 1), ['+OK\r\n']);
    const other = await RawClient.connect(proxy.port);
    t.teardown(() => other.close());
    await other.send('SET watched-by-monitor 1\r\n', 1);
    const [line] = await monitor.read(1);
    t.match(line, /"SET" "watched-by-monitor" "1"/, 'the monitor sees another client');

    const tracker = createClient({ socket: { host: '127.0.0.1', port: proxy.port }, RESP: 3 });
    tracker.on('error', () => {});
    await tracker.connect();
    t.teardown(() => tracker.quit().catch(() => {}));
    const invalidated: string[] = [];
    const raw3 = await RawClient.connect(proxy.port);
    t.teardown(() => raw3.close());
    await raw3.send('HELLO 3\r\n', 1);
    t.same(await raw3.send('CLIENT TRACKING ON\r\nGET tracked\r\n', 2), ['+OK\r\n', '_\r\n']);
    await other.send('SET tracked x\r\n', 1);
    const [push] = await raw3.read(1);
    invalidated.push(push ?? '');
    t.match(
      invalidated[0],
      /^>2\r\n\$10\r\ninvalidate\r\n\*1\r\n\$7\r\ntracked\r\n$/,
      'an invalidation push',
    );
    t.same(await raw3.send('GET tracked\r\n', 1), ['$1\r\nx\r\n'], 'replies still match commands');
    const metrics = await proxy.app.metrics.render();
    for (const reason of ['client_reply', 'monitor', 'tracking']) {
      t.match(
        metrics,
        new RegExp(`sidepool_redis_pins_total\\{route="test",reason="${reason}"\\} 1`),
      );
    }
    monitor.close();
    raw3.close();
    await until(() => proxy.pool(0).stats().active <= 1, 5000, 'pinned links returned');
    t.equal((await upstreamConnections(redis.port)) <= 6, true);
  },
);

void t.test('what sidepool sends a pinned link itself never reaches a subscriber', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 4 });
  t.teardown(() => proxy.app.stop(100));
  const publisher = await RawClient.connect(proxy.port);
  t.teardown(() => publisher.close());

  // A name set locally goes to the subscriber's link (CLIENT SETNAME, its +OK swallowed).
  const named = await RawClient.connect(proxy.port);
  t.teardown(() => named.close());
  t.same(await named.send('CLIENT SETNAME sub1\r\nSUBSCRIBE ch\r\n', 2), [
    '+OK\r\n',
    '*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n',
  ]);
  // A RESP3 client's link is switched with HELLO 3 (its map swallowed).
  const resp3 = await RawClient.connect(proxy.port);
  t.teardown(() => resp3.close());
  await resp3.send('HELLO 3\r\n', 1);
  t.same(await resp3.send('SUBSCRIBE ch\r\n', 1), ['>3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n']);
  t.same(await publisher.send('PUBLISH ch hello\r\n', 1), [':2\r\n']);
  t.same(await named.read(1), ['*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n']);
  t.same(await resp3.read(1), ['>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n']);
  t.same(await named.send('PING\r\n', 1), ['*2\r\n$4\r\npong\r\n$0\r\n\r\n'], 'nothing else came');
  t.same(await resp3.send('PING\r\n', 1), ['+PONG\r\n'], 'nothing else came');
  // The subscriber's name is on its link, where CLIENT GETNAME goes while pinned.
  t.same(await named.send('RESET\r\nCLIENT GETNAME\r\n', 2), ['+RESET\r\n', '$-1\r\n']);
});
