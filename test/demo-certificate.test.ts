// The demo's self-signed certificate, written without node-forge (src/demo/certificate.ts):
// Node's own X.509 parser reads it, and a real TLS handshake verifies against it.
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import t from 'tap';
import { selfSignedCertificate } from '../src/demo/certificate.js';

const notBefore = new Date('2026-01-02T03:04:05Z');
const notAfter = new Date('2051-06-07T08:09:10Z');
const pair = selfSignedCertificate({
  commonName: 'sidepool demo upstream',
  altNames: ['localhost', '127.0.0.1'],
  notBefore,
  notAfter,
});

void t.test('node:crypto parses it: names, validity, CA, signature', (t) => {
  const x509 = new X509Certificate(pair.cert);
  t.equal(x509.subject, 'CN=sidepool demo upstream');
  t.equal(x509.issuer, x509.subject, 'self-issued');
  t.equal(x509.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1');
  t.equal(x509.checkHost('localhost'), 'localhost');
  t.equal(x509.checkIP('127.0.0.1'), '127.0.0.1');
  t.equal(new Date(x509.validFrom).toISOString(), notBefore.toISOString(), 'UTCTime');
  t.equal(new Date(x509.validTo).toISOString(), notAfter.toISOString(), 'GeneralizedTime (2050+)');
  t.ok(x509.ca, 'its own CA');
  t.same(x509.keyUsage, ['1.3.6.1.5.5.7.3.1'], 'extended key usage: server auth');
  t.ok(x509.verify(createPublicKey(pair.key)), 'signed by its own key');
  t.ok(x509.checkPrivateKey(createPrivateKey(pair.key)), 'the key is the certificate’s');
  t.end();
});

void t.test('openssl reads it, with the extensions the demo needs', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'sidepool-cert-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'cert.pem');
  await writeFile(file, pair.cert);
  const { stdout } = await promisify(execFile)('openssl', ['x509', '-in', file, '-noout', '-text']);
  t.match(stdout, /Signature Algorithm: ecdsa-with-SHA256/);
  t.match(stdout, /CA:TRUE/);
  t.match(stdout, /Digital Signature, Certificate Sign/);
  t.match(stdout, /DNS:localhost, IP Address:127\.0\.0\.1/);
  const verify = await promisify(execFile)('openssl', ['verify', '-CAfile', file, file]);
  t.match(verify.stdout, /: OK/);
});

void t.test('a TLS client that trusts only it completes a verified handshake', async (t) => {
  const current = selfSignedCertificate({
    commonName: 'sidepool demo upstream',
    altNames: ['localhost', '127.0.0.1'],
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 3_600_000),
  });
  const server = tls.createServer(current, (socket) => socket.end('hello'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const port = (server.address() as { port: number }).port;
  for (const servername of ['localhost', undefined]) {
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port, ca: current.cert, servername });
      let got = '';
      socket.on('data', (c: Buffer) => (got += c.toString()));
      socket.on('end', () => resolve(got));
      socket.on('error', reject);
    });
    t.equal(reply, 'hello', `verified, as ${servername ?? '127.0.0.1'}`);
  }
});
