import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { TlsMaterialError, codeOf, describe } from '../errors.js';
import { NO_TLS_OBSERVER, type TlsObserver, type TlsSide } from './observer.js';

export type MaterialField = 'cert' | 'key' | 'ca';
/** Paths of PEM files, by the config key that named them. */
export type MaterialFiles = Partial<Record<MaterialField, string>>;
export type CertificateRole = 'server' | 'client' | 'ca';

/** One loaded certificate, for expiry metrics and logs. No secrets. */
export interface CertificateInfo {
  /** `server`/`client`: the certificate sidepool presents (then its chain); `ca`: trusted. */
  role: CertificateRole;
  /** The file it was read from. */
  path: string;
  subject: string;
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
}

type Pem = Partial<Record<MaterialField, Buffer>>;

interface Loaded {
  pem: Pem;
  certificates: CertificateInfo[];
  context: tls.SecureContext;
}

export interface TlsMaterialOptions {
  side: TlsSide;
  /** The pool or route the material belongs to, for logs and the observer. */
  name: string;
  files: MaterialFiles;
  /** What `cert` is: the server certificate of a listener, or a client (mTLS) certificate. */
  certRole: 'server' | 'client';
  /** Settings for every secure context built from the files (minVersion, …). */
  contextOptions?: tls.SecureContextOptions;
  logger: Logger;
  observer?: TlsObserver;
  /** Changes within this window are read once. */
  debounceMs?: number;
  /**
   * Files are also re-read this often, in case a file-system event is missed (network
   * file systems, a watched directory that was replaced); 0 = events only.
   */
  pollIntervalMs?: number;
}

type MaterialState = 'loaded' | 'watching' | 'closed';

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/**
 * The certificate, key and CA files of one pool or route, loaded, checked and turned into a
 * secure context. Once watched, the files are re-read when they change; new material that
 * passes the same checks replaces the old (listeners are told), and material that does
 * not is logged and ignored, so the old stays in use.
 *
 * The directories are watched, not the files: Kubernetes updates a secret volume by
 * pointing the `..data` symlink at a new directory, which changes no watched file inode.
 */
export class TlsMaterial {
  readonly side: TlsSide;
  readonly name: string;
  private readonly files: MaterialFiles;
  private readonly certRole: 'server' | 'client';
  private readonly contextOptions: tls.SecureContextOptions;
  private readonly log: Logger;
  private readonly observer: TlsObserver;
  private readonly debounceMs: number;
  private readonly pollIntervalMs: number;
  /** Private so that the key never shows up when the object is logged or inspected. */
  #loaded: Loaded;
  /** The last files rejected, and the last read failure: each is reported once. */
  #rejected: Pem | undefined;
  private lastReadError: string | undefined;
  private readonly listeners = new Set<() => void>();
  private readonly watchers: FSWatcher[] = [];
  private debounceTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private reloading: Promise<boolean> | undefined;
  private reloadAgain = false;
  private state: MaterialState = 'loaded';

  /** Reads and checks the files now; throws TlsMaterialError naming the bad one. */
  constructor(options: TlsMaterialOptions) {
    this.side = options.side;
    this.name = options.name;
    this.files = { ...options.files };
    this.certRole = options.certRole;
    this.contextOptions = options.contextOptions ?? {};
    this.log = options.logger;
    this.observer = options.observer ?? NO_TLS_OBSERVER;
    this.debounceMs = options.debounceMs ?? 100;
    this.pollIntervalMs = options.pollIntervalMs ?? 60_000;
    this.#loaded = buildMaterial(
      this.files,
      readAllSync(this.files),
      this.certRole,
      this.contextOptions,
    );
    this.warnIfExpired();
  }

  /** The secure context built from the current files. */
  get context(): tls.SecureContext {
    return this.#loaded.context;
  }

  /** The current PEM and context settings, for `tls.createServer`/`setSecureContext`. */
  secureContextOptions(): tls.SecureContextOptions {
    const { cert, key, ca } = this.#loaded.pem;
    return { ...this.contextOptions, cert, key, ...(ca !== undefined ? { ca } : {}) };
  }

  /** The certificates in use: the presented one first, then its chain, then trusted CAs. */
  certificates(): readonly CertificateInfo[] {
    return this.#loaded.certificates;
  }

  /** Called after new material is in use. Returns a function that unsubscribes. */
  onReload(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Starts watching the files' directories (and polling, if set). Idempotent. */
  watch(): void {
    if (this.state !== 'loaded') return;
    this.state = 'watching';
    const paths = Object.values(this.files);
    if (paths.length === 0) return;
    for (const dir of new Set(paths.map((file) => path.dirname(path.resolve(file))))) {
      try {
        // Not persistent: watching must never be what keeps the process alive.
        const watcher = watch(dir, { persistent: false }, this.onFileEvent);
        watcher.on('error', (err) => {
          this.log.warn(
            { side: this.side, name: this.name, dir, code: codeOf(err), err: describe(err) },
            'cannot watch certificate directory any more; polling only',
          );
          watcher.close();
        });
        this.watchers.push(watcher);
      } catch (err) {
        this.log.warn(
          { side: this.side, name: this.name, dir, code: codeOf(err), err: describe(err) },
          'cannot watch certificate directory; polling only',
        );
      }
    }
    if (this.pollIntervalMs > 0) {
      this.pollTimer = setInterval(() => void this.reload(), this.pollIntervalMs);
      this.pollTimer.unref();
    }
  }

  /**
   * Re-reads the files now. Resolves true when new material is in use, false when the
   * files are unchanged or the new ones were rejected. Never rejects. Reloads run one at
   * a time; a request during one runs once more after it.
   */
  reload(): Promise<boolean> {
    if (this.reloading !== undefined) {
      this.reloadAgain = true;
      return this.reloading;
    }
    this.reloading = this.reloadOnce().then(async (changed) => {
      this.reloading = undefined;
      if (!this.reloadAgain) return changed;
      this.reloadAgain = false;
      return (await this.reload()) || changed;
    });
    return this.reloading;
  }

  /** Stops watching and polling. Idempotent. */
  close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    for (const watcher of this.watchers) watcher.close();
    this.watchers.length = 0;
    if (this.debounceTimer !== undefined) clearTimeout(this.debounceTimer);
    if (this.pollTimer !== undefined) clearInterval(this.pollTimer);
    this.debounceTimer = undefined;
    this.pollTimer = undefined;
    this.listeners.clear();
  }

  private readonly onFileEvent = (): void => {
    if (this.state !== 'watching') return;
    // One update touches several names (the files, or the ..data symlink and the
    // directories behind it): read once, after they have settled.
    if (this.debounceTimer !== undefined) clearTimeout(this.debounceTimer);
    this.debounceTimer = setTimeout(() => {
      this.debounceTimer = undefined;
      void this.reload();
    }, this.debounceMs);
    this.debounceTimer.unref();
  };

  private async reloadOnce(): Promise<boolean> {
    let pem: Pem;
    try {
      pem = await readAll(this.files);
    } catch (err) {
      const message = describe(err);
      if (message !== this.lastReadError) this.reject(err);
      this.lastReadError = message;
      return false;
    }
    this.lastReadError = undefined;
    if (samePem(pem, this.#loaded.pem)) return false;
    if (this.#rejected !== undefined && samePem(pem, this.#rejected)) return false;
    let loaded: Loaded;
    try {
      loaded = buildMaterial(this.files, pem, this.certRole, this.contextOptions);
    } catch (err) {
      this.#rejected = pem;
      this.reject(err);
      return false;
    }
    if (this.state === 'closed') return false;
    this.#loaded = loaded;
    this.#rejected = undefined;
    this.log.info(
      { side: this.side, name: this.name, certificates: summary(loaded.certificates) },
      'tls material reloaded',
    );
    this.observer.reloaded(this.side, this.name, 'success');
    this.warnIfExpired();
    for (const listener of this.listeners) listener();
    return true;
  }

  private reject(cause: unknown): void {
    this.log.error(
      {
        side: this.side,
        name: this.name,
        code: codeOf(cause),
        field: cause instanceof TlsMaterialError ? cause.field : undefined,
        err: describe(cause),
      },
      'tls material rejected: the previous material stays in use',
    );
    this.observer.reloaded(this.side, this.name, 'rejected');
  }

  private warnIfExpired(): void {
    const now = Date.now();
    for (const cert of this.#loaded.certificates) {
      if (cert.role !== 'ca' && cert.notAfter.getTime() <= now) {
        this.log.warn(
          { side: this.side, name: this.name, ...summary([cert])[0] },
          'certificate has expired',
        );
      }
    }
  }
}

/** Parses and cross-checks PEM files into a secure context. Throws TlsMaterialError. */
export function buildMaterial(
  files: MaterialFiles,
  pem: Pem,
  certRole: 'server' | 'client',
  contextOptions: tls.SecureContextOptions = {},
): Loaded {
  const certificates: CertificateInfo[] = [];
  if ((pem.cert === undefined) !== (pem.key === undefined)) {
    const missing = pem.cert === undefined ? 'cert' : 'key';
    throw new TlsMaterialError(missing, '', 'cert and key must be given together');
  }
  if (pem.cert !== undefined && pem.key !== undefined) {
    const certPath = files.cert ?? '';
    const chain = parseCertificates('cert', certPath, pem.cert);
    const leaf = chain[0] as X509Certificate;
    chain.forEach((cert, i) => certificates.push(info(i === 0 ? certRole : 'ca', certPath, cert)));
    let key: KeyObject;
    try {
      key = createPrivateKey(pem.key);
    } catch (err) {
      throw new TlsMaterialError(
        'key',
        files.key ?? '',
        `not a usable private key (${codeOf(err)})`,
        {
          cause: err,
        },
      );
    }
    if (!leaf.checkPrivateKey(key)) {
      throw new TlsMaterialError(
        'key',
        files.key ?? '',
        `does not match the certificate in ${certPath}`,
      );
    }
  }
  if (pem.ca !== undefined) {
    const caPath = files.ca ?? '';
    for (const cert of parseCertificates('ca', caPath, pem.ca)) {
      certificates.push(info('ca', caPath, cert));
    }
  }
  let context: tls.SecureContext;
  try {
    context = tls.createSecureContext({
      ...contextOptions,
      cert: pem.cert,
      key: pem.key,
      // A CA file replaces any default trust the options carry.
      ...(pem.ca !== undefined ? { ca: pem.ca } : {}),
    });
  } catch (err) {
    const field: MaterialField = pem.cert !== undefined ? 'cert' : 'ca';
    throw new TlsMaterialError(field, files[field] ?? '', `unusable: ${describe(err)}`, {
      cause: err,
    });
  }
  return { pem, certificates, context };
}

function parseCertificates(field: MaterialField, file: string, pem: Buffer): X509Certificate[] {
  const blocks = pem.toString('latin1').match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    throw new TlsMaterialError(
      field,
      file,
      'no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)',
    );
  }
  return blocks.map((block) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new TlsMaterialError(field, file, `not a valid certificate (${codeOf(err)})`, {
        cause: err,
      });
    }
  });
}

function info(role: CertificateRole, file: string, cert: X509Certificate): CertificateInfo {
  return {
    role,
    path: file,
    subject: cert.subject.replace(/\n/g, ', '),
    serialNumber: cert.serialNumber,
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
  };
}

/** What a log line says about certificates: who, which file, until when. */
export function summary(certificates: readonly CertificateInfo[]): Array<Record<string, string>> {
  return certificates.map((c) => ({
    role: c.role,
    path: c.path,
    subject: c.subject,
    notAfter: c.notAfter.toISOString(),
  }));
}

function readAllSync(files: MaterialFiles): Pem {
  const pem: Pem = {};
  for (const [field, file] of entries(files)) {
    try {
      pem[field] = readFileSync(file);
    } catch (err) {
      throw new TlsMaterialError(field, file, `cannot read it (${codeOf(err)})`, { cause: err });
    }
  }
  return pem;
}

async function readAll(files: MaterialFiles): Promise<Pem> {
  const pem: Pem = {};
  await Promise.all(
    entries(files).map(async ([field, file]) => {
      try {
        pem[field] = await readFile(file);
      } catch (err) {
        throw new TlsMaterialError(field, file, `cannot read it (${codeOf(err)})`, { cause: err });
      }
    }),
  );
  return pem;
}

function entries(files: MaterialFiles): Array<[MaterialField, string]> {
  return (['cert', 'key', 'ca'] as const).flatMap((field) => {
    const file = files[field];
    return file === undefined ? [] : [[field, file] as [MaterialField, string]];
  });
}

function samePem(a: Pem, b: Pem): boolean {
  return (['cert', 'key', 'ca'] as const).every((field) => {
    const x = a[field];
    const y = b[field];
    return x === undefined || y === undefined ? x === y : x.equals(y);
  });
}

/** One owner's certificates: a route (`route/<name>`) or a pool (`pool/<name>`). */
export interface CertificateOwner {
  owner: string;
  certificates: readonly CertificateInfo[];
}

/**
 * For expiry metrics: the earliest `notAfter` per owner and role, in seconds since the
 * epoch. The earliest because a chain or a CA bundle is as good as its first certificate
 * to expire, and one series per owner and role keeps the labels bounded.
 */
export function earliestExpiries(
  owners: Iterable<CertificateOwner>,
): Array<{ owner: string; role: CertificateRole; expiresAt: number }> {
  const earliest = new Map<string, { owner: string; role: CertificateRole; expiresAt: number }>();
  for (const { owner, certificates } of owners) {
    for (const cert of certificates) {
      const key = `${owner}\n${cert.role}`;
      const expiresAt = Math.floor(cert.notAfter.getTime() / 1000);
      const seen = earliest.get(key);
      if (seen === undefined || expiresAt < seen.expiresAt) {
        earliest.set(key, { owner, role: cert.role, expiresAt });
      }
    }
  }
  return [...earliest.values()];
}
