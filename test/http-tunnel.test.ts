import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { startProxy } from './helpers/app.js';
import { metric, parseMetrics } from './helpers/http.js';
import { fetchHttp, rawRequest, startHttpUpstream, statuses } from './helpers/http-upstream.js';
import { startNginx } from './helpers/nginx.js';
import { readIfThere, until } from './helpers/util.js';

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

void t.test(
  'bytes after an upgrade request wait for the switch: a refusing upstream never sees them',
  async (t) => {
    // nginx serving files takes an Upgrade request as a plain one, and parses what follows
    // on the connection as the next request (node:http stops reading after an upgrade).
    const dir = await mkdtemp(join(tmpdir(), 'sidepool-tunnel-'));
    t.teardown(() => rm(dir, { recursive: true, force: true }));
    const log = join(dir, 'access.log');
    const nginx = await startNginx(
      `access_log ${log} combined;
      location / { return 426 "no upgrade here\\n"; }
      location /admin { return 200 "admin\\n"; }`,
    );
    t.teardown(() => nginx.stop());
    const proxy = await startProxy(nginx.address, { minIdle: 0 }, HTTP);
    t.teardown(() => proxy.app.stop(100));
    const result = await rawRequest(
      proxy.port,
      'GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n' +
        'GET /admin HTTP/1.1\r\nHost: admin\r\n\r\n',
    );
    t.same(statuses(result.text), [426]);
    t.match(result.text, /no upgrade here\n$/);
    t.equal(result.closed, true);
    // An upgrade with a body is refused: its body and what follows cannot be told apart
    // the same way on every Node version.
    const withBody = await rawRequest(
      proxy.port,
      'POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: Upgrade\r\nContent-Length: 5\r\n\r\n' +
        'hello' +
        'GET /admin HTTP/1.1\r\nHost: admin\r\n\r\n',
    );
    t.same(statuses(withBody.text), [400]);
    t.equal(withBody.closed, true);
    t.equal((await fetchHttp(proxy.port, { path: '/sentinel' })).status, 426);
    await until(() => readIfThere(log).includes('/sentinel'), 5000, 'the access log');
    t.same(
      readIfThere(log)
        .trim()
        .split('\n')
        .map((line) => /"(\w+ \S+) HTTP/.exec(line)?.[1]),
      ['GET /ws', 'GET /sentinel'],
      'what followed the upgrade request never reached nginx',
    );
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

type Proxy = Awaited<ReturnType<typeof startProxy>>;

/** How the route accounted for its requests: responses by class, failures by reason. */
async function accounts(proxy: Proxy): Promise<Record<string, number>> {
  const m = parseMetrics(await proxy.app.metrics.render());
  const out: Record<string, number> = {};
  for (const code of ['1xx', '2xx', '3xx', '4xx', '5xx']) {
    const n = metric(m, 'sidepool_http_requests_total', { route: 'test', code }) ?? 0;
    if (n > 0) out[code] = n;
  }
  for (const [key, value] of m) {
    const reason = /^sidepool_http_errors_total\{.*reason="(\w+)"/.exec(key)?.[1];
    if (reason !== undefined && value > 0) out[reason] = value;
  }
  out.sessions = metric(m, 'sidepool_session_duration_seconds_count', { route: 'test' }) ?? 0;
  return out;
}

/** Resolves when the proxy closes its end (the upgraded socket is half-open: FIN is 'end'). */
function closedByPeer(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    socket.once('end', () => resolve());
    socket.once('close', () => resolve());
  });
}

/** An upstream that takes upgrades and CONNECTs and does not answer them. */
async function slowUpgrades(t: Test, handler?: Parameters<typeof startHttpUpstream>[0]) {
  const upstream = await startHttpUpstream(handler);
  const pending: net.Socket[] = [];
  const take = (_req: http.IncomingMessage, socket: net.Socket): void => {
    socket.on('error', () => {});
    // Read, so that the proxy closing the link is seen.
    socket.resume();
    pending.push(socket);
  };
  upstream.server.on('upgrade', take);
  upstream.server.on('connect', take);
  t.teardown(() => upstream.close());
  return { upstream, pending };
}

void t.test(
  'the app leaves before the upstream answers an upgrade: the link is closed, counted once',
  async (t) => {
    const { upstream, pending } = await slowUpgrades(t);
    const proxy = await startProxy(upstream.address, { minIdle: 0 }, HTTP);
    t.teardown(() => proxy.app.stop(100));
    const client = new RawClient(
      proxy.port,
      'GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
    );
    await until(() => pending.length === 1, 5000, 'the upgrade upstream');
    const link = pending[0] as net.Socket;
    const linkClosed = closedByPeer(link);
    client.socket.destroy();
    await until(() => proxy.route.activeSessions === 0, 5000, 'the session ended');
    await linkClosed;
    t.pass('the link closed when the app left');
    await until(() => proxy.pool.stats().active === 0, 5000, 'no active link');
    t.same(proxy.pool.stats().idle, 0, 'and it did not go back to the pool');
    // Too late: the upstream's answer has nowhere to go.
    link.write(
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
    );
    t.same(await accounts(proxy), { downstream_closed: 1, sessions: 1 }, 'one account of it');
  },
);

void t.test(
  'the app resets before the upstream answers an upgrade: the link does not outlive it',
  async (t) => {
    const { upstream, pending } = await slowUpgrades(t);
    // The response timeout must not be what reclaims the link, and it could not before.
    const proxy = await startProxy(
      upstream.address,
      { minIdle: 0 },
      { ...HTTP, responseTimeout: 200 },
    );
    t.teardown(() => proxy.app.stop(100));
    const client = new RawClient(proxy.port, 'CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n');
    await until(() => pending.length === 1, 5000, 'the CONNECT upstream');
    const linkClosed = closedByPeer(pending[0] as net.Socket);
    client.socket.resetAndDestroy();
    await until(() => proxy.route.activeSessions === 0, 5000, 'the session ended');
    await until(() => proxy.pool.stats().active === 0, 5000, 'the link is not held');
    await linkClosed;
    t.same(await accounts(proxy), { downstream_closed: 1, sessions: 1 }, 'one account of it');
  },
);

void t.test('a pending upgrade past responseTimeout: 504, the link closed', async (t) => {
  const { upstream, pending } = await slowUpgrades(t);
  const proxy = await startProxy(
    upstream.address,
    { minIdle: 0 },
    { ...HTTP, responseTimeout: 150 },
  );
  t.teardown(() => proxy.app.stop(100));
  const result = rawRequest(
    proxy.port,
    'GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
    5000,
  );
  await until(() => pending.length === 1, 5000, 'the upgrade upstream');
  const linkClosed = closedByPeer(pending[0] as net.Socket);
  const answered = await result;
  t.same(statuses(answered.text), [504]);
  t.equal(answered.closed, true);
  await linkClosed;
  await until(() => proxy.pool.stats().active === 0, 5000, 'no active link');
  t.same(await accounts(proxy), { '5xx': 1, response_timeout: 1, sessions: 1 });
});

void t.test(
  'an upgrade whose app leaves while the link is being dialed: the link is not kept',
  async (t) => {
    // One link at most, held by a slow plain request, so the upgrade waits in the queue.
    const slow: http.ServerResponse[] = [];
    const { upstream, pending } = await slowUpgrades(t, (_req, res) => slow.push(res));
    // Only a cancelled wait can end it in time: the pool would wait a minute.
    const proxy = await startProxy(
      upstream.address,
      { minIdle: 0, maxSize: 1, acquireTimeout: 60_000 },
      HTTP,
    );
    t.teardown(() => proxy.app.stop(100));
    const held = new RawClient(proxy.port, 'GET /slow HTTP/1.1\r\nHost: a\r\n\r\n');
    await until(() => proxy.pool.stats().active === 1, 5000, 'the only link busy');
    const client = new RawClient(
      proxy.port,
      'GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
    );
    await until(() => proxy.pool.stats().waiters === 1, 5000, 'the upgrade waits for a link');
    client.socket.destroy();
    await until(() => proxy.pool.stats().waiters === 0, 5000, 'its wait was cancelled');
    slow[0]?.end('done');
    await held.waitFor(/done$/);
    held.socket.destroy();
    await until(() => proxy.route.activeSessions === 0, 5000, 'both sessions ended');
    t.equal(pending.length, 0, 'the upgrade never went upstream');
    t.equal(proxy.pool.stats().idle, 1, 'the link went back to the pool, not to the upgrade');
    t.same(await accounts(proxy), { '2xx': 1, downstream_closed: 1, sessions: 2 });
  },
);
