import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { fetchHttp, rawRequest, startHttpUpstream, statuses } from './helpers/http-upstream.js';
import { until } from './helpers/util.js';

const HTTP = { mode: 'http' };
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/** A raw connection that keeps everything it receives, to wait on. */
class RawClient {
  received = '';
  readonly socket: net.Socket;
  private watchers = new Set<() => void>();

  constructor(port: number, head: string) {
    this.socket = net.connect(port, '127.0.0.1', () => this.socket.write(head));
    this.socket.on('error', () => {});
    this.socket.on('data', (c: Buffer) => {
      this.received += c.toString('latin1');
      for (const w of this.watchers) w();
    });
  }

  waitFor(pattern: RegExp): Promise<string> {
    return new Promise((resolve) => {
      const check = (): void => {
        if (pattern.test(this.received)) {
          this.watchers.delete(check);
          resolve(this.received);
        }
      };
      this.watchers.add(check);
      check();
    });
  }
}

void t.test('a WebSocket upgrade goes through and the link leaves the pool', async (t) => {
  const upstream = await startHttpUpstream();
  upstream.server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    const accept = createHash('sha1')
      .update(`${String(req.headers['sec-websocket-key'])}${WS_GUID}`)
      .digest('base64');
    socket.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
        `Sec-WebSocket-Accept: ${accept}\r\n\r\nhello-from-upstream`,
    );
    if (head.length > 0) socket.write(head);
    socket.pipe(socket);
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 1 }, HTTP);
  t.teardown(() => proxy.app.stop(100));

  const client = new RawClient(
    proxy.port,
    'GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly',
  );
  const socket = client.socket;
  const received = await client.waitFor(/hello-from-upstreamearly/);
  t.match(received, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
  t.match(received, /Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK\+xOo=/);
  t.pass('bytes sent with the upgrade arrived');
  socket.write('ping-1');
  await client.waitFor(/earlyping-1$/);
  t.equal(proxy.pool.stats().active, 1, "the link is the tunnel's");
  socket.end();
  await until(() => proxy.route.activeSessions === 0, 2000, 'the tunnel ended');
  await until(() => proxy.pool.stats().active === 0);
  t.equal(upstream.sockets.size <= 1, true, 'the tunnel link closed; only the warm one is left');
});

void t.test('CONNECT is passed to the upstream and tunneled after its 2xx', async (t) => {
  const upstream = await startHttpUpstream();
  upstream.server.on('connect', (req: http.IncomingMessage, socket: net.Socket) => {
    socket.write(`HTTP/1.1 200 Connection Established\r\nX-Target: ${req.url}\r\n\r\n`);
    socket.pipe(socket);
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const client = new RawClient(
    proxy.port,
    'CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n',
  );
  const received = await client.waitFor(/\r\n\r\n/);
  t.match(received, /^HTTP\/1\.1 200 /);
  t.match(received, /X-Target: db.internal:5432/);
  client.socket.write('through');
  await client.waitFor(/\r\n\r\nthrough$/);
  client.socket.destroy();
  await until(() => proxy.route.activeSessions === 0, 2000, 'the tunnel ended');
});

void t.test(
  'an upgrade the upstream refuses: its answer, then the connection closes',
  async (t) => {
    // No 'upgrade' listener: node:http answers it as a plain request.
    const upstream = await startHttpUpstream((_req, res) => {
      res.writeHead(426, { 'Content-Type': 'text/plain' });
      res.end('no upgrade here');
    });
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
    t.teardown(() => proxy.app.stop(100));
    const result = await rawRequest(
      proxy.port,
      'GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
    );
    t.same(statuses(result.text), [426]);
    t.match(result.text, /no upgrade here$/);
    t.equal(result.closed, true);
    // Plain requests on the same route still work and reuse links.
    t.equal((await fetchHttp(proxy.port)).status, 426);
  },
);

void t.test('an upgrade with no link to be had: 503, then close', async (t) => {
  const upstream = await startHttpUpstream();
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 0, maxSize: 1, acquireTimeout: 100 },
    HTTP,
  );
  t.teardown(() => proxy.app.stop(100));
  const busy = new Promise<void>((resolve) => {
    upstream.server.on('upgrade', (_req: http.IncomingMessage, socket: net.Socket) => {
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n');
      resolve();
    });
  });
  const first = net.connect(proxy.port, '127.0.0.1');
  first.on('error', () => {});
  first.write('GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n');
  await busy;
  const second = await rawRequest(
    proxy.port,
    'GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n',
  );
  t.same(statuses(second.text), [503]);
  t.equal(second.closed, true);
  first.destroy();
});

void t.test('the upstream closes before answering an upgrade: 502, then close', async (t) => {
  const upstream = await startHttpUpstream();
  upstream.server.on('upgrade', (_req: http.IncomingMessage, socket: net.Socket) => {
    socket.write('HTTP/1.1 100 Continue\r\n\r\n');
    setTimeout(() => socket.destroy(), 10);
  });
  t.teardown(() => upstream.close());
  const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
  t.teardown(() => proxy.app.stop(100));
  const result = await rawRequest(
    proxy.port,
    'GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n',
  );
  t.same(statuses(result.text), [100], 'the interim response went through, then the cut');
  t.equal(result.closed, true);
  const slow = await startHttpUpstream();
  slow.server.on('upgrade', () => {});
  t.teardown(() => slow.close());
  const proxy2 = await startProxy(slow.address, { minIdle: 0 }, { ...HTTP, responseTimeout: 100 });
  t.teardown(() => proxy2.app.stop(100));
  const timedOut = await rawRequest(
    proxy2.port,
    'GET / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n',
  );
  t.same(statuses(timedOut.text), [504]);
  t.equal(timedOut.closed, true);
});

void t.test(
  'a CONNECT the upstream refuses, with a chunked body: passed on, then close',
  async (t) => {
    const upstream = await startHttpUpstream();
    upstream.server.on('connect', (_req: http.IncomingMessage, socket: net.Socket) => {
      socket.end(
        'HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nConnection: X-Hop\r\nX-Hop: 1\r\n\r\n' +
          '5\r\nnot h\r\n4\r\nere.\r\n0\r\n\r\n',
      );
    });
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
    t.teardown(() => proxy.app.stop(100));
    const result = await rawRequest(
      proxy.port,
      'CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n',
    );
    t.same(statuses(result.text), [403]);
    t.match(result.text, /Connection: close\r\n\r\nnot here\.$/, 'de-chunked, sent until close');
    t.notMatch(result.text, /X-Hop/i, 'hop-by-hop fields dropped');
    t.notMatch(result.text, /Transfer-Encoding/i);
    t.equal(result.closed, true);
  },
);
