// The verifier a plain auth-file password is checked against is made once per secret.
import t from 'tap';
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
