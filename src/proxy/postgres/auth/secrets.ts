import { createHash } from 'node:crypto';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { SidepoolError } from '../../../errors.js';
import { makeVerifier, parseVerifier, type ScramVerifier } from './scram.js';

/**
 * A user's secret, as PgBouncer's auth_file (and pg_authid.rolpassword) spells it: a SCRAM
 * verifier, an md5 hash (`md5` + md5(password + user)), or a plain password.
 */
export type Secret =
  | { kind: 'plain'; password: string }
  | { kind: 'md5'; hash: string }
  | { kind: 'scram'; verifier: ScramVerifier };

export function parseSecret(text: string): Secret {
  if (/^md5[0-9a-f]{32}$/.test(text)) return { kind: 'md5', hash: text.slice(3) };
  if (text.startsWith('SCRAM-SHA-256$')) {
    const verifier = parseVerifier(text);
    if (verifier !== undefined) return { kind: 'scram', verifier };
  }
  return { kind: 'plain', password: text };
}

const plainVerifiers = new WeakMap<Secret, ScramVerifier>();

/**
 * The SCRAM verifier a client is checked against: the stored one, or for a plain password
 * one made once per secret (PBKDF2 of 4096 rounds costs ~1 ms of the event loop, which a
 * login per connection would pay every time; PostgreSQL too keeps one salt per password).
 */
export function scramVerifierOf(secret: Secret): ScramVerifier | undefined {
  if (secret.kind === 'scram') return secret.verifier;
  if (secret.kind !== 'plain') return undefined;
  let verifier = plainVerifiers.get(secret);
  if (verifier === undefined) {
    verifier = makeVerifier(secret.password);
    plainVerifiers.set(secret, verifier);
  }
  return verifier;
}

/** md5(password + user), hex: what PostgreSQL stores after `md5`. */
export function md5Secret(password: string, user: string): string {
  return md5Hex(password + user);
}

/** The md5 password message: `md5` + md5(secret + salt). */
export function md5Response(secretHex: string, salt: Buffer): string {
  return `md5${createHash('md5')
    .update(Buffer.concat([Buffer.from(secretHex), salt]))
    .digest('hex')}`;
}

function md5Hex(text: string): string {
  return createHash('md5').update(text).digest('hex');
}

export class AuthFileError extends SidepoolError {
  constructor(file: string, problem: string) {
    super('SIDEPOOL_PG_AUTH_FILE', `${file}: ${problem}`);
  }
}

/**
 * The lines of an auth file: `"user" "secret"`, a doubled quote for a quote inside a field;
 * blank lines and lines starting with `;` or `#` are skipped. Throws AuthFileError naming
 * the first bad line (never its secret).
 */
export function parseAuthFile(text: string, file: string): Map<string, Secret> {
  const users = new Map<string, Secret>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).trim();
    if (line === '' || line.startsWith(';') || line.startsWith('#')) continue;
    const fields: string[] = [];
    let at = 0;
    while (at < line.length && fields.length < 3) {
      if (line[at] === ' ' || line[at] === '\t') {
        at++;
        continue;
      }
      if (line[at] !== '"') break;
      let value = '';
      let j = at + 1;
      for (;;) {
        const q = line.indexOf('"', j);
        if (q < 0) throw new AuthFileError(file, `line ${i + 1}: unterminated quote`);
        value += line.slice(j, q);
        if (line[q + 1] === '"') {
          value += '"';
          j = q + 2;
        } else {
          at = q + 1;
          break;
        }
      }
      fields.push(value);
    }
    if (fields.length < 2 || fields[0] === '') {
      throw new AuthFileError(file, `line ${i + 1}: expected "user" "secret"`);
    }
    users.set(fields[0] as string, parseSecret(fields[1] as string));
  }
  return users;
}

export interface AuthFileOptions {
  file: string;
  logger: Logger;
  /** Told after a change was read. */
  onReload?: () => void;
  debounceMs?: number;
  /** Re-read this often too, in case a file-system event is missed; 0 = events only. */
  pollIntervalMs?: number;
}

/**
 * The auth file of a route, read at start (an unreadable or malformed file is a start-up
 * error) and again whenever it changes: its directory is watched, as a Kubernetes Secret
 * volume swaps a `..data` symlink rather than writing the file. A change that does not
 * parse is logged and the users read before stay in force.
 */
export class AuthFile {
  readonly file: string;
  private users: Map<string, Secret>;
  private readonly log: Logger;
  private readonly onReload: (() => void) | undefined;
  private readonly debounceMs: number;
  private readonly pollIntervalMs: number;
  private watcher: FSWatcher | undefined;
  private debounce: NodeJS.Timeout | undefined;
  private poll: NodeJS.Timeout | undefined;
  private lastText: string;
  private closed = false;

  constructor(options: AuthFileOptions) {
    this.file = options.file;
    this.log = options.logger;
    this.onReload = options.onReload;
    this.debounceMs = options.debounceMs ?? 100;
    this.pollIntervalMs = options.pollIntervalMs ?? 30_000;
    this.lastText = this.read();
    this.users = parseAuthFile(this.lastText, this.file);
  }

  get size(): number {
    return this.users.size;
  }

  lookup(user: string): Secret | undefined {
    return this.users.get(user);
  }

  /** Starts re-reading on changes. Idempotent. */
  watch(): void {
    if (this.watcher !== undefined || this.closed) return;
    try {
      this.watcher = watch(path.dirname(this.file), { persistent: false }, () => this.changed());
      this.watcher.on('error', () => {
        this.watcher?.close();
      });
    } catch (err) {
      this.log.warn({ file: this.file, err: String(err) }, 'cannot watch the auth file; polling');
    }
    if (this.pollIntervalMs > 0) {
      this.poll = setInterval(() => this.reload(), this.pollIntervalMs);
      this.poll.unref();
    }
  }

  /** Re-reads the file now; returns whether the users changed. */
  reload(): boolean {
    let text: string;
    try {
      text = this.read();
    } catch (err) {
      this.log.error(
        { file: this.file, err: String(err) },
        'cannot read the auth file; keeping the users read before',
      );
      return false;
    }
    if (text === this.lastText) return false;
    try {
      this.users = parseAuthFile(text, this.file);
    } catch (err) {
      this.lastText = text;
      this.log.error(
        { file: this.file, err: (err as Error).message },
        'auth file rejected; keeping the users read before',
      );
      return false;
    }
    this.lastText = text;
    this.log.info({ file: this.file, users: this.users.size }, 'auth file reloaded');
    this.onReload?.();
    return true;
  }

  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.watcher = undefined;
    if (this.debounce !== undefined) clearTimeout(this.debounce);
    if (this.poll !== undefined) clearInterval(this.poll);
  }

  private changed(): void {
    if (this.closed) return;
    if (this.debounce !== undefined) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = undefined;
      this.reload();
    }, this.debounceMs);
    this.debounce.unref();
  }

  private read(): string {
    try {
      return readFileSync(this.file, 'utf8');
    } catch (err) {
      throw new AuthFileError(
        this.file,
        `cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
      );
    }
  }
}
