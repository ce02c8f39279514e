import { createClient } from 'redis';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { startRedis } from './helpers/redis.js';
import { until } from './helpers/util.js';

void t.test('a real redis client through the proxy to a real redis-server', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const proxy = await startProxy(`127.0.0.1:${redis.port}`, { minIdle: 4, maxSize: 32 });
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);

  const client = createClient({ socket: { host: '127.0.0.1', port: proxy.port } });
  client.on('error', () => {});
  await client.connect();
  t.equal(await client.ping(), 'PONG');
  await client.set('greeting', 'hello through sidepool');
  t.equal(await client.get('greeting'), 'hello through sidepool');
  const big = 'x'.repeat(4 * 1024 * 1024);
  await client.set('big', big);
  t.equal((await client.get('big'))?.length, big.length, '4 MiB value round trip');
  // Pipelined commands keep their order.
  const replies = await Promise.all(
    Array.from({ length: 500 }, (_, i) => client.incr('counter').then((v) => v - i)),
  );
  t.ok(
    replies.every((v) => v === 1),
    '500 pipelined INCRs answered in order',
  );
  await client.quit();
});

void t.test('many short redis sessions share the pool without leaking links', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const proxy = await startProxy(`127.0.0.1:${redis.port}`, {
    minIdle: 2,
    maxSize: 8,
    maxWaiters: 200,
  });
  t.teardown(() => proxy.app.stop(100));
  const sessions = Array.from({ length: 60 }, async (_, i) => {
    const client = createClient({
      socket: { host: '127.0.0.1', port: proxy.port, reconnectStrategy: false },
    });
    client.on('error', () => {});
    await client.connect();
    await client.set(`k${i}`, String(i));
    const v = await client.get(`k${i}`);
    await client.quit();
    return v;
  });
  const values = await Promise.all(sessions);
  t.same(
    values,
    Array.from({ length: 60 }, (_, i) => String(i)),
  );
  await until(() => proxy.route.activeSessions === 0 && proxy.pool.stats().active === 0);
  const stats = proxy.pool.stats();
  t.ok(stats.idle + stats.connecting <= 8, 'within maxSize');
});
