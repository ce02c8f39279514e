import { generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { isIPv4 } from 'node:net';

/**
 * A self-signed X.509 certificate for the demo's TLS upstream, written here in DER.
 *
 * node:crypto makes keys, signs and parses certificates (`X509Certificate`) but cannot
 * write one. The alternatives were a runtime dependency that ships in the image for a
 * command no production pod runs (node-forge), a devDependency (gone after
 * `npm ci --omit=dev`, where `sidepool demo` must still work), or the openssl CLI (absent
 * from the distroless image and from many laptops). One fixed certificate shape needs only
 * a few DER writers: an EC P-256 key (generated in about a millisecond), ECDSA with SHA-256.
 */

export interface DemoCertificate {
  /** PEM certificate. */
  cert: string;
  /** PEM private key (PKCS#8). */
  key: string;
}

export interface CertificateOptions {
  commonName: string;
  /** DNS names and IPv4 addresses it is valid for. */
  altNames: string[];
  notBefore: Date;
  notAfter: Date;
}

const OID = {
  commonName: '2.5.4.3',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  serverAuth: '1.3.6.1.5.5.7.3.1',
};

/** A self-signed certificate (its own CA) and its key. */
export function selfSignedCertificate(options: CertificateOptions): DemoCertificate {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const cert = certificateDer(options, publicKey, privateKey);
  return {
    cert: pem('CERTIFICATE', cert),
    key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
  };
}

function certificateDer(
  options: CertificateOptions,
  publicKey: KeyObject,
  privateKey: KeyObject,
): Buffer {
  const algorithm = sequence(oid(OID.ecdsaWithSha256));
  const name = sequence(set(sequence(oid(OID.commonName), utf8String(options.commonName))));
  // A positive serial in minimal DER: 16 random bytes, the first in 0x40-0x7f.
  const serial = randomBytes(16);
  serial[0] = ((serial[0] as number) & 0x3f) | 0x40;
  const tbs = sequence(
    explicit(0, integer(Buffer.from([2]))), // v3
    integer(serial),
    algorithm,
    name,
    sequence(time(options.notBefore), time(options.notAfter)),
    name,
    publicKey.export({ type: 'spki', format: 'der' }),
    explicit(
      3,
      sequence(
        extension(OID.basicConstraints, true, sequence(boolean(true))),
        // digitalSignature (bit 0) and keyCertSign (bit 5): 0b1000_0100, 2 unused bits.
        extension(OID.keyUsage, true, bitString(Buffer.from([0x84]), 2)),
        extension(OID.extKeyUsage, false, sequence(oid(OID.serverAuth))),
        extension(OID.subjectAltName, false, sequence(...options.altNames.map(generalName))),
      ),
    ),
  );
  // ECDSA signatures from node:crypto are DER (SEQUENCE of r and s), as X.509 wants.
  const signature = sign('sha256', tbs, privateKey);
  return sequence(tbs, algorithm, bitString(signature, 0));
}

function generalName(name: string): Buffer {
  if (isIPv4(name)) return tlv(0x87, Buffer.from(name.split('.').map(Number))); // [7] iPAddress
  return tlv(0x82, Buffer.from(name, 'ascii')); // [2] dNSName
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return sequence(oid(id), ...(critical ? [boolean(true)] : []), tlv(0x04, value));
}

function time(date: Date): Buffer {
  const iso = date.toISOString(); // 2026-11-30T12:00:00.000Z
  const digits = iso.slice(0, 19).replace(/[-:T]/g, '');
  // UTCTime (two-digit year) through 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5).
  return date.getUTCFullYear() < 2050
    ? tlv(0x17, Buffer.from(`${digits.slice(2)}Z`, 'ascii'))
    : tlv(0x18, Buffer.from(`${digits}Z`, 'ascii'));
}

function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  const length =
    n < 0x80
      ? Buffer.from([n])
      : n < 0x100
        ? Buffer.from([0x81, n])
        : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), length, content]);
}

function sequence(...items: Buffer[]): Buffer {
  return tlv(0x30, Buffer.concat(items));
}

function set(...items: Buffer[]): Buffer {
  return tlv(0x31, Buffer.concat(items));
}

function explicit(n: number, content: Buffer): Buffer {
  return tlv(0xa0 + n, content);
}

function integer(bytes: Buffer): Buffer {
  return tlv(0x02, bytes);
}

function boolean(value: boolean): Buffer {
  return tlv(0x01, Buffer.from([value ? 0xff : 0]));
}

function bitString(bytes: Buffer, unusedBits: number): Buffer {
  return tlv(0x03, Buffer.concat([Buffer.from([unusedBits]), bytes]));
}

function utf8String(text: string): Buffer {
  return tlv(0x0c, Buffer.from(text, 'utf8'));
}

function oid(dotted: string): Buffer {
  const [first, second, ...rest] = dotted.split('.').map(Number) as [number, number, ...number[]];
  const bytes = [first * 40 + second];
  for (const arc of rest) {
    const groups = [arc & 0x7f];
    for (let v = arc >>> 7; v > 0; v >>>= 7) groups.unshift((v & 0x7f) | 0x80);
    bytes.push(...groups);
  }
  return tlv(0x06, Buffer.from(bytes));
}

function pem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}
