import t from 'tap';
import { Framer, type FrameSink } from '../src/proxy/postgres/framer.js';
import {
  Code,
  message,
  query,
  readStartup,
  startupMessage,
  sync,
} from '../src/proxy/postgres/messages.js';
import { OutstandingQueue } from '../src/proxy/postgres/outstanding.js';
import {
  BackendStatements,
  ClientStatements,
  StatementRegistry,
} from '../src/proxy/postgres/prepared.js';
import { sessionEffect } from '../src/proxy/postgres/sql.js';

type Event = [string, number, string];

function recorder(refuse: (code: number) => boolean = () => false) {
  const events: Event[] = [];
  let streamed: Buffer[] = [];
  const sink: FrameSink = {
    message(code, msg) {
      if (refuse(code)) return false;
      events.push(['whole', code, msg.toString('latin1')]);
      return true;
    },
    streamStart(code) {
      if (refuse(code)) return false;
      streamed = [];
      return true;
    },
    streamBytes(bytes) {
      streamed.push(Buffer.from(bytes));
    },
    streamEnd(code) {
      events.push(['stream', code, Buffer.concat(streamed).toString('latin1')]);
    },
  };
  return { sink, events };
}

const decodeQueries = (code: number) => code === Code.Query || code === Code.Sync;

void t.test('messages split at every byte come out whole, streamed ones in order', (t) => {
  const bytes = Buffer.concat([
    query('SELECT 1'),
    message(Code.Bind, Buffer.alloc(300, 7)),
    sync(),
    query('SELECT 2'),
  ]);
  for (const step of [1, 2, 3, 5, 7, 64, bytes.length]) {
    const { sink, events } = recorder();
    const framer = new Framer(sink, { decode: decodeQueries, maxDecoded: 1024 });
    for (let i = 0; i < bytes.length; i += step) t.ok(framer.push(bytes.subarray(i, i + step)));
    t.same(
      events.map(([kind, code, text]) => [kind, code, text.length]),
      [
        ['whole', Code.Query, 14],
        ['stream', Code.Bind, 305],
        ['whole', Code.Sync, 5],
        ['whole', Code.Query, 14],
      ],
      `chunks of ${step}`,
    );
    t.equal(
      Buffer.from(events[1]?.[2] ?? '', 'latin1').equals(message(Code.Bind, Buffer.alloc(300, 7))),
      true,
    );
    t.ok(framer.atBoundary);
  }
  t.end();
});

void t.test('a message the sink refuses is held and delivered again on resume', (t) => {
  let refusing = true;
  const { sink, events } = recorder((code) => refusing && code === Code.Query);
  const framer = new Framer(sink, { decode: decodeQueries, maxDecoded: 1024 });
  t.equal(framer.push(Buffer.concat([sync(), query('x'), sync()])), false);
  t.same(
    events.map((e) => e[1]),
    [Code.Sync],
  );
  t.ok(framer.isPaused);
  refusing = false;
  t.equal(framer.resume(), true);
  t.same(
    events.map((e) => e[1]),
    [Code.Sync, Code.Query, Code.Sync],
  );
  t.end();
});

void t.test('lengths below 4, above the bounds, and oversized decoded messages throw', (t) => {
  const bad = (buf: Buffer, options = {}) => {
    const framer = new Framer(recorder().sink, {
      decode: decodeQueries,
      maxDecoded: 64,
      ...options,
    });
    return () => framer.push(buf);
  };
  t.throws(bad(Buffer.from([Code.Query, 0, 0, 0, 3])), { code: 'SIDEPOOL_PG_PROTOCOL' });
  t.throws(bad(Buffer.from([Code.Query, 0xff, 0xff, 0xff, 0xff])), {
    code: 'SIDEPOOL_PG_PROTOCOL',
  });
  t.throws(bad(query('x'.repeat(100))), { code: 'SIDEPOOL_PG_PROTOCOL' });
  t.throws(bad(Buffer.from([Code.Bind, 0x40, 0, 0, 0])), { code: 'SIDEPOOL_PG_PROTOCOL' });
  t.throws(bad(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0]), { untypedFirst: true }), {
    code: 'SIDEPOOL_PG_PROTOCOL',
  });
  t.end();
});

void t.test('the startup packet has no type byte; then typed messages follow', (t) => {
  const { sink, events } = recorder();
  const framer = new Framer(sink, { decode: () => true, maxDecoded: 10_000, untypedFirst: true });
  const startup = startupMessage(
    new Map([
      ['user', 'u'],
      ['database', 'd'],
    ]),
  );
  framer.push(Buffer.concat([startup, query('SELECT 1')]));
  t.same(
    events.map((e) => e[1]),
    [0, Code.Query],
  );
  const parsed = readStartup(Buffer.from(events[0]?.[2] ?? '', 'latin1'));
  t.same(parsed, {
    kind: 'startup',
    minor: 0,
    params: new Map([
      ['user', 'u'],
      ['database', 'd'],
    ]),
    options: [],
  });
  t.throws(() => readStartup(Buffer.from([0, 0, 0, 12, 0, 3, 0, 0, 0x75, 0x00, 0x76, 0x00])), {
    code: 'SIDEPOOL_PG_PROTOCOL',
  });
  t.end();
});

void t.test('the outstanding queue: replies complete requests in order', (t) => {
  const q = new OutstandingQueue();
  for (const code of [Code.Parse, Code.Bind, Code.Describe, Code.Execute, Code.Sync]) q.push(code);
  t.equal(q.reply(Code.ParseComplete)?.code, Code.Parse);
  t.equal(q.reply(Code.BindComplete)?.code, Code.Bind);
  t.equal(q.reply(Code.RowDescription)?.code, Code.Describe);
  q.reply(Code.DataRow);
  t.equal(q.size, 2);
  t.equal(q.reply(Code.CommandComplete)?.code, Code.Execute);
  t.equal(q.reply(Code.NoticeResponse), undefined);
  t.equal(q.reply(Code.ReadyForQuery)?.code, Code.Sync);
  t.ok(q.isEmpty);

  // An error skips the requests up to the next Sync; two pipelined Syncs each get a ReadyForQuery.
  for (const code of [
    Code.Parse,
    Code.Bind,
    Code.Execute,
    Code.Sync,
    Code.Bind,
    Code.Execute,
    Code.Sync,
  ])
    q.push(code);
  q.reply(Code.ErrorResponse);
  t.equal(q.size, 4);
  t.equal(q.reply(Code.ReadyForQuery)?.code, Code.Sync);
  q.reply(Code.BindComplete);
  q.reply(Code.CommandComplete);
  t.equal(q.reply(Code.ReadyForQuery)?.code, Code.Sync);
  t.ok(q.isEmpty);

  // An error before the client sent its Sync: what it sends until then gets no reply.
  q.push(Code.Parse);
  q.reply(Code.ErrorResponse);
  q.push(Code.Bind);
  q.push(Code.Execute);
  t.ok(q.isEmpty);
  q.push(Code.Sync);
  t.equal(q.reply(Code.ReadyForQuery)?.code, Code.Sync);

  // COPY FROM STDIN by Execute: the blind Sync is ignored by the server; the one after CopyDone counts.
  for (const code of [Code.Parse, Code.Bind, Code.Execute, Code.Sync]) q.push(code);
  q.reply(Code.ParseComplete);
  q.reply(Code.BindComplete);
  q.reply(Code.CopyInResponse);
  t.equal(q.size, 1);
  q.push(Code.Sync);
  t.equal(q.size, 1);
  q.copyInEnded();
  q.push(Code.Sync);
  t.equal(q.reply(Code.CommandComplete)?.code, Code.Execute);
  t.equal(q.reply(Code.ReadyForQuery)?.code, Code.Sync);
  t.ok(q.isEmpty);

  // A simple query keeps its request until ReadyForQuery, errors included.
  q.push(Code.Query);
  q.reply(Code.ErrorResponse);
  t.equal(q.size, 1);
  q.reply(Code.ReadyForQuery);
  t.ok(q.isEmpty);
  t.end();
});

void t.test('session effects of SQL', (t) => {
  const pin = (sql: string) => sessionEffect(sql)?.pin?.reason;
  t.equal(pin('SELECT 1'), undefined);
  t.equal(pin('SET search_path = foo'), 'set');
  t.equal(pin('set SESSION statement_timeout to 5'), 'set');
  t.equal(pin('SET LOCAL search_path = foo'), undefined);
  t.equal(pin('SET application_name = x'), undefined);
  t.equal(pin('SET TIME ZONE UTC'), undefined);
  t.equal(pin('SET TRANSACTION ISOLATION LEVEL SERIALIZABLE'), undefined);
  t.equal(pin('SET SESSION AUTHORIZATION bob'), 'set');
  t.equal(pin('SET ROLE bob'), 'set');
  t.equal(pin('SET myapp.user = 1'), 'set');
  t.equal(pin('RESET search_path'), 'set');
  t.equal(pin('RESET ALL'), undefined);
  t.equal(sessionEffect('DISCARD ALL')?.resetsParameters, true);
  t.equal(pin('LISTEN chan'), 'listen');
  t.equal(
    pin("SELECT 'LISTEN x', $$SET x = 1$$ -- SET y = 2\n /* LISTEN /* nested */ z */"),
    undefined,
  );
  t.equal(pin('SELECT pg_advisory_lock(1)'), 'advisory_lock');
  t.equal(pin('SELECT pg_try_advisory_lock_shared(1)'), 'advisory_lock');
  t.equal(pin('SELECT pg_advisory_xact_lock(1)'), undefined);
  t.equal(pin('PREPARE q AS SELECT 1'), 'prepare');
  t.equal(pin("PREPARE TRANSACTION 'x'"), undefined);
  t.equal(pin('DECLARE c CURSOR WITH HOLD FOR SELECT 1'), 'cursor_with_hold');
  t.equal(pin('DECLARE c CURSOR FOR SELECT 1'), undefined);
  t.equal(pin('CREATE TEMP TABLE t (a int)'), 'temp_table');
  t.equal(pin('create temporary table t (a int) on commit drop'), undefined);
  t.equal(pin('CREATE TABLE t (a int)'), undefined);
  t.equal(pin("SELECT set_config('search_path', 'x', false)"), 'set');
  t.equal(pin("SELECT set_config('request.jwt', 'x', true)"), undefined);
  t.equal(pin('BEGIN; SELECT 1; SET search_path = x; COMMIT'), 'set');
  t.equal(pin("SELECT \"LISTEN\" FROM t; select E'\\' LISTEN'"), undefined);
  t.end();
});

void t.test('the outstanding queue tells each request what became of it', (t) => {
  const q = new OutstandingQueue();
  const told: string[] = [];
  const tell = (what: string) => (ok: boolean) => told.push(`${what}:${ok}`);
  q.push(Code.Close, 'answer', Buffer.alloc(0), tell('close'));
  q.push(Code.Parse, 'forward', undefined, tell('parse'));
  q.push(Code.Bind, 'forward', undefined, tell('bind'));
  q.push(Code.Sync);
  q.push(Code.Parse, 'swallow', undefined, tell('injected'));
  q.push(Code.Sync);
  q.reply(Code.ReadyForQuery); // the answer, popped as the session does
  q.reply(Code.ErrorResponse); // the Parse failed: the Bind is skipped
  t.same(told, ['close:true', 'bind:false', 'parse:false'], 'skipped ones undone last first');
  q.reply(Code.ReadyForQuery);
  q.reply(Code.ParseComplete);
  t.same(told.at(-1), 'injected:true');
  q.reply(Code.ReadyForQuery);
  t.ok(q.isEmpty);
  // Pushed while the server skips to Sync: never sent a reply, undone at once.
  q.push(Code.Parse);
  q.reply(Code.ErrorResponse);
  t.ok(q.isSkipping);
  q.push(Code.Parse, 'forward', undefined, tell('late'));
  t.same(told.at(-1), 'late:false');
  t.end();
});

void t.test('prepared statements: one shared name per text, caps, and the backend LRU', (t) => {
  t.equal(sessionEffect('DEALLOCATE ALL')?.dropsStatements, true);
  t.equal(sessionEffect('deallocate prepare all')?.dropsStatements, true);
  t.equal(sessionEffect('DISCARD ALL')?.dropsStatements, true);
  t.equal(sessionEffect('DEALLOCATE q')?.deallocates, 'q');
  t.equal(sessionEffect('deallocate prepare A1;')?.deallocates, 'a1', 'unquoted names fold');
  t.equal(sessionEffect('DEALLOCATE "A1"')?.deallocates, 'A1', 'quoted names keep their case');
  t.equal(sessionEffect('DEALLOCATE q; SELECT 1'), undefined, 'only a lone DEALLOCATE');
  t.equal(sessionEffect('DEALLOCATE ALL')?.deallocates, undefined);
  const registry = new StatementRegistry(10_000);
  const a = new ClientStatements(registry, 5_000);
  const b = new ClientStatements(registry, 5_000);
  const body = (sql: string) => Buffer.from(`${sql}\0\0\0`, 'latin1');
  const sa = a.record('q', body('SELECT 1'));
  const sb = b.record('other', body('SELECT 1'));
  t.equal(sa, sb, 'the same text and types share one statement');
  const sc = b.record('q', body('SELECT 2'));
  t.not(sc, sa, 'one name, another text: another statement');
  t.equal(registry.size, 2);
  a.clear();
  t.equal(registry.size, 2, 'still used by b');
  b.clear();
  t.equal(registry.size, 0);
  t.equal(registry.bytes, 0);
  t.equal(a.record('big', body('x'.repeat(6_000))), 'client_bytes');
  const c = new ClientStatements(registry, 100_000);
  t.equal(c.record('huge', body('y'.repeat(20_000))), 'total_bytes');
  t.equal(registry.bytes, 0, 'nothing kept for refused statements');

  const count = { onBackends: 0 };
  const lru = new BackendStatements();
  lru.countIn(count);
  t.same(lru.add('s1', 2), []);
  t.same(lru.add('s2', 2), []);
  t.ok(lru.use('s1'), 's1 used: now the most recent');
  t.same(lru.add('s3', 2), ['s2'], 'the least recently used goes');
  t.equal(count.onBackends, 2);
  lru.restore('s2');
  t.equal(count.onBackends, 3);
  lru.clear();
  t.equal(count.onBackends, 0);
  t.end();
});
