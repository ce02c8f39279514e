import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { metric, parseMetrics } from './helpers/http.js';
import { fetchHttp, rawRequest, startHttpUpstream, statuses } from './helpers/http-upstream.js';
import { startNginx } from './helpers/nginx.js';
import { readIfThere, startServer, until } from './helpers/util.js';

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

/** Sent in the same write behind a refused request: the upstream must never see it. */
const SMUGGLED = 'POST /transfer HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\namount';

void t.test(
  'the corpus pipelined: nothing behind a refused request reaches the upstream',
  async (t) => {
    const upstream = await startHttpUpstream();
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 2 }, { mode: 'http' });
    t.teardown(() => proxy.app.stop(100));
    await until(() => proxy.pool.isWarm);

    let sentinels = 0;
    for (const [name, [raw, expected = 400]] of Object.entries(CORPUS)) {
      upstream.requests.length = 0;
      const result = await rawRequest(proxy.port, raw + SMUGGLED);
      t.same(statuses(result.text), [expected], `${name}: ${expected} and nothing else`);
      t.ok(result.closed, `${name}: closed`);
      // A request after it, on another connection, is answered: anything the refused
      // connection let through went upstream before it.
      const sentinel = await fetchHttp(proxy.port, { path: `/sentinel-${++sentinels}` });
      t.equal(sentinel.status, 200);
      t.same(
        upstream.requests.map((r) => r.url).filter((url) => !url.startsWith('/sentinel-')),
        [],
        `${name}: the upstream saw nothing of that connection`,
      );
    }
  },
);

void t.test('after a request that closes the connection, nothing more is forwarded', async (t) => {
  const upstream = await startHttpUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 2 }, { mode: 'http' });
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);

  const cases: Record<string, [string, number[], string[]]> = {
    'a sound request, a refused one, then another': [
      'GET /first HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
      [200, 400],
      ['/first'],
    ],
    'Connection: close, then another': [
      'GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n',
      [200],
      ['/last'],
    ],
    'HTTP/1.0 without keep-alive, then another': ['GET /old HTTP/1.0\r\n\r\n', [200], ['/old']],
    'a body with Connection: close, then another': [
      'POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc',
      [200],
      ['/upload'],
    ],
    'Connection: close, then an upgrade': [
      'GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n' +
        'GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
      [200],
      ['/last'],
    ],
  };
  for (const [name, [raw, expected, seen]] of Object.entries(cases)) {
    upstream.requests.length = 0;
    const result = await rawRequest(proxy.port, raw + SMUGGLED);
    t.same(statuses(result.text), expected, `${name}: answered`);
    t.ok(result.closed, `${name}: closed`);
    const sentinel = await fetchHttp(proxy.port, { path: '/sentinel' });
    t.equal(sentinel.status, 200);
    t.same(
      upstream.requests.map((r) => r.url).filter((url) => url !== '/sentinel'),
      seen,
      `${name}: the upstream saw only ${seen.join(', ')}`,
    );
  }
});

void t.test('nginx as the upstream: its access log never shows the smuggled request', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'sidepool-smuggling-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const log = join(dir, 'access.log');
  const nginx = await startNginx(
    `access_log ${log} combined;
    location / { return 200 "ok\\n"; }`,
  );
  t.teardown(() => nginx.stop());
  const proxy = await startProxy(nginx.address, { minIdle: 1 }, { mode: 'http' });
  t.teardown(() => proxy.app.stop(100));

  const refused = await rawRequest(
    proxy.port,
    'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n' + SMUGGLED,
  );
  t.same(statuses(refused.text), [400]);
  const closing = await rawRequest(
    proxy.port,
    'GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n' + SMUGGLED,
  );
  t.same(statuses(closing.text), [200]);
  t.equal((await fetchHttp(proxy.port, { path: '/sentinel' })).status, 200);
  await until(() => /sentinel/.test(readIfThere(log)), 5000, 'the sentinel in the access log');
  const lines = (await readFile(log, 'latin1')).trim().split('\n');
  t.same(
    lines.map((line) => /"(\w+) (\S+) HTTP/.exec(line)?.slice(1, 3).join(' ')),
    ['GET /last', 'GET /sentinel'],
    'nginx served /last and the sentinel, never POST /transfer',
  );
});
