import { readFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import t from 'tap';
import { App } from '../src/app.js';
import { parseConfig } from '../src/config/load.js';
import type { TlsObserver } from '../src/tls/observer.js';
import { TestPki, type KeyPair, type TestCa } from './helpers/certs.js';
import { startHttpUpstream } from './helpers/http-upstream.js';
import { startProcess } from './helpers/process.js';
import { freePort } from './helpers/redis.js';
import { startTlsServer, tlsRoundTrip } from './helpers/tls-server.js';
import { captureLogger, roundTrip, sleep, until } from './helpers/util.js';

let pki: TestPki;
let ca: TestCa;
let otherCa: TestCa;
let upstreamCert: KeyPair;
let listenerCert: KeyPair;
t.before(async () => {
  pki = await TestPki.create();
  ca = await pki.ca('e2e-ca');
  otherCa = await pki.ca('e2e-other-ca');
  upstreamCert = await ca.issue('db.test', { dns: ['db.test'], ips: ['127.0.0.1'] });
  listenerCert = await ca.issue('sidepool.local', { dns: ['sidepool.local'], ips: ['127.0.0.1'] });
});
t.teardown(() => pki.remove());

function recording() {
  const events: Array<[string, ...unknown[]]> = [];
  const observer: TlsObserver = {
    handshake: (side, name, resumed) => events.push(['handshake', side, name, resumed]),
    handshakeFailed: (side, name, reason) => events.push(['failed', side, name, reason]),
    reloaded: (side, name, result) => events.push(['reloaded', side, name, result]),
  };
  return { observer, events };
}

/** sidepool in-process with the given routes (listen defaults to a free port). */
async function startApp(routes: Array<Record<string, unknown>>, observer?: TlsObserver) {
  const config = parseConfig({
    admin: false,
    routes: routes.map((r, i) => ({ name: `r${i}`, listen: '127.0.0.1:0', ...r })),
  });
  const { logger, lines } = captureLogger('debug');
  const app = new App(config, logger, { tlsObserver: observer });
  await app.start();
  t.teardown(() => app.stop(100));
  return { app, lines, route: app.firstRoute, port: app.firstRoute.port };
}

void t.test(
  'plain-text app → sidepool → TLS upstream, handshakes paid before the app connects',
  async (t) => {
    const upstream = await startTlsServer({ identity: upstreamCert });
    t.teardown(() => upstream.close());
    const { observer, events } = recording();
    const { route, port } = await startApp(
      [
        {
          upstream: { address: upstream.address, tls: { ca: ca.cert, servername: 'db.test' } },
          pool: { minIdle: 2 },
        },
      ],
      observer,
    );
    t.equal(route.pool.name, `${upstream.address}+tls`);
    await until(
      () => route.pool.isWarm && upstream.handshakes.length === 2,
      3000,
      'warm TLS links',
    );
    t.same(
      upstream.handshakes.map((h) => h.servername),
      ['db.test', 'db.test'],
    );
    t.equal((await roundTrip(port, 'hello through tls')).toString(), 'hello through tls');

    // The link the session used is gone (tcp mode); its replacement resumes the session.
    await until(() => upstream.handshakes.length === 3, 3000, 'the replacement dial');
    t.equal(upstream.handshakes[2]?.resumed, true, 'the replacement dial resumed');
    t.same(
      events.map((e) => e.slice(0, 3)),
      [
        ['handshake', 'upstream', `${upstream.address}+tls`],
        ['handshake', 'upstream', `${upstream.address}+tls`],
        ['handshake', 'upstream', `${upstream.address}+tls`],
      ],
    );
  },
);

void t.test('a TLS failure is a failed dial with its reason, never a downgrade', async (t) => {
  const upstream = await startTlsServer({ identity: upstreamCert });
  t.teardown(() => upstream.close());
  const { observer, events } = recording();
  const { lines, route } = await startApp(
    [
      {
        upstream: { address: upstream.address, tls: { ca: otherCa.cert } },
        pool: { minIdle: 1, acquireTimeout: 300, connectTimeout: 500 },
      },
    ],
    observer,
  );
  await until(() => lines.some((l) => l.msg === 'dial failed'), 3000, 'a failed dial');
  const failed = lines.find((l) => l.msg === 'dial failed');
  t.equal(failed?.code, 'SIDEPOOL_TLS_HANDSHAKE_FAILED');
  t.match(failed?.err, /UNABLE_TO_VERIFY_LEAF_SIGNATURE/);
  t.same(events[0], [
    'failed',
    'upstream',
    `${upstream.address}+tls`,
    'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  ]);
  t.equal(upstream.handshakes.length, 0, 'no connection was ever handed over');
  const reply = await roundTrip(route.port, 'x').catch(() => Buffer.alloc(0));
  t.equal(reply.length, 0, 'the app gets nothing rather than an unverified upstream');
});

void t.test(
  'an upstream refusing our client certificate after a TLS 1.3 handshake: backoff, not a loop',
  async (t) => {
    let accepted = 0;
    const upstream = await startTlsServer({
      identity: upstreamCert,
      clientCa: ca.cert,
      requireClientCert: true,
    });
    upstream.server.on('connection', () => accepted++);
    t.teardown(() => upstream.close());
    const { lines } = await startApp([
      { upstream: { address: upstream.address, tls: { ca: ca.cert } }, pool: { minIdle: 2 } },
    ]);
    await until(() => lines.some((l) => l.msg === 'dial failed'), 30_000, 'a failed dial');
    // Then a window in which a hot loop would dial hundreds of times.
    await sleep(600);
    const reasons = lines.filter((l) => l.msg === 'dial failed').map((l) => String(l.err));
    t.ok(reasons.length > 0, 'dials fail');
    t.ok(
      reasons.every((r) => r.includes('ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED')),
      'with the reason the upstream gave',
    );
    t.ok(accepted < 12, `the upstream saw a few connections, not a storm (${accepted})`);
  },
);

void t.test(
  'TLS app → sidepool (terminates) → TLS upstream (originates), mTLS on both sides',
  async (t) => {
    const upstream = await startTlsServer({
      identity: upstreamCert,
      clientCa: ca.cert,
      requireClientCert: true,
    });
    t.teardown(() => upstream.close());
    const sidepoolClient = await ca.issue('sidepool-to-upstream');
    const app = await ca.issue('app');
    const { port } = await startApp([
      {
        tls: {
          cert: listenerCert.cert,
          key: listenerCert.key,
          ca: ca.cert,
          requireClientCert: true,
        },
        upstream: {
          address: upstream.address,
          tls: { ca: ca.cert, cert: sidepoolClient.cert, key: sidepoolClient.key },
        },
        pool: { minIdle: 1 },
      },
    ]);
    const reply = await tlsRoundTrip(port, 'both ways', {
      ca: readFileSync(ca.cert),
      cert: readFileSync(app.cert),
      key: readFileSync(app.key),
    });
    t.equal(reply, 'both ways');
    t.equal(upstream.handshakes[0]?.clientSubject, 'sidepool-to-upstream');
    t.equal(upstream.handshakes[0]?.authorized, true);
  },
);

void t.test('a real redis-server with TLS (and mTLS) as the upstream', async (t) => {
  const port = await freePort();
  const client = await ca.issue('redis-client');
  const redis = await startProcess({
    command: 'redis-server',
    args: ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1', '--save', '']
      .concat(['--appendonly', 'no', '--dir', pki.dir])
      .concat(['--tls-cert-file', upstreamCert.cert, '--tls-key-file', upstreamCert.key])
      .concat(['--tls-ca-cert-file', ca.cert, '--tls-auth-clients', 'yes']),
    debianPackage: 'redis-server',
    ready: { port },
  });
  t.teardown(() => redis.stop());
  const { route } = await startApp([
    {
      upstream: {
        address: `127.0.0.1:${port}`,
        tls: { ca: ca.cert, servername: 'db.test', cert: client.cert, key: client.key },
      },
      pool: { minIdle: 1 },
    },
  ]);
  const reply = await roundTrip(route.port, 'PING\r\nSET k v\r\nGET k\r\nQUIT\r\n');
  t.equal(reply.toString(), '+PONG\r\n+OK\r\n$1\r\nv\r\n+OK\r\n');
});

void t.test('routes with different TLS settings never share a pool', async (t) => {
  const upstream = await startTlsServer({ identity: upstreamCert });
  t.teardown(() => upstream.close());
  const { app } = await startApp([
    { upstream: { address: upstream.address, tls: { ca: ca.cert } }, pool: { minIdle: 0 } },
    { upstream: { address: upstream.address, tls: { ca: ca.cert } }, pool: { minIdle: 0 } },
    {
      upstream: { address: upstream.address, tls: { ca: ca.cert, servername: 'db.test' } },
      pool: { minIdle: 0 },
    },
    { upstream: upstream.address, pool: { minIdle: 0 } },
  ]);
  const pools = [...app.routes.values()].map((r) => r.pool);
  t.equal(pools[0], pools[1], 'same TLS settings: one pool');
  t.not(pools[0], pools[2], 'another servername: another pool');
  t.not(pools[0], pools[3], 'plain TCP: another pool');
  t.equal(pools[0]?.name, `${upstream.address}+tls`);
  t.equal(pools[3]?.name, upstream.address);
  t.not(pools[2]?.name, pools[0]?.name, 'pool names stay distinct');
});

void t.test(
  'http mode behind TLS termination: pipelined requests bounded, answered in order',
  async (t) => {
    const upstream = await startHttpUpstream((req, res) => res.end(`#${req.url?.slice(1)};`));
    t.teardown(() => upstream.close());
    const { port, lines } = await startApp([
      {
        mode: 'http',
        tls: { cert: listenerCert.cert, key: listenerCert.key },
        upstream: upstream.address,
        pool: { minIdle: 1 },
      },
    ]);
    const n = 100;
    let raw = '';
    for (let i = 0; i < n; i++)
      raw += `GET /${i} HTTP/1.1\r\nHost: a\r\n${i === n - 1 ? 'Connection: close\r\n' : ''}\r\n`;
    // A refused request, and one behind it that must not be forwarded.
    raw = raw.replace(
      'Connection: close\r\n\r\n',
      '\r\nGET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n',
    );
    const text = await new Promise<string>((resolve, reject) => {
      let got = '';
      const socket = tls.connect(
        { host: '127.0.0.1', port, ca: readFileSync(ca.cert), servername: 'sidepool.local' },
        () => socket.write(raw),
      );
      socket.on('data', (c: Buffer) => (got += c.toString('latin1')));
      socket.on('error', reject);
      socket.on('close', () => resolve(got));
    });
    const order = [...text.matchAll(/#(\d+);/g)].map((m) => Number(m[1]));
    t.same(
      order,
      Array.from({ length: n }, (_, i) => i),
    );
    t.match(text, /HTTP\/1\.1 400 [^]*$/, 'then the refusal, and the connection closed');
    t.same(
      upstream.requests.filter((r) => !/^\/\d+$/.test(r.url)).map((r) => r.url),
      [],
      'nothing after the refusal went upstream',
    );
    t.notOk(
      lines.some((l) => /not set up as expected/.test(String(l.msg))),
      'the request feed took the TLS socket',
    );
  },
);

void t.test('certificate expiry per owner and role, for metrics', async (t) => {
  const upstream = await startTlsServer({ identity: upstreamCert });
  t.teardown(() => upstream.close());
  const client = await ca.issue('expiry-client', {
    notAfter: new Date(Date.now() + 3 * 86_400_000),
  });
  const { app } = await startApp([
    {
      name: 'front',
      tls: { cert: listenerCert.cert, key: listenerCert.key },
      upstream: {
        address: upstream.address,
        tls: { ca: ca.cert, cert: client.cert, key: client.key },
      },
      pool: { minIdle: 0 },
    },
  ]);
  const expiries = app.certificateExpiries();
  t.same(expiries.map((e) => [e.owner, e.role]).sort(), [
    [`pool/${upstream.address}+tls`, 'ca'],
    [`pool/${upstream.address}+tls`, 'client'],
    ['route/front', 'server'],
  ]);
  const clientExpiry = expiries.find((e) => e.role === 'client')?.expiresAt ?? 0;
  t.ok(Math.abs(clientExpiry - (Date.now() / 1000 + 3 * 86_400)) < 120);
});

void t.test('insecureSkipVerify works and warns at start', async (t) => {
  const upstream = await startTlsServer({ identity: upstreamCert });
  t.teardown(() => upstream.close());
  const { port, lines } = await startApp([
    {
      upstream: { address: upstream.address, tls: { insecureSkipVerify: true } },
      pool: { minIdle: 1 },
    },
  ]);
  t.equal((await roundTrip(port, 'unverified')).toString(), 'unverified');
  t.ok(lines.some((l) => l.level === 40 && /insecureSkipVerify/.test(String(l.msg))));
});

void t.test('config: TLS files must be readable; keys never appear, paths do', (t) => {
  t.throws(
    () =>
      parseConfig({
        routes: [
          {
            listen: ':0',
            upstream: { address: 'a:1', tls: { ca: path.join(pki.dir, 'missing.pem') } },
            tls: { cert: listenerCert.cert, key: path.join(pki.dir, 'missing.key') },
          },
        ],
      }),
    {
      code: 'SIDEPOOL_CONFIG_INVALID',
      issues: [{ path: 'routes[0].upstream.tls.ca' }, { path: 'routes[0].tls.key' }],
    },
  );
  const config = parseConfig({
    routes: [
      { listen: ':0', upstream: 'a:1', tls: { cert: listenerCert.cert, key: listenerCert.key } },
    ],
  });
  const text = JSON.stringify(config);
  t.match(text, listenerCert.key, 'the path of the key is shown');
  t.notMatch(text, /PRIVATE KEY/, 'its contents are not');
  t.end();
});

void t.test(
  'a pool warming many TLS links pays one full handshake; the others resume',
  async (t) => {
    const upstream = await startTlsServer({ identity: upstreamCert });
    t.teardown(() => upstream.close());
    const { route } = await startApp([
      {
        upstream: { address: upstream.address, tls: { ca: ca.cert, servername: 'db.test' } },
        pool: { minIdle: 6 },
      },
    ]);
    await until(() => route.pool.isWarm && upstream.handshakes.length === 6, 5000, 'warm');
    t.same(
      upstream.handshakes.map((h) => h.resumed),
      [false, true, true, true, true, true],
      'warm-up dials waited for the first session instead of six full handshakes',
    );
  },
);

void t.test(
  'with no connect timeout, warm-up dials still wait for the first session',
  async (t) => {
    const upstream = await startTlsServer({ identity: upstreamCert });
    t.teardown(() => upstream.close());
    const { route } = await startApp([
      {
        upstream: { address: upstream.address, tls: { ca: ca.cert, servername: 'db.test' } },
        pool: { minIdle: 3, connectTimeout: 0 },
      },
    ]);
    await until(() => route.pool.isWarm && upstream.handshakes.length === 3, 5000, 'warm');
    t.same(
      upstream.handshakes.map((h) => h.resumed),
      [false, true, true],
    );
    t.equal(route.pool.totals.dialFailures, 0, 'no dial timed out');
  },
);
