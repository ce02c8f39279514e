// Transaction and session pooling against a real PostgreSQL 15, with real clients (pg,
// postgres, psql): release points, the backend cap, cleanup when a client leaves, cancel.
import { execFile } from 'node:child_process';
import net from 'node:net';
import { promisify } from 'node:util';
import postgres from 'postgres';
import t, { type Test } from 'tap';
import {
  RawClient,
  errorText,
  firstColumns,
  pgExtended,
  pgQuery,
  pgClient as client,
  startPgProxy,
  startAppCluster,
  writeAuthFile,
  type PgCluster,
} from './helpers/postgres.js';

import { sleep, until } from './helpers/util.js';

const exec = promisify(execFile);

const cluster: PgCluster = await startAppCluster(t);
await cluster.sql(`CREATE TABLE items (id int PRIMARY KEY, name text)`, 'appdb');
await cluster.sql(`ALTER TABLE items OWNER TO app`, 'appdb');
const verifier = await cluster.sql(`SELECT rolpassword FROM pg_authid WHERE rolname = 'app'`);
const scramFile = await writeAuthFile(cluster.dir, { app: verifier });
const plainFile = await writeAuthFile(cluster.dir, { app: 'secret' }, 'plain.txt');

type Proxy = Awaited<ReturnType<typeof startPgProxy>>;

async function proxyFor(
  t: Test,
  postgresSettings: Record<string, unknown> = {},
  pool: Record<string, unknown> = {},
): Promise<Proxy> {
  const proxy = await startPgProxy(
    cluster,
    { authFile: scramFile, ...postgresSettings },
    { maxSize: 2, ...pool },
  );
  t.teardown(() => proxy.app.stop(2000));
  return proxy;
}

/** A trust route over the plain auth file, for the raw protocol client. */
async function rawProxy(t: Test, pool: Record<string, unknown> = {}): Promise<Proxy> {
  return proxyFor(t, { authType: 'trust', authFile: plainFile }, pool);
}

void t.test('the same script gives the same answers direct and through sidepool', async (t) => {
  const proxy = await proxyFor(t);
  const script = async (port: number): Promise<unknown[]> => {
    const c = client(port);
    await c.connect();
    const out: unknown[] = [];
    out.push(
      (await c.query('SELECT 1 AS one, current_user AS who, current_database() AS db')).rows,
    );
    out.push((await c.query('SELECT $1::int * 2 AS doubled, $2::text AS t', [21, 'x'])).rows);
    out.push((await c.query('SELECT generate_series(1, 5) AS n')).rows);
    await c.query('BEGIN');
    await c.query('INSERT INTO items VALUES ($1, $2)', [port, 'row']);
    out.push((await c.query('SELECT count(*)::int AS n FROM items WHERE id = $1', [port])).rows);
    await c.query('ROLLBACK');
    out.push(
      await c
        .query('SELECT 1/0')
        .catch((e: { code: string; message: string }) => [e.code, e.message]),
    );
    out.push((await c.query('SELECT 2 AS after_error')).rows);
    out.push(
      (await c.query({ text: 'SELECT $1::text AS v', values: ['∑ unicode'], rowMode: 'array' }))
        .rows,
    );
    await c.end();
    return out;
  };
  const direct: unknown[] = await script(cluster.port);
  const through = await script(proxy.port);
  t.same(through, direct, 'through sidepool = direct');
  t.same(direct[4], ['22012', 'division by zero']);
});

void t.test('backends never exceed maxSize with more clients than backends', async (t) => {
  const proxy = await proxyFor(t, {}, { maxSize: 3 });
  const clients = Array.from({ length: 12 }, () => client(proxy.port));
  await Promise.all(clients.map((c) => c.connect()));
  let max = 0;
  let polling = true;
  const poll = (async () => {
    while (polling) {
      max = Math.max(max, await cluster.backends('app'));
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const sums = await Promise.all(
    clients.map(async (c, i) => {
      let sum = 0;
      for (let k = 0; k < 8; k++) {
        await c.query('BEGIN');
        const r = await c.query('SELECT $1::int AS v, pg_sleep(0.005)', [i + k]);
        await c.query('COMMIT');
        sum += (r.rows[0] as { v: number }).v;
      }
      return sum;
    }),
  );
  polling = false;
  await poll;
  t.same(
    sums,
    clients.map((_, i) => 8 * i + 28),
    'every client got its own answers',
  );
  t.ok(
    max >= 1 && max <= 3,
    `backends in pg_stat_activity stayed at or below maxSize (max ${max})`,
  );
  await Promise.all(clients.map((c) => c.end()));
});

void t.test(
  'a backend is released only at ReadyForQuery idle with nothing outstanding',
  async (t) => {
    const proxy = await proxyFor(t, {}, { maxSize: 1 });
    const a = client(proxy.port);
    const b = client(proxy.port);
    await a.connect();
    await b.connect();

    // Inside a transaction (simple and extended queries) A keeps the one backend.
    await a.query('BEGIN');
    await a.query('SELECT $1::int', [1]);
    let bDone = false;
    const bQuery = b.query('SELECT 42 AS v').then((r) => {
      bDone = true;
      return r.rows as unknown[];
    });
    await new Promise((r) => setTimeout(r, 200));
    t.notOk(bDone, 'B waits while A is in a transaction');
    await a.query('COMMIT');
    t.same(await bQuery, [{ v: 42 }], 'B runs once A committed');

    // A failed transaction (status E) holds the backend until ROLLBACK.
    await a.query('BEGIN');
    await t.rejects(a.query('SELECT 1/0'), { code: '22012' });
    bDone = false;
    const bAgain = b.query('SELECT 43 AS v').then((r) => {
      bDone = true;
      return r.rows as unknown[];
    });
    await new Promise((r) => setTimeout(r, 200));
    t.notOk(bDone, 'B waits while A is in a failed transaction');
    await a.query('ROLLBACK');
    t.same(await bAgain, [{ v: 43 }]);
    await a.end();
    await b.end();
  },
);

void t.test(
  'pipelined Syncs: every ReadyForQuery is answered and the backend freed after the last',
  async (t) => {
    const proxy = await rawProxy(t, { maxSize: 1 });
    const raw = await RawClient.login(proxy.port, 'app', 'appdb');
    // Three extended-protocol batches and a simple query in one write, an error in the middle.
    raw.write(
      Buffer.concat([
        pgExtended('SELECT 1'),
        pgExtended('SELECT 1/0'),
        pgExtended('SELECT 3'),
        pgQuery('SELECT 4'),
      ]),
    );
    const replies = await raw.readUntil('Z', 4);
    t.same(firstColumns(replies), ['1', '3', '4']);
    t.same(replies.filter((m) => m.code === 'E').map(errorText), ['22012 division by zero']);
    t.same(
      replies.filter((m) => m.code === 'Z').map((m) => m.body.toString()),
      ['I', 'I', 'I', 'I'],
    );
    // An extended batch without Sync keeps the backend: a second client waits.
    raw.write(Buffer.concat([pgExtended('SELECT 5', false), Buffer.from('H\0\0\0\x04')]));
    await raw.readUntil('C');
    const other = await RawClient.login(proxy.port, 'app', 'appdb');
    other.write(pgQuery('SELECT 6'));
    await t.rejects(other.readUntil('Z', 1, 300), 'the other client waits for the held backend');
    raw.write(Buffer.from('S\0\0\0\x04'));
    await raw.readUntil('Z');
    t.same(firstColumns(await other.readUntil('Z')), ['6'], 'and runs once the Sync released it');
    raw.close();
    other.close();
  },
);

/**
 * Counts the writes sidepool makes on its sockets to the cluster, and how many buffers each
 * carried, by wrapping net.Socket's write hooks (a corked socket hands its buffers to
 * `_writev` in one call, one system call). Restored when the test ends.
 */
function countWritesToServer(t: Test): { calls: number[] } {
  type WriteHook = (this: net.Socket, ...args: unknown[]) => void;
  const proto = net.Socket.prototype as unknown as { _write: WriteHook; _writev: WriteHook };
  const { _write, _writev } = proto;
  const seen = { calls: [] as number[] };
  const toServer = (s: net.Socket) => s.remotePort === cluster.port;
  proto._write = function (this: net.Socket, ...args: unknown[]) {
    if (toServer(this)) seen.calls.push(1);
    _write.apply(this, args);
  };
  proto._writev = function (this: net.Socket, ...args: unknown[]) {
    if (toServer(this)) seen.calls.push((args[0] as unknown[]).length);
    _writev.apply(this, args);
  };
  t.teardown(() => {
    proto._write = _write;
    proto._writev = _writev;
  });
  return seen;
}

void t.test('the messages of one client read leave for the backend in one write', async (t) => {
  const proxy = await rawProxy(t, { maxSize: 1 });
  const raw = await RawClient.login(proxy.port, 'app', 'appdb');
  // The first transaction dials and sets the backend up: not counted.
  raw.write(pgExtended('SELECT 0'));
  await raw.readUntil('Z');
  const writes = countWritesToServer(t);
  // Bound on the spot (an idle backend): Parse, Bind, Execute and Sync in one read.
  for (let i = 1; i <= 20; i++) {
    raw.write(pgExtended(`SELECT ${i}`));
    t.same(firstColumns(await raw.readUntil('Z')), [String(i)]);
  }
  t.equal(
    writes.calls.length,
    20,
    `one write per transaction (buffers per write: ${writes.calls.join(' ')})`,
  );
  // Bound after a wait: the client's read is held until another client's transaction ends.
  raw.write(pgQuery('BEGIN'));
  await raw.readUntil('Z');
  const other = await RawClient.login(proxy.port, 'app', 'appdb');
  writes.calls.length = 0;
  other.write(Buffer.concat([pgExtended('SELECT 21'), pgExtended('SELECT 22')]));
  await t.rejects(other.readUntil('Z', 1, 300), 'the other client waits for the held backend');
  raw.write(pgQuery('COMMIT'));
  await raw.readUntil('Z');
  t.same(firstColumns(await other.readUntil('Z', 2)), ['21', '22']);
  t.equal(
    writes.calls.length,
    2,
    `COMMIT, then both of the waiting read's transactions in one write (buffers per write: ${writes.calls.join(' ')})`,
  );
  raw.close();
  other.close();
});

void t.test(
  'a client that sends a query and its FIN while waiting for a backend: the query runs and is answered',
  async (t) => {
    const proxy = await rawProxy(t, { maxSize: 1 });
    const holder = await RawClient.login(proxy.port, 'app', 'appdb');
    holder.write(pgQuery('BEGIN'));
    await holder.readUntil('Z');
    const leaver = await RawClient.login(proxy.port, 'app', 'appdb');
    const clients = (): Record<string, number> =>
      ((proxy.app.poolsView() as Array<Record<string, unknown>>).find(
        (p) => p.pool === 'pg/appdb/app',
      )?.clients ?? {}) as Record<string, number>;
    leaver.write(pgQuery(`INSERT INTO items VALUES (4242, 'sent before its FIN')`));
    leaver.socket.end();
    await until(() => clients().waiting === 1, 5000, 'the query waits for the held backend');
    // sidepool reads a waiting client on (no pause per wait), so it reads the FIN now.
    for (const end = Date.now() + 300; Date.now() < end && clients().waiting === 1;) {
      await sleep(10);
    }
    t.equal(clients().waiting, 1, 'the FIN does not drop the waiting client');
    holder.write(pgQuery('COMMIT'));
    await holder.readUntil('Z');
    const answer = await leaver.readUntil('Z');
    t.ok(
      answer.some((m) => m.code === 'C'),
      'the query is answered after the FIN',
    );
    await until(() => leaver.closed, 5000, 'then the client is closed');
    t.equal(
      await cluster.sql(`SELECT name FROM items WHERE id = 4242`, 'appdb'),
      'sent before its FIN',
    );
    await until(() => clients().active === 0, 5000, 'its backend went back to the pool');
    holder.write(pgQuery('SELECT 1'));
    t.same(firstColumns(await holder.readUntil('Z')), ['1'], 'and serves the next client');
    holder.close();
  },
);

void t.test('COPY in and out with psql through transaction pooling', async (t) => {
  const proxy = await proxyFor(t, {}, { maxSize: 1 });
  const env = { ...process.env, PGPASSWORD: 'secret' };
  const psql = (args: string[], input?: string) =>
    new Promise<string>((resolve, reject) => {
      const child = execFile(
        'psql',
        [
          '-h',
          '127.0.0.1',
          '-p',
          String(proxy.port),
          '-U',
          'app',
          '-d',
          'appdb',
          '-XAtq',
          '-v',
          'ON_ERROR_STOP=1',
          ...args,
        ],
        { env, timeout: 30_000 },
        (err, stdout, stderr) =>
          err ? reject(new Error(`${err.message}: ${stderr}`)) : resolve(stdout),
      );
      if (input !== undefined) child.stdin?.end(input);
    });
  const rows = Array.from({ length: 2000 }, (_, i) => `${100_000 + i}\tname ${i}`).join('\n');
  await psql(['-c', '\\copy items FROM STDIN'], `${rows}\n\\.\n`);
  const out = await psql([
    '-c',
    '\\copy (SELECT id, name FROM items WHERE id >= 100000 ORDER BY id) TO STDOUT',
  ]);
  t.equal(out.trim(), rows, 'what went in comes out');
  const { stdout: direct } = await exec(
    'psql',
    [
      '-h',
      '127.0.0.1',
      '-p',
      String(cluster.port),
      '-U',
      'app',
      '-d',
      'appdb',
      '-XAtq',
      '-c',
      'SELECT count(*) FROM items WHERE id >= 100000',
    ],
    { env },
  );
  t.equal(direct.trim(), '2000', 'the server has the rows');
  // COPY with an error mid-way (duplicate key): the transaction fails, the backend is reusable.
  await t.rejects(psql(['-c', '\\copy items FROM STDIN'], '100000\tdup\n\\.\n'));
  t.equal((await psql(['-c', 'SELECT count(*) FROM items WHERE id >= 100000'])).trim(), '2000');
  await cluster.sql('DELETE FROM items WHERE id >= 100000', 'appdb');
});

void t.test('session pooling: a client keeps one backend; it is reset for the next', async (t) => {
  const proxy = await proxyFor(t, { poolMode: 'session' }, { maxSize: 1 });
  const a = client(proxy.port);
  await a.connect();
  await a.query('SET search_path = pg_catalog');
  const pidA = (await a.query('SELECT pg_backend_pid() AS p')).rows[0] as { p: number };
  const again: unknown = (
    await a.query('SELECT pg_backend_pid() AS p, current_setting($1) AS sp', ['search_path'])
  ).rows[0];
  t.same(again, { p: pidA.p, sp: 'pg_catalog' }, 'the same backend for every statement');
  await a.end();
  const b = client(proxy.port);
  await b.connect();
  const rowB: unknown = (
    await b.query('SELECT pg_backend_pid() AS p, current_setting($1) AS sp', ['search_path'])
  ).rows[0];
  t.same(rowB, { p: pidA.p, sp: '"$user", public' }, 'reused, and DISCARD ALL undid the SET');
  await b.end();
});

void t.test(
  'a client that leaves inside a transaction: ROLLBACK, and the backend is reused',
  async (t) => {
    const proxy = await proxyFor(t, {}, { maxSize: 1 });
    const a = client(proxy.port);
    await a.connect();
    await a.query('BEGIN');
    await a.query("INSERT INTO items VALUES (7, 'uncommitted')");
    const pid = ((await a.query('SELECT pg_backend_pid() AS p')).rows[0] as { p: number }).p;
    (a as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    const b = client(proxy.port);
    await b.connect();
    const row: unknown = (
      await b.query(
        'SELECT pg_backend_pid() AS p, (SELECT count(*)::int FROM items WHERE id = 7) AS n',
      )
    ).rows[0];
    t.same(row, { p: pid, n: 0 }, 'the same backend, the insert rolled back');
    await b.end();
  },
);

void t.test(
  'a client that leaves while its query runs: the query is cancelled, the backend closed',
  async (t) => {
    const proxy = await proxyFor(t, {}, { maxSize: 1 });
    const a = client(proxy.port);
    await a.connect();
    const pid = ((await a.query('SELECT pg_backend_pid() AS p')).rows[0] as { p: number }).p;
    void a.query('SELECT pg_sleep(60)').catch(() => {});
    await new Promise((r) => setTimeout(r, 200));
    (a as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    const deadline = Date.now() + 10_000;
    let gone = false;
    while (!gone && Date.now() < deadline) {
      gone =
        (await cluster.sql(`SELECT count(*) FROM pg_stat_activity WHERE pid = ${pid}`)) === '0';
      if (!gone) await new Promise((r) => setTimeout(r, 50));
    }
    t.ok(gone, 'the backend is gone');
    const b = client(proxy.port);
    await b.connect();
    t.same(
      (await b.query('SELECT 1 AS v')).rows,
      [{ v: 1 }],
      'the next client gets a fresh backend',
    );
    await b.end();
  },
);

void t.test('CancelRequest cancels pg_sleep on the bound backend', async (t) => {
  const proxy = await proxyFor(t);
  const sql = postgres({
    host: '127.0.0.1',
    port: proxy.port,
    user: 'app',
    password: 'secret',
    database: 'appdb',
    prepare: false,
    max: 1,
    onnotice: () => {},
  });
  t.teardown(() => sql.end({ timeout: 1 }));
  const started = Date.now();
  const sleeping = sql`SELECT pg_sleep(30)`;
  const outcome = sleeping.then(
    () => 'finished',
    (e: { code: string }) => e.code,
  );
  // Cancel once the query runs on a backend: a CancelRequest only reaches a bound client's.
  const deadline = Date.now() + 30_000;
  while (
    (await cluster.sql(
      `SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state = 'active' AND query LIKE '%pg_sleep(30)%'`,
    )) === '0' &&
    Date.now() < deadline
  ) {
    await new Promise((r) => setTimeout(r, 50));
  }
  sleeping.cancel();
  t.equal(await outcome, '57014', 'canceled by user request');
  t.ok(Date.now() - started < 25_000, 'before the sleep would have ended');
  const [row] = await sql`SELECT 1 AS v`;
  t.same(row, { v: 1 }, 'the client goes on');
});
