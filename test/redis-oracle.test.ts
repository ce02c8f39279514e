import t from 'tap';
import { startRedis } from './helpers/redis.js';
import { RawClient, command, startRedisProxy } from './helpers/redis-mode.js';

/**
 * redis-server is the oracle: each script runs on one connection straight to a fresh
 * redis-server and through sidepool to another, fresh and identical; the replies must be
 * the same bytes. Scripts go both one command at a time and pipelined in one write. A
 * line with ` #N` has N replies rather than one.
 */
const scripts: Record<string, string[]> = {
  strings: [
    'SET k v',
    'GET k',
    'APPEND k 123',
    'STRLEN k',
    'GETRANGE k 1 3',
    'INCR n',
    'INCRBY n 41',
    'INCR k',
    'MSET a 1 b 2',
    'MGET a b missing',
    'DEL a b missing',
    'EXISTS k a',
    'SET k v2 NX',
    'SET k v3 XX GET',
    'GETDEL k',
    'GET k',
  ],
  errors: [
    'NOSUCHCOMMAND a b',
    'GET',
    'GET a b',
    'SET k',
    'LPUSH l x',
    'SET s str',
    'LPUSH s x',
    'HGET s f',
    'INCR s',
    'EXPIRE s notanumber',
    'SET k v EX -1',
    'ZADD z notascore m',
    'OBJECT ENCODING missing',
  ],
  inline: [
    'ECHO "a b"',
    "ECHO 'it\\'s'",
    'ECHO "\\x41\\x42\\n"',
    'SET inline value',
    'GET inline',
    'ECHO a"b c"',
  ],
  collections: [
    'HSET h f1 1 f2 2',
    'HGETALL h',
    'HINCRBY h f1 5',
    'RPUSH l 1 2 3 4',
    'LRANGE l 0 -1',
    'LPOP l 2',
    'SADD s1 a b c',
    'SISMEMBER s1 b',
    'SCARD s1',
    'ZADD z 1 one 2 two 3 three',
    'ZRANGE z 0 -1 WITHSCORES',
    'ZSCORE z two',
    'XADD st 1-1 f v',
    'XRANGE st - +',
    'EVAL "return {1, \'two\', {3}}" 0',
    'EVAL "return redis.error_reply(\'custom\')" 0',
  ],
  transactions: [
    'MULTI',
    'SET t 1',
    'INCR t',
    'EXEC',
    'MULTI',
    'SET t 5',
    'DISCARD',
    'GET t',
    'EXEC',
    'DISCARD',
    'MULTI',
    'MULTI',
    'GET t a b',
    'EXEC',
    'WATCH t',
    'MULTI',
    'INCR t',
    'EXEC',
    'WATCH t',
    'UNWATCH',
    'MULTI',
    'SELECT 1',
    'SET indb1 x',
    'EXEC',
    'GET indb1',
    'SELECT 0',
    'GET indb1',
  ],
  local: [
    'PING',
    'PING hello',
    'PING a b',
    'CLIENT GETNAME',
    'CLIENT SETNAME app-1',
    'CLIENT GETNAME',
    'CLIENT SETNAME "bad name"',
    'CLIENT SETNAME',
    'CLIENT GETNAME extra',
    'CLIENT REPLY ON',
    'SELECT 2',
    'SET only2 yes',
    'SELECT x',
    'SELECT -1',
    'SELECT 1 2',
    'SELECT 0',
    'GET only2',
    'UNSUBSCRIBE a b #2',
    'PUNSUBSCRIBE',
    'SUNSUBSCRIBE x',
    'AUTH secret',
    'AUTH default anything',
    'AUTH',
    'AUTH a b c',
    'HELLO 4',
    'HELLO x',
    'HELLO 2 SETNAME',
    'HELLO 2 FOO',
    'HELLO 2 SETNAME "a b"',
    'RESET',
    'CLIENT GETNAME',
    'RESET extra',
  ],
  resp3: [
    'HELLO 3',
    'SET r3 v',
    'HSET h3 a 1',
    'HGETALL h3',
    'GET nothing',
    'CLIENT GETNAME',
    'UNSUBSCRIBE',
    'MULTI',
    'GET r3',
    'EXEC',
    'ZADD z3 1.5 m',
    'ZSCORE z3 m',
    'SMEMBERS nothing',
    'HELLO 2',
    'GET nothing',
  ],
  pubsub: [
    'SUBSCRIBE c1 c2 #2',
    'PING',
    'PSUBSCRIBE p*',
    'UNSUBSCRIBE c1',
    'PING x',
    'RESET',
    'PING',
  ],
  blocking: [
    'BLPOP empty 0.01',
    'RPUSH q a b',
    'BLPOP q 1',
    'BRPOP q 1',
    'BLMOVE q2 q3 LEFT RIGHT 0.01',
    'XADD bs 1-1 f v',
    'XREAD BLOCK 10 STREAMS bs 0',
    'XREAD BLOCK 10 STREAMS bs $',
    'WAIT 0 10',
    'GET after',
  ],
  replies_off: [
    'CLIENT REPLY OFF #0',
    'SET quiet 1 #0',
    'CLIENT REPLY SKIP #0',
    'INCR quiet #0',
    'CLIENT REPLY ON',
    'GET quiet',
  ],
};

/** Connection ids differ between any two connections: compared as N. */
function normalise(reply: string): string {
  return reply.replace(/\$2\r\nid\r\n:\d+\r\n/, '$2\r\nid\r\n:N\r\n');
}

const SENTINEL = 'ECHO __end__';
const isEnd = (reply: string): boolean => reply.includes('__end__') || reply.includes("'echo'");

async function run(port: number, lines: string[], pipelined: boolean): Promise<string[]> {
  const client = await RawClient.connect(port);
  try {
    const replies: string[] = [];
    const commands = lines.map((line) => line.replace(/ #\d+$/, ''));
    if (pipelined) {
      client.socket.write([...commands, SENTINEL].map((l) => `${l}\r\n`).join(''));
      replies.push(...(await client.readUntil(isEnd)));
    } else {
      for (const [i, line] of lines.entries()) {
        const count = Number(/ #(\d+)$/.exec(line)?.[1] ?? '1');
        replies.push(...(await client.send(`${commands[i]}\r\n`, count)));
      }
    }
    return replies.map(normalise);
  } finally {
    client.close();
  }
}

void t.test('the same scripts give the same replies direct and through sidepool', async (t) => {
  const direct = await startRedis();
  const behind = await startRedis();
  t.teardown(() => Promise.all([direct.stop(), behind.stop()]));
  const proxy = await startRedisProxy(behind, { minIdle: 1, maxSize: 4 }, { maxBatchBytes: 1024 });
  t.teardown(() => proxy.app.stop(100));

  for (const pipelined of [false, true]) {
    for (const [name, lines] of Object.entries(scripts)) {
      const expected = await run(direct.port, lines, pipelined).catch((e: Error) => {
        throw new Error(`direct: ${e.message}`);
      });
      const got = await run(proxy.port, lines, pipelined).catch((e: Error) => {
        throw new Error(`sidepool: ${e.message}`);
      });
      t.same(got, expected, `${name}, ${pipelined ? 'pipelined' : 'one by one'}`);
    }
    await (await RawClient.connect(direct.port)).send('FLUSHALL\r\n', 1);
    await (await RawClient.connect(behind.port)).send('FLUSHALL\r\n', 1);
  }

  // Commands larger than maxBatchBytes (1 KiB here) go on a link of their own.
  const big = Buffer.alloc(200_000, 'b');
  const bigScript = Buffer.concat([
    command('SET', 'big', big),
    command('GET', 'big'),
    command('MSET', ...Array.from({ length: 400 }, (_, i) => `key${i}`)),
    command('STRLEN', 'big'),
  ]);
  const replies: string[][] = [];
  for (const port of [direct.port, proxy.port]) {
    const client = await RawClient.connect(port);
    replies.push(await client.send(bigScript, 4));
    client.close();
  }
  t.same(replies[1], replies[0], 'large commands, pipelined with small ones');
  t.equal(replies[0]?.[1]?.length, big.length + 11, 'the 200 kB value came back whole');

  // Protocol errors: the same error, then the connection closes, on both.
  for (const bad of [
    '*1\r\n$-1\r\n',
    '*1\r\n$600000000\r\n',
    '*1x\r\n',
    '*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n',
    'SET "a b\r\n',
  ]) {
    const seen: Array<{ replies: string[]; closed: boolean }> = [];
    for (const port of [direct.port, proxy.port]) {
      const client = await RawClient.connect(port);
      const got = await client.send(`PING\r\n${bad}`, 2);
      await client.whenClosed();
      seen.push({ replies: got, closed: client.closed });
    }
    t.same(seen[1], seen[0], `protocol error ${JSON.stringify(bad)}`);
  }

  // QUIT: +OK after what came before, then the end.
  for (const port of [direct.port, proxy.port]) {
    const client = await RawClient.connect(port);
    t.same(await client.send('SET q 1\r\nGET q\r\nQUIT\r\nGET q\r\n', 3), [
      '+OK\r\n',
      '$1\r\n1\r\n',
      '+OK\r\n',
    ]);
    await client.whenClosed();
  }
});
