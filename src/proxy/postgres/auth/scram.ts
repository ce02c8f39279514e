import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { secureRandomBytes } from './random.js';

/**
 * SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it: the server side, which
 * checks a client against a stored verifier, and the client side, which logs in to the
 * upstream either with a password or with keys recovered from a client's proof.
 *
 * Pass-through (as PgBouncer does it): the client's proof is ClientKey XOR
 * HMAC(StoredKey, AuthMessage), so the server side recovers ClientKey while it checks the
 * proof. With ClientKey and the verifier's ServerKey the client side can log in to a
 * PostgreSQL that stores the same verifier (same salt and iterations) without ever
 * knowing the password.
 */

export const MECHANISM = 'SCRAM-SHA-256';
const DEFAULT_ITERATIONS = 4096;

/** The keys of a verifier: what PostgreSQL stores in pg_authid.rolpassword. */
export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

/** What the client side needs to log in: the keys, as derived from a password or recovered. */
export interface ScramKeys {
  iterations: number;
  salt: Buffer;
  clientKey: Buffer;
  serverKey: Buffer;
}

/** `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, or undefined. */
export function parseVerifier(text: string): ScramVerifier | undefined {
  const m = /^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$/.exec(
    text,
  );
  if (m === null) return undefined;
  const iterations = Number(m[1]);
  const storedKey = Buffer.from(m[3] as string, 'base64');
  const serverKey = Buffer.from(m[4] as string, 'base64');
  if (iterations < 1 || storedKey.length !== 32 || serverKey.length !== 32) return undefined;
  return { iterations, salt: Buffer.from(m[2] as string, 'base64'), storedKey, serverKey };
}

/** The keys a password gives with this salt and iteration count. */
export function keysFromPassword(password: string, salt: Buffer, iterations: number): ScramKeys {
  const salted = pbkdf2Sync(normalize(password), salt, iterations, 32, 'sha256');
  return {
    iterations,
    salt,
    clientKey: hmac(salted, 'Client Key'),
    serverKey: hmac(salted, 'Server Key'),
  };
}

/** A verifier for a password, as PostgreSQL would store it. */
export function makeVerifier(
  password: string,
  salt: Buffer = randomBytes(16),
  iterations = DEFAULT_ITERATIONS,
): ScramVerifier {
  const keys = keysFromPassword(password, salt, iterations);
  return { iterations, salt, storedKey: sha256(keys.clientKey), serverKey: keys.serverKey };
}

export function formatVerifier(v: ScramVerifier): string {
  return `SCRAM-SHA-256$${v.iterations}:${v.salt.toString('base64')}$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`;
}

/**
 * SASLprep is the identity for ASCII, which is what passwords almost always are.
 * PostgreSQL falls back to the raw bytes for a password SASLprep refuses; NFKC covers the
 * common non-ASCII cases.
 */
function normalize(password: string): string {
  // eslint-disable-next-line no-control-regex
  return /^[\x00-\x7f]*$/.test(password) ? password : password.normalize('NFKC');
}

export class ScramError extends Error {
  readonly code = 'SIDEPOOL_PG_SCRAM';
}

/** The server side of one exchange: client-first → server-first, client-final → server-final. */
export class ScramServer {
  private clientFirstBare = '';
  private serverFirst = '';
  private nonce = '';
  private gs2Header = '';

  constructor(private readonly verifier: ScramVerifier) {}

  /** Takes client-first-message; returns server-first-message. Throws ScramError. */
  start(clientFirst: string): string {
    const m = /^([ny]),(?:a=[^,]*)?,(.*)$/.exec(clientFirst);
    if (m === null) {
      // `p=…` asks for channel binding, which needs the listener's TLS: not offered.
      throw new ScramError('malformed client-first-message or unsupported channel binding');
    }
    this.gs2Header = clientFirst.slice(0, clientFirst.length - (m[2] as string).length);
    this.clientFirstBare = m[2] as string;
    const attrs = attributes(this.clientFirstBare);
    const clientNonce = attrs.get('r');
    if (
      clientNonce === undefined ||
      clientNonce === '' ||
      !/^[\x21-\x2b\x2d-\x7e]+$/.test(clientNonce)
    ) {
      throw new ScramError('client-first-message has no valid nonce');
    }
    this.nonce = clientNonce + secureRandomBytes(18).toString('base64');
    const v = this.verifier;
    this.serverFirst = `r=${this.nonce},s=${v.salt.toString('base64')},i=${v.iterations}`;
    return this.serverFirst;
  }

  /**
   * Takes client-final-message. Returns server-final-message and the client's ClientKey
   * when the proof is right, undefined when it is not (a wrong password). Throws
   * ScramError on a malformed message.
   */
  finish(clientFinal: string): { serverFinal: string; clientKey: Buffer } | undefined {
    const proofAt = clientFinal.lastIndexOf(',p=');
    if (proofAt < 0) throw new ScramError('client-final-message has no proof');
    const withoutProof = clientFinal.slice(0, proofAt);
    const attrs = attributes(withoutProof);
    if (attrs.get('r') !== this.nonce) throw new ScramError('nonce mismatch');
    if (attrs.get('c') !== Buffer.from(this.gs2Header).toString('base64')) {
      throw new ScramError('channel binding mismatch');
    }
    const proof = Buffer.from(clientFinal.slice(proofAt + 3), 'base64');
    if (proof.length !== 32) throw new ScramError('malformed proof');
    const authMessage = `${this.clientFirstBare},${this.serverFirst},${withoutProof}`;
    const v = this.verifier;
    const clientSignature = hmac(v.storedKey, authMessage);
    const clientKey = xor(proof, clientSignature);
    if (!timingSafeEqual(sha256(clientKey), v.storedKey)) return undefined;
    const serverSignature = hmac(v.serverKey, authMessage);
    return { serverFinal: `v=${serverSignature.toString('base64')}`, clientKey };
  }
}

/** The client side of one exchange, logging in to the upstream. */
export class ScramClient {
  private readonly clientNonce = secureRandomBytes(18).toString('base64');
  private readonly clientFirstBare = `n=*,r=${this.clientNonce}`;
  private expectedServerSignature: Buffer | undefined;

  /**
   * `secret`: a password (keys derived from the server's salt), or keys recovered from a
   * client, usable only when the server's salt and iterations are the same.
   */
  constructor(private readonly secret: { password: string } | { keys: ScramKeys }) {}

  /** client-first-message. */
  first(): string {
    return `n,,${this.clientFirstBare}`;
  }

  /** Takes server-first-message; returns client-final-message. Throws ScramError. */
  respond(serverFirst: string): string {
    const attrs = attributes(serverFirst);
    const nonce = attrs.get('r');
    const salt = attrs.get('s');
    const iterations = Number(attrs.get('i'));
    if (nonce === undefined || !nonce.startsWith(this.clientNonce) || nonce === this.clientNonce) {
      throw new ScramError('server nonce does not extend ours');
    }
    if (salt === undefined || !Number.isInteger(iterations) || iterations < 1) {
      throw new ScramError('malformed server-first-message');
    }
    const saltBytes = Buffer.from(salt, 'base64');
    let keys: ScramKeys;
    if ('password' in this.secret) {
      keys = keysFromPassword(this.secret.password, saltBytes, iterations);
    } else {
      keys = this.secret.keys;
      if (keys.iterations !== iterations || !keys.salt.equals(saltBytes)) {
        throw new ScramError(
          'the server stores a different SCRAM verifier than the auth file (salt or iterations differ)',
        );
      }
    }
    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`;
    const storedKey = sha256(keys.clientKey);
    const proof = xor(keys.clientKey, hmac(storedKey, authMessage));
    this.expectedServerSignature = hmac(keys.serverKey, authMessage);
    return `${withoutProof},p=${proof.toString('base64')}`;
  }

  /** Checks server-final-message: the server knew the verifier too. Throws ScramError. */
  verify(serverFinal: string): void {
    const v = attributes(serverFinal).get('v');
    const expected = this.expectedServerSignature;
    if (v === undefined || expected === undefined) {
      throw new ScramError(`server-final-message without a signature`);
    }
    const got = Buffer.from(v, 'base64');
    if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
      throw new ScramError('the server signature is wrong: the server does not know the verifier');
    }
  }
}

function attributes(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    if (eq === 1) out.set(part[0] as string, part.slice(2));
  }
  return out;
}

function hmac(key: Buffer, text: string): Buffer {
  return createHmac('sha256', key).update(text).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.allocUnsafe(a.length);
  for (let i = 0; i < a.length; i++) out[i] = (a[i] as number) ^ (b[i] as number);
  return out;
}
