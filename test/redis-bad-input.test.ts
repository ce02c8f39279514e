import net from 'node:net';
import { Redis } from 'ioredis';
import t from 'tap';
import { startRedis } from './helpers/redis.js';
import { RawClient, command, startRedisProxy } from './helpers/redis-mode.js';
import { until } from './helpers/util.js';

/** A connection to Redis itself in MONITOR mode: every command Redis runs, as text. */
async function monitor(port: number): Promise<{ lines: string[]; close(): void }> {
  const client = await RawClient.connect(port);
  await client.send('MONITOR\r\n', 1);
  const lines: string[] = [];
  let open = true;
  void (async () => {
    while (open && !client.closed) {
      const got = await client.read(1, 60_000).catch(() => []);
      lines.push(...got);
    }
  })();
  return {
    lines,
    close() {
      open = false;
      client.close();
    },
  };
}

/** Clients that keep reading a key while a test misbehaves; `stop()` says how it went. */
function steadyClients(port: number, count: number) {
  const clients = Array.from(
    { length: count },
    () => new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0 }),
  );
  let running = true;
  let reads = 0;
  const failures: string[] = [];
  const loops = clients.map(async (client) => {
    client.on('error', () => {});
    await client.connect();
    while (running) {
      try {
        const v = await client.get('steady');
        if (v !== 'value') failures.push(`got ${v}`);
        reads++;
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      clients.forEach((c) => c.disconnect());
      return { reads, failures };
    },
  };
}

void t.test(
  'malformed RESP: -ERR, that client closed and counted, nothing sent, others unaffected',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 3 });
    t.teardown(() => proxy.app.stop(100));
    const setup = await RawClient.connect(proxy.port);
    await setup.send('SET steady value\r\n', 1);
    setup.close();
    const watch = await monitor(redis.port);
    t.teardown(() => watch.close());
    const steady = steadyClients(proxy.port, 5);

    const cases: Array<[string, Buffer, string]> = [
      [
        'a bad type byte',
        Buffer.from('*1\r\n:4\r\n'),
        "-ERR Protocol error: expected '$', got ':'\r\n",
      ],
      [
        'a negative bulk length',
        Buffer.from('*2\r\n$3\r\nGET\r\n$-5\r\n'),
        '-ERR Protocol error: invalid bulk length\r\n',
      ],
      [
        'a huge bulk length',
        Buffer.from('*2\r\n$3\r\nSET\r\n$99999999999\r\n'),
        '-ERR Protocol error: invalid bulk length\r\n',
      ],
      [
        'a huge multibulk length',
        Buffer.from('*9999999999\r\n'),
        '-ERR Protocol error: invalid multibulk length\r\n',
      ],
      [
        'an unterminated count line',
        Buffer.from(`*${'1'.repeat(100)}`),
        '-ERR Protocol error: invalid multibulk length\r\n',
      ],
      [
        'an inline line past 64 KiB',
        Buffer.alloc(70 * 1024, 'a'),
        '-ERR Protocol error: too big inline request\r\n',
      ],
      [
        'unbalanced quotes',
        Buffer.from('SET "never\r\n'),
        '-ERR Protocol error: unbalanced quotes in request\r\n',
      ],
      [
        'a command name of megabytes',
        Buffer.concat([
          Buffer.from('*1\r\n$5000000\r\n'),
          Buffer.alloc(5_000_000, 'A'),
          Buffer.from('\r\n'),
        ]),
        '-ERR Protocol error: command name longer than 1024 bytes\r\n',
      ],
    ];
    for (const [what, bytes, error] of cases) {
      const client = await RawClient.connect(proxy.port);
      // A good command first, then the bad one in the same write: the good one is answered.
      const replies = await client.send(Buffer.concat([command('SET', 'before', what), bytes]), 2);
      t.same(replies, ['+OK\r\n', error], what);
      await client.whenClosed();
      t.ok(client.closed, `${what}: that client is closed`);
    }
    const { reads, failures } = await steady.stop();
    t.same(failures, [], `the other clients went on (${reads} reads)`);
    const metrics = await proxy.app.metrics.render();
    t.match(
      metrics,
      new RegExp(
        `sidepool_redis_client_errors_total\\{route="test",reason="protocol_error"\\} ${cases.length}`,
      ),
    );
    t.match(
      metrics,
      new RegExp(
        `sidepool_redis_commands_total\\{route="test",result="refused"\\} ${cases.length}`,
      ),
    );
    await until(() => watch.lines.some((l) => l.includes('"command name')), 3000).catch(() => {});
    const seen = watch.lines.join('\n');
    t.notMatch(seen, /AAAA|never|"-5"|99999/, 'nothing of the bad commands reached Redis');
    t.match(seen, /"SET" "before" "a command name of megabytes"/, 'the good ones did');
  },
);

void t.test(
  'a client that never reads: bounded buffering, then closed; others unaffected',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 2 });
    t.teardown(() => proxy.app.stop(100));
    const setup = await RawClient.connect(proxy.port);
    await setup.send(
      Buffer.concat([
        command('SET', 'steady', 'value'),
        command('SET', 'blob', Buffer.alloc(256 * 1024, 'b')),
      ]),
      2,
    );
    setup.close();
    await until(() => proxy.route.activeSessions === 0, 20_000, 'the setup client gone');
    const steady = steadyClients(proxy.port, 4);
    await until(() => proxy.route.activeSessions === 4, 20_000, 'the steady clients in');

    // Asks for 64 MB of replies and reads none of them.
    const deaf = net.connect(proxy.port, '127.0.0.1');
    deaf.on('error', () => {});
    await new Promise((resolve) => deaf.once('connect', resolve));
    // The client's connect comes before the proxy has its session: on a loaded machine the
    // count below could read 4 before the deaf client was ever counted.
    await until(() => proxy.route.activeSessions === 5, 20_000, 'the deaf client has a session');
    deaf.pause();
    const ask = command('GET', 'blob');
    let asked = 0;
    // A paused socket does not see its peer close: the proxy's session count says.
    const gone = (): boolean => proxy.route.activeSessions === 4;
    for (let i = 0; i < 256 && !gone(); i++) {
      deaf.write(ask);
      asked++;
      if (i % 32 === 31) await new Promise((r) => setTimeout(r, 20));
    }
    await until(gone, 20_000, 'the client that does not read closed');
    deaf.destroy();
    const { reads, failures } = await steady.stop();
    t.same(failures, [], `the others went on meanwhile (${reads} reads)`);
    t.ok(asked > 0);
    const metrics = await proxy.app.metrics.render();
    t.match(metrics, /sidepool_redis_client_errors_total\{route="test",reason="slow_reader"\} 1/);
    t.ok(process.memoryUsage().rss < 1024 * 1024 * 1024, 'memory stayed bounded');
  },
);

void t.test(
  'a large command cut off or broken mid-way never runs, and its link is not reused',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 3 }, { maxBatchBytes: 4096 });
    t.teardown(() => proxy.app.stop(100));
    const big = Buffer.alloc(1_000_000, 'z');
    const whole = command('SET', 'cut', big);

    // The client leaves half-way through its command.
    const leaver = net.connect(proxy.port, '127.0.0.1');
    leaver.on('error', () => {});
    await new Promise((resolve) => leaver.once('connect', resolve));
    leaver.write(whole.subarray(0, 500_000));
    await until(
      () => proxy.pool(0).stats().active >= 1,
      5000,
      'a link taken for the large command',
    );
    leaver.destroy();

    // Another sends bytes that break the framing inside a large command.
    const breaker = await RawClient.connect(proxy.port);
    const broken = Buffer.concat([whole.subarray(0, whole.length - 2), Buffer.from('XX')]);
    t.same(await breaker.send(broken, 1), [
      '-ERR Protocol error: expected CRLF after bulk data\r\n',
    ]);
    await breaker.whenClosed();

    const check = await RawClient.connect(proxy.port);
    t.teardown(() => check.close());
    t.same(
      await check.send('EXISTS cut\r\nPING\r\n', 2),
      [':0\r\n', '+PONG\r\n'],
      'neither command ran',
    );
    await until(() => proxy.pool(0).stats().active <= 1, 5000, 'no link kept for them');
    // And a whole one works.
    t.same(await check.send(Buffer.concat([whole, command('STRLEN', 'cut')]), 2), [
      '+OK\r\n',
      ':1000000\r\n',
    ]);
  },
);
