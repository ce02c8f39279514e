import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import t from 'tap';
import { Pool, type Connector } from '../src/pool/pool.js';
import { Route } from '../src/proxy/route.js';
import { TlsTermination, type RouteTlsSettings } from '../src/proxy/tls-listener.js';
import type { TlsObserver } from '../src/tls/observer.js';
import { TestPki, type KeyPair, type TestCa } from './helpers/certs.js';
import { SecretVolume } from './helpers/secret-volume.js';
import { tlsRoundTrip } from './helpers/tls-server.js';
import { captureLogger, startEcho, until, type TestServer } from './helpers/util.js';

let pki: TestPki;
let ca: TestCa;
let otherCa: TestCa;
let listenerCert: KeyPair;
let upstream: TestServer;
t.before(async () => {
  pki = await TestPki.create();
  ca = await pki.ca('listener-ca');
  otherCa = await pki.ca('stranger-ca');
  listenerCert = await ca.issue('sidepool.local', { dns: ['sidepool.local'], ips: ['127.0.0.1'] });
  upstream = await startEcho();
});
t.teardown(async () => {
  await upstream.close();
  await pki.remove();
});

function recording() {
  const events: Array<[string, ...unknown[]]> = [];
  const observer: TlsObserver = {
    handshake: (side, name, resumed) => events.push(['handshake', side, name, resumed]),
    handshakeFailed: (side, name, reason) => events.push(['failed', side, name, reason]),
    reloaded: (side, name, result) => events.push(['reloaded', side, name, result]),
  };
  return { observer, events };
}

/** A plain TCP connector to the echo upstream: the route under test only terminates. */
const echoConnector = (): Connector => ({
  dial: () =>
    new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port: upstream.port, allowHalfOpen: true });
      socket.once('connect', () => resolve({ socket, endpoint: upstream.address }));
      socket.once('error', reject);
    }),
});

async function startRoute(settings: Partial<RouteTlsSettings> = {}, observer?: TlsObserver) {
  const { logger, lines } = captureLogger('debug');
  const termination = new TlsTermination({
    route: 'secure',
    settings: {
      cert: listenerCert.cert,
      key: listenerCert.key,
      requireClientCert: false,
      minVersion: 'TLSv1.2',
      handshakeTimeout: 5000,
      ...settings,
    },
    logger,
    observer,
    watch: { debounceMs: 20, pollIntervalMs: 0 },
  });
  const pool = new Pool({
    name: upstream.address,
    minIdle: 1,
    maxSize: 8,
    maxWaiters: 8,
    acquireTimeout: 1000,
    idleTimeout: 0,
    maxLifetime: 0,
    connector: echoConnector(),
    logger,
  });
  const route = new Route({
    name: 'secure',
    listen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
    pool,
    logger,
    timeouts: { idleTimeoutMs: 0, halfCloseTimeoutMs: 5000 },
    tls: termination,
  });
  await route.listen();
  pool.start();
  t.teardown(async () => {
    route.destroySessions();
    await route.close();
    await pool.destroy();
  });
  return { route, pool, termination, lines };
}

const trustListener = (): tls.ConnectionOptions => ({
  ca: readFileSync(ca.cert),
  servername: 'sidepool.local',
});

/** Connects with TLS and reports how it ended: the error code, or 'closed'. */
function tlsAttempt(port: number, options: tls.ConnectionOptions): Promise<string> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...options }, () => socket.write('hi'));
    socket.on('data', () => resolve('served'));
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
    socket.on('close', () => resolve('closed'));
  });
}

void t.test('a TLS client is terminated and spliced onto a plain upstream', async (t) => {
  const { observer, events } = recording();
  const { route, lines } = await startRoute({}, observer);
  t.equal(await tlsRoundTrip(route.port, 'over tls', trustListener()), 'over tls');
  t.same(events, [['handshake', 'downstream', 'secure', false]]);
  t.ok(lines.some((l) => l.msg === 'route listening' && l.tls === true));
});

void t.test(
  'plain text to a TLS listener closes that connection; the listener keeps serving',
  async (t) => {
    const { observer, events } = recording();
    const { route, lines } = await startRoute({}, observer);
    const closed = await new Promise<string>((resolve) => {
      const socket = net.connect(route.port, '127.0.0.1', () => socket.write('PING\r\n'));
      let data = '';
      socket.on('data', (c: Buffer) => (data += c.toString()));
      socket.on('error', () => {});
      socket.on('close', () => resolve(data));
    });
    t.equal(closed, '', 'nothing relayed');
    t.same(events, [['failed', 'downstream', 'secure', 'ERR_SSL_WRONG_VERSION_NUMBER']]);
    t.ok(lines.some((l) => l.msg === 'downstream TLS handshake failed: connection closed'));
    t.equal(await tlsRoundTrip(route.port, 'still', trustListener()), 'still');
  },
);

void t.test(
  'a downstream that never completes its handshake is closed after the timeout',
  async (t) => {
    const { observer, events } = recording();
    const { route } = await startRoute({ handshakeTimeout: 100 }, observer);
    const started = Date.now();
    await new Promise<void>((resolve) => {
      const socket = net.connect(route.port, '127.0.0.1');
      socket.on('error', () => {});
      socket.on('close', () => resolve());
    });
    t.ok(Date.now() - started < 30_000, 'closed after the 100 ms timeout, not left open');
    t.same(events, [['failed', 'downstream', 'secure', 'ERR_TLS_HANDSHAKE_TIMEOUT']]);
  },
);

void t.test('closing the route ends handshakes in progress at once', async (t) => {
  const { route } = await startRoute({ handshakeTimeout: 60_000 });
  const socket = net.connect(route.port, '127.0.0.1');
  socket.on('error', () => {});
  const gone = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  await new Promise<void>((resolve) => socket.on('connect', () => resolve()));
  await new Promise((r) => setTimeout(r, 20));
  const started = Date.now();
  await route.close();
  await gone;
  t.ok(Date.now() - started < 30_000, 'close() did not wait for the 60 s handshake timeout');
});

void t.test(
  'mTLS: only clients with a certificate from the configured CA get through',
  async (t) => {
    const { observer, events } = recording();
    const { route } = await startRoute({ ca: ca.cert, requireClientCert: true }, observer);
    const good = await ca.issue('app');
    const stranger = await otherCa.issue('app');

    const served = await tlsRoundTrip(route.port, 'with cert', {
      ...trustListener(),
      cert: readFileSync(good.cert),
      key: readFileSync(good.key),
    });
    t.equal(served, 'with cert');
    t.not(await tlsAttempt(route.port, trustListener()), 'served', 'no certificate: refused');
    t.not(
      await tlsAttempt(route.port, {
        ...trustListener(),
        cert: readFileSync(stranger.cert),
        key: readFileSync(stranger.key),
      }),
      'served',
      'a certificate from another CA: refused',
    );
    t.same(events, [
      ['handshake', 'downstream', 'secure', false],
      ['failed', 'downstream', 'secure', 'SIDEPOOL_TLS_CLIENT_CERT_MISSING'],
      ['failed', 'downstream', 'secure', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'],
    ]);
  },
);

void t.test(
  'certificate rotation by symlink swap: new handshakes, no dropped sessions',
  async (t) => {
    const v1 = await ca.issue('rotating-v1', { ips: ['127.0.0.1'] });
    const v2 = await ca.issue('rotating-v2', { ips: ['127.0.0.1'] });
    const volume = new SecretVolume(path.join(pki.dir, 'listener-secret'));
    await volume.create({ 'tls.crt': v1.cert, 'tls.key': v1.key });
    const { observer, events } = recording();
    const { route } = await startRoute(
      { cert: volume.path('tls.crt'), key: volume.path('tls.key') },
      observer,
    );
    const client = { ca: readFileSync(ca.cert) };

    const served = (): Promise<string> =>
      new Promise((resolve, reject) => {
        const socket = tls.connect({ host: '127.0.0.1', port: route.port, ...client }, () => {
          resolve(String(socket.getPeerCertificate().subject.CN));
          socket.destroy();
        });
        socket.on('error', reject);
      });
    t.equal(await served(), 'rotating-v1');

    // A session that is open across the swap.
    const open = tls.connect({ host: '127.0.0.1', port: route.port, ...client });
    await new Promise<void>((resolve) => open.once('secureConnect', () => resolve()));
    const echo = (text: string): Promise<string> =>
      new Promise((resolve) => {
        open.once('data', (c: Buffer) => resolve(c.toString()));
        open.write(text);
      });
    t.equal(await echo('before'), 'before');

    await volume.update({ 'tls.crt': v2.cert, 'tls.key': v2.key });
    await until(() => events.some((e) => e[0] === 'reloaded'), 3000, 'the reload');
    t.equal(await served(), 'rotating-v2', 'new handshakes present the new certificate');
    t.equal(await echo('after'), 'after', 'the open session was not dropped');
    open.destroy();
    t.same(
      events.filter((e) => e[0] === 'reloaded'),
      [['reloaded', 'downstream', 'secure', 'success']],
    );
  },
);
