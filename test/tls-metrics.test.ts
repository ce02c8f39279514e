import { readFileSync } from 'node:fs';
import net from 'node:net';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { TestPki } from './helpers/certs.js';
import { metric, parseMetrics, request } from './helpers/http.js';
import { tlsRoundTrip } from './helpers/tls-server.js';
import { startEcho, until } from './helpers/util.js';

/** Sends plain text to a TLS listener and waits for it to close the connection. */
function plainText(port: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('GET / HTTP/1.1\r\n\r\n'));
    s.on('error', () => {});
    s.on('close', () => resolve());
  });
}

void t.test(
  'TLS handshakes, failures by reason and certificate expiry reach /metrics',
  async (t) => {
    const pki = await TestPki.create();
    t.teardown(() => pki.remove());
    const ca = await pki.ca('listener-ca');
    const cert = await ca.issue('sidepool.local', { dns: ['sidepool.local'], ips: ['127.0.0.1'] });
    const upstream = await startEcho();
    t.teardown(() => upstream.close());
    const proxy = await startProxy(
      upstream.address,
      { minIdle: 1 },
      { tls: { cert: cert.cert, key: cert.key, handshakeTimeout: '500ms' } },
      { admin: { listen: '127.0.0.1:0' } },
    );
    t.teardown(() => proxy.app.stop(100));
    const admin = proxy.app.admin?.port as number;
    const scrape = async () => parseMetrics((await request(admin, '/metrics')).body);

    const trust = { ca: readFileSync(ca.cert), servername: 'sidepool.local' };
    t.equal(await tlsRoundTrip(proxy.port, 'hello', trust), 'hello');
    await plainText(proxy.port);
    await until(() => proxy.route.activeSessions === 0);

    const m = await scrape();
    const labels = { side: 'downstream', owner: 'test' };
    t.equal(metric(m, 'sidepool_tls_handshakes_total', { ...labels, result: 'full' }), 1);
    t.equal(metric(m, 'sidepool_tls_handshakes_total', { ...labels, result: 'failed' }), 1);
    t.equal(
      metric(m, 'sidepool_tls_handshake_failures_total', {
        ...labels,
        reason: 'ERR_SSL_HTTP_REQUEST',
      }),
      1,
    );
    const expiry = metric(m, 'sidepool_tls_certificate_expiry_timestamp_seconds', {
      owner: 'route/test',
      role: 'server',
    });
    t.ok(
      expiry !== undefined && expiry > Date.now() / 1000,
      'the listener certificate expiry is exported',
    );
  },
);
