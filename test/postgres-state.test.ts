// Session state in transaction pooling, with a real PostgreSQL 15: startup parameters
// applied per backend and the client's view kept right; each pin reason; no state leaking
// between clients; onSessionState: error.
import pg from 'pg';
import postgres from 'postgres';
import t from 'tap';
import {
  RawClient,
  connectPg as connect,
  errorText,
  pgExtended,
  pgQuery,
  type RawMessage,
  postgresClient,
  proxyMaker,
  startAppCluster,
  writeAuthFile,
} from './helpers/postgres.js';

const cluster = await startAppCluster(t);
await cluster.sql(`CREATE SCHEMA other AUTHORIZATION app`, 'appdb');
const authFile = await writeAuthFile(cluster.dir, { app: 'secret' });

const proxyFor = proxyMaker(cluster, { authFile }, 1);

async function show(c: pg.Client, names: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const name of names) {
    const r = await c.query<{ v: string }>(`SELECT current_setting('${name}') AS v`);
    out.push(r.rows[0]?.v ?? '');
  }
  return out;
}

const SETTINGS = [
  'application_name',
  'search_path',
  'extra_float_digits',
  'DateStyle',
  'TimeZone',
  'statement_timeout',
];

void t.test(
  'startup parameters: every kind is accepted and applied, as PostgreSQL would',
  async (t) => {
    const proxy = await proxyFor(t);
    const params: Partial<pg.ClientConfig> = {
      application_name: 'app-one',
      options: '-c search_path=other -c statement_timeout=5s --DateStyle=ISO,\\ DMY',
    };
    const sameAsDirect = async (extra: Partial<pg.ClientConfig>, what: string) => {
      const direct = await connect(cluster.port, extra);
      const through = await connect(proxy.port, extra);
      t.same(await show(through, SETTINGS), await show(direct, SETTINGS), what);
      await direct.end();
      await through.end();
    };
    await sameAsDirect(params, 'application_name and options (-c, --name=value, escaped space)');
    await sameAsDirect(
      {},
      'a client without them, on the backend the first one used: defaults back',
    );
    // extra_float_digits and TimeZone as plain startup parameters, as pgjdbc and others send them.
    const raw = postgres({
      host: '127.0.0.1',
      port: proxy.port,
      user: 'app',
      password: 'secret',
      database: 'appdb',
      prepare: false,
      connection: { extra_float_digits: 3, TimeZone: 'Europe/Paris', DateStyle: 'ISO' },
      max: 1,
    });
    t.teardown(() => raw.end({ timeout: 1 }));
    const [row] =
      await raw`SELECT current_setting('extra_float_digits') AS efd, current_setting('TimeZone') AS tz, current_setting('DateStyle') AS ds`;
    t.same(row, { efd: '3', tz: 'Europe/Paris', ds: 'ISO, MDY' });
    t.equal(raw.parameters.TimeZone, 'Europe/Paris', 'the client ParameterStatus view says so too');
    t.equal(raw.parameters.DateStyle, 'ISO, MDY', 'with the value the server reports');
    // An unknown parameter: PostgreSQL refuses the connection with 42704; sidepool at first use.
    const bad = await connect(proxy.port, { options: '-c no_such_parameter=1' }).then(
      (c) =>
        c.query('SELECT 1').then(
          () => 'accepted',
          (e: { code: string }) => e.code,
        ),
      (e: { code: string }) => e.code,
    );
    const badDirect = await connect(cluster.port, { options: '-c no_such_parameter=1' }).then(
      () => 'accepted',
      (e: { code: string }) => e.code,
    );
    t.equal(bad, badDirect, `an unknown parameter: ${badDirect} either way`);
  },
);

void t.test('a tracked SET follows its client to every backend, and nowhere else', async (t) => {
  const proxy = await proxyFor(t, {}, 2);
  const a = await connect(proxy.port);
  const b = await connect(proxy.port);
  await a.query(`SET application_name = 'renamed'`);
  await a.query(`SET TIME ZONE 'Asia/Tokyo'`);
  const direct = await connect(cluster.port);
  const defaults = await show(direct, ['application_name', 'TimeZone']);
  await direct.end();
  t.same(await show(b, ['application_name', 'TimeZone']), defaults, 'B does not see A’s settings');
  // Make A run on the other backend: B holds one in a transaction.
  await b.query('BEGIN');
  await b.query('SELECT 1');
  t.same(
    await show(a, ['application_name', 'TimeZone']),
    ['renamed', 'Asia/Tokyo'],
    'A keeps them',
  );
  await b.query('COMMIT');
  const pins = await proxy.app.metrics.render();
  t.notMatch(pins, /sidepool_postgres_pins_total\{[^}]*\} [1-9]/, 'no pin for tracked parameters');
  await a.end();
  await b.end();
});

void t.test(
  'clients with the same startup parameters share a backend as it is; any change is SET',
  async (t) => {
    // One backend: every client below runs on it in turn. A backend remembers the last
    // parameter set it was found to run with, and every change on either side forgets it.
    const proxy = await proxyFor(t);
    const params = { application_name: 'one', options: '-c search_path=other' };
    const a = await connect(proxy.port, params);
    const b = await connect(proxy.port, params);
    const c = await connect(proxy.port);
    const direct = await connect(cluster.port);
    const defaults = await show(direct, ['application_name', 'search_path']);
    await direct.end();
    const names = ['application_name', 'search_path'];
    t.same(await show(a, names), ['one', 'other'], 'A');
    t.same(await show(b, names), ['one', 'other'], 'B, same set');
    t.same(await show(c, names), defaults, 'C, without them');
    t.same(await show(a, names), ['one', 'other'], 'A again, after C');
    await a.query(`SET application_name = 'changed'`);
    t.same(await show(b, names), ['one', 'other'], 'B, after A changed its own');
    t.same(await show(a, names), ['changed', 'other'], 'A keeps its change');
    await b.query('RESET ALL');
    t.same(await show(a, names), ['changed', 'other'], 'A, after B reset the backend');
    // As direct, its startup search_path is its default. (application_name is not checked:
    // sidepool SETs it, so RESET ALL takes it back to the server's default; see README.)
    t.same(await show(b, ['search_path']), ['other'], 'B, after its RESET ALL');
    await Promise.all([a.end(), b.end(), c.end()]);
  },
);

const PINS: Array<[string, string, string]> = [
  ['set', 'SET search_path = other', 'SELECT current_setting($$search_path$$)'],
  ['listen', 'LISTEN somewhere', 'SELECT count(*) FROM pg_listening_channels()'],
  [
    'advisory_lock',
    'SELECT pg_advisory_lock(42)',
    'SELECT count(*) FROM pg_locks WHERE locktype = $$advisory$$ AND pid = pg_backend_pid()',
  ],
  ['prepare', 'PREPARE q AS SELECT 1', 'SELECT count(*) FROM pg_prepared_statements'],
  [
    'cursor_with_hold',
    'DECLARE c CURSOR WITH HOLD FOR SELECT 1',
    'SELECT count(*) FROM pg_cursors',
  ],
  [
    'temp_table',
    'CREATE TEMP TABLE scratch (a int)',
    'SELECT count(*) FROM pg_class WHERE relname = $$scratch$$ AND relnamespace = pg_my_temp_schema()',
  ],
];

for (const [reason, statement, probe] of PINS) {
  void t.test(
    `pin: ${reason} keeps the client on its backend, and nothing leaks to the next`,
    async (t) => {
      const proxy = await proxyFor(t, {}, 2);
      const a = await connect(proxy.port);
      const pid = async (c: pg.Client) =>
        (await c.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]?.p;
      await a.query(statement);
      const mine = (await a.query<{ v: string }>(`SELECT (${probe})::text AS v`)).rows[0]?.v;
      const pidA = await pid(a);
      // Other clients keep both backends busy in turn; A's backend stays A's.
      const others = await Promise.all([connect(proxy.port), connect(proxy.port)]);
      const seen = await Promise.all(
        others.map(async (c) => {
          const values: Array<string | undefined> = [];
          for (let i = 0; i < 5; i++) {
            values.push((await c.query<{ v: string }>(`SELECT (${probe})::text AS v`)).rows[0]?.v);
          }
          return { values, pid: await pid(c) };
        }),
      );
      t.not(mine, seen[0]?.values[0], `A sees its own state (${mine})`);
      for (const s of seen) {
        t.not(s.pid, pidA, 'nobody else is given the pinned backend');
        t.ok(
          s.values.every((v) => v === s.values[0]),
          'and nobody sees its state',
        );
      }
      t.equal(await pid(a), pidA, 'A stays on its backend');
      const metrics = await proxy.app.metrics.render();
      t.match(metrics, new RegExp(`sidepool_postgres_pins_total\\{[^}]*reason="${reason}"\\} 1`));
      t.ok(
        proxy.lines.some((l) => l.msg === 'client pinned to its backend' && l.reason === reason),
        'logged once',
      );
      await a.end();
      // The backend is reset before its next client.
      await Promise.all(others.map((c) => c.end()));
      const next = await Promise.all([connect(proxy.port), connect(proxy.port)]);
      const after = await Promise.all(
        next.map(
          async (c) => (await c.query<{ v: string }>(`SELECT (${probe})::text AS v`)).rows[0]?.v,
        ),
      );
      t.same(after, [seen[0]?.values[0], seen[0]?.values[0]], 'after the reset, no trace of A');
      await Promise.all(next.map((c) => c.end()));
    },
  );
}

void t.test('with maxPreparedStatements: 0 a named Parse pins (prepared)', async (t) => {
  const proxy = await proxyFor(t, { maxPreparedStatements: 0 }, 2);
  const sql = postgresClient(proxy.port);
  t.teardown(() => sql.end({ timeout: 1 }));
  for (let i = 0; i < 3; i++) {
    const [row] = await sql`SELECT ${i}::int AS v`;
    t.same(row, { v: i });
  }
  t.match(
    await proxy.app.metrics.render(),
    /sidepool_postgres_pins_total\{[^}]*reason="prepared"\} 1/,
  );
});

void t.test(
  'onSessionState: error refuses session state with 0A000 and the client goes on',
  async (t) => {
    const proxy = await proxyFor(t, { onSessionState: 'error' }, 1);
    const c = await connect(proxy.port);
    await t.rejects(c.query('SET search_path = other'), { code: '0A000' });
    await t.rejects(
      c.query('SELECT $1::int, pg_advisory_lock(1)', [1]),
      { code: '0A000' },
      'extended protocol too',
    );
    t.same(
      (await c.query('SELECT current_setting($1) AS v', ['search_path'])).rows,
      [{ v: '"$user", public' }],
      'not applied',
    );
    await c.query('SET LOCAL search_path = other').catch(() => {});
    await c.query('BEGIN');
    await c.query('SET LOCAL search_path = other');
    t.same(
      (await c.query('SELECT current_setting($1) AS v', ['search_path'])).rows,
      [{ v: 'other' }],
      'SET LOCAL is fine',
    );
    await c.query('COMMIT');
    await c.end();
  },
);

void t.test(
  "a refusal inside a transaction block aborts it, as the server's own error would",
  async (t) => {
    await cluster.sql(`CREATE TABLE IF NOT EXISTS refused (v int)`, 'appdb');
    await cluster.sql(`ALTER TABLE refused OWNER TO app`, 'appdb');
    const proxy = await proxyFor(t, { onSessionState: 'error' }, 1);
    const c = await connect(proxy.port);
    for (const [i, refused] of [
      [1, () => c.query('SET search_path = other')],
      [2, () => c.query('SELECT $1::int, pg_advisory_lock(1)', [1])],
    ] as const) {
      await c.query('BEGIN');
      await c.query('INSERT INTO refused VALUES ($1)', [i]);
      await t.rejects(refused(), { code: '0A000' }, `refused (${i === 1 ? 'query' : 'extended'})`);
      await t.rejects(
        c.query('SELECT 1'),
        { code: '25P02' },
        'the block is aborted: commands are ignored until its end',
      );
      const commit = await c.query('COMMIT');
      t.equal(commit.command, 'ROLLBACK', 'COMMIT rolls back');
    }
    t.same((await c.query('SELECT count(*)::int AS n FROM refused')).rows, [{ n: 0 }]);
    t.same((await c.query('SELECT 2 AS after')).rows, [{ after: 2 }], 'and the client goes on');
    await c.end();
  },
);

void t.test(
  'a refusal in the middle of a pipeline comes in order, after the replies before it',
  async (t) => {
    const proxy = await proxyFor(t, { onSessionState: 'error', authType: 'trust' }, 1);
    const raw = await RawClient.login(proxy.port, 'app', 'appdb');
    raw.write(
      Buffer.concat([
        pgExtended('SELECT 1', false),
        pgExtended('SET search_path = other', false),
        pgExtended('SELECT 3', true),
        pgQuery('SELECT 4'),
      ]),
    );
    const replies = await raw.readUntil('Z', 2);
    t.same(
      replies.map((m) => m.code).join(''),
      '12DCEZTDCZ',
      'the first batch answered, then the refusal, the rest skipped to Sync, then the next query',
    );
    t.match(errorText(replies.find((m) => m.code === 'E') as RawMessage), /^0A000 /);
    raw.close();
  },
);
