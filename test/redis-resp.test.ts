import t from 'tap';
import {
  BLOCKING,
  CLIENT,
  FORWARD,
  SUBSCRIBE,
  lookupCommand,
  xreadBlocks,
} from '../src/proxy/redis/commands.js';
import {
  FRAME_COMMAND,
  FRAME_EMPTY,
  FRAME_ERROR,
  FRAME_LARGE,
  FRAME_NEED_MORE,
  REPLY_BAD,
  REPLY_MORE,
  ReplyFramer,
  RequestFramer,
  commandArgs,
  encodeCommand,
  splitArgs,
} from '../src/proxy/redis/resp.js';

interface Framed {
  kind: 'command' | 'empty' | 'error' | 'large';
  bytes?: string;
  command?: number;
  argc?: number;
  inline?: string[];
  error?: string;
  /** For a large command: every byte of it, as streamed. */
  streamed?: string;
}

/** Feeds `chunks` to a framer as separate reads; returns what it found, in order. */
function frame(chunks: Buffer[], largeAt = 64 * 1024, unauthenticated = false): Framed[] {
  const framer = new RequestFramer(lookupCommand, largeAt);
  framer.unauthenticated = unauthenticated;
  const out: Framed[] = [];
  let large: Buffer[] | undefined;
  for (const chunk of chunks) {
    let pos = 0;
    while (pos < chunk.length) {
      const r = framer.next(chunk, pos);
      if (large !== undefined) {
        if (r === FRAME_ERROR) {
          out.push({ kind: 'error', error: framer.error });
          return out;
        }
        large.push(chunk.subarray(framer.start, framer.end));
        if (r === FRAME_NEED_MORE) break;
        (out[out.length - 1] as Framed).streamed = Buffer.concat(large).toString('latin1');
        large = undefined;
        pos = framer.end;
        continue;
      }
      if (r === FRAME_NEED_MORE) break;
      if (r === FRAME_ERROR) {
        out.push({ kind: 'error', error: framer.error });
        return out;
      }
      if (r === FRAME_EMPTY) {
        out.push({ kind: 'empty' });
        pos = framer.end;
        continue;
      }
      if (r === FRAME_LARGE) {
        out.push({ kind: 'large', command: framer.command, argc: framer.argc });
        large = [...(framer.pieces ?? [])];
        pos = framer.end;
        continue;
      }
      if (r !== FRAME_COMMAND) throw new Error(`unexpected frame code ${r}`);
      const bytes =
        framer.pieces === undefined
          ? chunk.subarray(framer.start, framer.end)
          : Buffer.concat(framer.pieces);
      out.push({
        kind: 'command',
        bytes: framer.inline === undefined ? bytes.toString('latin1') : undefined,
        command: framer.command,
        argc: framer.argc,
        inline: framer.inline?.map((a) => a.toString('latin1')),
      });
      if (framer.inline === undefined && framer.size !== bytes.length) {
        throw new Error(`size ${framer.size} for ${bytes.length} bytes`);
      }
      pos = framer.end;
    }
  }
  return out;
}

/** Every way of cutting `bytes` into two reads, and one read per byte. */
function cuts(bytes: Buffer): Buffer[][] {
  const ways: Buffer[][] = [[bytes]];
  for (let i = 1; i < bytes.length; i++) ways.push([bytes.subarray(0, i), bytes.subarray(i)]);
  ways.push([...bytes].map((b) => Buffer.from([b])));
  return ways;
}

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

void t.test('multibulk commands are framed the same however the reads cut them', (t) => {
  const input = b(
    '*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$6\r\nclient\r\n*0\r\n*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n',
  );
  for (const chunks of cuts(input)) {
    t.same(
      frame(chunks),
      [
        { kind: 'command', bytes: '*2\r\n$3\r\nGET\r\n$1\r\nk\r\n', command: FORWARD, argc: 2 },
        { kind: 'command', bytes: '*1\r\n$6\r\nclient\r\n', command: CLIENT, argc: 1 },
        { kind: 'empty' },
        {
          kind: 'command',
          bytes: '*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n',
          command: BLOCKING,
          argc: 3,
        },
      ],
      `cut into ${chunks.length}`,
    );
  }
  t.end();
});

void t.test('inline commands split like redis-server', (t) => {
  const input = b(
    'PING\r\nset k "a b\\x41\\n" \r\n\r\n   \r\nsubscribe \'it\\\'s\' x\nECHO ab"c d"\r\n',
  );
  for (const chunks of cuts(input)) {
    t.same(
      frame(chunks).map((f) => [f.kind, f.inline, f.command]),
      [
        ['command', ['PING'], 5],
        ['command', ['set', 'k', 'a bA\n'], FORWARD],
        ['empty', undefined, undefined],
        ['empty', undefined, undefined],
        ['command', ['subscribe', "it's", 'x'], SUBSCRIBE],
        ['command', ['ECHO', 'abc d'], FORWARD],
      ],
    );
  }
  t.same(splitArgs(b('"a"b')), undefined, 'closing quote not followed by a blank');
  t.same(splitArgs(b("'a")), undefined, 'unterminated single quote');
  t.same(splitArgs(b('"a\\')), undefined, 'unterminated double quote after a backslash');
  t.same(
    (splitArgs(b('"\\t\\r\\b\\a\\q\\"" x')) as Buffer[]).map((a) => [...a]),
    [[9, 13, 8, 7, 113, 34], [120]],
  );
  t.equal(typeof splitArgs(b('a\0b')), 'string', 'NUL refused');
  t.end();
});

void t.test('malformed requests get redis-server words, and nothing after them is read', (t) => {
  const cases: Array<[string, string]> = [
    ['*1\r\n:4\r\n', "Protocol error: expected '$', got ':'"],
    ['*1\r\n$-1\r\n', 'Protocol error: invalid bulk length'],
    ['*1\r\n$600000000\r\n', 'Protocol error: invalid bulk length'],
    ['*1\r\n$+4\r\nPING\r\n', 'Protocol error: invalid bulk length'],
    ['*1\r\n$04\r\nPING\r\n', 'Protocol error: invalid bulk length'],
    ['*1\r\n$\r\n', 'Protocol error: invalid bulk length'],
    ['*1x\r\n', 'Protocol error: invalid multibulk length'],
    ['*01\r\n', 'Protocol error: invalid multibulk length'],
    ['*-0\r\n', 'Protocol error: invalid multibulk length'],
    ['*+1\r\n', 'Protocol error: invalid multibulk length'],
    ['*3000000000\r\n', 'Protocol error: invalid multibulk length'],
    ['*99999999999999999999\r\n', 'Protocol error: invalid multibulk length'],
    ['*1\rx', 'Protocol error: invalid multibulk length'],
    ['*1\r\n$4\rxPING', 'Protocol error: invalid bulk length'],
    ['*1\r\n$4\r\nPINGxx', 'Protocol error: expected CRLF after bulk data'],
    ['*1\r\n$4\r\nPING\rx', 'Protocol error: expected CRLF after bulk data'],
    ['*1\r\n$2000\r\n', 'Protocol error: command name longer than 1024 bytes'],
    ['SET "a b\r\n', 'Protocol error: unbalanced quotes in request'],
    ['SET a\0b\r\n', 'Protocol error: NUL byte in inline request'],
  ];
  for (const [input, error] of cases) {
    for (const chunks of cuts(b(input))) {
      t.same(frame(chunks).at(-1), { kind: 'error', error }, JSON.stringify(input));
    }
  }
  t.same(frame([b('x'.repeat(64 * 1024 + 1))]), [
    { kind: 'error', error: 'Protocol error: too big inline request' },
  ]);
  t.same(frame([b('x'.repeat(40 * 1024)), b('x'.repeat(40 * 1024))]), [
    { kind: 'error', error: 'Protocol error: too big inline request' },
  ]);
  t.same(frame([b('*11\r\n')], undefined, true), [
    { kind: 'error', error: 'Protocol error: unauthenticated multibulk length' },
  ]);
  t.same(frame([b('*2\r\n$4\r\nAUTH\r\n$16385\r\n')], undefined, true), [
    { kind: 'error', error: 'Protocol error: unauthenticated bulk length' },
  ]);
  t.same(frame([b('a b c d e f g h i j k\r\n')], undefined, true), [
    { kind: 'error', error: 'Protocol error: unauthenticated multibulk length' },
  ]);
  t.same(frame([b(`${'x'.repeat(1025)} a\r\n`)]), [
    { kind: 'error', error: 'Protocol error: command name longer than 1024 bytes' },
  ]);
  t.same(
    frame([b('*-5\r\n*1\r\n$4\r\nPING\r\n')]).map((f) => f.kind),
    ['empty', 'command'],
  );
  t.end();
});

void t.test('a command over the limit is reported large, then streamed to its end', (t) => {
  const value = Buffer.alloc(300_000, 'v');
  const command = encodeCommand(['SET', 'key', value]);
  const after = b('*1\r\n$4\r\nPING\r\n');
  const input = Buffer.concat([command, after]);
  for (const size of [7, 4096, 65536, input.length]) {
    const chunks: Buffer[] = [];
    for (let i = 0; i < input.length; i += size) chunks.push(input.subarray(i, i + size));
    const out = frame(chunks, 1024);
    t.equal(out.length, 2, `read size ${size}`);
    t.equal(out[0]?.kind, 'large');
    t.equal(out[0]?.argc, 3);
    t.equal(out[0]?.streamed, command.toString('latin1'), 'every byte streamed once');
    t.equal(out[1]?.bytes, after.toString('latin1'));
  }
  // Many small arguments add up past the limit inside one read sequence.
  const many = encodeCommand(['DEL', ...Array.from({ length: 500 }, (_, i) => `k${i}`)]);
  const out = frame([many.subarray(0, 3000), many.subarray(3000)], 1024);
  t.equal(out[0]?.kind, 'large');
  t.equal(out[0]?.streamed, many.toString('latin1'));
  // A protocol error inside the streamed part ends it.
  const bad = frame(
    [b('*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n'), Buffer.alloc(2000, 'v'), b('xx')],
    1024,
  );
  t.same(bad.at(-1), { kind: 'error', error: 'Protocol error: expected CRLF after bulk data' });
  t.end();
});

void t.test('command names are found in any case, with no string made', (t) => {
  t.equal(lookupCommand(b('xblpopx'), 1, 5), BLOCKING);
  t.equal(lookupCommand(b('bLpOp'), 0, 5), BLOCKING);
  t.equal(lookupCommand(b('BLPOQ'), 0, 5), FORWARD);
  t.equal(lookupCommand(b('B\x4cPOP'), 0, 5), BLOCKING);
  t.equal(lookupCommand(b('B\xccPOP'), 0, 5), FORWARD, 'a byte with the high bit is no letter');
  t.equal(lookupCommand(b('GET'), 0, 3), FORWARD);
  t.equal(lookupCommand(b('x'.repeat(40)), 0, 40), FORWARD);
  t.ok(xreadBlocks([b('XREAD'), b('count'), b('1'), b('block'), b('0'), b('STREAMS')]));
  t.notOk(xreadBlocks([b('XREAD'), b('STREAMS'), b('block'), b('0')]));
  t.notOk(xreadBlocks([b('XREAD')]));
  t.same(
    commandArgs(encodeCommand(['SET', 'k', Buffer.from('a\r\nb')])).map((a) => a.toString()),
    ['SET', 'k', 'a\r\nb'],
  );
  t.end();
});

/** Feeds chunks to a reply framer; returns the type byte of each complete value. */
function replies(chunks: Buffer[]): Array<{ type: string; reset: boolean; bytes: string }> {
  const framer = new ReplyFramer();
  const out: Array<{ type: string; reset: boolean; bytes: string }> = [];
  let current: Buffer[] = [];
  for (const chunk of chunks) {
    let pos = 0;
    while (pos < chunk.length) {
      const end = framer.next(chunk, pos);
      if (end === REPLY_BAD) {
        out.push({ type: 'bad', reset: false, bytes: framer.error });
        return out;
      }
      if (end === REPLY_MORE) {
        current.push(chunk.subarray(pos));
        break;
      }
      current.push(chunk.subarray(pos, end));
      out.push({
        type: String.fromCharCode(framer.type),
        reset: framer.isReset,
        bytes: Buffer.concat(current).toString('latin1'),
      });
      current = [];
      pos = end;
    }
  }
  if (framer.midValue) out.push({ type: 'partial', reset: false, bytes: '' });
  return out;
}

void t.test('replies of every RESP2 and RESP3 type are framed however the reads cut them', (t) => {
  const values = [
    '+OK\r\n',
    '+RESET\r\n',
    '+RESETX\r\n',
    '-ERR bad\r\n',
    ':42\r\n',
    '$3\r\nb\r\n\r\n',
    '$-1\r\n',
    '$0\r\n\r\n',
    '*-1\r\n',
    '*0\r\n',
    '*3\r\n:1\r\n*2\r\n$1\r\na\r\n*0\r\n+x\r\n',
    '%2\r\n+a\r\n:1\r\n+b\r\n~1\r\n,1.5\r\n',
    '>3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n',
    '_\r\n',
    '#t\r\n',
    '(123456789012345678901234567890\r\n',
    '!3\r\nERR\r\n',
    '=7\r\ntxt:abc\r\n',
    '|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n',
    '*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n',
    '$?\r\n;2\r\nab\r\n;1\r\nc\r\n;0\r\n',
    '*?\r\n:1\r\n*?\r\n.\r\n.\r\n',
    '|0\r\n:5\r\n',
  ];
  const input = b(values.join(''));
  const expected = values.map((v) => ({
    type: v[0] === '|' ? (v === '|0\r\n:5\r\n' ? ':' : '$') : (v[0] as string),
    reset: v === '+RESET\r\n',
    bytes: v,
  }));
  for (const chunks of cuts(input)) t.same(replies(chunks), expected, `cut into ${chunks.length}`);
  t.end();
});

void t.test('a reply bulk is skipped, not held, and bad replies are named', (t) => {
  const framer = new ReplyFramer();
  t.equal(framer.next(b('$10000000\r\n'), 0), REPLY_MORE);
  t.equal(framer.next(Buffer.alloc(9_999_999), 0), REPLY_MORE);
  t.ok(framer.midValue);
  t.equal(framer.next(b('x\r\n+OK\r\n'), 0), 3);
  t.equal(framer.next(b('x\r\n+OK\r\n'), 3), 8);
  t.notOk(framer.midValue);
  for (const bad of [
    '?\r\n',
    '$x\r\n',
    '$\r\n',
    '*1\r\n.\r\n',
    '$1\rx',
    '$?\r\n:1\r\n',
    '$--1\r\n',
  ]) {
    t.equal(replies([b(bad)]).at(-1)?.type, 'bad', JSON.stringify(bad));
  }
  let deep = '';
  for (let i = 0; i < 1100; i++) deep += '*1\r\n';
  t.equal(replies([b(deep)]).at(-1)?.type, 'bad', 'nesting bounded');
  t.end();
});
