import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { parseAddress, type Address } from '../../config/address.js';
import { SidepoolError, describe } from '../../errors.js';
import { READ_MORE, readWith, stopReading } from '../../net/reads.js';
import type { Connector, Dialed } from '../../pool/pool.js';
import type { Destination } from '../../upstream/destination.js';
import { md5Response, md5Secret } from './auth/secrets.js';
import { MECHANISM, ScramClient, ScramError, type ScramKeys } from './auth/scram.js';
import { Framer } from './framer.js';
import {
  AuthKind,
  BodyReader,
  Code,
  passwordMessage,
  readFields,
  saslInitialResponse,
  saslResponse,
  sslRequest,
  startupMessage,
} from './messages.js';

/** What sidepool logs in to the upstream with, for one user. */
export type UpstreamSecret =
  | { kind: 'plain'; password: string }
  | { kind: 'md5'; hash: string }
  | { kind: 'scram'; keys: ScramKeys };

/**
 * A login the server refused, with its ErrorResponse fields: `sqlstate` (28P01 wrong
 * password, 3D000 no such database, 57P03 starting up, …) and its message, which clients
 * are shown as they would be by PostgreSQL itself.
 */
export class BackendLoginError extends SidepoolError {
  readonly sqlstate: string;
  readonly serverMessage: string;

  constructor(sqlstate: string, serverMessage: string, endpoint: string) {
    super('SIDEPOOL_PG_LOGIN_FAILED', `login to ${endpoint} failed: ${sqlstate} ${serverMessage}`);
    this.sqlstate = sqlstate;
    this.serverMessage = serverMessage;
  }

  /**
   * A refusal that the next attempt will meet too (authentication, no such database or
   * role, no permission): waiting clients are answered with it at once.
   */
  get permanent(): boolean {
    return /^(28|3D|42)/.test(this.sqlstate);
  }
}

/** What a backend told us at login: its parameters and its cancel key. */
export interface BackendLogin {
  params: Map<string, string>;
  pid: number;
  secretKey: number;
}

/** Sockets of logged-in backends, and what their login said. */
const logins = new WeakMap<Duplex, BackendLogin>();

export function loginOf(socket: Duplex): BackendLogin | undefined {
  return logins.get(socket);
}

export interface BackendConnectorOptions {
  destination: Destination;
  database: string;
  user: string;
  /** The secret to log in with, looked up at each dial (the auth file may have changed). */
  secret: () => UpstreamSecret | undefined;
  /** The whole dial, TCP connect to ReadyForQuery. */
  timeoutMs: number;
  /** Told of each login's outcome, for metrics and the pool's view. */
  onLogin?: (login: BackendLogin) => void;
  onRefused?: (err: BackendLoginError) => void;
}

/** How long a permanent refusal answers waiting clients at once before a dial is tried again. */
const REFUSAL_MEMORY_MS = 1000;

/**
 * Makes the links of one (database, user) pool: a TCP dial through the destination, TLS
 * after SSLRequest when the upstream is TLS, then the StartupMessage and authentication,
 * and the ParameterStatus and BackendKeyData the server sends until ReadyForQuery. A link
 * is handed to the pool only once it is logged in.
 */
export class BackendConnector implements Connector {
  private refusedAt = 0;
  lastRefusal: BackendLoginError | undefined;

  constructor(private readonly options: BackendConnectorOptions) {}

  async dial(): Promise<Dialed> {
    const { destination, timeoutMs } = this.options;
    const started = Date.now();
    const dialed = await destination.dialer.dial();
    const raw = dialed.socket as Socket;
    let socket: Duplex = raw;
    try {
      const deadline = timeoutMs > 0 ? started + timeoutMs : 0;
      socket = await startTls(destination, raw, dialed.endpoint, deadline, timeoutMs);
      const login = await this.login(socket, dialed.endpoint, deadline);
      logins.set(socket, login);
      this.lastRefusal = undefined;
      this.options.onLogin?.(login);
      return { socket, endpoint: dialed.endpoint };
    } catch (err) {
      socket.destroy();
      raw.destroy();
      if (err instanceof BackendLoginError) {
        if (err.permanent) {
          this.refusedAt = Date.now();
          this.lastRefusal = err;
        }
        this.options.onRefused?.(err);
      }
      throw err;
    }
  }

  /** True for a moment after a permanent refusal: waiting clients get it at once. */
  isDown(): boolean {
    return this.lastRefusal !== undefined && Date.now() - this.refusedAt < REFUSAL_MEMORY_MS;
  }

  linkBroke(endpoint: string): void {
    this.options.destination.dialer.linkBroke(endpoint);
  }

  private login(socket: Duplex, endpoint: string, deadline: number): Promise<BackendLogin> {
    const { database, user } = this.options;
    const secret = this.options.secret();
    return new Promise<BackendLogin>((resolve, reject) => {
      const params = new Map<string, string>();
      let pid = 0;
      let secretKey = 0;
      let scram: ScramClient | undefined;
      let done = false;
      const finish = (err: Error | undefined, result?: BackendLogin): void => {
        if (done) return;
        done = true;
        if (timer !== undefined) clearTimeout(timer);
        stopReading(socket);
        socket.off('close', onClose);
        socket.off('error', onError);
        if (err !== undefined) reject(err);
        else resolve(result as BackendLogin);
      };
      const fail = (problem: string): void =>
        finish(new SidepoolError('SIDEPOOL_PG_LOGIN_FAILED', `login to ${endpoint}: ${problem}`));
      // No secret that answers the server's request: a refusal every client of this user
      // would meet, answered to them at once.
      const noSecret = (problem: string): void =>
        finish(
          new BackendLoginError(
            '28000',
            `sidepool cannot log in to the server as "${user}": ${problem}`,
            endpoint,
          ),
        );
      const needSecret = (what: string): UpstreamSecret | undefined => {
        if (secret === undefined) {
          noSecret(
            `the server asks for ${what} and sidepool has no usable secret (with a SCRAM verifier, a client must log in first)`,
          );
        }
        return secret;
      };
      const framer = new Framer(
        {
          message: (code, msg) => {
            try {
              onMessage(code, msg);
            } catch (err) {
              if (err instanceof ScramError) noSecret(err.message);
              else fail(describe(err));
            }
            return true;
          },
          streamStart: () => true,
          streamBytes: () => {},
          streamEnd: () => {},
        },
        { decode: () => true, maxDecoded: 64 * 1024 },
      );
      const onMessage = (code: number, msg: Buffer): void => {
        const r = new BodyReader(msg, 5);
        switch (code) {
          case Code.Authentication: {
            const kind = r.int32();
            if (kind === AuthKind.Ok) return;
            if (kind === AuthKind.CleartextPassword) {
              const s = needSecret('a cleartext password');
              if (s === undefined) return;
              if (s.kind !== 'plain') {
                noSecret(
                  `the server asks for a cleartext password; the auth file has a ${s.kind} secret`,
                );
                return;
              }
              socket.write(passwordMessage(s.password));
              return;
            }
            if (kind === AuthKind.MD5Password) {
              const s = needSecret('an md5 password');
              if (s === undefined) return;
              const salt = r.bytes(4);
              if (s.kind === 'scram') {
                noSecret('the server asks for md5; the auth file has a SCRAM verifier');
                return;
              }
              const hash = s.kind === 'md5' ? s.hash : md5Secret(s.password, user);
              socket.write(passwordMessage(md5Response(hash, salt)));
              return;
            }
            if (kind === AuthKind.SASL) {
              const mechanisms: string[] = [];
              for (let m = r.cstring(); m !== ''; m = r.cstring()) mechanisms.push(m);
              if (!mechanisms.includes(MECHANISM)) {
                fail(`the server offers SASL ${mechanisms.join(', ')} only`);
                return;
              }
              const s = needSecret('SCRAM-SHA-256');
              if (s === undefined) return;
              if (s.kind === 'md5') {
                noSecret('the server asks for SCRAM-SHA-256; the auth file has an md5 secret');
                return;
              }
              scram = new ScramClient(
                s.kind === 'plain' ? { password: s.password } : { keys: s.keys },
              );
              socket.write(saslInitialResponse(MECHANISM, Buffer.from(scram.first())));
              return;
            }
            if (kind === AuthKind.SASLContinue && scram !== undefined) {
              socket.write(saslResponse(Buffer.from(scram.respond(r.rest().toString()))));
              return;
            }
            if (kind === AuthKind.SASLFinal && scram !== undefined) {
              scram.verify(r.rest().toString());
              return;
            }
            fail(`unsupported authentication request ${kind}`);
            return;
          }
          case Code.ParameterStatus: {
            const name = r.cstring();
            params.set(name, r.cstring());
            return;
          }
          case Code.BackendKeyData:
            pid = r.int32();
            secretKey = r.int32();
            return;
          case Code.ReadyForQuery:
            finish(undefined, { params, pid, secretKey });
            return;
          case Code.ErrorResponse: {
            const fields = readFields(msg);
            finish(
              new BackendLoginError(fields.get('C') ?? '08006', fields.get('M') ?? '', endpoint),
            );
            return;
          }
          case Code.NoticeResponse:
          case Code.NegotiateProtocolVersion:
            return;
          default:
            fail(`unexpected message ${String.fromCharCode(code)} during login`);
        }
      };
      const onClose = (): void => fail('the server closed the connection during login');
      const onError = (err: Error): void => fail(describe(err));
      socket.once('close', onClose);
      socket.on('error', onError);
      const timer =
        deadline > 0
          ? setTimeout(() => fail('timed out'), Math.max(1, deadline - Date.now()))
          : undefined;
      readWith(socket, (chunk) => {
        try {
          framer.push(chunk);
        } catch (err) {
          fail(describe(err));
        }
        return READ_MORE;
      });
      socket.write(
        startupMessage(
          new Map([
            ['user', user],
            ['database', database],
          ]),
        ),
      );
    });
  }
}

/** With upstream.tls: SSLRequest, then the TLS handshake, verified. */
async function startTls(
  destination: Destination,
  raw: Socket,
  endpoint: string,
  deadline: number,
  timeoutMs: number,
): Promise<Duplex> {
  if (destination.tls === undefined) return raw;
  await negotiateTls(raw, endpoint, deadline);
  const left = deadline > 0 ? Math.max(1, deadline - Date.now()) : 0;
  return destination.tls.handshake(raw, parseAddress(endpoint) as Address, {
    timeoutMs: left,
    connectTimeoutMs: timeoutMs,
  });
}

/**
 * A connection to one backend endpoint outside the pool (a CancelRequest's), TLS when the
 * upstream is.
 */
export async function connectBackend(
  destination: Destination,
  address: Address,
  endpoint: string,
  timeoutMs: number,
): Promise<Duplex> {
  const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : 0;
  const raw = await destination.dialer.connect(address, timeoutMs);
  try {
    return await startTls(destination, raw, endpoint, deadline, timeoutMs);
  } catch (err) {
    raw.destroy();
    throw err;
  }
}

/** SSLRequest, and the server's one-byte answer: S goes on to TLS, N is refused. */
function negotiateTls(socket: Socket, endpoint: string, deadline: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error): void => {
      if (timer !== undefined) clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.pause();
      if (err === undefined) resolve();
      else reject(err);
    };
    const onData = (chunk: Buffer): void => {
      if (chunk.length !== 1) {
        done(
          new SidepoolError('SIDEPOOL_PG_LOGIN_FAILED', `${endpoint}: bad answer to SSLRequest`),
        );
      } else if (chunk[0] === 0x53) done();
      else {
        done(
          new SidepoolError(
            'SIDEPOOL_PG_LOGIN_FAILED',
            `${endpoint} refused TLS (upstream.tls is set): the server has ssl = off`,
          ),
        );
      }
    };
    const onClose = (): void =>
      done(new SidepoolError('SIDEPOOL_PG_LOGIN_FAILED', `${endpoint} closed after SSLRequest`));
    const timer =
      deadline > 0
        ? setTimeout(
            () =>
              done(
                new SidepoolError('SIDEPOOL_PG_LOGIN_FAILED', `${endpoint}: SSLRequest timed out`),
              ),
            Math.max(1, deadline - Date.now()),
          )
        : undefined;
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.write(sslRequest());
  });
}
