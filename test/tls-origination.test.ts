import net from 'node:net';
import path from 'node:path';
import type tls from 'node:tls';
import t from 'tap';
import type { Address } from '../src/config/address.js';
import type { TlsObserver } from '../src/tls/observer.js';
import { TlsOrigination, type UpstreamTlsSettings } from '../src/upstream/tls.js';
import { TlsSessionCache } from '../src/upstream/tls-sessions.js';
import { TestPki, type KeyPair, type TestCa } from './helpers/certs.js';
import { SecretVolume } from './helpers/secret-volume.js';
import { startTlsServer } from './helpers/tls-server.js';
import { captureLogger, until } from './helpers/util.js';

let pki: TestPki;
let ca: TestCa;
let otherCa: TestCa;
let server: KeyPair;
t.before(async () => {
  pki = await TestPki.create();
  ca = await pki.ca('upstream-ca');
  otherCa = await pki.ca('other-ca');
  server = await ca.issue('db.test', { dns: ['db.test', 'localhost'], ips: ['127.0.0.1'] });
});
t.teardown(() => pki.remove());

const DEFAULTS: UpstreamTlsSettings = {
  minVersion: 'TLSv1.2',
  sessionResumption: true,
  insecureSkipVerify: false,
};

function recording() {
  const events: Array<[string, ...unknown[]]> = [];
  const observer: TlsObserver = {
    handshake: (side, name, resumed) => events.push(['handshake', side, name, resumed]),
    handshakeFailed: (side, name, reason) => events.push(['failed', side, name, reason]),
    reloaded: (side, name, result) => events.push(['reloaded', side, name, result]),
  };
  return { observer, events };
}

function origination(settings: Partial<UpstreamTlsSettings>, observer?: TlsObserver) {
  const { logger, lines } = captureLogger('debug');
  const tlsOut = new TlsOrigination({
    pool: 'db+tls',
    settings: { ...DEFAULTS, ...settings },
    logger,
    observer,
    watch: { debounceMs: 20, pollIntervalMs: 0 },
  });
  return { tlsOut, lines };
}

/** TCP connect, then the TLS handshake, as the dialer does. */
function dial(
  tlsOut: TlsOrigination,
  port: number,
  host = '127.0.0.1',
  timeoutMs = 2000,
): Promise<tls.TLSSocket> {
  const address: Address = { kind: 'tcp', host, port };
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, allowHalfOpen: true });
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.off('error', reject);
      tlsOut
        .handshake(socket, address, { timeoutMs, connectTimeoutMs: timeoutMs })
        .then(resolve, reject);
    });
  });
}

function echoOnce(socket: tls.TLSSocket, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    socket.once('data', (c: Buffer) => resolve(c.toString()));
    socket.once('error', reject);
    socket.write(text);
  });
}

void t.test('verifies the upstream against the configured CA and the address host', async (t) => {
  const upstream = await startTlsServer({ identity: server });
  t.teardown(() => upstream.close());
  const { observer, events } = recording();
  const { tlsOut } = origination({ ca: ca.cert }, observer);
  t.teardown(() => tlsOut.close());
  const socket = await dial(tlsOut, upstream.port);
  t.teardown(() => socket.destroy());
  t.equal(socket.authorized, true);
  t.equal(await echoOnce(socket, 'hello'), 'hello');
  t.equal(upstream.handshakes[0]?.servername, false, 'no SNI for an IP address');
  t.same(events, [['handshake', 'upstream', 'db+tls', false]]);
});

void t.test('verification is on by default: the system CAs do not know a private CA', async (t) => {
  const upstream = await startTlsServer({ identity: server });
  t.teardown(() => upstream.close());
  const { observer, events } = recording();
  const { tlsOut } = origination({}, observer);
  t.teardown(() => tlsOut.close());
  await t.rejects(dial(tlsOut, upstream.port), {
    code: 'SIDEPOOL_TLS_HANDSHAKE_FAILED',
    reason: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  });
  t.same(events, [['failed', 'upstream', 'db+tls', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE']]);
});

void t.test('a certificate from another CA fails', async (t) => {
  const upstream = await startTlsServer({ identity: server });
  t.teardown(() => upstream.close());
  const { tlsOut } = origination({ ca: otherCa.cert });
  t.teardown(() => tlsOut.close());
  await t.rejects(dial(tlsOut, upstream.port), {
    code: 'SIDEPOOL_TLS_HANDSHAKE_FAILED',
    reason: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  });
});

void t.test('a certificate for another name fails', async (t) => {
  const upstream = await startTlsServer({ identity: server });
  t.teardown(() => upstream.close());
  const { tlsOut } = origination({ ca: ca.cert, servername: 'cache.test' });
  t.teardown(() => tlsOut.close());
  await t.rejects(dial(tlsOut, upstream.port), {
    code: 'SIDEPOOL_TLS_HANDSHAKE_FAILED',
    reason: 'ERR_TLS_CERT_ALTNAME_INVALID',
  });
});

void t.test('an expired certificate fails', async (t) => {
  const expired = await ca.issue('db.test', {
    ips: ['127.0.0.1'],
    notBefore: new Date('2020-01-01T00:00:00Z'),
    notAfter: new Date('2020-01-02T00:00:00Z'),
  });
  const upstream = await startTlsServer({ identity: expired });
  t.teardown(() => upstream.close());
  const { tlsOut } = origination({ ca: ca.cert });
  t.teardown(() => tlsOut.close());
  await t.rejects(dial(tlsOut, upstream.port), {
    code: 'SIDEPOOL_TLS_HANDSHAKE_FAILED',
    reason: 'CERT_HAS_EXPIRED',
  });
});

void t.test('an upstream that never answers the handshake times out', async (t) => {
  const silent = net.createServer(() => {});
  const held: net.Socket[] = [];
  silent.on('connection', (s) => held.push(s));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of held) s.destroy();
    silent.close();
  });
  const { tlsOut } = origination({ ca: ca.cert });
  t.teardown(() => tlsOut.close());
  const started = Date.now();
  await t.rejects(dial(tlsOut, (silent.address() as net.AddressInfo).port, '127.0.0.1', 100), {
    code: 'SIDEPOOL_TLS_HANDSHAKE_FAILED',
    reason: 'SIDEPOOL_CONNECT_TIMEOUT',
  });
  t.ok(Date.now() - started < 30_000, 'after the 100 ms connect timeout, not left hanging');
});

void t.test('SNI: the configured servername is sent and verified', async (t) => {
  const upstream = await startTlsServer({ identity: server });
  t.teardown(() => upstream.close());
  const { tlsOut } = origination({ ca: ca.cert, servername: 'db.test' });
  t.teardown(() => tlsOut.close());
  const socket = await dial(tlsOut, upstream.port);
  await until(() => upstream.handshakes.length === 1);
  socket.destroy();
  t.equal(upstream.handshakes[0]?.servername, 'db.test');
});

void t.test('SNI: by default the host of the address', async (t) => {
  const upstream = await startTlsServer({ identity: server });
  t.teardown(() => upstream.close());
  const { tlsOut } = origination({ ca: ca.cert });
  t.teardown(() => tlsOut.close());
  const socket = await dial(tlsOut, upstream.port, 'localhost');
  await until(() => upstream.handshakes.length === 1);
  socket.destroy();
  t.equal(upstream.handshakes[0]?.servername, 'localhost');
});

void t.test('insecureSkipVerify connects to anything, and says so at start', async (t) => {
  const upstream = await startTlsServer({ identity: server });
  t.teardown(() => upstream.close());
  const { tlsOut, lines } = origination({ ca: otherCa.cert, insecureSkipVerify: true });
  t.teardown(() => tlsOut.close());
  const socket = await dial(tlsOut, upstream.port);
  socket.destroy();
  t.equal(socket.authorized, false);
  t.ok(lines.some((l) => l.level === 40 && /insecureSkipVerify/.test(String(l.msg))));
});

void t.test('ALPN protocols are offered', async (t) => {
  const upstream = await startTlsServer({ identity: server, alpn: ['http/1.1'] });
  t.teardown(() => upstream.close());
  const { tlsOut } = origination({ ca: ca.cert, alpn: ['h2', 'http/1.1'] });
  t.teardown(() => tlsOut.close());
  const socket = await dial(tlsOut, upstream.port);
  t.equal(socket.alpnProtocol, 'http/1.1');
  socket.destroy();
});

void t.test('mTLS: the client certificate is presented and accepted', async (t) => {
  const client = await ca.issue('sidepool-client');
  const upstream = await startTlsServer({
    identity: server,
    clientCa: ca.cert,
    requireClientCert: true,
  });
  t.teardown(() => upstream.close());
  const { tlsOut } = origination({ ca: ca.cert, cert: client.cert, key: client.key });
  t.teardown(() => tlsOut.close());
  const socket = await dial(tlsOut, upstream.port);
  t.equal(await echoOnce(socket, 'x'), 'x');
  socket.destroy();
  t.equal(upstream.handshakes[0]?.authorized, true);
  t.equal(upstream.handshakes[0]?.clientSubject, 'sidepool-client');
  t.same(
    tlsOut.certificates().map((c) => c.role),
    ['client', 'ca'],
  );
});

void t.test('mTLS with TLS 1.2: a missing client certificate fails the handshake', async (t) => {
  const upstream = await startTlsServer({
    identity: server,
    clientCa: ca.cert,
    requireClientCert: true,
    maxVersion: 'TLSv1.2',
  });
  t.teardown(() => upstream.close());
  const { tlsOut } = origination({ ca: ca.cert });
  t.teardown(() => tlsOut.close());
  const err = await dial(tlsOut, upstream.port).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(err, {
    code: 'SIDEPOOL_TLS_HANDSHAKE_FAILED',
    reason: /^ERR_SSL_.*HANDSHAKE_FAILURE$|^ECONNRESET$/,
  });
});

void t.test('mTLS with TLS 1.3: a refusal after the handshake fails the next dials', async (t) => {
  const upstream = await startTlsServer({
    identity: server,
    clientCa: ca.cert,
    requireClientCert: true,
  });
  t.teardown(() => upstream.close());
  const { observer, events } = recording();
  const { tlsOut, lines } = origination({ ca: ca.cert }, observer);
  t.teardown(() => tlsOut.close());
  const endpoint = `127.0.0.1:${upstream.port}`;
  t.equal(tlsOut.refusal(endpoint), undefined);

  // TLS 1.3: our side of the handshake completes before the server checks our certificate.
  const first = await dial(tlsOut, upstream.port);
  first.on('error', () => {});
  first.resume();
  await until(() => events.some((e) => e[0] === 'failed'), 3000, 'the refusal');
  const reason = 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED';
  t.same(events, [
    ['handshake', 'upstream', 'db+tls', false],
    ['failed', 'upstream', 'db+tls', reason],
  ]);
  t.ok(lines.some((l) => l.msg === 'upstream refused the link right after the TLS handshake'));
  t.match(tlsOut.refusal(endpoint), { code: 'SIDEPOOL_TLS_HANDSHAKE_FAILED', reason });
  t.equal(tlsOut.refusal(endpoint), undefined, 'after one refusal, one dial fails');

  // Refused again: the next two dials fail, so the pool's backoff keeps growing.
  const second = await dial(tlsOut, upstream.port);
  second.on('error', () => {});
  second.resume();
  await until(
    () => events.filter((e) => e[0] === 'failed').length === 2,
    3000,
    'the second refusal',
  );
  t.ok(tlsOut.refusal(endpoint));
  t.ok(tlsOut.refusal(endpoint));
  t.equal(tlsOut.refusal(endpoint), undefined);
});

void t.test('replacement dials resume the TLS session', async (t) => {
  const upstream = await startTlsServer({ identity: server });
  t.teardown(() => upstream.close());
  const { observer, events } = recording();
  const { tlsOut } = origination({ ca: ca.cert }, observer);
  t.teardown(() => tlsOut.close());
  const first = await dial(tlsOut, upstream.port);
  // The session ticket arrives after the handshake, with the first read.
  first.resume();
  await until(() => tlsOut.sessions.size === 1, 3000, 'a session ticket');
  first.destroy();
  const second = await dial(tlsOut, upstream.port);
  await until(() => upstream.handshakes.length === 2);
  second.destroy();
  t.same(
    upstream.handshakes.map((h) => h.resumed),
    [false, true],
    'the server saw a full handshake, then a resumed one',
  );
  t.same(
    events.map((e) => e[3]),
    [false, true],
  );
});

void t.test('ticketless endpoints are remembered within a bound, like sessions', (t) => {
  // Endpoints change with DNS: a list that only grows would grow for as long as it runs.
  const cache = new TlsSessionCache(2);
  for (const endpoint of ['10.0.0.1:443', '10.0.0.2:443', '10.0.0.3:443']) {
    cache.markTicketless(endpoint);
  }
  t.notOk(cache.isTicketless('10.0.0.1:443'), 'the oldest went');
  t.ok(cache.isTicketless('10.0.0.3:443'));
  cache.set('10.0.0.3:443', Buffer.from('ticket'));
  t.notOk(cache.isTicketless('10.0.0.3:443'), 'a ticket after all takes it off the list');
  t.equal(cache.size, 1, 'size counts sessions only');
  t.end();
});

void t.test('sessionResumption: false always does full handshakes', async (t) => {
  const upstream = await startTlsServer({ identity: server });
  t.teardown(() => upstream.close());
  const { tlsOut } = origination({ ca: ca.cert, sessionResumption: false });
  t.teardown(() => tlsOut.close());
  for (let i = 0; i < 2; i++) {
    const socket = await dial(tlsOut, upstream.port);
    socket.resume();
    await echoOnce(socket, 'x');
    socket.destroy();
  }
  t.same(
    upstream.handshakes.map((h) => h.resumed),
    [false, false],
  );
  t.equal(tlsOut.sessions.size, 0);
});

void t.test('a rotated CA is used for new dials, and cached sessions are dropped', async (t) => {
  const newServer = await otherCa.issue('db.test', { ips: ['127.0.0.1'] });
  const oldUpstream = await startTlsServer({ identity: server });
  const newUpstream = await startTlsServer({ identity: newServer });
  t.teardown(() => oldUpstream.close());
  t.teardown(() => newUpstream.close());
  const volume = new SecretVolume(path.join(pki.dir, 'upstream-ca-volume'));
  await volume.create({ 'ca.crt': ca.cert });
  const { observer, events } = recording();
  const { tlsOut } = origination({ ca: volume.path('ca.crt') }, observer);
  t.teardown(() => tlsOut.close());
  tlsOut.material.watch();

  const kept = await dial(tlsOut, oldUpstream.port);
  kept.resume();
  await until(() => tlsOut.sessions.size === 1, 3000, 'a session ticket');
  await t.rejects(dial(tlsOut, newUpstream.port), {
    code: 'SIDEPOOL_TLS_HANDSHAKE_FAILED',
    reason: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  });

  await volume.update({ 'ca.crt': otherCa.cert });
  await until(() => events.some((e) => e[0] === 'reloaded'), 3000, 'the reload');
  t.equal(tlsOut.sessions.size, 0, 'sessions verified under the old CA are forgotten');
  const fresh = await dial(tlsOut, newUpstream.port);
  fresh.destroy();
  await t.rejects(dial(tlsOut, oldUpstream.port), {
    code: 'SIDEPOOL_TLS_HANDSHAKE_FAILED',
    reason: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  });
  t.equal(await echoOnce(kept, 'still here'), 'still here', 'an established link is untouched');
  kept.destroy();
});
