import net from 'node:net';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { metric, parseMetrics } from './helpers/http.js';
import { fetchHttp, rawRequest, startHttpUpstream, statuses } from './helpers/http-upstream.js';
import { MAX_INTERIM_RESPONSES } from '../src/proxy/http/response-parser.js';
import { sleep, startServer, until } from './helpers/util.js';

const HTTP = { mode: 'http' };

type Proxy = Awaited<ReturnType<typeof startProxy>>;

async function failures(proxy: Proxy, reason: string): Promise<number | undefined> {
  const m = parseMetrics(await proxy.app.metrics.render());
  return metric(m, 'sidepool_http_errors_total', { route: 'test', reason });
}

void t.test('no link within acquireTimeout: 503 with Retry-After', async (t) => {
  const held: Array<() => void> = [];
  const upstream = await startHttpUpstream((_req, res) => held.push(() => res.end('late')));
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 0, maxSize: 1, acquireTimeout: 150 },
    HTTP,
  );
  t.teardown(() => proxy.app.stop(100));
  const first = fetchHttp(proxy.port, { path: '/held' });
  await until(() => held.length === 1);
  const started = Date.now();
  const second = await fetchHttp(proxy.port, { path: '/queued' });
  t.equal(second.status, 503);
  t.equal(second.headers['retry-after'], '1');
  t.ok(Date.now() - started >= 130, 'after the acquire timeout');
  held[0]?.();
  t.equal((await first).status, 200);
  t.equal(await failures(proxy, 'acquire_timeout'), 1);
});

void t.test('upstream unreachable: 502', async (t) => {
  const dead = await startServer(() => {});
  const port = dead.port;
  await dead.close();
  // The refused dial answers (502), never the acquire timeout (503), however loaded the machine.
  const proxy = await startProxy(`127.0.0.1:${port}`, { minIdle: 0, acquireTimeout: '60s' }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const res = await fetchHttp(proxy.port);
  t.equal(res.status, 502);
  t.equal(await failures(proxy, 'upstream_error'), 1);
});

void t.test('upstream resets the link: 502 for a request that cannot be retried', async (t) => {
  const upstream = await startServer((socket) => {
    socket.once('data', () => socket.resetAndDestroy());
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  // A fresh link is not stale: no retry, even for a GET.
  const get = await fetchHttp(proxy.port);
  t.equal(get.status, 502);
  const post = await fetchHttp(proxy.port, { method: 'POST', body: 'x' });
  t.equal(post.status, 502);
  t.equal(await failures(proxy, 'upstream_error'), 2);
});

void t.test('upstream too slow: 504 after responseTimeout; a stalled body: cut', async (t) => {
  const upstream = await startServer((socket) => {
    socket.once('data', (data: Buffer) => {
      if (data.toString().includes('/stall-body')) {
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial');
      }
      // Otherwise: never answer.
    });
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 0 },
    { ...HTTP, responseTimeout: 150 },
  );
  t.teardown(() => proxy.app.stop(100));
  const started = Date.now();
  const res = await fetchHttp(proxy.port);
  t.equal(res.status, 504);
  t.ok(Date.now() - started >= 130);
  await t.rejects(
    fetchHttp(proxy.port, { path: '/stall-body' }),
    'a body cut short reaches the app as an error',
  );
  t.equal(await failures(proxy, 'response_timeout'), 2);
});

/** Sends a request head, then `bytes` of its body one at a time, `everyMs` apart. */
function trickle(port: number, head: string, bytes: number, everyMs: number) {
  const socket = net.connect(port, '127.0.0.1');
  const state = { received: '', closed: false, sent: 0 };
  socket.on('error', () => {});
  socket.on('data', (c: Buffer) => (state.received += c.toString('latin1')));
  socket.on('close', () => (state.closed = true));
  socket.write(head);
  const timer = setInterval(() => {
    if (state.closed || state.sent >= bytes) clearInterval(timer);
    else {
      socket.write('x');
      state.sent++;
    }
  }, everyMs);
  return { socket, state, stop: () => (clearInterval(timer), socket.destroy()) };
}

void t.test(
  'a request body trickled a byte at a time: 408 after requestBodyTimeout, the link freed',
  async (t) => {
    const upstream = await startHttpUpstream();
    t.teardown(() => upstream.close());
    // responseTimeout is far off: only the body's own timeout can end this in time.
    const proxy = await startProxy(
      upstream.address,
      { minIdle: 0, maxSize: 1, acquireTimeout: 10_000 },
      { ...HTTP, requestBodyTimeout: 400, responseTimeout: 60_000 },
    );
    t.teardown(() => proxy.app.stop(100));
    const slow = trickle(
      proxy.port,
      'POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n',
      100_000,
      50,
    );
    t.teardown(slow.stop);
    await until(() => slow.state.closed, 8000, 'the trickling connection closed');
    t.same(statuses(slow.state.received), [408]);
    t.match(slow.state.received, /Connection: close/i);
    t.ok(slow.state.sent >= 2, `bytes kept coming (${slow.state.sent}): reads alone never stall`);
    await until(() => proxy.pool.stats().active === 0, 5000, 'the link was freed');
    // maxSize 1: this needs the link the trickle held.
    t.equal((await fetchHttp(proxy.port)).status, 200);
    t.equal(await failures(proxy, 'body_timeout'), 1);
    t.equal(upstream.requests.length, 1, 'the cut upload never reached the upstream handler');
  },
);

void t.test('a slow upload that keeps progressing is not cut', async (t) => {
  const upstream = await startHttpUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 0 },
    { ...HTTP, requestBodyTimeout: 1000 },
  );
  t.teardown(() => proxy.app.stop(100));
  // 30 writes of 2 KiB, 100 ms apart: three times the timeout in all, a tenth of it per step.
  const chunk = Buffer.alloc(2048, 'y');
  const socket = net.connect(proxy.port, '127.0.0.1');
  t.teardown(() => socket.destroy());
  let received = '';
  socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
  socket.write(`POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: ${30 * chunk.length}\r\n\r\n`);
  for (let i = 0; i < 30; i++) {
    await sleep(100);
    socket.write(chunk);
  }
  await until(() => /\r\n\r\n.*POST \/slow 61440$/s.test(received), 5000, 'the response');
  t.same(statuses(received), [200]);
  t.equal(await failures(proxy, 'body_timeout'), 0);
});

void t.test('a malformed response: 502, and the link is not reused', async (t) => {
  const upstream = await startServer((socket) => {
    socket.on('data', () =>
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc'),
    );
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  t.equal((await fetchHttp(proxy.port)).status, 502);
  t.equal((await fetchHttp(proxy.port)).status, 502);
  t.equal(upstream.accepted, 2);
  t.equal(await failures(proxy, 'bad_response'), 2);
  t.ok(proxy.lines.some((l) => l.msg === 'malformed response from the upstream'));
});

void t.test('identical Content-Length fields in a response: folded into one', async (t) => {
  const upstream = await startServer((socket) => {
    socket.on('data', () =>
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok'),
    );
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  // node:http's client (llhttp) refuses a response with two Content-Length fields.
  for (let i = 0; i < 3; i++) {
    const res = await fetchHttp(proxy.port);
    t.equal(res.status, 200);
    t.equal(res.text, 'ok');
    t.same(
      res.rawHeaders.filter(
        (_, j) => j % 2 === 0 && /^content-length$/i.test(res.rawHeaders[j] ?? ''),
      ),
      ['Content-Length'],
      'one Content-Length field',
    );
  }
  t.equal(upstream.accepted, 1, 'the link stays in step and is reused');
  t.equal(await failures(proxy, 'bad_response'), 0);
});

void t.test(
  'an upstream that sends interim responses without end: 502, the link closed',
  async (t) => {
    let closed = 0;
    const upstream = await startServer((socket) => {
      // The test server is half-open: the proxy closing the link shows as its FIN.
      socket.on('end', () => closed++);
      socket.once('data', () => {
        // Written in one go: the proxy must stop at its bound, not at the end of a read.
        socket.write('HTTP/1.1 102 Processing\r\n\r\n'.repeat(1000));
      });
    });
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
    t.teardown(() => proxy.app.stop(100));
    const result = await rawRequest(proxy.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 5000);
    const seen = statuses(result.text);
    t.equal(seen.length, MAX_INTERIM_RESPONSES + 1, 'the bound, then the error');
    t.ok(
      seen.slice(0, -1).every((s) => s === 102),
      'interim responses passed on up to the bound',
    );
    t.equal(seen.at(-1), 502);
    t.equal(await failures(proxy, 'bad_response'), 1);
    await until(() => closed === 1, 5000, 'the link closed');
  },
);

void t.test('the upstream closes mid-body: the app sees a cut response', async (t) => {
  const upstream = await startServer((socket) => {
    socket.once('data', () => {
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly some');
      setTimeout(() => socket.destroy(), 20);
    });
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  await t.rejects(fetchHttp(proxy.port));
  t.equal(await failures(proxy, 'upstream_error'), 1);
});

void t.test('malformed request: 400 and close; headers too large: 431', async (t) => {
  const upstream = await startHttpUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const bad = await rawRequest(proxy.port, 'GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n');
  t.same(statuses(bad.text), [400]);
  t.equal(bad.closed, true);
  const big = await rawRequest(
    proxy.port,
    `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
  );
  t.same(statuses(big.text), [431]);
  t.equal(big.closed, true);
  t.equal(upstream.requests.length, 0);
  t.equal(await failures(proxy, 'bad_request'), 1);
  t.equal(await failures(proxy, 'headers_too_large'), 1);
  const m = parseMetrics(await proxy.app.metrics.render());
  t.equal(metric(m, 'sidepool_http_requests_total', { route: 'test', code: '4xx' }), 2);
});

void t.test(
  'a malformed request after good pipelined ones: they are answered, then 400',
  async (t) => {
    const upstream = await startHttpUpstream((req, res) =>
      setTimeout(() => res.end(`ok${req.url}`), 20),
    );
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 1 }, HTTP);
    t.teardown(() => proxy.app.stop(100));
    const result = await rawRequest(
      proxy.port,
      'GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\nGET /c HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy',
    );
    t.same(statuses(result.text), [200, 200, 400]);
    t.equal(result.closed, true);
    t.same(
      upstream.requests.map((r) => r.url),
      ['/a', '/b'],
    );
  },
);

void t.test(
  'request head too slow: 408; an idle keep-alive connection closes quietly',
  async (t) => {
    const upstream = await startHttpUpstream();
    t.teardown(() => upstream.close());
    const proxy = await startProxy(
      upstream.address,
      { minIdle: 0 },
      // Not shorter: a stalled event loop runs due timers before it reads, so a complete
      // request could meet a 408 when the machine is loaded.
      { ...HTTP, headersTimeout: 1000 },
    );
    t.teardown(() => proxy.app.stop(100));
    const slow = await rawRequest(proxy.port, 'GET / HTTP/1.1\r\nHost: a\r\n');
    t.same(statuses(slow.text), [408]);
    t.equal(slow.closed, true);
    const silent = await rawRequest(proxy.port, '');
    t.same(statuses(silent.text), [408], 'a connection that sends nothing at all gets a 408 too');

    const idle = await rawRequest(proxy.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n');
    t.same(statuses(idle.text), [200], 'after a response, silence is a keep-alive timeout');
    t.equal(idle.closed, true);
    t.equal(await failures(proxy, 'headers_timeout'), 2);
  },
);

void t.test('the app leaves mid-exchange: the link is closed, nothing leaks', async (t) => {
  let gotRequest = false;
  const upstream = await startServer((socket) => {
    socket.once('data', () => {
      gotRequest = true;
      socket.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc');
    });
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const socket = net.connect(proxy.port, '127.0.0.1');
  socket.on('error', () => {});
  socket.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n');
  await new Promise<void>((resolve) => socket.once('data', () => resolve()));
  t.ok(gotRequest);
  // A FIN alone could be a half-close that still wants the response: the app resets.
  socket.resetAndDestroy();
  await until(() => proxy.route.activeSessions === 0, 2000, 'session ended');
  await until(
    () => proxy.pool.stats().active === 0 && proxy.pool.stats().idle === 0,
    2000,
    'link closed',
  );
  t.equal(await failures(proxy, 'downstream_closed'), 1);
});

void t.test('an app that stops reading a response is cut after responseTimeout', async (t) => {
  const big = Buffer.alloc(16 * 1024 * 1024, 1);
  const upstream = await startHttpUpstream((_req, res) => res.end(big));
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 0 },
    { ...HTTP, responseTimeout: 200 },
  );
  t.teardown(() => proxy.app.stop(100));
  const socket = net.connect(proxy.port, '127.0.0.1');
  socket.on('error', () => {});
  socket.write('GET / HTTP/1.1\r\nHost: a\r\n\r\n');
  await new Promise((resolve) => socket.once('data', resolve));
  socket.pause();
  await until(() => proxy.route.activeSessions === 0, 3000, 'the stalled session was cut');
  t.equal(await failures(proxy, 'send_timeout'), 1);
  socket.destroy();
});
