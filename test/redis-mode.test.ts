import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { Redis } from 'ioredis';
import { createClient } from 'redis';
import t from 'tap';
import type { RedisMode } from '../src/proxy/redis/mode.js';
import { TestPki } from './helpers/certs.js';
import { metric, parseMetrics } from './helpers/http.js';
import { startRedis } from './helpers/redis.js';
import {
  RawClient,
  command,
  redisCli,
  startRedisProxy,
  upstreamConnections,
} from './helpers/redis-mode.js';
import { until } from './helpers/util.js';

void t.test(
  'many clients interleave on a few links, each getting its replies in order',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 3 }, { maxPending: 64 });
    t.teardown(() => proxy.app.stop(100));

    const clients = await Promise.all(
      Array.from({ length: 40 }, async () => {
        const client = createClient({ socket: { host: '127.0.0.1', port: proxy.port } });
        client.on('error', () => {});
        await client.connect();
        return client;
      }),
    );
    t.teardown(() => Promise.all(clients.map((c) => c.quit().catch(() => {}))));

    let peak = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        peak = Math.max(peak, await upstreamConnections(redis.port));
        await new Promise((r) => setTimeout(r, 20));
      }
    })();

    // Each client pipelines INCRs of its own counter and reads of a shared key between
    // them: every reply must be its own, in its order.
    await clients[0]?.set('shared', 'value');
    const results = await Promise.all(
      clients.map(async (client, c) => {
        const replies = await Promise.all(
          Array.from({ length: 150 }, (_, i) =>
            i % 3 === 2 ? client.get('shared') : client.incr(`counter:${c}`),
          ),
        );
        let expected = 0;
        return replies.every((reply, i) =>
          i % 3 === 2 ? reply === 'value' : reply === ++expected,
        );
      }),
    );
    sampling = false;
    await sampler;
    t.ok(results.every(Boolean), 'every client got its own replies, in order');
    t.ok(peak <= 3, `Redis saw at most maxSize connections (peak ${peak})`);
    const stats = proxy.pool(0).stats();
    t.ok(stats.idle + stats.active + stats.connecting <= 3, 'the pool stayed within maxSize');
    const metrics = await proxy.app.metrics.render();
    t.match(metrics, /sidepool_redis_commands_total\{route="test",result="ok"\} [1-9]/);
    t.match(metrics, /sidepool_redis_batch_commands_bucket\{pool="test\/db0",le="\+Inf"\} [1-9]/);
    t.match(metrics, /sidepool_redis_clients\{route="test",state="shared"\} 40/);
  },
);

/** The count and sum of the route's batch histogram (commands per upstream write). */
async function batches(proxy: { app: { metrics: { render(): Promise<string> } } }) {
  const metrics = parseMetrics(await proxy.app.metrics.render());
  const pool = { pool: 'test/db0' };
  return {
    writes: metric(metrics, 'sidepool_redis_batch_commands_count', pool) ?? NaN,
    commands: metric(metrics, 'sidepool_redis_batch_commands_sum', pool) ?? NaN,
  };
}

void t.test(
  'in a busy event loop, commands that come in turns in a row leave in one upstream write',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 2, maxSize: 4 });
    t.teardown(() => proxy.app.stop(100));
    const clients = await Promise.all(
      Array.from({ length: 16 }, () => RawClient.connect(proxy.port)),
    );
    t.teardown(() => clients.forEach((c) => c.close()));
    for (const client of clients) t.same(await client.send(command('GET', 'none'), 1), ['$-1\r\n']);

    // The loop never waits for I/O while something is queued with setImmediate: it is as
    // busy as a saturated one. One client per turn sends a command, as clients that open a
    // connection per request do when sidepool's thread is saturated.
    const before = await batches(proxy);
    let spinning = true;
    const spin = (): void => {
      if (spinning) setImmediate(spin);
    };
    spin();
    for (const [i, client] of clients.entries()) {
      client.socket.write(command('SET', `turn:${i}`, String(i)));
      await new Promise((resolve) => setImmediate(resolve));
    }
    const replies = await Promise.all(clients.map((c) => c.read(1)));
    spinning = false;
    t.ok(
      replies.every((r) => r[0] === '+OK\r\n'),
      'every client got its reply',
    );
    const after = await batches(proxy);
    t.equal(after.commands - before.commands, 16, 'the 16 commands went upstream');
    // Held while it grows, for at most 8 turns: 16 turns make 2 or 3 writes (one per
    // command without holding).
    const writes = after.writes - before.writes;
    t.ok(writes >= 2 && writes <= 3, `16 commands in ${writes} upstream writes`);
    const check = await RawClient.connect(redis.port);
    t.teardown(() => check.close());
    t.same(await check.send(command('GET', 'turn:15'), 1), ['$2\r\n15\r\n']);
  },
);

void t.test('ioredis with auto-pipelining, and redis-cli, through sidepool', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 2 });
  t.teardown(() => proxy.app.stop(100));

  const clients = Array.from(
    { length: 10 },
    () =>
      new Redis({
        host: '127.0.0.1',
        port: proxy.port,
        enableAutoPipelining: true,
        lazyConnect: true,
        maxRetriesPerRequest: 0,
      }),
  );
  t.teardown(() => clients.forEach((c) => c.disconnect()));
  await Promise.all(clients.map((c) => c.connect()));
  const ok = await Promise.all(
    clients.map(async (client, c) => {
      await Promise.all(
        Array.from({ length: 100 }, (_, i) => client.set(`io:${c}:${i}`, `${c}-${i}`)),
      );
      const values = await Promise.all(
        Array.from({ length: 100 }, (_, i) => client.get(`io:${c}:${i}`)),
      );
      return values.every((v, i) => v === `${c}-${i}`);
    }),
  );
  t.ok(ok.every(Boolean), 'auto-pipelined GETs and SETs all answered right');
  const [a, b] = clients;
  const pipeline = await a!.pipeline().set('p', '1').incr('p').get('p').exec();
  t.same(pipeline, [
    [null, 'OK'],
    [null, 2],
    [null, '2'],
  ]);
  t.equal(await b!.get('p'), '2');

  const cli = (...args: string[]): Promise<string> => redisCli(proxy.port, ...args);
  t.equal(await cli('PING'), 'PONG');
  t.equal(await cli('SET', 'cli', 'works'), 'OK');
  t.equal(await cli('GET', 'cli'), 'works');
  t.equal(await cli('-n', '3', 'SET', 'cli3', 'three'), 'OK');
  t.equal(await cli('-n', '3', 'GET', 'cli3'), 'three');
  t.equal(await cli('GET', 'cli3'), '', 'db 0 does not see db 3');
});

void t.test('10 MB values both ways, on the shared path and with large commands', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 3 });
  t.teardown(() => proxy.app.stop(100));

  const client = new Redis({ host: '127.0.0.1', port: proxy.port, lazyConnect: true });
  t.teardown(() => client.disconnect());
  await client.connect();
  const big = Buffer.alloc(10 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 4096) big.writeUInt32BE(i, i);
  // Another client keeps the shared link busy meanwhile.
  const other = new Redis({ host: '127.0.0.1', port: proxy.port, lazyConnect: true });
  t.teardown(() => other.disconnect());
  await other.connect();
  const busy = Promise.all(Array.from({ length: 200 }, (_, i) => other.set(`k${i}`, String(i))));
  t.equal(await client.set('big', big), 'OK');
  const back = await client.getBuffer('big');
  t.ok(back?.equals(big), '10 MB value came back intact');
  t.equal((await busy).length, 200);
  const twice = await Promise.all([client.getBuffer('big'), other.get('k7'), client.strlen('big')]);
  t.ok(twice[0]?.equals(big));
  t.equal(twice[1], '7');
  t.equal(twice[2], big.length);
  const metrics = await proxy.app.metrics.render();
  t.match(metrics, /sidepool_redis_pins_total\{route="test",reason="large_command"\} [1-9]/);
  // The large command's link went back to the pool once answered.
  await until(() => proxy.pool(0).stats().active <= 1, 5000, 'pins released');
});

void t.test('SELECT moves a client to its database, isolated from the others', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 2 });
  t.teardown(() => proxy.app.stop(100));

  const make = async (database: number) => {
    const client = createClient({ socket: { host: '127.0.0.1', port: proxy.port }, database });
    client.on('error', () => {});
    await client.connect();
    return client;
  };
  const [c0, c1, c2] = await Promise.all([make(0), make(1), make(2)]);
  t.teardown(() => Promise.all([c0, c1, c2].map((c) => c.quit().catch(() => {}))));
  await Promise.all([c0.set('k', 'zero'), c1.set('k', 'one'), c2.set('k', 'two')]);
  const values = await Promise.all(
    Array.from({ length: 30 }, (_, i) => [c0, c1, c2][i % 3]!.get('k')),
  );
  t.same(
    values,
    Array.from({ length: 30 }, (_, i) => ['zero', 'one', 'two'][i % 3]),
  );
  const direct = await RawClient.connect(redis.port);
  t.teardown(() => direct.close());
  t.same(await direct.send('SELECT 1\r\nGET k\r\nSELECT 2\r\nGET k\r\n', 4), [
    '+OK\r\n',
    '$3\r\none\r\n',
    '+OK\r\n',
    '$3\r\ntwo\r\n',
  ]);
  // One client moving between databases, pipelined.
  const raw = await RawClient.connect(proxy.port);
  t.teardown(() => raw.close());
  t.same(
    await raw.send('GET k\r\nSELECT 2\r\nGET k\r\nSELECT 1\r\nGET k\r\nSELECT 0\r\nGET k\r\n', 7),
    [
      '$4\r\nzero\r\n',
      '+OK\r\n',
      '$3\r\ntwo\r\n',
      '+OK\r\n',
      '$3\r\none\r\n',
      '+OK\r\n',
      '$4\r\nzero\r\n',
    ],
  );
  // A database Redis does not have: Redis's own answer, and the client stays where it was.
  t.same(await raw.send('SELECT 16\r\nGET k\r\nSELECT 99\r\n', 3), [
    '-ERR DB index is out of range\r\n',
    '$4\r\nzero\r\n',
    '-ERR DB index is out of range\r\n',
  ]);
  t.ok(
    [...proxy.mode.pools()].every((p) => !p.name.endsWith('/db16')),
    'the refused database has no pool',
  );
  const view = proxy.app.poolsView() as Array<Record<string, unknown>>;
  t.ok(view.some((p) => p.pool === 'test/db1' && p.database === 1));
});

void t.test('RESP3 clients (HELLO 3) share links switched to RESP3', async (t) => {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 3 });
  t.teardown(() => proxy.app.stop(100));

  const clients = await Promise.all(
    Array.from({ length: 8 }, async () => {
      const client = createClient({ socket: { host: '127.0.0.1', port: proxy.port }, RESP: 3 });
      client.on('error', () => {});
      await client.connect();
      return client;
    }),
  );
  t.teardown(() => Promise.all(clients.map((c) => c.quit().catch(() => {}))));
  await clients[0]!.hSet('h', { a: '1', b: '2' });
  const maps = await Promise.all(clients.map((c) => c.hGetAll('h')));
  t.ok(
    maps.every((m) => m.a === '1' && m.b === '2'),
    'RESP3 maps for every client',
  );
  t.equal(await clients[1]!.ping(), 'PONG');

  const raw = await RawClient.connect(proxy.port);
  t.teardown(() => raw.close());
  const [hello] = await raw.send('HELLO 3\r\n', 1);
  t.match(hello, /^%7\r\n/, 'a RESP3 map');
  t.match(hello, /proto\r\n:3\r\n/);
  t.same(await raw.send('HGETALL h\r\nGET nothing\r\nCLIENT GETNAME\r\nUNSUBSCRIBE\r\n', 4), [
    '%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n',
    '_\r\n',
    '_\r\n',
    '>3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n',
  ]);
  const metrics = await proxy.app.metrics.render();
  t.match(metrics, /sidepool_redis_clients\{route="test",state="shared"\} 9/, 'no pins');
  t.ok((await upstreamConnections(redis.port)) <= 3, 'within maxSize');
  // RESET: RESP2 again, on the RESP2 links.
  t.same(await raw.send('RESET\r\nGET nothing\r\nHELLO 2\r\n', 3).then((r) => r.slice(0, 2)), [
    '+RESET\r\n',
    '$-1\r\n',
  ]);
  // Quiet RESP3 links go back to the pool switched to RESP2 again.
  await Promise.all(clients.map((c) => c.quit().catch(() => {})));
  await until(() => proxy.pool(0).stats().active === 0, 5000, 'shared links returned');
  const plain = await RawClient.connect(proxy.port);
  t.teardown(() => plain.close());
  t.same(await plain.send('HGETALL h\r\n', 1), [
    '*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n',
  ]);
});

/**
 * Sends `bytes` and its FIN at once, the way a connection-per-request client does; resolves
 * with everything read back and how the connection ended. `hold` keeps the socket from
 * reading until it resolves: the replies pile up on the other side first.
 */
function sendThenFin(
  port: number,
  bytes: Buffer,
  hold?: () => Promise<void>,
): Promise<{ data: Buffer; ended: boolean; error: string | undefined }> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let ended = false;
    let error: string | undefined;
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => (ended = true));
    socket.on('error', (err: NodeJS.ErrnoException) => (error = err.code ?? err.message));
    socket.on('close', () => resolve({ data: Buffer.concat(chunks), ended, error }));
    socket.on('connect', () => {
      if (hold !== undefined) {
        socket.pause();
        void hold().then(() => socket.resume());
      }
      socket.end(bytes);
    });
  });
}

void t.test(
  'a client that sends its commands and its FIN at once gets every reply, then a clean end',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 2 });
    t.teardown(() => proxy.app.stop(100));
    const big = Buffer.alloc(16 * 1024 * 1024, 'v');
    await redisCli(redis.port, 'SET', 'fin:n', '0');
    const script = (tag: string) =>
      Buffer.concat([
        ...Array.from({ length: 50 }, (_, i) =>
          i % 2 === 0 ? command('INCR', `fin:${tag}`) : command('GET', 'fin:n'),
        ),
      ]);
    // Direct, the oracle; then through sidepool, replies written at once (the kernel takes
    // them) and replies that wait in sidepool for a client that does not read yet.
    for (const tag of ['direct', 'proxy']) {
      const port = tag === 'direct' ? redis.port : proxy.port;
      const got = await sendThenFin(port, script(tag));
      t.equal(got.error, undefined, `${tag}: no error`);
      t.ok(got.ended, `${tag}: the connection ended with a FIN`);
      t.equal(
        got.data.toString('latin1'),
        Array.from({ length: 50 }, (_, i) =>
          i % 2 === 0 ? `:${i / 2 + 1}\r\n` : '$1\r\n0\r\n',
        ).join(''),
        `${tag}: every reply, in order`,
      );
    }
    const setBig = await RawClient.connect(proxy.port);
    t.same(await setBig.send(command('SET', 'fin:big', big), 1), ['+OK\r\n']);
    setBig.close();
    const sessions = (proxy.mode as RedisMode).sessions;
    const session = () => [...sessions][0];
    const held = await sendThenFin(
      proxy.port,
      Buffer.concat([command('GET', 'fin:big'), command('GET', 'fin:n')]),
      // Until every reply is in sidepool's hands and it is closing: the replies it still
      // holds must go out before its FIN (or, gone at once, fail the checks below).
      () =>
        until(() => {
          const s = session();
          return s === undefined || (s.phase === 'closing' && s.socket.writableLength > 0);
        }, 10_000),
    );
    t.equal(held.error, undefined, 'held: no error');
    t.ok(held.ended, 'held: the connection ended with a FIN');
    t.equal(held.data.length, `$${big.length}\r\n`.length + big.length + 2 + '$1\r\n0\r\n'.length);
    t.ok(
      held.data.subarray(held.data.length - 7).equals(Buffer.from('$1\r\n0\r\n')),
      'held: the last reply last',
    );
    await until(() => sessions.size === 0, 10_000);
  },
);

void t.test(
  'over TLS, a client that ends after its replies gets close_notify before the FIN',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const pki = await TestPki.create();
    t.teardown(() => pki.remove());
    const ca = await pki.ca('redis-ca');
    const cert = await ca.issue('sidepool.local', { ips: ['127.0.0.1'] });
    const proxy = await startRedisProxy(
      redis,
      { minIdle: 1, maxSize: 2 },
      {},
      { admin: false },
      { tls: { cert: cert.cert, key: cert.key } },
    );
    t.teardown(() => proxy.app.stop(100));
    // A relay between client and sidepool keeps what sidepool sends, to read its TLS
    // records: TLS 1.2 names each record's type in the clear.
    const fromProxy: Buffer[] = [];
    const relay = net.createServer({ allowHalfOpen: true }, (client) => {
      const up = net.connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true });
      for (const s of [client, up]) s.on('error', () => {});
      up.on('data', (d: Buffer) => fromProxy.push(d));
      client.pipe(up);
      up.pipe(client);
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    t.teardown(() => relay.close());
    const relayPort = (relay.address() as net.AddressInfo).port;
    const got = await new Promise<{ data: string; error: string | undefined }>((resolve) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port: relayPort,
        ca: readFileSync(ca.cert),
        maxVersion: 'TLSv1.2',
      });
      const chunks: Buffer[] = [];
      let error: string | undefined;
      // The FIN comes once the replies are in: sidepool has nothing left to write then.
      socket.on('data', (d: Buffer) => {
        chunks.push(d);
        if (Buffer.concat(chunks).toString('latin1').endsWith('$1\r\nv\r\n')) socket.end();
      });
      socket.on('error', (err: NodeJS.ErrnoException) => (error = err.code ?? err.message));
      socket.on('close', () => resolve({ data: Buffer.concat(chunks).toString('latin1'), error }));
      socket.on('secureConnect', () =>
        socket.write(Buffer.concat([command('SET', 'tls:k', 'v'), command('GET', 'tls:k')])),
      );
    });
    t.equal(got.error, undefined, 'no error');
    t.equal(got.data, '+OK\r\n$1\r\nv\r\n', 'every reply');
    const types: number[] = [];
    const bytes = Buffer.concat(fromProxy);
    for (let at = 0; at + 5 <= bytes.length; at += 5 + bytes.readUInt16BE(at + 3)) {
      types.push(bytes[at] as number);
    }
    t.equal(types.at(-1), 21, 'the last record sidepool sent is an alert: close_notify');
  },
);
