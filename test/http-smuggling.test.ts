import t from 'tap';
import { startProxy } from './helpers/app.js';
import { metric, parseMetrics } from './helpers/http.js';
import { fetchHttp, rawRequest, statuses } from './helpers/http-upstream.js';
import { startServer, until } from './helpers/util.js';

/**
 * Request smuggling: each request is ambiguous or malformed in framing or syntax. Each
 * must get 400 (501 or 505 where named) and a closed connection, and no byte of any of
 * them may reach the upstream.
 */
const CORPUS: Record<string, [string, number?]> = {
  'Content-Length and Transfer-Encoding': [
    'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
  ],
  'Transfer-Encoding and Content-Length': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n',
  ],
  'differing duplicate Content-Length': [
    'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde',
  ],
  'duplicate Content-Length': [
    'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd',
  ],
  'Content-Length list': ['POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd'],
  'negative Content-Length': ['POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n'],
  'signed Content-Length': ['POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd'],
  'space before the colon': ['POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\n\r\nabcd'],
  'Transfer-Encoding space before colon': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n',
  ],
  'bad chunk size': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n',
  ],
  'chunk size overflow': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nabc\r\n0\r\n\r\n',
  ],
  'negative chunk size': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n',
  ],
  'space after chunk size': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n',
  ],
  'chunk data without CRLF': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n',
  ],
  'bare LF after chunk size': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n',
  ],
  'bare LF in a chunk extension': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=\ny\r\nabc\r\n0\r\n\r\n',
  ],
  'Content-Length in the trailers': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n',
  ],
  'Transfer-Encoding not chunked': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n',
    501,
  ],
  'chunked, identity': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n',
  ],
  'chunked twice': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
  ],
  'gzip, chunked': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n',
    501,
  ],
  'Transfer-Encoding in HTTP/1.0': [
    'POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
  ],
  'vertical tab before chunked': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n',
  ],
  'obsolete line folding': ['GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a\r\n b\r\n\r\n'],
  'folded Transfer-Encoding': [
    'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n',
  ],
  'bare LF line ends': ['GET / HTTP/1.1\nHost: a\n\n'],
  'bare LF after a field': ['GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n'],
  'bare CR between fields': ['GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n'],
  'bare CR in a value': ['GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n'],
  'NUL in a value': ['GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n'],
  'DEL in a value': ['GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n'],
  'space in a field name': ['GET / HTTP/1.1\r\nHost: a\r\nFo o: b\r\n\r\n'],
  'empty field name': ['GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n'],
  'control in a field name': ['GET / HTTP/1.1\r\nHost: a\r\nX\x01: b\r\n\r\n'],
  'field without a colon': ['GET / HTTP/1.1\r\nHost: a\r\nXfoo\r\n\r\n'],
  'space before the first field': ['GET / HTTP/1.1\r\n Host: a\r\n\r\n'],
  'two Host fields': ['GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n'],
  'no Host': ['GET / HTTP/1.1\r\n\r\n'],
  'bad Host': ['GET / HTTP/1.1\r\nHost: a/b@c\r\n\r\n'],
  'HTTP/1.2': ['GET / HTTP/1.2\r\nHost: a\r\n\r\n'],
  'HTTP/2.0 request line': ['GET / HTTP/2.0\r\nHost: a\r\n\r\n', 505],
  'bad method': ['G(T / HTTP/1.1\r\nHost: a\r\n\r\n'],
  'space in the target': ['GET /a b HTTP/1.1\r\nHost: a\r\n\r\n'],
};

void t.test('the smuggling corpus: 400 and close, and nothing reaches the upstream', async (t) => {
  let upstreamBytes = 0;
  const upstream = await startServer((socket) => {
    socket.on('data', (data: Buffer) => {
      upstreamBytes += data.length;
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
    });
  });
  t.teardown(() => upstream.close());
  // Warm links: a request that gets as far as an exchange finds a link at once.
  const proxy = await startProxy(upstream.address, { minIdle: 2 }, { mode: 'http' });
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);

  for (const [name, [raw, expected = 400]] of Object.entries(CORPUS)) {
    const result = await rawRequest(proxy.port, raw);
    t.same(statuses(result.text), [expected], `${name}: ${expected}`);
    t.ok(result.closed, `${name}: closed`);
    t.equal(upstreamBytes, 0, `${name}: nothing upstream`);
  }
  t.equal(upstreamBytes, 0, 'not one byte reached the upstream');
  t.equal(upstream.accepted, 2, 'no link was spoiled by the corpus');
  t.same(proxy.pool.stats().idle, 2);
  // The links are still good: a sound request goes through on them.
  const ok = await fetchHttp(proxy.port);
  t.equal(ok.status, 200);
  t.ok(upstreamBytes > 0);
  const m = parseMetrics(await proxy.app.metrics.render());
  t.equal(
    metric(m, 'sidepool_http_errors_total', { route: 'test', reason: 'bad_request' }),
    Object.keys(CORPUS).length,
  );
});
