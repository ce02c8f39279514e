import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import http from 'node:http';
import net from 'node:net';
import { gunzipSync, gzipSync } from 'node:zlib';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { metric, parseMetrics } from './helpers/http.js';
import {
  fetchHttp,
  oneConnectionAgent,
  rawRequest,
  sha256,
  startHttpUpstream,
  statuses,
} from './helpers/http-upstream.js';
import { MAX_UNANSWERED } from '../src/proxy/http/session.js';
import { startNginx } from './helpers/nginx.js';
import { startServer, until } from './helpers/util.js';

const HTTP = { mode: 'http' };

async function metricsOf(proxy: Awaited<ReturnType<typeof startProxy>>) {
  return parseMetrics(await proxy.app.metrics.render());
}

void t.test('connection-per-request clients share a few keep-alive links', async (t) => {
  const upstream = await startHttpUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0, maxSize: 4 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  for (let i = 0; i < 20; i++) {
    const res = await fetchHttp(proxy.port, { path: `/seq/${i}` });
    t.equal(res.status, 200);
    t.match(res.text, `GET /seq/${i} 0`);
  }
  t.equal(upstream.connections, 1, '20 sequential Connection: close clients, one upstream link');

  const results = await Promise.all(
    Array.from({ length: 200 }, (_, i) => fetchHttp(proxy.port, { path: `/par/${i}` })),
  );
  t.ok(
    results.every((r, i) => r.status === 200 && r.text.includes(`/par/${i} `)),
    '200 concurrent clients all answered, each with its own response',
  );
  t.ok(upstream.connections <= 4, `upstream connections (${upstream.connections}) ≤ maxSize 4`);
  const m = await metricsOf(proxy);
  t.equal(metric(m, 'sidepool_http_requests_total', { route: 'test', code: '2xx' }), 220);
  t.ok(
    (metric(m, 'sidepool_pool_reuses_total', { pool: proxy.pool.name }) ?? 0) >= 215,
    'links were reused',
  );
  t.equal(metric(m, 'sidepool_http_request_duration_seconds_count', { route: 'test' }), 220);
});

void t.test('a keep-alive client, and the app closing: links stay pooled', async (t) => {
  const upstream = await startHttpUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const agent = oneConnectionAgent();
  t.teardown(() => agent.destroy());
  for (let i = 0; i < 5; i++) {
    const res = await fetchHttp(proxy.port, { agent, path: `/ka/${i}` });
    t.equal(res.status, 200);
    t.not(res.headers.connection, 'close');
  }
  const closing = await fetchHttp(proxy.port, { headers: { connection: 'close' } });
  t.equal(closing.status, 200);
  t.equal(closing.headers.connection, 'close', 'the app that asked for close gets it');
  t.equal(upstream.connections, 1);
  await until(() => proxy.route.activeSessions <= 1);
});

void t.test('chunked bodies both ways, with trailers', async (t) => {
  const upstream = await startHttpUpstream((_req, res, seen) => {
    res.setHeader('Trailer', 'X-Sum');
    res.write(`got ${seen.body.toString()} `);
    res.write(`trailers ${JSON.stringify(seen.trailers)}`);
    res.addTrailers({ 'X-Sum': sha256(seen.body) });
    res.end();
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const res = await new Promise<{
    text: string;
    trailers: http.IncomingHttpHeaders;
    te: string | undefined;
  }>((resolve, reject) => {
    const req = http.request(
      {
        port: proxy.port,
        host: '127.0.0.1',
        method: 'POST',
        path: '/chunked',
        agent: false,
        headers: { 'Transfer-Encoding': 'chunked', Trailer: 'X-Client' },
      },
      (res) => {
        let text = '';
        res.on('data', (c: Buffer) => (text += c.toString()));
        res.on('end', () =>
          resolve({ text, trailers: res.trailers, te: res.headers['transfer-encoding'] }),
        );
      },
    );
    req.on('error', reject);
    req.write('one,');
    req.write('two,');
    req.addTrailers({ 'X-Client': 'abc' });
    req.end('three');
  });
  t.equal(res.te, 'chunked');
  t.match(res.text, 'got one,two,three ');
  t.match(res.text, '"X-Client","abc"', 'request trailers reached the upstream');
  t.equal(res.trailers['x-sum'], sha256('one,two,three'), 'response trailers reached the app');
  const seen = upstream.requests[0];
  t.equal(seen?.headers['transfer-encoding'], 'chunked');
  t.equal(seen?.headers.trailer, undefined, 'Trailer is hop-by-hop');
});

void t.test('large bodies stream both ways', async (t) => {
  const size = 24 * 1024 * 1024;
  const upload = Buffer.alloc(size, 7);
  let firstByteBeforeEnd = false;
  let upstreamServer: http.Server | undefined;
  const served = new Promise<void>((resolve) => {
    const server = http.createServer((req, res) => {
      if (req.url === '/down') {
        // 24 MiB, chunked, written in 64 KiB pieces with backpressure.
        let left = size;
        const piece = Buffer.alloc(64 * 1024, 9);
        const pump = (): void => {
          while (left > 0) {
            left -= piece.length;
            if (!res.write(piece)) return void res.once('drain', pump);
          }
          res.end();
        };
        pump();
        return;
      }
      let n = 0;
      const hash = sha256Stream();
      req.on('data', (c: Buffer) => {
        if (n === 0) firstByteBeforeEnd = !req.complete;
        n += c.length;
        hash.update(c);
      });
      req.on('end', () => res.end(`${n} ${hash.digest()}`));
    });
    server.listen(0, '127.0.0.1', () => resolve());
    t.teardown(() => new Promise<void>((r) => server.close(() => r())));
    upstreamServer = server;
  });
  await served;
  const port = ((upstreamServer as http.Server).address() as net.AddressInfo).port;
  const proxy = await startProxy(`127.0.0.1:${port}`, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));

  const up = await fetchHttp(proxy.port, {
    method: 'PUT',
    path: '/up',
    headers: { 'content-length': size },
    body: upload,
  });
  t.equal(up.text, `${size} ${sha256(upload)}`, 'the upload arrived whole');
  t.ok(firstByteBeforeEnd, 'the upstream read the body before the app finished sending it');

  const rssBefore = process.memoryUsage().rss;
  const down = await fetchHttp(proxy.port, { path: '/down' });
  t.equal(down.body.length, size);
  t.equal(down.headers['transfer-encoding'], 'chunked');
  t.ok(process.memoryUsage().rss - rssBefore < 200 * 1024 * 1024, 'memory stays bounded');
});

function sha256Stream() {
  const chunks: Buffer[] = [];
  return {
    update: (c: Buffer) => chunks.push(c),
    digest: () => sha256(Buffer.concat(chunks)),
  };
}

void t.test('HEAD, 204 and 304 carry no body, and the link stays in step', async (t) => {
  const upstream = await startHttpUpstream((req, res) => {
    if (req.url === '/204') {
      res.statusCode = 204;
      res.end();
    } else if (req.url === '/304') {
      res.writeHead(304, { ETag: '"x"' });
      res.end();
    } else {
      res.setHeader('Content-Length', '11');
      res.end(req.method === 'HEAD' ? undefined : 'hello world');
    }
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0, maxSize: 1 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const agent = oneConnectionAgent();
  t.teardown(() => agent.destroy());
  const head = await fetchHttp(proxy.port, { method: 'HEAD', agent });
  t.equal(head.status, 200);
  t.equal(head.headers['content-length'], '11', 'HEAD keeps the length of the GET');
  t.equal(head.body.length, 0);
  const noContent = await fetchHttp(proxy.port, { path: '/204', agent });
  t.equal(noContent.status, 204);
  const notModified = await fetchHttp(proxy.port, { path: '/304', agent });
  t.equal(notModified.status, 304);
  t.equal(notModified.headers.etag, '"x"');
  const get = await fetchHttp(proxy.port, { agent });
  t.equal(get.text, 'hello world', 'the next response on the same links is intact');
  t.equal(upstream.connections, 1);
});

void t.test('Expect: 100-continue goes to the upstream and its answer comes back', async (t) => {
  const upstream = await startHttpUpstream((_req, res, seen) => res.end(`got ${seen.body.length}`));
  upstream.server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (req.url === '/refuse') {
      res.writeHead(401, { 'Content-Length': '6' });
      res.end('denied');
      return;
    }
    res.writeContinue();
    upstream.server.emit('request', req, res);
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));

  const send = (path: string) =>
    new Promise<{ status: number; text: string; continued: boolean }>((resolve, reject) => {
      let continued = false;
      const req = http.request(
        {
          port: proxy.port,
          host: '127.0.0.1',
          method: 'POST',
          path,
          agent: false,
          headers: { Expect: '100-continue', 'Content-Length': '5' },
        },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text, continued }));
        },
      );
      req.on('continue', () => {
        continued = true;
        req.end('hello');
      });
      req.on('error', reject);
      req.flushHeaders();
    });
  const ok = await send('/accept');
  t.equal(ok.continued, true, "the app got the upstream's 100 Continue");
  t.equal(ok.status, 200);
  t.equal(ok.text, 'got 5');
  const refused = await send('/refuse');
  t.equal(refused.continued, false);
  t.equal(refused.status, 401, 'a final status instead of 100 reaches the app');
  t.equal(refused.text, 'denied');
});

void t.test('pipelined requests are answered in order', async (t) => {
  const upstream = await startHttpUpstream((req, res) => {
    // The first is the slowest: order must come from the proxy, not from luck.
    const delay = req.url === '/1' ? 60 : req.url === '/2' ? 20 : 0;
    setTimeout(() => res.end(`body${req.url}`), delay);
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 2 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const raw =
    'GET /1 HTTP/1.1\r\nHost: a\r\n\r\n' +
    'POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc' +
    'GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n';
  const result = await rawRequest(proxy.port, raw);
  t.equal(result.closed, true);
  const bodies = [...result.text.matchAll(/body\/(\d)/g)].map((m) => m[1]);
  t.same(bodies, ['1', '2', '3']);
  t.same(statuses(result.text), [200, 200, 200]);
});

void t.test('hop-by-hop fields stay on their hop; Host is kept', async (t) => {
  const upstream = await startHttpUpstream((_req, res) => {
    res.setHeader('Connection', 'X-Resp-Hop');
    res.setHeader('X-Resp-Hop', '1');
    res.setHeader('Proxy-Authenticate', 'Basic');
    res.setHeader('X-End', 'kept');
    res.end('ok');
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const res = await fetchHttp(proxy.port, {
    headers: {
      Host: 'app.example:8080',
      Connection: 'X-Hop, close',
      'X-Hop': 'secret',
      'Keep-Alive': 'timeout=5',
      TE: 'trailers',
      'Proxy-Authorization': 'Basic eA==',
      Proxy: 'http://evil',
      'X-End': 'kept',
    },
  });
  t.equal(res.status, 200);
  const seen = upstream.requests[0];
  t.equal(seen?.headers.host, 'app.example:8080');
  for (const name of ['x-hop', 'keep-alive', 'te', 'proxy-authorization', 'proxy']) {
    t.equal(seen?.headers[name], undefined, `${name} not forwarded`);
  }
  t.not(seen?.headers.connection, 'close', 'the link stays keep-alive');
  t.equal(seen?.headers['x-end'], 'kept');
  t.equal(seen?.headers['x-forwarded-for'], undefined, 'no forwarded fields unless asked');
  t.equal(res.headers['x-resp-hop'], undefined);
  t.equal(res.headers['proxy-authenticate'], undefined);
  t.equal(res.headers['x-end'], 'kept');
});

void t.test(
  'upstream.host overrides Host; forwardedHeaders adds X-Forwarded-* and Via',
  async (t) => {
    const upstream = await startHttpUpstream((_req, res) => res.end('ok'));
    t.teardown(() => upstream.close());
    const proxy = await startProxy(
      { address: upstream.address, host: 'api.internal' } as unknown as string,
      { minIdle: 0 },
      { ...HTTP, forwardedHeaders: true },
    );
    t.teardown(() => proxy.app.stop(100));
    const res = await fetchHttp(proxy.port, {
      headers: { Host: 'app', 'X-Forwarded-For': '10.1.1.1', Via: '1.1 edge' },
    });
    const seen = upstream.requests[0];
    t.equal(seen?.headers.host, 'api.internal');
    t.equal(seen?.headers['x-forwarded-for'], '10.1.1.1, 127.0.0.1');
    t.equal(seen?.headers['x-forwarded-proto'], 'http');
    t.equal(seen?.headers.via, '1.1 edge, 1.1 sidepool');
    t.equal(res.headers.via, '1.1 sidepool');
  },
);

void t.test(
  'absolute-form targets go upstream in origin-form, with the Host the route decides',
  async (t) => {
    const upstream = await startHttpUpstream((_req, res) => res.end('ok'));
    t.teardown(() => upstream.close());
    const plain = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
    t.teardown(() => plain.app.stop(100));
    const pinned = await startProxy(
      { address: upstream.address, host: 'api.internal' } as unknown as string,
      { minIdle: 0 },
      HTTP,
    );
    t.teardown(() => pinned.app.stop(100));

    const cases: [number, string, string, string][] = [
      // port, request line, target the upstream sees, Host the upstream sees
      [pinned.port, 'GET http://admin.internal/x?y=1', '/x?y=1', 'api.internal'],
      [plain.port, 'GET http://admin.internal/x?y=1', '/x?y=1', 'admin.internal'],
      [plain.port, 'GET HTTP://Admin.Internal:8080', '/', 'Admin.Internal:8080'],
      [plain.port, 'GET https://a.example?q=1', '/?q=1', 'a.example'],
      [plain.port, 'OPTIONS http://a.example', '*', 'a.example'],
      [plain.port, 'OPTIONS http://a.example/', '/', 'a.example'],
      [plain.port, 'GET /origin?form', '/origin?form', 'app'],
    ];
    for (const [port, line, target, host] of cases) {
      upstream.requests.length = 0;
      const result = await rawRequest(
        port,
        `${line} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n`,
      );
      t.same(statuses(result.text), [200], `${line}: 200`);
      t.equal(upstream.requests[0]?.url, target, `${line}: upstream target ${target}`);
      t.equal(upstream.requests[0]?.headers.host, host, `${line}: upstream Host ${host}`);
    }

    for (const line of [
      'GET ftp://a.example/x',
      'GET http://user@a.example/x',
      'GET http:///x',
      'GET http://a b/x',
    ]) {
      upstream.requests.length = 0;
      const result = await rawRequest(plain.port, `${line} HTTP/1.1\r\nHost: app\r\n\r\n`);
      t.same(statuses(result.text), [400], `${line}: 400`);
      t.equal(upstream.requests.length, 0, `${line}: nothing upstream`);
    }
  },
);

void t.test('nginx picks its virtual host from the Host the route sends', async (t) => {
  // nginx takes the host of an absolute-form target over the Host field (RFC 9112 §3.2.2).
  const nginx = await startNginx('location / { return 200 "$host|$request\\n"; }');
  t.teardown(() => nginx.stop());
  const proxy = await startProxy(
    { address: nginx.address, host: 'app.internal' } as unknown as string,
    { minIdle: 0 },
    HTTP,
  );
  t.teardown(() => proxy.app.stop(100));
  const result = await rawRequest(
    proxy.port,
    'GET http://admin.internal/secret HTTP/1.1\r\nHost: app.internal\r\nConnection: close\r\n\r\n',
  );
  t.same(statuses(result.text), [200]);
  t.match(result.text, /\r\n\r\napp\.internal\|GET \/secret HTTP\/1\.1\n$/);
});

void t.test(
  'HTTP/1.0 apps: a Host is added, and the response ends with the connection',
  async (t) => {
    const upstream = await startHttpUpstream((_req, res) => {
      res.write('streamed ');
      res.end('body');
    });
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
    t.teardown(() => proxy.app.stop(100));
    const result = await rawRequest(proxy.port, 'GET /old HTTP/1.0\r\n\r\n');
    t.equal(result.closed, true);
    t.match(result.text, /^HTTP\/1\.1 200 /);
    t.notMatch(result.text, /chunked/i, 'no chunked framing to an HTTP/1.0 app');
    t.match(result.text, /streamed body$/);
    t.equal(upstream.requests[0]?.headers.host, upstream.address, 'Host: the upstream address');
  },
);

void t.test('responses the upstream ends by closing, or with Connection: close', async (t) => {
  const upstream = await startServer((socket) => {
    socket.once('data', (data: Buffer) => {
      if (data.toString().startsWith('GET /close-delimited')) {
        socket.end('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end');
      } else {
        socket.write('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbye');
        socket.end();
      }
    });
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const delimited = await fetchHttp(proxy.port, { path: '/close-delimited' });
  t.equal(delimited.text, 'until the end');
  const closing = await fetchHttp(proxy.port, { path: '/closing' });
  t.equal(closing.text, 'bye');
  t.equal(closing.headers.connection, 'close', 'the app asked for close itself');
  const again = await fetchHttp(proxy.port, { path: '/closing' });
  t.equal(again.text, 'bye');
  t.equal(upstream.accepted, 3, 'neither kind of link is reused');
});

void t.test(
  'a transfer coding other than chunked: passed on until close, never unframed',
  async (t) => {
    const text = 'a body the upstream gzipped as a transfer coding\n'.repeat(50);
    const gzipped = gzipSync(text);
    const upstream = await startServer((socket) => {
      socket.once('data', (data: Buffer) => {
        if (data.toString().startsWith('GET /gzip-chunked')) {
          const hex = gzipped.length.toString(16);
          socket.write(`HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n${hex}\r\n`);
          socket.write(gzipped);
          socket.write('\r\n0\r\n\r\n');
          return;
        }
        // RFC 9112 §6.3: chunked is not the last coding, so the body runs until the close.
        socket.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n');
        socket.end(gzipped);
      });
    });
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
    t.teardown(() => proxy.app.stop(100));

    // A keep-alive app with a second request pipelined behind the first.
    const result = await rawRequest(
      proxy.port,
      'GET /gzip HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n',
      5000,
    );
    t.equal(result.closed, true, 'the app connection closes: that is where the body ends');
    const headEnd = result.text.indexOf('\r\n\r\n');
    const head = result.text.slice(0, headEnd + 2);
    t.same(statuses(head), [200]);
    t.match(head, /\r\nTransfer-Encoding: gzip\r\n/i);
    t.match(head, /\r\nConnection: close\r\n/i);
    t.notMatch(head, /chunked|Content-Length/i);
    const body = Buffer.from(result.text.slice(headEnd + 4), 'latin1');
    t.equal(gunzipSync(body).toString(), text, 'the body, whole, and nothing after it');
    t.equal(upstream.accepted, 1, 'the request behind it was not sent upstream');

    // gzip then chunked: the framing is known; the connection stays open.
    const agent = oneConnectionAgent();
    t.teardown(() => agent.destroy());
    const framed = await fetchHttp(proxy.port, { path: '/gzip-chunked', agent });
    t.equal(framed.headers['transfer-encoding'], 'gzip, chunked');
    t.equal(gunzipSync(framed.body).toString(), text);
  },
);

void t.test('drain: idle keep-alive connections close, busy ones finish first', async (t) => {
  let release: (() => void) | undefined;
  const upstream = await startHttpUpstream((req, res) => {
    if (req.url === '/slow') release = () => res.end('slow done');
    else res.end('quick');
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  const idle = net.connect(proxy.port, '127.0.0.1');
  idle.on('error', () => {});
  const idleClosed = new Promise<void>((resolve) => idle.on('close', () => resolve()));
  idle.write('GET /quick HTTP/1.1\r\nHost: a\r\n\r\n');
  await new Promise((resolve) => idle.once('data', resolve));
  const busy = fetchHttp(proxy.port, { path: '/slow', agent: oneConnectionAgent() });
  await until(() => release !== undefined);
  const stopped = proxy.app.stop(5000);
  await idleClosed;
  t.pass('the idle keep-alive connection was closed by the drain');
  release?.();
  const res = await busy;
  t.equal(res.text, 'slow done', 'the busy one got its response');
  t.equal(res.headers.connection, 'close');
  await stopped;
});

void t.test(
  'a flood of pipelined requests: read in bounded batches, all answered in order',
  async (t) => {
    const upstream = await startHttpUpstream((req, res) =>
      setTimeout(() => res.end(`#${req.url?.slice(1)};`), 1),
    );
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 1 }, HTTP);
    t.teardown(() => proxy.app.stop(100));
    const n = 100;
    let raw = '';
    for (let i = 0; i < n; i++)
      raw += `GET /${i} HTTP/1.1\r\nHost: a\r\n${i === n - 1 ? 'Connection: close\r\n' : ''}\r\n`;
    const result = await rawRequest(proxy.port, raw, 10_000);
    const order = [...result.text.matchAll(/#(\d+);/g)].map((m) => Number(m[1]));
    t.same(
      order,
      Array.from({ length: n }, (_, i) => i),
    );
    t.equal(result.closed, true);
  },
);

void t.test(
  'one read of 600 pipelined requests: at most MAX_UNANSWERED parsed ahead of their answers',
  async (t) => {
    const upstream = await startHttpUpstream((req, res, seen) =>
      res.end(`#${req.url?.slice(1)}:${seen.body.toString('latin1')};`),
    );
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 1 }, HTTP);
    t.teardown(() => proxy.app.stop(100));
    // node:http reports each request it parses and each response it finishes: on the
    // proxy's side of the app connection, their difference is what the proxy holds.
    let outstanding = 0;
    let peak = 0;
    const started = (message: unknown): void => {
      if ((message as { server: unknown }).server === upstream.server) return;
      peak = Math.max(peak, ++outstanding);
    };
    const finished = (message: unknown): void => {
      if ((message as { server: unknown }).server !== upstream.server) outstanding--;
    };
    subscribe('http.server.request.start', started);
    subscribe('http.server.response.finish', finished);
    t.teardown(() => {
      unsubscribe('http.server.request.start', started);
      unsubscribe('http.server.response.finish', finished);
    });
    // Minimal GETs, with bodies here and there that hold CRLFCRLF themselves.
    const n = 600;
    let raw = '';
    const expected: string[] = [];
    for (let i = 0; i < n; i++) {
      const last = i === n - 1 ? 'Connection: close\r\n' : '';
      if (i % 50 === 7) {
        raw += `POST /${i} HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n${last}\r\na\r\n\r\nb`;
        expected.push(`#${i}:a\r\n\r\nb;`);
      } else if (i % 50 === 31) {
        raw += `POST /${i} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n${last}\r\n4\r\n\r\n\r\n\r\n0\r\n\r\n`;
        expected.push(`#${i}:\r\n\r\n;`);
      } else {
        raw += `GET /${i} HTTP/1.1\r\nHost: a\r\n${last}\r\n`;
        expected.push(`#${i}:;`);
      }
    }
    t.ok(raw.length < 64 * 1024, `${raw.length} bytes: one read`);
    const result = await rawRequest(proxy.port, raw, 30_000);
    t.equal(result.closed, true);
    const answers = [...result.text.matchAll(/#\d+:[^;]*;/g)].map((m) => m[0]);
    t.equal(answers.length, n, 'every request answered');
    t.ok(
      answers.every((a, i) => a === expected[i]),
      'in order, bodies intact',
    );
    t.ok(peak <= MAX_UNANSWERED, `at most ${peak} requests held at once (bound ${MAX_UNANSWERED})`);
  },
);
