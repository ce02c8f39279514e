// Secrets: the verifier a plain auth-file password is checked against is made once per
// secret; random bytes for nonces and cancel keys.
import t from 'tap';
import { secureRandomBytes } from '../src/proxy/postgres/auth/random.js';
import { parseSecret, scramVerifierOf } from '../src/proxy/postgres/auth/secrets.js';
import {
  ScramServer,
  formatVerifier,
  parseVerifier,
  type ScramVerifier,
} from '../src/proxy/postgres/auth/scram.js';

void t.test('a plain password: one verifier per secret, not one per login', (t) => {
  const secret = parseSecret('s3cret');
  const first = scramVerifierOf(secret);
  t.ok(first !== undefined);
  t.equal(scramVerifierOf(secret), first, 'the second login reuses it (no PBKDF2)');
  // A reloaded auth file gives new secret objects and so a new salt, as PostgreSQL would
  // after ALTER ROLE ... PASSWORD.
  t.not(scramVerifierOf(parseSecret('s3cret')), first);
  t.end();
});

void t.test('a stored verifier is used as is; md5 has none', (t) => {
  const text = formatVerifier(scramVerifierOf(parseSecret('x')) as ScramVerifier);
  const stored = parseSecret(text);
  t.same(scramVerifierOf(stored), parseVerifier(text));
  t.equal(scramVerifierOf(parseSecret('md5' + '0'.repeat(32))), undefined);
  t.ok(new ScramServer(scramVerifierOf(stored) as ScramVerifier));
  t.end();
});

void t.test('random bytes fetched in batches are each handed out once', (t) => {
  // 1,000 nonces of 18 bytes cross four 4 KiB batches: no two alike, none all zeros.
  const nonces = Array.from({ length: 1000 }, () => secureRandomBytes(18));
  t.ok(
    nonces.every((bytes) => bytes.length === 18),
    'each is 18 bytes',
  );
  const seen = new Set(nonces.map((bytes) => bytes.toString('hex')));
  t.equal(seen.size, 1000, 'no nonce repeats, across batch boundaries too');
  t.notOk(seen.has('00'.repeat(18)), 'no handed-out bytes were cleared before they went');
  // A request larger than a quarter batch is served on its own.
  const big = secureRandomBytes(2048);
  t.equal(big.length, 2048);
  t.not(big.toString('hex'), '00'.repeat(2048));
  t.end();
});
