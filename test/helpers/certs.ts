import { execFile } from 'node:child_process';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { MissingToolError } from './process.js';
import { tempDir } from './tmp.js';

/**
 * A throwaway PKI made with the system's openssl for each test run: nothing is committed,
 * nothing expires in a year and breaks the build. EC P-256 keys, so it takes milliseconds.
 */

const execFileAsync = promisify(execFile);

/** Runs openssl; a missing openssl fails with its name and package, like every server helper. */
async function run(
  command: 'openssl',
  args: string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string },
): Promise<void> {
  try {
    await execFileAsync(command, args, options);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new MissingToolError(command, 'openssl');
    throw err;
  }
}

const OPENSSL_CONFIG = `
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = \${ENV::SAN}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ca]
default_ca = testca
[testca]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = anything
unique_subject = no
[anything]
commonName = supplied
`;

export interface KeyPair {
  /** Paths of the PEM files. */
  cert: string;
  key: string;
}

export interface IssueOptions {
  /** Subject alternative names; default: none beyond what is given. */
  dns?: string[];
  ips?: string[];
  notBefore?: Date;
  notAfter?: Date;
}

export class TestCa implements KeyPair {
  private serial = 1;

  constructor(
    readonly pki: TestPki,
    readonly name: string,
    readonly dir: string,
    readonly cert: string,
    readonly key: string,
  ) {}

  /** A leaf certificate (usable as server and client) signed by this CA. */
  async issue(cn: string, options: IssueOptions = {}): Promise<KeyPair> {
    const n = this.serial++;
    const base = path.join(this.dir, `${safe(cn)}-${n}`);
    const san = [
      ...(options.dns ?? []).map((d) => `DNS:${d}`),
      ...(options.ips ?? []).map((ip) => `IP:${ip}`),
    ];
    const env = { ...process.env, SAN: san.length > 0 ? san.join(',') : `DNS:${cn}` };
    await run(
      'openssl',
      ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
        .concat(['-keyout', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${cn}`])
        .concat(['-config', this.pki.config]),
      { env },
    );
    const notBefore = options.notBefore ?? new Date(Date.now() - 3_600_000);
    const notAfter = options.notAfter ?? new Date(Date.now() + 86_400_000);
    await run(
      'openssl',
      ['ca', '-batch', '-config', this.pki.config, '-notext', '-in', `${base}.csr`]
        .concat(['-out', `${base}.pem`, '-cert', this.cert, '-keyfile', this.key])
        .concat(['-startdate', asn1Time(notBefore), '-enddate', asn1Time(notAfter)])
        .concat(['-extfile', this.pki.config, '-extensions', 'leaf']),
      { env, cwd: this.dir },
    );
    return { cert: `${base}.pem`, key: `${base}.key` };
  }
}

export class TestPki {
  private constructor(
    readonly dir: string,
    readonly config: string,
  ) {}

  static async create(): Promise<TestPki> {
    const dir = tempDir('sidepool-pki-');
    const config = path.join(dir, 'openssl.cnf');
    await writeFile(config, OPENSSL_CONFIG);
    return new TestPki(dir, config);
  }

  /** A self-signed root CA, valid from an hour ago for a day. */
  async ca(name: string): Promise<TestCa> {
    const dir = path.join(this.dir, safe(name));
    await mkdir(dir);
    await writeFile(path.join(dir, 'index.txt'), '');
    await writeFile(path.join(dir, 'serial'), '1000\n');
    const cert = path.join(dir, 'ca.pem');
    const key = path.join(dir, 'ca.key');
    await run(
      'openssl',
      ['req', '-x509', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']
        .concat(['-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${name}`])
        .concat(['-config', this.config, '-extensions', 'v3_ca']),
      { env: { ...process.env, SAN: 'DNS:unused' } },
    );
    return new TestCa(this, name, dir, cert, key);
  }

  /** A file in the PKI's directory with the given text (a broken PEM, a bundle, …). */
  async file(name: string, text: string | Buffer): Promise<string> {
    const file = path.join(this.dir, name);
    await writeFile(file, text);
    return file;
  }

  async remove(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

/** The text of a PEM file, for comparing or concatenating. */
export function pem(file: string): Promise<string> {
  return readFile(file, 'utf8');
}

function asn1Time(date: Date): string {
  return date
    .toISOString()
    .replace(/[-:T]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}

function safe(name: string): string {
  return name.replace(/[^A-Za-z0-9_.-]/g, '_');
}
