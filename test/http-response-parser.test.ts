import t from 'tap';
import {
  MAX_INTERIM_RESPONSES,
  ResponseParser,
  type BodyKind,
  type ResponseHandler,
  type ResponseHead,
} from '../src/proxy/http/response-parser.js';

/** Records what the parser reports; `kind` decides the body of each final head. */
class Recorder implements ResponseHandler {
  interim: ResponseHead[] = [];
  head: ResponseHead | undefined;
  body: Buffer[] = [];
  trailers: string[] | undefined;
  complete = false;
  rest: Buffer | undefined;

  constructor(private readonly kind: BodyKind = 'message') {}

  onInterim(head: ResponseHead): void {
    this.interim.push(head);
  }

  onHead(head: ResponseHead): BodyKind {
    this.head = head;
    return this.kind;
  }

  onBody(chunk: Buffer): void {
    this.body.push(Buffer.from(chunk));
  }

  onTrailers(raw: string[]): void {
    this.trailers = raw;
  }

  onComplete(rest: Buffer | undefined): void {
    this.complete = true;
    this.rest = rest;
  }

  get text(): string {
    return Buffer.concat(this.body).toString('latin1');
  }
}

/** Feeds `text` whole, then byte by byte: both must give the same result. */
function parseBoth(text: string, kind: BodyKind = 'message', end = false) {
  const results = [1_000_000, 1, 3].map((step) => {
    const recorder = new Recorder(kind);
    const parser = new ResponseParser(recorder);
    const bytes = Buffer.from(text, 'latin1');
    let error: string | undefined;
    for (let i = 0; i < bytes.length && error === undefined; i += step) {
      error = parser.execute(bytes.subarray(i, i + step))?.problem;
    }
    if (end && error === undefined) error = parser.finish()?.problem;
    return { recorder, error, parser };
  });
  const [whole, ...split] = results as [(typeof results)[0], ...typeof results];
  for (const other of split) {
    if (
      (other.error === undefined) !== (whole.error === undefined) ||
      other.recorder.text !== whole.recorder.text ||
      other.recorder.complete !== whole.recorder.complete
    ) {
      throw new Error(`split feeding differs: ${JSON.stringify([whole.error, other.error])}`);
    }
  }
  return whole;
}

void t.test('Content-Length body, keep-alive, Keep-Alive timeout', (t) => {
  const { recorder, error } = parseBoth(
    'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=7, max=100\r\nX-A:  spaced value  \r\n\r\nhello',
  );
  t.equal(error, undefined);
  t.equal(recorder.head?.statusCode, 200);
  t.equal(recorder.head?.statusMessage, 'OK');
  t.equal(recorder.head?.contentLength, 5);
  t.equal(recorder.head?.keepAlive, true);
  t.equal(recorder.head?.keepAliveTimeout, 7);
  t.same(recorder.head?.rawHeaders.slice(4), ['X-A', 'spaced value']);
  t.equal(recorder.text, 'hello');
  t.equal(recorder.complete, true);
  t.equal(recorder.rest, undefined);
  t.end();
});

void t.test('chunked body with extensions and trailers', (t) => {
  const { recorder, error } = parseBoth(
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n',
  );
  t.equal(error, undefined);
  t.equal(recorder.head?.chunked, true);
  t.equal(recorder.head?.transferEncoding, undefined, 'plain chunked is not kept');
  t.equal(recorder.text, 'hello world');
  t.same(recorder.trailers, ['X-Checksum', 'abc', 'X-More', '1']);
  t.equal(recorder.complete, true);
  t.end();
});

void t.test('a body delimited by the close of the connection', (t) => {
  const { recorder, error, parser } = parseBoth(
    'HTTP/1.1 200 OK\r\n\r\nuntil the end',
    'message',
    true,
  );
  t.equal(error, undefined);
  t.equal(recorder.text, 'until the end');
  t.equal(recorder.complete, true);
  t.equal(parser.done, true);
  const http10 = parseBoth('HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok');
  t.equal(http10.recorder.head?.keepAlive, false, 'HTTP/1.0 without keep-alive');
  const http10ka = parseBoth(
    'HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n',
  );
  t.equal(http10ka.recorder.head?.keepAlive, true, 'HTTP/1.0 with keep-alive');
  const close = parseBoth(
    'HTTP/1.1 200 OK\r\nConnection: close, X-Foo\r\nContent-Length: 0\r\n\r\n',
  );
  t.equal(close.recorder.head?.keepAlive, false);
  t.same(close.recorder.head?.connectionTokens, ['close', 'x-foo']);
  t.end();
});

void t.test('no body: HEAD, 204, 304, and a zero length', (t) => {
  for (const text of [
    'HTTP/1.1 204 No Content\r\n\r\n',
    'HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n',
  ]) {
    const { recorder } = parseBoth(text, 'none');
    t.equal(recorder.complete, true, text.slice(0, 16));
    t.equal(recorder.text, '');
  }
  const zero = parseBoth('HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n');
  t.equal(zero.recorder.complete, true);
  t.end();
});

void t.test('1xx interim responses, then the final one', (t) => {
  const { recorder } = parseBoth(
    'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
  );
  t.same(
    recorder.interim.map((h) => h.statusCode),
    [100, 103],
  );
  t.equal(recorder.head?.statusCode, 200);
  t.equal(recorder.text, 'ok');
  t.end();
});

void t.test('at most MAX_INTERIM_RESPONSES interim responses before the final one', (t) => {
  const interim = 'HTTP/1.1 102 Processing\r\n\r\n';
  const final = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok';
  const within = new Recorder();
  const atLimit = new ResponseParser(within).execute(
    Buffer.from(interim.repeat(MAX_INTERIM_RESPONSES) + final, 'latin1'),
  );
  t.equal(atLimit, undefined);
  t.equal(within.interim.length, MAX_INTERIM_RESPONSES);
  t.equal(within.text, 'ok');
  const over = new Recorder();
  const error = new ResponseParser(over).execute(
    Buffer.from(interim.repeat(MAX_INTERIM_RESPONSES + 1) + final, 'latin1'),
  );
  t.match(error?.problem, /interim/);
  t.equal(over.interim.length, MAX_INTERIM_RESPONSES, 'the one too many is not passed on');
  t.equal(over.head, undefined);
  t.end();
});

void t.test('a switch to another protocol hands over the bytes after the head', (t) => {
  const recorder = new Recorder('tunnel');
  const parser = new ResponseParser(recorder);
  const error = parser.execute(
    Buffer.from(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi',
      'latin1',
    ),
  );
  t.equal(error, undefined);
  t.equal(recorder.head?.statusCode, 101);
  t.equal(recorder.complete, true);
  t.equal(recorder.rest?.toString('latin1'), '\x81\x02hi');
  t.equal(
    recorder.head?.rawBytes.toString(),
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n',
  );
  t.end();
});

void t.test('bytes after a complete response are reported, not taken as the next one', (t) => {
  const recorder = new Recorder();
  const parser = new ResponseParser(recorder);
  t.equal(
    parser.execute(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA')),
    undefined,
  );
  t.equal(recorder.text, 'ok');
  t.equal(recorder.rest?.toString(), 'EXTRA');
  t.not(parser.execute(Buffer.from('later')), undefined, 'a later read is an error');
  t.end();
});

void t.test('malformed responses are errors', (t) => {
  const cases: Record<string, string> = {
    'bad status line': 'HTTP/1.1 2000 OK\r\n\r\n',
    'HTTP/2': 'HTTP/2.0 200 OK\r\n\r\n',
    'not HTTP': 'SSH-2.0-OpenSSH\r\n\r\n',
    'both framings':
      'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    'differing lengths': 'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd',
    'a length list': 'HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc',
    'negative length': 'HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n',
    'chunked not last': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n',
    'TE in HTTP/1.0': 'HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
    'obsolete folding': 'HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n',
    'space before colon': 'HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n',
    'bare LF in the head': 'HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n',
    'bare CR in a value': 'HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n',
    'NUL in a value': 'HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n',
    'bad chunk size': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
    'chunk size overflow':
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\n',
    'chunk without CRLF':
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n',
    'chunk size bare LF': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n',
    'bad trailer': 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n',
  };
  for (const [name, text] of Object.entries(cases)) {
    const { error } = parseBoth(text);
    t.not(error, undefined, name);
  }
  const parser = new ResponseParser(new Recorder());
  t.equal(
    parser.execute(Buffer.from('HTTP/1.1 99 Odd\r\n\r\n'))?.code,
    'SIDEPOOL_HTTP_BAD_RESPONSE',
  );
  t.end();
});

void t.test('a head or body cut short by the close is an error; limits hold', (t) => {
  t.not(parseBoth('HTTP/1.1 200 OK\r\nContent-Le', 'message', true).error, undefined);
  t.not(
    parseBoth('HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc', 'message', true).error,
    undefined,
  );
  t.not(
    parseBoth('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n', 'message', true)
      .error,
    undefined,
  );
  const huge = `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(70 * 1024)}\r\n\r\n`;
  t.not(parseBoth(huge).error, undefined, 'a head over 64 KiB');
  const parser = new ResponseParser(new Recorder());
  t.not(parser.execute(Buffer.from('x'.repeat(70 * 1024))), undefined, 'no head end in 64 KiB');
  t.equal(
    parser.execute(Buffer.from('more')),
    parser.execute(Buffer.from('more')),
    'the error sticks',
  );
  t.end();
});

void t.test('empty lines before the status line are skipped', (t) => {
  const { recorder, error } = parseBoth('\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx');
  t.equal(error, undefined);
  t.equal(recorder.text, 'x');
  t.end();
});
