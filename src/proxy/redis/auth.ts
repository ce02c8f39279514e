import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Duplex } from 'node:stream';
import {
  ConnectTimeoutError,
  RedisLoginError,
  RedisProtocolError,
  describe,
} from '../../errors.js';
import { READ_MORE, READ_PAUSE, readWith, stopReading } from '../../net/reads.js';
import type { Connector, Dialed } from '../../pool/pool.js';
import { REPLY_BAD, REPLY_MORE, ReplyFramer, encodeCommand, isErrorType } from './resp.js';

/** A password file is re-read at most this often when a client authenticates. */
const REREAD_MS = 5000;

/**
 * A password kept in a file (a Kubernetes secret volume): read at start, re-read before
 * every new link's login and now and then for client checks, so that a rotated secret
 * takes effect without a restart. One trailing newline is not part of the password. The
 * value never leaves this object except in an AUTH command to Redis.
 */
export class SecretFile {
  private value: Buffer;
  private readAt = Date.now();
  private reading: Promise<void> | undefined;

  constructor(readonly path: string) {
    this.value = trimNewline(readFileSync(path));
  }

  /** The password as last read. */
  current(): Buffer {
    if (Date.now() - this.readAt > REREAD_MS) void this.reload();
    return this.value;
  }

  /** Re-reads the file; keeps the last value when it cannot be read. */
  reload(): Promise<void> {
    this.reading ??= readFile(this.path)
      .then(
        (bytes) => {
          this.value = trimNewline(bytes);
        },
        () => undefined,
      )
      .finally(() => {
        this.readAt = Date.now();
        this.reading = undefined;
      });
    return this.reading;
  }

  /** Whether `given` is the password, in time that does not depend on where they differ. */
  matches(given: Buffer): boolean {
    return timingSafeEqual(digest(given), digest(this.current()));
  }

  /** Not the password: config views and logs print the file. */
  toJSON(): string {
    return `[password in ${this.path}]`;
  }
}

function digest(bytes: Buffer): Buffer {
  return createHash('sha256').update(bytes).digest();
}

function trimNewline(bytes: Buffer): Buffer {
  let end = bytes.length;
  if (end > 0 && bytes[end - 1] === 10) end--;
  if (end > 0 && bytes[end - 1] === 13) end--;
  return bytes.subarray(0, end);
}

/** How sidepool logs in to Redis on every link. */
export interface UpstreamLogin {
  username: string | undefined;
  password: SecretFile | undefined;
}

/** The AUTH command for the upstream, or undefined when there are no credentials. */
export function authCommand(login: UpstreamLogin): Buffer | undefined {
  if (login.password === undefined) return undefined;
  const password = login.password.current();
  return login.username === undefined
    ? encodeCommand(['AUTH', password])
    : encodeCommand(['AUTH', login.username, password]);
}

/**
 * Dials through `inner` (a destination's dialer), then logs in: AUTH with sidepool's
 * credentials and SELECT of the pool's database, pipelined, before the link joins the
 * pool. A refusal is a failed dial (RedisLoginError, Redis's own words, no secret).
 */
export class RedisLogin implements Connector {
  /** Told when Redis refuses the login (a wrong password, a database it does not have). */
  onRefused: ((err: RedisLoginError) => void) | undefined;

  constructor(
    private readonly inner: Connector,
    private readonly login: UpstreamLogin,
    private readonly database: number,
    private readonly timeoutMs: number,
  ) {}

  async dial(): Promise<Dialed> {
    const dialed = await this.inner.dial();
    try {
      if (this.login.password !== undefined) await this.login.password.reload();
      const steps: Array<{ step: 'auth' | 'select'; command: Buffer }> = [];
      const auth = authCommand(this.login);
      if (auth !== undefined) steps.push({ step: 'auth', command: auth });
      if (this.database !== 0) {
        steps.push({ step: 'select', command: encodeCommand(['SELECT', String(this.database)]) });
      }
      if (steps.length > 0) await exchange(dialed, steps, this.timeoutMs);
    } catch (err) {
      dialed.socket.destroy();
      if (err instanceof RedisLoginError) this.onRefused?.(err);
      throw err;
    }
    return dialed;
  }

  isDown(): boolean {
    return this.inner.isDown?.() ?? false;
  }

  linkBroke(endpoint: string): void {
    this.inner.linkBroke?.(endpoint);
  }
}

/** Sends the login commands and checks each reply. */
function exchange(
  dialed: Dialed,
  steps: ReadonlyArray<{ step: 'auth' | 'select'; command: Buffer }>,
  timeoutMs: number,
): Promise<void> {
  const socket: Duplex = dialed.socket;
  return new Promise<void>((resolve, reject) => {
    const framer = new ReplyFramer();
    let answered = 0;
    let replyStart: Buffer[] = [];
    const finish = (err?: Error): void => {
      if (timer !== undefined) clearTimeout(timer);
      socket.off('close', onClose);
      socket.off('error', onError);
      stopReading(socket);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onClose = (): void =>
      finish(
        new RedisLoginError(
          dialed.endpoint,
          steps[answered]?.step ?? 'auth',
          'the connection closed',
        ),
      );
    const onError = (err: Error): void =>
      finish(new RedisLoginError(dialed.endpoint, steps[answered]?.step ?? 'auth', describe(err)));
    const timer =
      timeoutMs > 0
        ? setTimeout(() => finish(new ConnectTimeoutError(dialed.endpoint, timeoutMs)), timeoutMs)
        : undefined;
    socket.on('close', onClose);
    socket.on('error', onError);
    readWith(socket, (chunk) => {
      let pos = 0;
      while (pos < chunk.length) {
        if (answered === steps.length) {
          finish(
            new RedisProtocolError(`Redis at ${dialed.endpoint} sent more than the login replies`),
          );
          return READ_PAUSE;
        }
        const end = framer.next(chunk, pos);
        if (end === REPLY_BAD) {
          finish(new RedisProtocolError(`Redis at ${dialed.endpoint}: ${framer.error}`));
          return READ_PAUSE;
        }
        if (end === REPLY_MORE) {
          replyStart.push(Buffer.from(chunk.subarray(pos)));
          return READ_MORE;
        }
        const reply = Buffer.concat([...replyStart, chunk.subarray(pos, end)]);
        replyStart = [];
        const step = (steps[answered] as { step: 'auth' | 'select' }).step;
        answered++;
        pos = end;
        if (isErrorType(framer.type)) {
          finish(new RedisLoginError(dialed.endpoint, step, errorText(reply)));
          return READ_PAUSE;
        }
      }
      if (answered === steps.length) {
        finish();
        return READ_PAUSE;
      }
      return READ_MORE;
    });
    socket.write(Buffer.concat(steps.map((s) => s.command)));
  });
}

/** The text of an error reply, without its type byte and CRLF, bounded. */
function errorText(reply: Buffer): string {
  return reply.toString('utf8', 1, Math.min(reply.length, 512)).replace(/\r\n$/, '').trim();
}
