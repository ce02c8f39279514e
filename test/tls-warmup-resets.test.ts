import net from 'node:net';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import t from 'tap';
import { TestPki, type KeyPair, type TestCa } from './helpers/certs.js';
import { startProxy } from './helpers/app.js';
import { roundTrip, until } from './helpers/util.js';

let pki: TestPki;
let ca: TestCa;
let upstreamCert: KeyPair;
t.before(async () => {
  pki = await TestPki.create();
  ca = await pki.ca('warmup-ca');
  upstreamCert = await ca.issue('db.test', { dns: ['db.test'], ips: ['127.0.0.1'] });
});
t.teardown(() => pki.remove());

/**
 * A TLS upstream that misbehaves during warm-up: the first connection never gets a
 * ServerHello, and the ones behind it (which wait for the first TLS session) are reset
 * once `resetAfterMs` passed. From `behaveFrom` on, connections are served by a real TLS
 * echo server.
 */
async function startMisbehavingUpstream(options: { behaveFrom: number; resetAfterMs: number }) {
  const echo = tls.createServer({
    cert: readFileSync(upstreamCert.cert),
    key: readFileSync(upstreamCert.key),
  });
  echo.on('secureConnection', (s) => {
    s.on('error', () => {});
    s.pipe(s);
  });
  const sockets = new Set<net.Socket>();
  const seen = { accepted: 0, reset: 0, open: 0 };
  const server = net.createServer((socket) => {
    const index = seen.accepted++;
    sockets.add(socket);
    seen.open++;
    socket.on('error', () => {});
    socket.on('close', () => {
      sockets.delete(socket);
      seen.open--;
    });
    if (index >= options.behaveFrom) {
      echo.emit('connection', socket);
      return;
    }
    // Reads and drops what comes (a ClientHello), so that the client's FIN is seen.
    socket.resume();
    if (index > 0) {
      setTimeout(() => {
        seen.reset++;
        socket.resetAndDestroy();
      }, options.resetAfterMs);
    }
    // index 0: held, silent.
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    address: `127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** The misbehaving upstream and sidepool in front of it, TLS verified against the test CA. */
async function throughTls(
  t: { teardown(fn: () => unknown): void },
  upstreamOptions: { behaveFrom: number; resetAfterMs: number },
  pool: Record<string, unknown>,
  route: Record<string, unknown> = {},
) {
  const upstream = await startMisbehavingUpstream(upstreamOptions);
  t.teardown(() => upstream.close());
  const proxy = await startProxy(
    { address: upstream.address, tls: { ca: ca.cert, servername: 'db.test' } } as never,
    pool,
    route,
  );
  t.teardown(() => proxy.app.stop(100));
  return { upstream, proxy };
}

void t.test(
  'a TLS upstream that resets the warm-up dials waiting for the first session: the dials fail, the process stays up, the pool warms once the upstream behaves',
  async (t) => {
    const { upstream, proxy } = await throughTls(
      t,
      { behaveFrom: 4, resetAfterMs: 100 },
      { minIdle: 4, connectTimeout: 2000 },
    );
    await until(() => upstream.seen.reset >= 3, 5000, 'the resets');
    await until(() => proxy.pool.totals.dialFailures >= 3, 5000, 'the failed dials');
    await until(() => proxy.pool.isWarm, 15_000, 'a warm pool once the upstream behaves');
    t.equal((await roundTrip(proxy.port, 'after the resets')).toString(), 'after the resets');
  },
);

void t.test(
  'a probe waiting for the first TLS session is reset: the probe fails, the process stays up',
  async (t) => {
    // The pool's one dial stalls its handshake; every probe behind it waits and is reset.
    const { upstream, proxy } = await throughTls(
      t,
      { behaveFrom: 1000, resetAfterMs: 50 },
      { minIdle: 1, maxSize: 1, connectTimeout: 10_000 },
      { health: { interval: 100, timeout: 5000, unhealthyThreshold: 2 } },
    );
    const endpoint = proxy.app.destinations.values().next().value?.endpoints.all[0];
    await until(() => endpoint?.health === 'unhealthy', 10_000, 'two failed probes');
    t.ok(upstream.seen.reset >= 2, `the probes were reset (${upstream.seen.reset})`);
    t.ok(
      proxy.lines.some((l) => l.msg === 'endpoint unhealthy' && /ECONNRESET/.test(String(l.err))),
      'the probe failed on the reset',
    );
  },
);

void t.test(
  'with no connect timeout, closing the pool ends the stalled first handshake and the dials waiting behind it',
  async (t) => {
    const { upstream, proxy } = await throughTls(
      t,
      { behaveFrom: 1000, resetAfterMs: 60_000 },
      { minIdle: 4, connectTimeout: 0 },
    );
    await until(() => upstream.seen.open === 4, 5000, 'four dials in flight');
    await proxy.app.stop(100);
    await until(() => upstream.seen.open === 0, 5000, 'every dial given up');
    t.equal(proxy.pool.totals.dials, 0, 'none of them became a link');
  },
);
