import { createClient } from 'redis';
import t from 'tap';
import { startRedis } from './helpers/redis.js';
import { RawClient, startRedisProxy } from './helpers/redis-mode.js';
import { until } from './helpers/util.js';

/** Settles within `ms` or says it hung. */
function within<T>(promise: Promise<T>, ms: number): Promise<{ value?: T; error?: string }> {
  return Promise.race([
    promise.then(
      (value) => ({ value }),
      (err: Error) => ({ error: err.message }),
    ),
    new Promise<{ error: string }>((resolve) =>
      setTimeout(() => resolve({ error: 'HUNG' }), ms).unref(),
    ),
  ]);
}

/** The id Redis gives the connection behind `client` (CLIENT INFO goes to its link). */
async function linkId(client: RawClient): Promise<string> {
  const [info] = await client.send('CLIENT INFO\r\n', 1);
  const id = /id=(\d+)/.exec(info ?? '')?.[1];
  if (id === undefined) throw new Error(`no id in ${info}`);
  return id;
}

void t.test(
  'redis-server killed and restarted mid-load: errors, not hangs; then recovery',
  async (t) => {
    let redis = await startRedis();
    const port = redis.port;
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, {
      minIdle: 1,
      maxSize: 4,
      acquireTimeout: 1000,
      connectTimeout: 500,
    });
    t.teardown(() => proxy.app.stop(100));

    const clients = await Promise.all(
      Array.from({ length: 10 }, async () => {
        const client = createClient({
          socket: { host: '127.0.0.1', port: proxy.port, reconnectStrategy: false },
        });
        client.on('error', () => {});
        await client.connect();
        return client;
      }),
    );
    t.teardown(() => Promise.all(clients.map((c) => c.quit().catch(() => {}))));

    let phase: 'before' | 'down' | 'after' = 'before';
    const outcomes = {
      before: { ok: 0, errors: [] as string[] },
      down: { ok: 0, errors: [] as string[] },
      after: { ok: 0, errors: [] as string[] },
    };
    let hung = 0;
    let running = true;
    const loops = clients.map(async (client, i) => {
      while (running) {
        const at = phase;
        const r = await within(client.incr(`c${i}`), 8000);
        if (r.error === 'HUNG') hung++;
        if (r.error === undefined) outcomes[at].ok++;
        else outcomes[at].errors.push(r.error);
        if (r.error !== undefined) await new Promise((res) => setTimeout(res, 20));
      }
    });
    await until(() => outcomes.before.ok > 200, 10_000, 'load running');
    // A command surely in flight when Redis dies: a BLPOP that Redis is seen to hold. The
    // INCR loops may have nothing on a link at that instant on a loaded machine (their next
    // commands still in the kernel's buffers), and then none of them is lost mid-flight.
    const blocker = createClient({
      socket: { host: '127.0.0.1', port: proxy.port, reconnectStrategy: false },
    });
    blocker.on('error', () => {});
    await blocker.connect();
    t.teardown(() => blocker.disconnect().catch(() => {}));
    const blpop = within(blocker.blPop('never-pushed', 0), 20_000);
    const direct = createClient({ socket: { host: '127.0.0.1', port } });
    direct.on('error', () => {});
    await direct.connect();
    await until(
      async () => /blocked_clients:1\r?\n/.test(await direct.info('clients')),
      10_000,
      'the BLPOP blocked in Redis',
    );
    await direct.disconnect();
    redis.process.kill('SIGKILL');
    await new Promise((r) => redis.process.once('exit', r));
    phase = 'down';
    await until(() => outcomes.down.errors.length >= 20, 10_000, 'errors while Redis is down');
    redis = await startRedis([], port);
    phase = 'after';
    await until(() => outcomes.after.ok > 200, 20_000, 'commands succeed again');
    running = false;
    await Promise.all(loops);
    t.equal(hung, 0, 'no command hung');
    t.ok(
      outcomes.down.errors.every((e) => /^ERR sidepool: .*\(SIDEPOOL_[A-Z_]+\)$/.test(e)),
      'each failure is a sidepool -ERR naming its cause',
    );
    t.match(
      outcomes.down.errors.join('\n'),
      /SIDEPOOL_LINK_CLOSED|SIDEPOOL_CONNECT_FAILED|SIDEPOOL_UPSTREAM_DOWN|SIDEPOOL_ACQUIRE_TIMEOUT/,
    );
    t.ok(
      clients.every((c) => c.isOpen),
      'every client kept its connection to sidepool',
    );
    const lost = await blpop;
    t.match(
      lost.error ?? '',
      /^ERR sidepool: .*\(SIDEPOOL_LINK_CLOSED\)$/,
      'the command in flight when its link was lost gets -ERR naming the loss',
    );
    t.ok(blocker.isOpen, 'and its client keeps its connection');
    const metrics = await proxy.app.metrics.render();
    t.match(metrics, /sidepool_redis_commands_total\{route="test",result="failed"\} [1-9]/);
  },
);

void t.test(
  'a shared link lost mid-flight: pending commands fail once, never run twice',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 2 });
    t.teardown(() => proxy.app.stop(100));
    const client = await RawClient.connect(proxy.port);
    t.teardown(() => client.close());
    const id = await linkId(client);
    // Many commands in flight, each on its own key, then the link is killed under them.
    const attempts = 3000;
    let script = '';
    for (let i = 0; i < attempts; i++) script += `INCR key:${i}\r\n`;
    client.socket.write(script);
    const killer = await RawClient.connect(redis.port);
    t.teardown(() => killer.close());
    await killer.send(`CLIENT KILL ID ${id}\r\n`, 1);
    const replies = await client.read(attempts);
    const ok = replies.filter((r) => r === ':1\r\n').length;
    const failed = replies.filter(
      (r) => r.startsWith('-ERR sidepool: ') && r.includes('SIDEPOOL_LINK_CLOSED'),
    );
    t.equal(
      ok + failed.length,
      attempts,
      `every command answered once (${ok} ok, ${failed.length} failed)`,
    );
    t.same(
      await client.send('PING\r\nSET after 1\r\n', 2),
      ['+PONG\r\n', '+OK\r\n'],
      'the client goes on',
    );
    const [values] = await killer.send(
      `MGET ${Array.from({ length: attempts }, (_, i) => `key:${i}`).join(' ')}\r\n`,
      1,
    );
    t.notMatch(values, /\$1\r\n2\r\n/, 'no command ran twice');
  },
);

void t.test(
  'a pinned transaction link lost: the transaction fails as Redis would fail it',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 3 });
    t.teardown(() => proxy.app.stop(100));
    const killer = await RawClient.connect(redis.port);
    t.teardown(() => killer.close());

    // WATCH lost: as if the watched key changed, EXEC runs nothing and answers nil.
    const watcher = await RawClient.connect(proxy.port);
    t.teardown(() => watcher.close());
    t.same(await watcher.send('WATCH w\r\nGET w\r\n', 2), ['+OK\r\n', '$-1\r\n']);
    await killer.send(`CLIENT KILL ID ${await linkId(watcher)}\r\n`, 1);
    await until(() => proxy.pool(0).stats().active <= 1, 5000, 'the pinned link gone');
    t.same(await watcher.send('MULTI\r\nSET w mine\r\nEXEC\r\nGET w\r\n', 4), [
      '+OK\r\n',
      '+QUEUED\r\n',
      '*-1\r\n',
      '$-1\r\n',
    ]);

    // MULTI lost: the rest of the transaction fails and EXEC is EXECABORT.
    const multi = await RawClient.connect(proxy.port);
    t.teardown(() => multi.close());
    t.same(await multi.send('MULTI\r\nSET m 1\r\n', 2), ['+OK\r\n', '+QUEUED\r\n']);
    // In MULTI, CLIENT INFO would be queued: the link is the one Redis lists with a command queued.
    const [list] = await killer.send('CLIENT LIST\r\n', 1);
    const inMulti = /id=(\d+) [^\n]* multi=1 /.exec(list ?? '')?.[1];
    t.ok(inMulti, 'the pinned link is in MULTI');
    await killer.send(`CLIENT KILL ID ${inMulti}\r\n`, 1);
    const after = await multi.send('SET m 2\r\nEXEC\r\nGET m\r\n', 3);
    t.match(after[0], /^-ERR sidepool: /, 'a command after the loss fails');
    t.equal(after[1], '-EXECABORT Transaction discarded because of previous errors.\r\n');
    t.equal(after[2], '$-1\r\n', 'nothing of it ran');
  },
);

void t.test(
  'no link within acquireTimeout: -ERR with the pool state, the client kept',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startRedisProxy(redis, { minIdle: 1, maxSize: 1, acquireTimeout: 300 });
    t.teardown(() => proxy.app.stop(100));
    const blocker = await RawClient.connect(proxy.port);
    t.teardown(() => blocker.close());
    blocker.socket.write('BLPOP q 1.5\r\n');
    await until(() => proxy.pool(0).stats().active === 1, 5000, 'the only link pinned');
    const other = await RawClient.connect(proxy.port);
    t.teardown(() => other.close());
    const [timeout] = await other.send('GET x\r\n', 1);
    t.match(
      timeout,
      /^-ERR sidepool: no link to test\/db0 within 300ms \(1 of 1 links in use, 0 idle, \d+ waiting\) \(SIDEPOOL_ACQUIRE_TIMEOUT\)\r\n$/,
    );
    t.same(await blocker.read(1), ['*-1\r\n']);
    t.same(
      await other.send('GET x\r\n', 1),
      ['$-1\r\n'],
      'the same client, served once a link is free',
    );
    const metrics = await proxy.app.metrics.render();
    t.match(metrics, /sidepool_redis_commands_total\{route="test",result="no_link"\} 1/);
  },
);
