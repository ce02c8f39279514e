// Named prepared statements in transaction pooling (maxPreparedStatements), against a real
// PostgreSQL 15 with real drivers (postgres, pg, pgbench) and raw protocol pipelines run
// both direct and through sidepool: the server is the oracle. The server logs every
// extended-protocol step (log_min_duration_statement = 0), so the tests count the Parse
// messages it received.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import t, { type Test } from 'tap';
import {
  RawClient,
  connectPg as connect,
  errorText,
  firstColumns,
  frontend,
  pgQuery,
  postgresClient,
  proxyMaker,
  startPgProxy,
  startAppCluster,
  writeAuthFile,
  type RawMessage,
} from './helpers/postgres.js';

const exec = promisify(execFile);

const cluster = await startAppCluster(t, { conf: ['log_min_duration_statement = 0'] });
await cluster.sql(`CREATE TABLE items (id int PRIMARY KEY, name text)`, 'appdb');
await cluster.sql(
  `INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20) g`,
  'appdb',
);
await cluster.sql(`ALTER TABLE items OWNER TO app`, 'appdb');
await cluster.sql(`CREATE TABLE copied (a int)`, 'appdb');
await cluster.sql(`ALTER TABLE copied OWNER TO app`, 'appdb');
const authFile = await writeAuthFile(cluster.dir, { app: 'secret' });

type Proxy = Awaited<ReturnType<typeof startPgProxy>>;

const proxyFor = proxyMaker(cluster, { authFile }, 2);

const serverLog = (): Promise<string> => readFile(path.join(cluster.dir, 'postgres.log'), 'utf8');

/** Where the server log ends now, for parsesLogged. */
async function logMark(): Promise<number> {
  return (await serverLog()).length;
}

/**
 * Named Parse messages the server logged ("parse <name>: <sql>") after `since`: of `sql`,
 * or all of them.
 */
async function parsesLogged(sql: string | undefined, since = 0): Promise<number> {
  const log = (await serverLog()).slice(since);
  let n = 0;
  for (const line of log.split('\n')) {
    const m = /duration: [\d.]+ ms {2}parse ([^:]*): (.*)$/.exec(line);
    if (m !== null && m[1] !== '<unnamed>' && (sql === undefined || m[2] === sql)) n++;
  }
  return n;
}

async function metric(proxy: Proxy, name: string): Promise<number> {
  const text = await proxy.app.metrics.render();
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) {
      sum += Number(line.slice(line.lastIndexOf(' ') + 1));
    }
  }
  return sum;
}

// ── raw protocol ─────────────────────────────────────────────────────────

const cstr = (s: string): Buffer => Buffer.from(`${s}\0`);
const int16 = (n: number): Buffer => Buffer.from([(n >> 8) & 0xff, n & 0xff]);
const int32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const P = (name: string, sql: string, oids: number[] = []): Buffer =>
  frontend('P', Buffer.concat([cstr(name), cstr(sql), int16(oids.length), ...oids.map(int32)]));
const B = (stmt: string, params: string[] = [], portal = ''): Buffer =>
  frontend(
    'B',
    Buffer.concat([
      cstr(portal),
      cstr(stmt),
      int16(0),
      int16(params.length),
      ...params.flatMap((p) => [int32(Buffer.byteLength(p)), Buffer.from(p)]),
      int16(0),
    ]),
  );
const D = (kind: 'S' | 'P', name: string): Buffer =>
  frontend('D', Buffer.concat([Buffer.from(kind), cstr(name)]));
const C = (kind: 'S' | 'P', name: string): Buffer =>
  frontend('C', Buffer.concat([Buffer.from(kind), cstr(name)]));
const E = (portal = ''): Buffer => frontend('E', Buffer.concat([cstr(portal), int32(0)]));
const S = (): Buffer => frontend('S');
const H = (): Buffer => frontend('H');

/** A reply as the test compares it: its code, the SQLSTATE of an error, a row's first column. */
function shape(messages: RawMessage[]): string[] {
  return messages.map((m) => {
    if (m.code === 'E') return `E:${errorText(m).slice(0, 5)}`;
    if (m.code === 'D') return `D:${firstColumns([m])[0]}`;
    if (m.code === 'Z') return `Z:${String.fromCharCode(m.body[0] as number)}`;
    return m.code;
  });
}

/** Runs steps (bytes, then the number of ReadyForQuery to read) on a raw connection. */
async function script(client: RawClient, steps: Array<[Buffer, number]>): Promise<string[]> {
  const out: string[] = [];
  for (const [bytes, readies] of steps) {
    client.write(bytes);
    if (readies > 0) out.push(...shape(await client.readUntil('Z', readies, 20_000)));
  }
  return out;
}

const direct = (): Promise<RawClient> => RawClient.login(cluster.port, 'postgres', 'appdb');
const through = (proxy: Proxy): Promise<RawClient> => RawClient.login(proxy.port, 'app', 'appdb');

/** The same raw script direct and through sidepool gives the same replies. */
async function sameAsDirect(
  t: Test,
  proxy: Proxy,
  steps: Array<[Buffer, number]>,
  what: string,
): Promise<string[]> {
  const d = await direct();
  const expected = await script(d, steps);
  d.close();
  const s = await through(proxy);
  const got = await script(s, steps);
  s.close();
  t.same(got, expected, what);
  return got;
}

/** A new client can prepare and run a statement. */
async function servesNewClient(t: Test, proxy: Proxy, what: string): Promise<void> {
  const c = await through(proxy);
  t.same(
    await script(c, [[Buffer.concat([P('ok', 'SELECT 42'), B('ok'), E(), S()]), 1]]),
    ['1', '2', 'D:42', 'C', 'Z:I'],
    what,
  );
  c.close();
}

async function trustProxy(t: Test, settings: Record<string, unknown> = {}, maxSize = 2) {
  return proxyFor(t, { authType: 'trust', ...settings }, maxSize);
}

void t.test('raw pipelines give the replies PostgreSQL gives', async (t) => {
  const proxy = await trustProxy(t, {}, 1);
  const N = 5;
  const oneSync = Buffer.concat([
    ...Array.from({ length: N }, (_, i) =>
      Buffer.concat([P(`s${i}`, `SELECT ${i} + $1::int`), B(`s${i}`, ['10']), E()]),
    ),
    S(),
  ]);
  const got = await sameAsDirect(t, proxy, [[oneSync, 1]], 'Parse/Bind/Execute x5, one Sync');
  t.same(
    got.filter((m) => m.startsWith('D:')),
    ['D:10', 'D:11', 'D:12', 'D:13', 'D:14'],
  );

  const nSyncs = Buffer.concat(
    Array.from({ length: N }, (_, i) =>
      Buffer.concat([P(`n${i}`, `SELECT ${i} * $1::int`), B(`n${i}`, ['3']), E(), S()]),
    ),
  );
  await sameAsDirect(t, proxy, [[nSyncs, N]], 'Parse/Bind/Execute/Sync x5, pipelined');

  await sameAsDirect(
    t,
    proxy,
    [
      [
        Buffer.concat([
          P('a', 'SELECT 1'),
          B('a'),
          E(),
          P('bad', 'SELEC oops'),
          B('bad'),
          E(),
          P('c', 'SELECT 3'),
          S(),
          B('a'),
          E(),
          B('c'),
          E(),
          S(),
          P('bad', 'SELECT 4'),
          B('bad'),
          E(),
          S(),
        ]),
        3,
      ],
    ],
    'an error in the middle of a pipeline: the rest skipped to Sync, the failed Parse and the skipped one not prepared, the next segment runs',
  );

  await sameAsDirect(
    t,
    proxy,
    [
      [Buffer.concat([P('d', 'SELECT $1::text AS t, 2 AS two', [25]), D('S', 'd'), S()]), 1],
      [Buffer.concat([B('d', ['x']), D('P', ''), E(), S()]), 1],
    ],
    'Describe before Bind (ParameterDescription, RowDescription), then Bind',
  );

  await sameAsDirect(
    t,
    proxy,
    [
      [
        Buffer.concat([
          P('r', 'SELECT 1'),
          B('r'),
          E(),
          C('S', 'r'),
          P('r', 'SELECT 2'),
          B('r'),
          E(),
          S(),
        ]),
        1,
      ],
      [Buffer.concat([C('S', 'r'), C('S', 'r'), C('S', 'never'), S()]), 1],
    ],
    'Close then reuse of a name; Close of an unknown name is CloseComplete',
  );

  await sameAsDirect(
    t,
    proxy,
    [
      [Buffer.concat([P('dup', 'SELECT 1'), P('dup', 'SELECT 2'), B('dup'), E(), S()]), 1],
      [Buffer.concat([B('dup'), E(), S()]), 1],
    ],
    'a name reused without Close: 42P05, skipped to Sync, the first statement kept',
  );

  await sameAsDirect(
    t,
    proxy,
    [
      [pgQuery('BEGIN'), 1],
      [Buffer.concat([P('tdup', 'SELECT 1'), S()]), 1],
      [Buffer.concat([P('tdup', 'SELECT 2'), B('tdup'), E(), S()]), 1],
      [pgQuery('SELECT 1'), 1],
      [pgQuery('COMMIT'), 1],
      [Buffer.concat([B('tdup'), E(), S()]), 1],
    ],
    'a name reused inside a transaction block: 42P05 aborts the block (status E), as the server does',
  );

  await sameAsDirect(
    t,
    proxy,
    [
      [Buffer.concat([P('a1', 'SELECT 1'), S()]), 1],
      [pgQuery('DEALLOCATE a1'), 1],
      [Buffer.concat([P('a1', 'SELECT 2'), B('a1'), E(), S()]), 1],
      [pgQuery('DEALLOCATE PREPARE a1'), 1],
      [pgQuery('DEALLOCATE a1'), 1],
      [pgQuery('BEGIN'), 1],
      [Buffer.concat([P('a2', 'SELECT 3'), S()]), 1],
      [pgQuery('SELECT 1/0'), 1],
      [pgQuery('DEALLOCATE a2'), 1],
      [pgQuery('ROLLBACK'), 1],
      [Buffer.concat([B('a2'), E(), S()]), 1],
      [pgQuery('DEALLOCATE a2'), 1],
      [Buffer.concat([B('a2'), E(), S()]), 1],
    ],
    'SQL DEALLOCATE of a statement prepared by Parse (as Rails does): gone, and Parse may reuse the name; unknown names and failed blocks as PostgreSQL',
  );

  await sameAsDirect(
    t,
    proxy,
    [
      [Buffer.concat([B('nope'), E(), S()]), 1],
      [Buffer.concat([D('S', 'nope'), S()]), 1],
      [Buffer.concat([P('after', 'SELECT 5'), B('after'), E(), S()]), 1],
    ],
    'Bind and Describe of a name never parsed: 26000, and the client goes on',
  );

  await sameAsDirect(
    t,
    proxy,
    [
      [Buffer.concat([P('f', 'SELECT 6'), H()]), 0],
      [Buffer.concat([B('f'), E(), S()]), 1],
    ],
    'Parse, Flush, then Bind later',
  );

  await sameAsDirect(
    t,
    proxy,
    [
      [pgQuery('BEGIN'), 1],
      [Buffer.concat([P('t1', 'SELECT 1'), B('t1'), E(), S()]), 1],
      [Buffer.concat([B('unknown'), E(), S()]), 1],
      [pgQuery('SELECT 1'), 1],
      [pgQuery('ROLLBACK'), 1],
    ],
    'a Bind of an unknown name inside a transaction block fails the block (status E)',
  );

  const copy = Buffer.concat([
    P('cp', 'COPY copied FROM STDIN'),
    B('cp'),
    E(),
    frontend('d', '1\n2\n'),
    frontend('c'),
    S(),
    P('del', 'DELETE FROM copied RETURNING a'),
    B('del'),
    E(),
    S(),
  ]);
  await sameAsDirect(t, proxy, [[copy, 2]], 'COPY FROM STDIN by a named statement in a pipeline');
});

void t.test('Parse and Close need no backend when the client has none', async (t) => {
  const proxy = await trustProxy(t, {}, 1);
  const a = await through(proxy);
  const b = await through(proxy);
  t.same(
    await script(b, [
      [Buffer.concat([P('k', 'SELECT 9 AS k'), P('also', 'SELECT 9 AS k'), B('k'), E(), S()]), 1],
    ]),
    ['1', '1', '2', 'D:9', 'C', 'Z:I'],
    'b prepares a statement under two names (the backend accepts it)',
  );
  t.same(await script(a, [[pgQuery('BEGIN'), 1]]), ['C', 'Z:T'], 'a holds the only backend');
  const quick = await script(b, [
    [Buffer.concat([C('S', 'k'), S()]), 1],
    [Buffer.concat([P('k2', 'SELECT 9 AS k'), S()]), 1],
  ]);
  t.same(quick, ['3', 'Z:I', '1', 'Z:I'], 'b closes and parses again without waiting for it');
  t.equal(
    await metric(proxy, 'sidepool_postgres_prepares_saved_total'),
    2,
    'also and k2 answered by sidepool',
  );
  t.same(await script(a, [[pgQuery('COMMIT'), 1]]), ['C', 'Z:I']);
  t.same(
    await script(b, [[Buffer.concat([B('k2'), E(), B('k'), E(), S()]), 1]]),
    ['2', 'D:9', 'C', 'E:26000', 'Z:I'],
    'then k2 runs and k is gone',
  );
  a.close();
  b.close();
});

void t.test('a Parse above the message bound is refused with 08P01, nothing kept', async (t) => {
  const proxy = await trustProxy(t, {}, 1);
  const c = await through(proxy);
  const header = Buffer.alloc(5);
  header.write('P', 0, 'latin1');
  header.writeInt32BE(64 * 1024 * 1024, 1);
  c.write(header);
  const got = await c.readToClose();
  t.match(errorText(got.find((m) => m.code === 'E') as RawMessage), /^08P01 /);
  await servesNewClient(t, proxy, 'the next client is served');
});

void t.test(
  'client A and client B use one name for different texts over shared backends',
  async (t) => {
    const proxy = await proxyFor(t, {}, 2);
    const clients = await Promise.all(Array.from({ length: 6 }, () => connect(proxy.port)));
    t.teardown(() => Promise.all(clients.map((c) => c.end())));
    for (let round = 0; round < 4; round++) {
      const results = await Promise.all(
        clients.map(async (c, i) => {
          const r = await c.query<{ v: number }>({
            name: 'q',
            text: `SELECT ${i % 3} + $1::int AS v`,
            values: [round],
          });
          return r.rows[0]?.v;
        }),
      );
      t.same(
        results,
        clients.map((_, i) => (i % 3) + round),
        `round ${round}: each client gets its own statement's answer`,
      );
    }
    // The six first Parses ran at once: on a loaded machine the two clients of a text can
    // both prepare it, one per backend, and save nothing. A client that comes later is
    // answered from what a backend already has.
    const late = await connect(proxy.port);
    t.teardown(() => late.end());
    const r = await late.query<{ v: number }>({
      name: 'q',
      text: 'SELECT 0 + $1::int AS v',
      values: [9],
    });
    t.same(r.rows, [{ v: 9 }], 'a later client with a statement a backend has');
    // Three distinct texts, prepared at most once per backend.
    for (let i = 0; i < 3; i++) {
      t.ok(
        (await parsesLogged(`SELECT ${i} + $1::int AS v`)) <= 2,
        `text ${i} parsed at most once per backend`,
      );
    }
    t.equal(await metric(proxy, 'sidepool_postgres_pins_total'), 0, 'nobody pinned');
    t.ok((await metric(proxy, 'sidepool_postgres_prepares_saved_total')) > 0, 'Parses saved');
    t.ok((await metric(proxy, 'sidepool_postgres_prepared_statements')) >= 3);
  },
);

void t.test('the postgres driver (named statements) with more clients than backends', async (t) => {
  const mark = await logMark();
  const proxy = await proxyFor(t, {}, 2);
  const clients = Array.from({ length: 12 }, () => postgresClient(proxy.port));
  t.teardown(() => Promise.all(clients.map((sql) => sql.end({ timeout: 1 }))));
  const outcomes = await Promise.all(
    clients.map(async (sql, c) => {
      const got: number[] = [];
      for (let i = 0; i < 10; i++) {
        const [row] = await sql`SELECT id FROM items WHERE id = ${((c + i) % 20) + 1}`;
        got.push(row?.id as number);
        const [n] = await sql`SELECT count(*)::int AS n FROM items WHERE id <= ${i}`;
        got.push(n?.n as number);
      }
      return got;
    }),
  );
  outcomes.forEach((got, c) => {
    const want = Array.from({ length: 10 }, (_, i) => [((c + i) % 20) + 1, i]).flat();
    t.same(got, want, `client ${c}`);
  });
  const parsed =
    (await parsesLogged('SELECT id FROM items WHERE id = $1', mark)) +
    (await parsesLogged('SELECT count(*)::int AS n FROM items WHERE id <= $1', mark));
  t.ok(
    parsed >= 2 && parsed <= 4,
    `2 statements x 2 backends at most were parsed by the server, not 12 clients x 2 (${parsed})`,
  );
  t.equal(
    await metric(proxy, 'sidepool_postgres_prepares_sent_total'),
    await parsesLogged(undefined, mark),
    'the prepares-sent metric counts the named Parses the server received',
  );
  t.equal(await metric(proxy, 'sidepool_postgres_pins_total'), 0, 'nobody pinned');
});

void t.test(
  'a schema change between uses: the cached plan error is followed by recovery',
  async (t) => {
    await cluster.sql(`CREATE TABLE shifting (a int)`, 'appdb');
    await cluster.sql(`INSERT INTO shifting VALUES (1)`, 'appdb');
    await cluster.sql(`ALTER TABLE shifting OWNER TO app`, 'appdb');
    const proxy = await proxyFor(t, {}, 1);
    const c = await connect(proxy.port);
    const q = { name: 'all', text: 'SELECT * FROM shifting' };
    t.same((await c.query(q)).rows, [{ a: 1 }]);
    await cluster.sql(`ALTER TABLE shifting ADD COLUMN b int DEFAULT 2`, 'appdb');
    await t.rejects(c.query(q), { code: '0A000' }, 'as PostgreSQL says, once');
    t.same((await c.query(q)).rows, [{ a: 1, b: 2 }], 'then the statement is prepared again');
    await c.end();
  },
);

void t.test('LRU eviction keeps at most maxPreparedStatements per backend', async (t) => {
  const proxy = await trustProxy(t, { maxPreparedStatements: 2 }, 1);
  const c = await through(proxy);
  const steps: Array<[Buffer, number]> = [];
  for (let i = 0; i < 5; i++)
    steps.push([Buffer.concat([P(`e${i}`, `SELECT ${i} AS lru`), B(`e${i}`), E(), S()]), 1]);
  // e0 was evicted upstream: a Parse is injected before its Bind.
  steps.push([Buffer.concat([B('e0'), E(), B('e4'), E(), S()]), 1]);
  const got = await script(c, steps);
  t.same(
    got.filter((m) => m.startsWith('D:')),
    ['D:0', 'D:1', 'D:2', 'D:3', 'D:4', 'D:0', 'D:4'],
  );
  t.notOk(
    got.some((m) => m.startsWith('E')),
    'no error',
  );
  t.equal(await metric(proxy, 'sidepool_postgres_prepared_evictions_total'), 4);
  t.equal(await metric(proxy, 'sidepool_postgres_prepared_statements'), 2);
  const rows = shape(
    await (async () => {
      c.write(pgQuery('SELECT count(*) FROM pg_prepared_statements'));
      return c.readUntil('Z');
    })(),
  );
  t.same(
    rows.filter((m) => m.startsWith('D:')),
    ['D:2'],
    'the backend holds two',
  );
  c.close();
});

void t.test("DISCARD ALL and DEALLOCATE ALL drop the client's names", async (t) => {
  const proxy = await trustProxy(t, {}, 1);
  await sameAsDirect(
    t,
    proxy,
    [
      [Buffer.concat([P('x', 'SELECT 1'), S()]), 1],
      [pgQuery('DEALLOCATE ALL'), 1],
      [Buffer.concat([B('x'), E(), S()]), 1],
      [Buffer.concat([P('x', 'SELECT 2'), B('x'), E(), S()]), 1],
      [pgQuery('DISCARD ALL'), 1],
      [Buffer.concat([P('x', 'SELECT 3'), B('x'), E(), S()]), 1],
    ],
    'gone after each, and the name free again',
  );
});

void t.test(
  'memory caps: thousands of distinct statements are refused with 53400, not kept',
  async (t) => {
    const proxy = await trustProxy(
      t,
      { maxClientPreparedStatementBytes: 20_000, maxPreparedStatementBytes: 30_000 },
      1,
    );
    const a = await through(proxy);
    const batch = (prefix: string, from: number, n: number): Buffer =>
      Buffer.concat(
        Array.from({ length: n }, (_, i) =>
          Buffer.concat([
            P(`${prefix}${from + i}`, `SELECT ${from + i} AS n /* ${'x'.repeat(60)} */`),
            S(),
          ]),
        ),
      );
    const got = shape(
      await (async () => {
        a.write(batch('m', 0, 2000));
        return a.readUntil('Z', 2000, 60_000);
      })(),
    );
    const errors = got.filter((m) => m.startsWith('E:'));
    t.ok(errors.length > 1500, `most refused (${errors.length})`);
    t.ok(
      errors.every((e) => e === 'E:53400'),
      'with 53400',
    );
    const b = await through(proxy);
    const gotB = shape(
      await (async () => {
        b.write(batch('o', 5000, 200));
        return b.readUntil('Z', 200, 60_000);
      })(),
    );
    t.ok(
      gotB.some((m) => m === 'E:53400'),
      'the total cap refuses another client',
    );
    a.close();
    await servesNewClient(
      t,
      proxy,
      'once a client leaves its bytes are free again, and the process is up',
    );
    b.close();
  },
);

void t.test('pgbench -M prepared: 10 clients over 3 backends, no failures', async (t) => {
  const proxy = await proxyFor(t, {}, 3);
  await exec(
    'pgbench',
    ['-i', '-s', '1', '-h', '127.0.0.1', '-p', String(cluster.port), '-U', 'postgres', 'appdb'],
    { timeout: 120_000 },
  );
  await cluster.sql('GRANT ALL ON ALL TABLES IN SCHEMA public TO app', 'appdb');
  const mark = await logMark();
  const { stdout } = await exec(
    'pgbench',
    [
      '-n',
      '-M',
      'prepared',
      '-c',
      '10',
      '-j',
      '2',
      '-t',
      '200',
      '-h',
      '127.0.0.1',
      '-p',
      String(proxy.port),
      '-U',
      'app',
      'appdb',
    ],
    { timeout: 240_000, env: { ...process.env, PGPASSWORD: 'secret' } },
  );
  t.match(stdout, /number of transactions actually processed: 2000\/2000/);
  t.match(stdout, /number of failed transactions: 0 /);
  const parsed = await parsesLogged(
    'UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;',
    mark,
  );
  t.ok(
    parsed >= 1 && parsed <= 3,
    `the UPDATE was parsed once per backend at most (${parsed}), not once per client (10)`,
  );
  t.equal(
    await metric(proxy, 'sidepool_postgres_prepares_sent_total'),
    await parsesLogged(undefined, mark),
    'the prepares-sent metric counts the named Parses the server received',
  );
  t.ok(
    (await metric(proxy, 'sidepool_postgres_prepares_saved_total')) >= 9 * 7 - 21,
    "most of the other clients' Parses answered by sidepool",
  );
  t.equal(await metric(proxy, 'sidepool_postgres_pins_total'), 0, 'nobody pinned');
});

void t.test('maxPreparedStatements: 0 forwards named statements and pins, as before', async (t) => {
  const proxy = await proxyFor(t, { maxPreparedStatements: 0 }, 2);
  const c = await connect(proxy.port);
  t.same((await c.query({ name: 'z', text: 'SELECT 1 AS v' })).rows, [{ v: 1 }]);
  t.equal(await parsesLogged('SELECT 1 AS v'), 1, "sent under the client's own name");
  t.match(
    await proxy.app.metrics.render(),
    /sidepool_postgres_pins_total\{[^}]*reason="prepared"\} 1/,
  );
  await c.end();
});

void t.test('statements of pooled clients survive on backends shared with pg', async (t) => {
  const proxy = await proxyFor(t, {}, 1);
  const a = await connect(proxy.port);
  const b = new pg.Client({
    host: '127.0.0.1',
    port: proxy.port,
    user: 'app',
    password: 'secret',
    database: 'appdb',
  });
  await b.connect();
  await a.query({ name: 'p1', text: 'SELECT $1::int * 7 AS v', values: [1] });
  t.same((await b.query({ name: 'other', text: 'SELECT $1::int * 7 AS v', values: [2] })).rows, [
    { v: 14 },
  ]);
  t.equal(
    await parsesLogged('SELECT $1::int * 7 AS v'),
    1,
    "the second client's Parse was answered by sidepool",
  );
  await a.end();
  await b.end();
});
