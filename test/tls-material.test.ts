import path from 'node:path';
import t from 'tap';
import { TlsMaterial, type TlsMaterialOptions } from '../src/tls/material.js';
import type { TlsObserver } from '../src/tls/observer.js';
import { TestPki, pem, type TestCa } from './helpers/certs.js';
import { SecretVolume } from './helpers/secret-volume.js';
import { captureLogger, sleep, until } from './helpers/util.js';

let pki: TestPki;
let ca: TestCa;
t.before(async () => {
  pki = await TestPki.create();
  ca = await pki.ca('material-ca');
});
t.teardown(() => pki.remove());

function recordingObserver() {
  const reloads: string[] = [];
  const observer: TlsObserver = {
    handshake() {},
    handshakeFailed() {},
    reloaded: (_side, _name, result) => reloads.push(result),
  };
  return { observer, reloads };
}

function material(files: TlsMaterialOptions['files'], extra: Partial<TlsMaterialOptions> = {}) {
  const { logger, lines } = captureLogger('debug');
  const m = new TlsMaterial({
    side: 'downstream',
    name: 'r1',
    files,
    certRole: 'server',
    logger,
    debounceMs: 20,
    pollIntervalMs: 0,
    ...extra,
  });
  return { m, lines };
}

void t.test('loads certificate, key and CA, and says when each expires', async (t) => {
  const leaf = await ca.issue('svc', { notAfter: new Date(Date.now() + 2 * 86_400_000) });
  const { m } = material({ cert: leaf.cert, key: leaf.key, ca: ca.cert });
  t.teardown(() => m.close());
  const certs = m.certificates();
  t.same(
    certs.map((c) => [c.role, c.path]),
    [
      ['server', leaf.cert],
      ['ca', ca.cert],
    ],
  );
  t.ok(Math.abs((certs[0]?.notAfter.getTime() ?? 0) - (Date.now() + 2 * 86_400_000)) < 60_000);
  t.match(certs[0]?.subject, /CN=svc/);
  const options = m.secureContextOptions();
  t.ok(Buffer.isBuffer(options.key), 'the key is there for the TLS server');
  t.notMatch(JSON.stringify(m), /PRIVATE KEY/, 'but not in the serialised object');
});

void t.test('an unusable file is refused with the field that names it', async (t) => {
  const leaf = await ca.issue('svc');
  const other = await ca.issue('other');
  const garbage = await pki.file('garbage.pem', 'not a certificate\n');
  const cases: Array<[string, TlsMaterialOptions['files'], string]> = [
    ['missing cert', { cert: path.join(pki.dir, 'nope.pem'), key: leaf.key }, 'cert'],
    ['garbage cert', { cert: garbage, key: leaf.key }, 'cert'],
    ['garbage key', { cert: leaf.cert, key: garbage }, 'key'],
    ['key of another certificate', { cert: leaf.cert, key: other.key }, 'key'],
    ['garbage CA', { cert: leaf.cert, key: leaf.key, ca: garbage }, 'ca'],
  ];
  for (const [what, files, field] of cases) {
    t.throws(() => material(files), { code: 'SIDEPOOL_TLS_MATERIAL_INVALID', field }, what);
  }
});

void t.test('an expired certificate loads, with a warning', async (t) => {
  const expired = await ca.issue('old', {
    notBefore: new Date('2020-01-01T00:00:00Z'),
    notAfter: new Date('2020-01-02T00:00:00Z'),
  });
  const { m, lines } = material({ cert: expired.cert, key: expired.key });
  t.teardown(() => m.close());
  t.ok(lines.some((l) => l.msg === 'certificate has expired' && l.role === 'server'));
});

void t.test('Kubernetes secret update (symlink swap) is picked up without a restart', async (t) => {
  const first = await ca.issue('svc-v1');
  const second = await ca.issue('svc-v2');
  const volume = new SecretVolume(path.join(pki.dir, 'secret-swap'));
  await volume.create({ 'tls.crt': first.cert, 'tls.key': first.key });
  const { observer, reloads } = recordingObserver();
  const { m, lines } = material(
    { cert: volume.path('tls.crt'), key: volume.path('tls.key') },
    { observer },
  );
  t.teardown(() => m.close());
  let told = 0;
  m.onReload(() => told++);
  const before = m.context;
  m.watch();
  t.match(m.certificates()[0]?.subject, /svc-v1/);

  await volume.update({ 'tls.crt': second.cert, 'tls.key': second.key });
  await until(() => told === 1, 3000, 'the reload');
  t.match(m.certificates()[0]?.subject, /svc-v2/);
  t.not(m.context, before, 'a new secure context');
  t.same(reloads, ['success']);
  const logged = lines.find((l) => l.msg === 'tls material reloaded');
  t.ok(logged, 'the reload is logged');
  t.notMatch(JSON.stringify(lines), /PRIVATE KEY/, 'no key material in any log line');
});

void t.test('a broken update is rejected and logged; the old material stays', async (t) => {
  const good = await ca.issue('svc-good');
  const later = await ca.issue('svc-later');
  const other = await ca.issue('svc-other');
  const volume = new SecretVolume(path.join(pki.dir, 'secret-broken'));
  await volume.create({ 'tls.crt': good.cert, 'tls.key': good.key });
  const { observer, reloads } = recordingObserver();
  const { m, lines } = material(
    { cert: volume.path('tls.crt'), key: volume.path('tls.key') },
    { observer },
  );
  t.teardown(() => m.close());
  m.watch();
  const before = m.context;

  // A certificate with somebody else's key.
  await volume.update({ 'tls.crt': later.cert, 'tls.key': other.key });
  await until(() => reloads.length === 1, 3000, 'the rejection');
  t.same(reloads, ['rejected']);
  t.equal(m.context, before, 'the old context is still in use');
  t.match(m.certificates()[0]?.subject, /svc-good/);
  const logged = lines.find(
    (l) => l.msg === 'tls material rejected: the previous material stays in use',
  );
  t.equal(logged?.code, 'SIDEPOOL_TLS_MATERIAL_INVALID');
  t.equal(logged?.field, 'key');

  // The same broken files again are not reported again; a fixed update is taken.
  t.equal(await m.reload(), false);
  t.equal(reloads.length, 1);
  await volume.update({ 'tls.crt': later.cert, 'tls.key': later.key });
  await until(() => reloads.length === 2, 3000, 'the fixed update');
  t.same(reloads, ['rejected', 'success']);
  t.match(m.certificates()[0]?.subject, /svc-later/);
});

void t.test('a file rewritten in place is picked up too', async (t) => {
  const first = await ca.issue('inplace-v1');
  const second = await ca.issue('inplace-v2');
  const certFile = await pki.file('inplace.crt', await pem(first.cert));
  const keyFile = await pki.file('inplace.key', await pem(first.key));
  const { m } = material({ cert: certFile, key: keyFile });
  t.teardown(() => m.close());
  m.watch();
  let told = 0;
  m.onReload(() => told++);
  // Certificate first, key a moment later: the pair in between is rejected, then taken.
  await pki.file('inplace.crt', await pem(second.cert));
  await sleep(5);
  await pki.file('inplace.key', await pem(second.key));
  await until(() => told === 1, 3000, 'the reload');
  t.match(m.certificates()[0]?.subject, /inplace-v2/);
});

void t.test('polling finds a change that no event reported', async (t) => {
  const first = await ca.issue('poll-v1');
  const second = await ca.issue('poll-v2');
  const certFile = await pki.file('poll.crt', await pem(first.cert));
  const keyFile = await pki.file('poll.key', await pem(first.key));
  const { m } = material(
    { cert: certFile, key: keyFile },
    { pollIntervalMs: 30, debounceMs: 60_000 },
  );
  t.teardown(() => m.close());
  m.watch();
  await pki.file('poll.crt', await pem(second.cert));
  await pki.file('poll.key', await pem(second.key));
  await until(() => /poll-v2/.test(m.certificates()[0]?.subject ?? ''), 3000, 'the poll');
  t.pass('picked up by the poll');
});

void t.test('after close() nothing is watched any more', async (t) => {
  const first = await ca.issue('closed-v1');
  const second = await ca.issue('closed-v2');
  const volume = new SecretVolume(path.join(pki.dir, 'secret-closed'));
  await volume.create({ 'tls.crt': first.cert, 'tls.key': first.key });
  const { m } = material({ cert: volume.path('tls.crt'), key: volume.path('tls.key') });
  m.watch();
  m.close();
  m.close();
  let told = 0;
  m.onReload(() => told++);
  await volume.update({ 'tls.crt': second.cert, 'tls.key': second.key });
  await sleep(100);
  t.equal(told, 0);
  t.match(m.certificates()[0]?.subject, /closed-v1/);
});
