import { randomInt } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { codeOf, describe } from '../../errors.js';
import { AdjacentSlices } from '../../net/adjacent.js';
import { CHUNK_KEPT, READ_MORE, READ_PAUSE, readWith, stopReading } from '../../net/reads.js';
import type { Link } from '../../pool/link.js';
import type { Waiter } from '../../pool/pool.js';
import type { Session } from '../route.js';
import { MECHANISM, ScramServer, keysFromPassword } from './auth/scram.js';
import { secureRandomBytes } from './auth/random.js';
import { md5Response, md5Secret, scramVerifierOf, type Secret } from './auth/secrets.js';
import { Backend, type BackendSink } from './backend.js';
import type { CancelTarget, ClientCount, PgContext, PgPool } from './context.js';
import { Framer } from './framer.js';
import { loginOf } from './login.js';
import {
  AuthKind,
  BodyReader,
  Code,
  ProtocolViolation,
  authSasl,
  authentication,
  backendKeyData,
  errorResponse,
  message,
  negotiateProtocolVersion,
  readFields,
  parameterStatus,
  query,
  readStartup,
  readyForQuery,
  type ErrorFields,
} from './messages.js';
import type { Answer, Outstanding, ReplyAction } from './outstanding.js';
import { clientParameters, parametersKey, setParametersSql } from './params.js';
import {
  ClientStatements,
  readBindStatement,
  readParse,
  readTarget,
  targetMessage,
  withName,
  type SharedStatement,
} from './prepared.js';
import { sessionEffect, type PinReason } from './sql.js';
import type { AuthFailure } from './metrics.js';

/**
 * A client's life:
 *
 *   startup ──▶ auth ──▶ welcome ──▶ idle ⇄ waiting ──▶ bound ──▶ idle …
 *      │         │          │          │        │          │
 *      └─────────┴──────────┴──────────┴────────┴──────────┴──▶ ended
 *
 * startup: the startup packet (after SSLRequest and TLS, maybe); auth: sidepool's own
 * authentication; welcome: waiting for the pool's server parameters; idle: no backend;
 * waiting: a message arrived, queued for a backend (held in the framer); bound: a backend
 * relays, until ReadyForQuery idle with nothing outstanding (transaction pooling) or until
 * the client leaves (session pooling, or pinned).
 */
type ClientState = 'startup' | 'auth' | 'welcome' | 'idle' | 'waiting' | 'bound' | 'ended';

/** Shared backends, or one held for the rest of the session, and why. */
type PinState = { kind: 'shared' } | { kind: 'pinned'; reason: PinReason | 'session' };

/** Startup packets are at most this long (PostgreSQL's own MAX_STARTUP_PACKET_LENGTH). */
const MAX_STARTUP = 10_000;
/** Messages decoded whole (Query, Parse, …) are at most this long. */
const MAX_DECODED = 32 * 1024 * 1024;
/** Client messages decoded whole; the rest (Bind, CopyData, …) stream through. */
const DECODED = new Set<number>([
  Code.Query,
  Code.Parse,
  Code.Sync,
  Code.Flush,
  Code.Terminate,
  Code.CopyDone,
  Code.CopyFail,
  Code.Password,
]);
/** Messages that name a prepared statement: decoded whole when statements are pooled. */
const STATEMENT_CODES = new Set<number>([Code.Bind, Code.Describe, Code.Close]);
const PARSE_COMPLETE = message(Code.ParseComplete);
const CLOSE_COMPLETE = message(Code.CloseComplete);
/**
 * Sent where sidepool refuses a client's message inside the server's view of it: a syntax
 * error (42601) the server answers as any error, whose ErrorResponse sidepool replaces
 * with its own. The Parse is named, under a name no client's statement gets, so that
 * failing it leaves the unnamed statement alone.
 */
const FAILING_PARSE = message(Code.Parse, Buffer.from('sidepool_refused\0sidepool refused\0\0\0'));
const FAILING_QUERY = query('sidepool refused');
const DEALLOCATE_COMPLETE = message(Code.CommandComplete, 'DEALLOCATE\0');
const IN_FAILED_TRANSACTION: ErrorFields = {
  severity: 'ERROR',
  code: '25P02',
  message: 'current transaction is aborted, commands ignored until end of transaction block',
};
/** The kind byte of Describe and Close that names a statement (not a portal). */
const STATEMENT_KIND = 0x53; // S
/** Frontend message types: requests (answered) and the rest. */
const REQUESTS = new Set<number>([
  Code.Query,
  Code.Parse,
  Code.Bind,
  Code.Describe,
  Code.Execute,
  Code.Close,
  Code.Sync,
  Code.FunctionCall,
]);
const CLIENT_CODES = new Set<number>([
  ...REQUESTS,
  Code.Flush,
  Code.Terminate,
  Code.CopyData,
  Code.CopyDone,
  Code.CopyFail,
]);
/** PostgreSQL's own bound on a message (PQ_LARGE_MESSAGE_LIMIT). */
const MAX_STREAMED = 0x3fffffff;
/** Past this many bytes queued toward a peer, stop reading the other side until it drains. */
const HIGH_WATER = 256 * 1024;
/** The first byte of a TLS handshake record; no startup packet starts with it (its length's top byte). */
const TLS_HANDSHAKE = 0x16;
/** The ALPN protocol PostgreSQL 17 names for itself: required with direct TLS. */
const ALPN = ['postgresql'];
/** Client bytes read behind a message that waits for a backend, at most, before a pause. */
const WAITING_READ_LIMIT = 64 * 1024;

let nextPid = randomInt(1 << 20, 1 << 30);

/** A PostgreSQL client of a postgres route. */
export class PgSession implements Session, CancelTarget {
  private state: ClientState = 'startup';
  private pin: PinState = { kind: 'shared' };
  private socket: Socket;
  private framer: Framer;
  private database = '';
  private user = '';
  private pgPool: PgPool | undefined;
  private counted: ClientCount | undefined;
  /** What this client expects its backend to run with: lower-case name → name and value. */
  private params = new Map<string, { name: string; value: string }>();
  /** `parametersKey(params)`, made when first asked for after a change. */
  private paramsKeyMemo: string | undefined;
  private backend: Backend | undefined;
  /** Sockets corked while a client read is framed (corkedWhile); undefined between reads. */
  private chunkCorks: Duplex[] | undefined;
  private waiter: Waiter | undefined;
  /** A secret proved by this client's login, and what it taught us for upstream. */
  private secret: Secret | undefined;
  private scram: ScramServer | undefined;
  private md5Salt: Buffer | undefined;
  private authMethod: 'scram' | 'md5' | 'password' | undefined;
  readonly cancelKey = secureRandomBytes(4).readInt32BE();
  private readonly pid = nextPid++;
  private boundAt = 0;
  private waitStartedAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private draining = false;
  private loggedPin = false;
  /** A streamed server message the client is not to see (a swallowed reply). */
  private swallowing = false;
  /** After a refused Parse (onSessionState: error): drop client messages until Sync. */
  private skippingToSync = false;
  /**
   * Named prepared statements are pooled (transaction pooling, maxPreparedStatements > 0):
   * this client's names. Undefined: they are forwarded as they are (and pin).
   */
  private readonly statements: ClientStatements | undefined;
  /** Client names whose Parse has no reply yet, with the count of Syncs sent before it. */
  private readonly pending = new Map<string, { syncs: number }>();
  /** Syncs the client sent. */
  private syncs = 0;
  /** A client message waits for the reply to the Parse of this name (see mustWait). */
  private waitingFor: string | undefined;
  /** Backend messages forwarded while one backend read is handled (net/adjacent.ts). */
  private readonly forwarded = new AdjacentSlices();
  /** The client's FIN came while messages were held: it leaves once they are answered. */
  private endAfterHeld = false;
  /** A streamed backend message is being relayed: nothing of ours may go in between. */
  private backendStreaming = false;
  private bytesUpBefore = 0;
  private bytesDownBefore = 0;
  private readonly startedAt = performance.now();

  constructor(
    private readonly ctx: PgContext,
    readonly id: number,
    socket: Socket,
  ) {
    this.socket = socket;
    const settings = ctx.settings;
    this.statements =
      settings.poolMode === 'transaction' && settings.maxPreparedStatements > 0
        ? new ClientStatements(ctx.statements, settings.maxClientPreparedStatementBytes)
        : undefined;
    this.framer = this.startupFramer();
  }

  get bytesUp(): number {
    return this.bytesUpBefore + this.socket.bytesRead;
  }

  get bytesDown(): number {
    return this.bytesDownBefore + this.socket.bytesWritten;
  }

  start(): void {
    this.listen(this.socket);
    this.armTimer();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** The route is draining: between transactions the client goes now, else at the next. */
  drain(): void {
    this.draining = true;
    if (this.state === 'idle' || this.state === 'startup' || this.state === 'auth') {
      this.fatal({
        severity: 'FATAL',
        code: '57P01',
        message: 'terminating connection due to administrator command',
      });
    }
  }

  cancelTarget(): { endpoint: string; pid: number; secretKey: number } | undefined {
    const backend = this.backend;
    if (backend === undefined || this.state !== 'bound') return undefined;
    return { endpoint: backend.link.endpoint, pid: backend.pid, secretKey: backend.secretKey };
  }

  // ── the client socket ───────────────────────────────────────────────────

  private listen(socket: Socket): void {
    (socket as Tagged)[kSession] = this;
    // A client's FIN is its departure (the listener allows half-open sockets for tcp mode).
    socket.on('end', onClientEnd);
    socket.on('close', onClientClose);
    socket.on('error', onClientError);
    socket.on('drain', onClientDrain);
    readWith(socket, onClientBytes);
  }

  clientBytes(chunk: Buffer): number {
    if (this.state === 'ended') return READ_PAUSE;
    if (
      chunk[0] === TLS_HANDSHAKE &&
      this.state === 'startup' &&
      this.framer.atStart &&
      this.ctx.tls !== undefined &&
      !(this.socket instanceof tls.TLSSocket)
    ) {
      return this.startDirectTls(this.ctx.tls, chunk);
    }
    let consumed: boolean;
    try {
      consumed = this.corkedWhile(() => this.framer.push(chunk));
    } catch (err) {
      this.protocolViolation(err);
      return READ_PAUSE;
    }
    if (!consumed) {
      // Waiting for a backend, the client keeps being read (bytes queue behind the held
      // message, up to a bound): with most clients waiting at a full pool, a pause and
      // resume per transaction cost two system calls each.
      if (this.state === 'waiting' && this.framer.unreadBytes < WAITING_READ_LIMIT) {
        return CHUNK_KEPT;
      }
      return READ_PAUSE | CHUNK_KEPT;
    }
    if (this.backend !== undefined && this.backend.socket.writableLength > HIGH_WATER) {
      this.backend.socket.once('drain', () => this.resumeClient());
      return READ_PAUSE;
    }
    return READ_MORE;
  }

  private resumeClient(): void {
    if (this.state === 'ended' || this.socket.destroyed) return;
    if (this.framer.isPaused) {
      let consumed: boolean;
      try {
        consumed = this.corkedWhile(() => this.framer.resume());
      } catch (err) {
        this.protocolViolation(err);
        return;
      }
      if (!consumed) return;
    }
    if ((this.state as ClientState) === 'ended') return;
    if (this.endAfterHeld) {
      // What it sent went on: it leaves once that is answered (settle).
      if (this.backend === undefined || this.backend.isQuiet) this.leaveAnswered();
      return;
    }
    readWith(this.socket, onClientBytes);
  }

  /**
   * Frames client bytes with the backend socket corked, so that the messages of one read
   * leave in one write (one system call, one wakeup of the backend) rather than one each.
   * A backend bound while framing (bindForMessage, or the held message resumed after a
   * wait) is corked as it is attached; every socket corked here is uncorked at the end.
   */
  private corkedWhile(frame: () => boolean): boolean {
    const corked: Duplex[] = [];
    this.chunkCorks = corked;
    if (this.backend !== undefined) this.corkForChunk(this.backend.socket);
    try {
      return frame();
    } finally {
      this.chunkCorks = undefined;
      for (const socket of corked) socket.uncork();
    }
  }

  private corkForChunk(socket: Duplex): void {
    const corked = this.chunkCorks;
    if (corked === undefined || corked.includes(socket)) return;
    socket.cork();
    corked.push(socket);
  }

  clientDrained(): void {
    this.backend?.resume();
  }

  clientClosed(): void {
    if (this.state === 'ended') return;
    this.leave();
  }

  /** After its FIN, everything the client sent is answered: the answers go, then it. */
  private leaveAnswered(): void {
    this.flushForwarded();
    // end() uncorks: the answers leave before leave() destroys the socket.
    if (this.socket.writable) this.socket.end();
    this.clientClosed();
  }

  /**
   * The client's FIN. Read while waiting for a backend, it comes after messages still held:
   * they go on first and are answered, then the client leaves. As direct, a query sent just
   * before a FIN runs; what a client sends it means to be done.
   */
  clientEnded(): void {
    if (this.state === 'waiting' && this.framer.isPaused) this.endAfterHeld = true;
    else this.clientClosed();
  }

  // ── startup ─────────────────────────────────────────────────────────────

  private startupFramer(): Framer {
    return new Framer(
      {
        message: (code, msg) => this.onClientMessage(code, msg),
        streamStart: (code, length) => this.onClientStreamStart(code, length),
        streamBytes: (bytes) => this.onClientStreamBytes(bytes),
        streamEnd: () => {},
      },
      {
        decode: (code) =>
          DECODED.has(code) ||
          this.state !== 'bound' ||
          (this.statements !== undefined && STATEMENT_CODES.has(code)),
        maxDecoded: MAX_DECODED,
        untypedFirst: true,
      },
    );
  }

  private onStartupPacket(packet: Buffer): boolean {
    if (packet.length > MAX_STARTUP) throw new ProtocolViolation('startup packet too long');
    const request = readStartup(packet);
    switch (request.kind) {
      case 'ssl':
        return this.startTls();
      case 'gssenc':
        // GSSAPI encryption is not offered; the client goes on in the clear (or with SSLRequest).
        this.toClient(Buffer.from('N'));
        this.framer.expectUntyped();
        return true;
      case 'cancel':
        this.ctx.cancel(request.pid, request.key);
        this.leave();
        return false;
      case 'unsupported':
        this.refuseLogin('protocol', {
          severity: 'FATAL',
          code: '0A000',
          message: `unsupported frontend protocol ${request.version >>> 16}.${request.version & 0xffff}: sidepool supports 3.0`,
        });
        return false;
      case 'startup':
        break;
    }
    if (request.minor > 0 || request.options.length > 0) {
      this.toClient(negotiateProtocolVersion(0, request.options));
    }
    const user = request.params.get('user');
    if (user === undefined || user === '') {
      this.refuseLogin('protocol', {
        severity: 'FATAL',
        code: '28000',
        message: 'no PostgreSQL user name specified in startup packet',
      });
      return false;
    }
    if (request.params.has('replication') && request.params.get('replication') !== 'false') {
      this.refuseLogin('protocol', {
        severity: 'FATAL',
        code: '0A000',
        message: 'sidepool does not pool replication connections',
      });
      return false;
    }
    this.user = user;
    this.database = request.params.get('database') || user;
    let parsed;
    try {
      parsed = clientParameters(request.params);
    } catch (err) {
      this.refuseLogin('protocol', {
        severity: 'FATAL',
        code: '22023',
        message: (err as Error).message,
      });
      return false;
    }
    this.params = parsed;
    if (this.ctx.isDraining()) {
      this.fatal({
        severity: 'FATAL',
        code: '57P01',
        message: 'terminating connection due to administrator command',
      });
      return false;
    }
    this.state = 'auth';
    void this.authenticate();
    return true;
  }

  /** SSLRequest: S and a TLS handshake when the route has tls, else N and go on in the clear. */
  private startTls(): boolean {
    const options = this.ctx.tls;
    if (options === undefined || this.socket instanceof tls.TLSSocket) {
      this.toClient(Buffer.from('N'));
      this.framer.expectUntyped();
      return true;
    }
    if (this.framer.unreadBytes > 0) {
      // Bytes after SSLRequest, before the handshake, would be read as if they came
      // encrypted (CVE-2021-23214): refused.
      throw new ProtocolViolation('bytes after SSLRequest before the TLS handshake');
    }
    stopReading(this.socket);
    this.toClient(Buffer.from('S'));
    this.wrapTls(options, false);
    return true;
  }

  /**
   * PostgreSQL 17's direct TLS: the client starts with its TLS ClientHello, no SSLRequest,
   * and must ask for ALPN `postgresql` (as the server requires, so that a TLS client of
   * another protocol is not taken for one of ours). The ClientHello goes back to the socket
   * for the TLS layer to read.
   */
  private startDirectTls(options: tls.SecureContext, hello: Buffer): number {
    stopReading(this.socket);
    this.socket.unshift(hello);
    this.wrapTls(options, true);
    return READ_PAUSE;
  }

  private wrapTls(options: tls.SecureContext, direct: boolean): void {
    const plain = this.socket;
    plain.off('end', onClientEnd);
    plain.off('close', onClientClose);
    plain.off('error', onClientError);
    plain.off('drain', onClientDrain);
    const secure = new tls.TLSSocket(plain, {
      isServer: true,
      secureContext: options,
      ALPNProtocols: ALPN,
    });
    secure.once('secure', () => {
      this.socket = secure;
      if (direct && secure.alpnProtocol !== ALPN[0]) {
        // Not within 'secure': what is written there and followed by destroy() is lost
        // (the TLS layer has not flushed it yet).
        setImmediate(() =>
          this.refuseLogin('protocol', {
            severity: 'FATAL',
            code: '08P01',
            message:
              'received direct SSL connection request without ALPN protocol negotiation extension',
          }),
        );
        return;
      }
      this.restartStartup(secure);
    });
    secure.on('error', (err) => {
      this.ctx.log.info({ session: this.id, err: describe(err) }, 'client TLS handshake failed');
      secure.destroy();
    });
    secure.once('close', () => {
      if (this.socket !== secure) this.end();
    });
  }

  private restartStartup(socket: Socket): void {
    this.framer = this.startupFramer();
    this.listen(socket);
  }

  // ── authentication ─────────────────────────────────────────────────────

  private async authenticate(): Promise<void> {
    const { settings, credentials } = this.ctx;
    if (settings.authType === 'trust') {
      this.secret = credentials.known(this.user);
      this.authenticated();
      return;
    }
    let secret: Secret | undefined;
    try {
      secret = await credentials.lookup(this.user, this.database);
    } catch (err) {
      this.ctx.log.warn(
        { session: this.id, user: this.user, err: describe(err) },
        'authQuery failed',
      );
      this.refuseLogin('upstream_refused', {
        severity: 'FATAL',
        code: '08006',
        message: `cannot look up user "${this.user}": ${describe(err)}`,
      });
      return;
    }
    if (this.state !== 'auth') return;
    if (secret === undefined) {
      this.refuseLogin('unknown_user', {
        severity: 'FATAL',
        code: '28000',
        message: `role "${this.user}" does not exist`,
      });
      return;
    }
    this.secret = secret;
    const type = settings.authType;
    if (type === 'password') {
      const tlsOn = this.socket instanceof tls.TLSSocket;
      if (!tlsOn && !this.ctx.unixListener) {
        this.refuseLogin('tls_required', {
          severity: 'FATAL',
          code: '28000',
          message: 'password authentication needs TLS: connect with sslmode=require',
        });
        return;
      }
      this.authMethod = 'password';
      this.toClient(authentication(AuthKind.CleartextPassword));
      return;
    }
    const verifier =
      secret.kind === 'scram' || type === 'scram-sha-256' ? scramVerifierOf(secret) : undefined;
    if (verifier !== undefined) {
      this.authMethod = 'scram';
      this.scram = new ScramServer(verifier);
      this.toClient(authSasl([MECHANISM]));
      return;
    }
    this.authMethod = 'md5';
    this.md5Salt = secureRandomBytes(4);
    this.toClient(authentication(AuthKind.MD5Password, this.md5Salt));
  }

  private onPassword(msg: Buffer): void {
    const secret = this.secret as Secret;
    const r = new BodyReader(msg, 5);
    switch (this.authMethod) {
      case 'password': {
        const password = r.cstring();
        if (!passwordMatches(secret, password, this.user)) return this.wrongPassword();
        this.ctx.credentials.learn(this.user, secret, { password });
        return this.authenticated();
      }
      case 'md5': {
        const answer = r.cstring();
        const hash =
          secret.kind === 'md5'
            ? secret.hash
            : md5Secret(secret.kind === 'plain' ? secret.password : '', this.user);
        if (answer !== md5Response(hash, this.md5Salt as Buffer)) return this.wrongPassword();
        return this.authenticated();
      }
      case 'scram': {
        const scram = this.scram as ScramServer;
        if (this.md5Salt === undefined) {
          // SASLInitialResponse: mechanism, length, client-first-message.
          const mechanism = r.cstring();
          const length = r.int32();
          if (mechanism !== MECHANISM) {
            this.refuseLogin('unsupported_method', {
              severity: 'FATAL',
              code: '28000',
              message: `SASL mechanism ${mechanism} is not supported: use ${MECHANISM}`,
            });
            return;
          }
          const serverFirst = scram.start(r.bytes(length).toString());
          this.md5Salt = Buffer.alloc(0); // marks: the first message was read
          this.toClient(authentication(AuthKind.SASLContinue, Buffer.from(serverFirst)));
          return;
        }
        const result = scram.finish(r.rest().toString());
        if (result === undefined) return this.wrongPassword();
        if (secret.kind === 'scram') {
          const v = secret.verifier;
          this.ctx.credentials.learn(this.user, secret, {
            keys: {
              iterations: v.iterations,
              salt: v.salt,
              clientKey: result.clientKey,
              serverKey: v.serverKey,
            },
          });
        } else if (secret.kind === 'plain') {
          this.ctx.credentials.learn(this.user, secret, { password: secret.password });
        }
        this.toClient(authentication(AuthKind.SASLFinal, Buffer.from(result.serverFinal)));
        return this.authenticated();
      }
      default:
        throw new ProtocolViolation('a password message before authentication was asked for');
    }
  }

  private wrongPassword(): void {
    this.refuseLogin('wrong_password', {
      severity: 'FATAL',
      code: '28P01',
      message: `password authentication failed for user "${this.user}"`,
    });
  }

  private authenticated(): void {
    if (this.state !== 'auth') return;
    this.scram = undefined;
    this.toClient(authentication(AuthKind.Ok));
    this.state = 'welcome';
    const pgPool = this.ctx.poolFor(this.database, this.user);
    this.pgPool = pgPool;
    this.ctx.registerCancel(this.pid, this);
    if (pgPool.params !== undefined) {
      this.welcome();
      return;
    }
    // The pool has not logged in yet: its first backend tells us the server's parameters.
    this.countClient('waiting');
    this.waitStartedAt = performance.now();
    const link = pgPool.pool.tryAcquire();
    if (link !== undefined) {
      this.welcomeWith(link);
      return;
    }
    this.waiter = pgPool.pool.wait((err, got) => {
      this.waiter = undefined;
      if (err !== null || got === undefined) this.noBackend(err ?? new Error('no backend'));
      else this.welcomeWith(got);
    });
  }

  private welcomeWith(link: Link): void {
    const pgPool = this.pgPool as PgPool;
    pgPool.params ??= new Map(loginOf(link.socket)?.params);
    pgPool.pool.release(link, true);
    if (this.state === 'welcome') this.welcome();
  }

  private welcome(): void {
    const pgPool = this.pgPool as PgPool;
    const server = pgPool.params ?? new Map<string, string>();
    const out: Buffer[] = [];
    for (const [name, value] of server) {
      const mine = this.params.get(name.toLowerCase());
      out.push(parameterStatus(name, mine?.value ?? value));
      if (mine !== undefined) mine.name = name;
    }
    // The client's view starts as the server's, with its own parameters on top.
    for (const [name, value] of server) {
      if (!this.params.has(name.toLowerCase()))
        this.params.set(name.toLowerCase(), { name, value });
    }
    this.paramsKeyMemo = undefined;
    out.push(backendKeyData(this.pid, this.cancelKey));
    out.push(readyForQuery('I'));
    this.toClient(Buffer.concat(out));
    this.state = 'idle';
    this.countClient('idle');
    this.armTimer();
    this.ctx.log.debug(
      { session: this.id, database: this.database, user: this.user },
      'client logged in',
    );
  }

  private refuseLogin(reason: AuthFailure, fields: ErrorFields): void {
    const observer = this.pgPool?.observer;
    if (observer !== undefined) observer.authFailed(reason);
    else this.ctx.metricsAuthFailed(this.database, this.user, reason);
    this.ctx.log.info(
      { session: this.id, database: this.database, user: this.user, reason, sqlstate: fields.code },
      'client login refused',
    );
    this.fatal(fields);
  }

  // ── client messages ─────────────────────────────────────────────────────

  private onClientMessage(code: number, msg: Buffer): boolean {
    switch (this.state) {
      case 'startup':
        return this.onStartupPacket(msg);
      case 'auth':
        if (code !== Code.Password || this.authMethod === undefined) {
          throw new ProtocolViolation(
            `expected a password message during authentication, got ${printable(code)}`,
          );
        }
        this.onPassword(msg);
        return true;
      case 'welcome':
      case 'waiting':
        return false;
      case 'idle':
        if (code === Code.Terminate) {
          this.close();
          return false;
        }
        if (code === Code.Flush) return true;
        if (code === Code.Parse && this.parseWithoutBackend(msg)) return true;
        if (code === Code.Close && this.closeWithoutBackend(msg)) return true;
        if (code === Code.Sync && !this.skippingToSync) {
          this.toClient(readyForQuery('I'));
          return true;
        }
        if (!this.bindForMessage()) return false;
        return this.relay(code, msg);
      case 'bound':
        return this.relay(code, msg);
      case 'ended':
        return false;
    }
  }

  private onClientStreamStart(code: number, length: number): boolean {
    if (this.state === 'idle' && !this.bindForMessage()) return false;
    if (this.state !== 'bound') return false;
    const backend = this.backend as Backend;
    if (this.skippingToSync) {
      this.streamDropped = true;
      return true;
    }
    this.streamDropped = false;
    if (!CLIENT_CODES.has(code))
      throw new ProtocolViolation(`unknown message type ${printable(code)}`);
    if (length > MAX_STREAMED) throw new ProtocolViolation(`message of ${length} bytes`);
    if (code === Code.Execute) this.observer.query();
    if (REQUESTS.has(code)) this.enqueue(backend, code);
    return true;
  }

  private streamDropped = false;

  private onClientStreamBytes(bytes: Buffer): void {
    if (!this.streamDropped) this.backend?.write(bytes);
  }

  /** A whole client message while bound: note what it does, then pass it on. */
  private relay(code: number, received: Buffer): boolean {
    let msg = received;
    const backend = this.backend as Backend;
    if (this.skippingToSync && code !== Code.Sync) return true;
    switch (code) {
      case Code.Query: {
        const sql = msg.toString('utf8', 5, msg.length - 1);
        this.observer.query();
        if (!this.checkSql(sql, backend, 'query')) return true;
        break;
      }
      case Code.Parse: {
        const r = new BodyReader(msg, 5);
        const name = r.cstring();
        const sql = r.cstring();
        if (name !== '' && this.statements !== undefined) {
          if (this.mustWait(name)) return false;
          if (this.checkSql(sql, backend, 'parse')) this.parseNamed(backend, msg, this.statements);
          return true;
        }
        if (name !== '' && !this.noteSessionState('prepared', `Parse ${name}`, backend, 'parse')) {
          return true;
        }
        if (!this.checkSql(sql, backend, 'parse')) return true;
        break;
      }
      case Code.Bind:
      case Code.Describe:
      case Code.Close: {
        const statements = this.statements;
        if (statements === undefined) break;
        const rewritten = this.statementMessage(backend, code, msg, statements);
        if (rewritten === 'wait') return false;
        if (rewritten === undefined) return true;
        msg = rewritten;
        break;
      }
      case Code.Sync:
        this.skippingToSync = false;
        this.syncs++;
        break;
      case Code.Execute:
        this.observer.query();
        break;
      case Code.Terminate:
        this.leave();
        return true;
      case Code.CopyDone:
      case Code.CopyFail:
        backend.queue.copyInEnded();
        break;
      default:
        if (!CLIENT_CODES.has(code)) {
          throw new ProtocolViolation(`unknown message type ${printable(code)}`);
        }
    }
    if (REQUESTS.has(code)) this.enqueue(backend, code);
    backend.write(msg);
    return true;
  }

  private enqueue(
    backend: Backend,
    code: number,
    action: ReplyAction = 'forward',
    answer?: Answer,
    done?: (ok: boolean) => void,
  ): void {
    if (backend.queue.isEmpty) this.armTimer();
    backend.queue.push(code, action, answer, done);
  }

  // ── pooled prepared statements ──────────────────────────────────────────

  /**
   * A client's named Parse: recorded in its map, then sent under the shared name if the
   * backend lacks the statement, else answered here (in order). Undone if the server
   * refuses or skips it.
   */
  private parseNamed(backend: Backend, msg: Buffer, statements: ClientStatements): void {
    const { name, rest } = readParse(msg);
    if (statements.has(name)) {
      this.refuseInOrder(backend, {
        severity: 'ERROR',
        code: '42P05',
        message: `prepared statement "${name}" already exists`,
      });
      return;
    }
    const recorded = statements.record(name, rest);
    if (typeof recorded === 'string') {
      const settings = this.ctx.settings;
      this.refuseInOrder(backend, {
        severity: 'ERROR',
        code: '53400',
        message:
          recorded === 'client_bytes'
            ? `sidepool: prepared statement "${name}" would take this client's prepared statements above maxClientPreparedStatementBytes (${settings.maxClientPreparedStatementBytes})`
            : `sidepool: prepared statement "${name}" would take all clients' prepared statements above maxPreparedStatementBytes (${settings.maxPreparedStatementBytes})`,
        hint: 'Close (DEALLOCATE) prepared statements no longer used, or raise the limit.',
      });
      return;
    }
    const shared = recorded;
    const token = { syncs: this.syncs };
    this.pending.set(name, token);
    const settle = (): void => {
      if (this.pending.get(name) !== token) return;
      this.pending.delete(name);
      if (this.waitingFor === name) {
        this.waitingFor = undefined;
        // Not from within the backend's reply: the held message goes after it.
        queueMicrotask(() => this.resumeClient());
      }
    };
    if (backend.statements.use(shared.name)) {
      this.observer.prepareSaved();
      this.enqueue(backend, Code.Parse, 'answer', PARSE_COMPLETE, (ok) => {
        if (!ok) statements.removeIf(name, shared);
        settle();
      });
      this.answerQueued(backend);
      return;
    }
    this.evictFor(backend, shared);
    this.enqueue(backend, Code.Parse, 'forward', undefined, (ok) => {
      if (ok) shared.valid = true;
      else {
        statements.removeIf(name, shared);
        backend.statements.delete(shared.name);
      }
      settle();
    });
    backend.write(shared.parse);
    this.observer.prepareSent();
  }

  /**
   * A named Parse while no backend is bound, of a statement some backend already
   * accepted: recorded and answered without a backend (it is prepared where the client's
   * Bind runs). Besides saving a backend, this keeps clients that prepare synchronously
   * while others of the same thread hold every backend in a transaction (pgbench -M
   * prepared) from waiting on each other. False: the Parse needs a backend.
   */
  private parseWithoutBackend(msg: Buffer): boolean {
    const statements = this.statements;
    if (statements === undefined) return false;
    const { name, rest } = readParse(msg);
    if (name === '' || statements.has(name)) return false;
    if (this.ctx.statements.valid(rest) === undefined) return false;
    if (sessionEffect(new BodyReader(rest).cstring()) !== undefined) return false;
    if (typeof statements.record(name, rest) === 'string') return false;
    this.observer.prepareSaved();
    this.toClient(PARSE_COMPLETE);
    return true;
  }

  /** Close of a named statement while no backend is bound: only the client's map changes. */
  private closeWithoutBackend(msg: Buffer): boolean {
    const statements = this.statements;
    if (statements === undefined) return false;
    const target = readTarget(msg);
    if (target.kind !== STATEMENT_KIND || target.name === '') return false;
    statements.remove(target.name);
    this.toClient(CLOSE_COMPLETE);
    return true;
  }

  /**
   * Bind, Describe or Close naming a statement: the message to send in its place (the
   * shared name; a Parse injected first when the backend lacks it), or undefined when
   * sidepool answered it.
   */
  private statementMessage(
    backend: Backend,
    code: number,
    msg: Buffer,
    statements: ClientStatements,
  ): Buffer | undefined | 'wait' {
    let name: string;
    let start = 0;
    let end = 0;
    if (code === Code.Bind) {
      ({ name, start, end } = readBindStatement(msg));
    } else {
      const target = readTarget(msg);
      if (target.kind !== STATEMENT_KIND) return msg;
      name = target.name;
    }
    if (name === '') return msg;
    if (this.mustWait(name)) return 'wait';
    if (code === Code.Close) {
      // Never forwarded: other clients' names may map to the same statement. PostgreSQL
      // answers CloseComplete for a name that does not exist, and so does sidepool.
      const old = statements.remove(name);
      this.enqueue(
        backend,
        Code.Close,
        'answer',
        CLOSE_COMPLETE,
        old === undefined
          ? undefined
          : (ok) => {
              if (!ok) statements.restore(name, old);
            },
      );
      this.answerQueued(backend);
      return undefined;
    }
    const shared = statements.get(name);
    // A name the client never parsed goes as it is: the server, which has only shared
    // names, answers 26000 itself, and fails the transaction block as it should.
    if (shared === undefined) return msg;
    if (!backend.statements.use(shared.name)) {
      this.evictFor(backend, shared);
      this.enqueue(backend, Code.Parse, 'swallow', undefined, (ok) => {
        if (ok) shared.valid = true;
        else backend.statements.delete(shared.name);
      });
      backend.write(shared.parse);
      this.observer.prepareSent();
    }
    return code === Code.Bind
      ? withName(msg, start, end, shared.name)
      : targetMessage(Code.Describe, shared.name);
  }

  /**
   * Whether a message naming `name` must wait for the reply to the client's Parse of it:
   * a Sync went between them, so if that Parse fails the server will not skip this one,
   * and the name must then be free (PostgreSQL's answer), which is not known yet. The
   * client's reading pauses until the reply (the Sync makes the server send it).
   */
  private mustWait(name: string): boolean {
    const pending = this.pending.get(name);
    if (pending === undefined || pending.syncs === this.syncs) return false;
    this.waitingFor = name;
    return true;
  }

  /** Adds `shared` to the backend's list, closing there what falls off its end. */
  private evictFor(backend: Backend, shared: SharedStatement): void {
    const list = backend.statements;
    for (const old of list.add(shared.name, this.ctx.settings.maxPreparedStatements)) {
      this.enqueue(backend, Code.Close, 'swallow', undefined, (ok) => {
        if (!ok) list.restore(old);
      });
      backend.write(targetMessage(Code.Close, old));
      this.observer.preparedEvicted();
    }
  }

  /**
   * An error sidepool gives in the server's stead for a message of the extended protocol.
   * The backend is sent a Parse that fails and the client sees our error in the place of
   * the server's, so the server does what its own error does: skips to Sync, and aborts a
   * transaction block (a COMMIT after it rolls back). The client's messages up to its Sync
   * are skipped here too.
   */
  private refuseInOrder(backend: Backend, fields: ErrorFields): void {
    this.skippingToSync = true;
    this.enqueue(backend, Code.Parse, 'replace', errorResponse(fields));
    backend.write(FAILING_PARSE);
  }

  /**
   * SQL `DEALLOCATE name` of a statement the client prepared by Parse (Rails does this): the
   * server knows it by its shared name, so sidepool answers, in order, as PostgreSQL would:
   * the name is gone and the client may Parse it again; in a failed transaction block,
   * 25P02 and the name kept.
   */
  private deallocate(backend: Backend, name: string, statements: ClientStatements): void {
    this.enqueue(backend, Code.Query, 'answer', (status) => {
      if (status === 'E') {
        return Buffer.concat([errorResponse(IN_FAILED_TRANSACTION), readyForQuery('E')]);
      }
      statements.remove(name);
      return Buffer.concat([DEALLOCATE_COMPLETE, readyForQuery(status)]);
    });
    this.answerQueued(backend);
    this.settle(backend);
  }

  /** The client dropped all its statements (DISCARD ALL, DEALLOCATE ALL). */
  private dropStatements(backend: Backend): void {
    this.statements?.clear();
    // Whether the command succeeds or not, the backend ends up with none of ours.
    backend.statements.clear();
    backend.statements.needsReset = true;
  }

  /** An error that says the backend's statements are stale: they are dropped when idle. */
  private noteStatementError(backend: Backend, msg: Buffer): void {
    const fields = readFields(msg);
    if (
      fields.get('C') === '0A000' &&
      fields.get('M')?.startsWith('cached plan must not change result type') === true
    ) {
      backend.statements.needsReset = true;
    }
  }

  /** DEALLOCATE ALL on the backend (idle, nothing outstanding), its reply swallowed. */
  private resetStatements(backend: Backend): void {
    backend.statements.clear();
    backend.statements.needsReset = false;
    this.enqueue(backend, Code.Query, 'swallow');
    backend.write(query('DEALLOCATE ALL'));
  }

  /** SQL that leaves session state pins the client (or is refused). False: not forwarded. */
  private checkSql(sql: string, backend: Backend, via: 'query' | 'parse'): boolean {
    const effect = sessionEffect(sql);
    if (effect === undefined) return true;
    const name = effect.deallocates;
    if (name !== undefined && via === 'query' && this.statements?.has(name) === true) {
      this.deallocate(backend, name, this.statements);
      return false;
    }
    if (effect.resetsParameters === true) backend.forgetApplied();
    if (effect.dropsStatements === true && this.statements !== undefined) {
      this.dropStatements(backend);
    }
    if (effect.pin === undefined) return true;
    return this.noteSessionState(effect.pin.reason, effect.pin.statement, backend, via);
  }

  /**
   * The one place that decides about session state in transaction pooling: pin the client
   * to its backend, or (onSessionState: error) refuse the statement.
   */
  private noteSessionState(
    reason: PinReason,
    statement: string,
    backend: Backend,
    via: 'query' | 'parse',
  ): boolean {
    if (this.pin.kind === 'pinned') return true;
    if (this.ctx.settings.onSessionState === 'error') {
      const fields: ErrorFields = {
        severity: 'ERROR',
        code: '0A000',
        message: `sidepool: ${statement.toUpperCase()} keeps session state, which transaction pooling cannot hold (onSessionState: error)`,
        hint:
          reason === 'set'
            ? 'Use SET LOCAL inside a transaction.'
            : 'Use session pooling for this client.',
      };
      if (via === 'parse') {
        this.refuseInOrder(backend, fields);
        return false;
      }
      // A query that fails in its place: the server's ReadyForQuery then says what its own
      // error would have left (E inside a transaction block).
      this.enqueue(backend, Code.Query, 'replace', errorResponse(fields));
      backend.write(FAILING_QUERY);
      return false;
    }
    this.pin = { kind: 'pinned', reason };
    this.observer.pinned(reason);
    if (!this.loggedPin) {
      this.loggedPin = true;
      this.ctx.log.info(
        { session: this.id, database: this.database, user: this.user, reason, statement },
        'client pinned to its backend',
      );
    }
    return true;
  }

  // ── binding a backend ───────────────────────────────────────────────────

  /**
   * A message that needs a backend arrived while idle. With an idle backend that needs no
   * check and no SET, it is bound at once and the message goes on (true); otherwise the
   * message is held and the client waits (false).
   */
  private bindForMessage(): boolean {
    const pgPool = this.pgPool as PgPool;
    this.clearTimer();
    this.waitStartedAt = performance.now();
    const link = pgPool.pool.tryAcquire();
    const ready = link === undefined ? undefined : this.readyAsIs(link);
    if (ready !== undefined) {
      this.attachBackend(ready);
      return true;
    }
    this.state = 'waiting';
    this.countClient('waiting');
    if (link !== undefined) {
      void this.bind(link);
      return false;
    }
    this.waiter = pgPool.pool.wait((err, got) => {
      this.waiter = undefined;
      if (err !== null || got === undefined) this.noBackend(err ?? new Error('no backend'));
      else this.bindWaited(got);
    });
    return false;
  }

  /**
   * Whether the backend runs with this client's parameters, so needs no SET. A backend
   * remembers the last set it was found to match: with clients that share one set (an
   * app's pool of connections) the comparison is one string compare per bind.
   */
  private runsMyParameters(backend: Backend): boolean {
    const key = (this.paramsKeyMemo ??= parametersKey(this.params));
    if (backend.paramsMatched === key) return true;
    if (setParametersSql(this.params, backend, false) !== undefined) return false;
    backend.paramsMatched = key;
    return true;
  }

  private needsCheck(link: Link, backend: Backend): boolean {
    const after = this.ctx.settings.checkAfter;
    return after > 0 && link.uses > 1 && Date.now() - backend.releasedAt > after;
  }

  private noBackend(err: Error): void {
    if (this.state === 'ended') return;
    const pgPool = this.pgPool as PgPool;
    const stats = pgPool.pool.stats();
    const refusal = pgPool.connector.lastRefusal;
    const code = codeOf(err);
    let fields: ErrorFields;
    if (code === 'SIDEPOOL_UPSTREAM_DOWN' && refusal !== undefined) {
      fields = { severity: 'FATAL', code: refusal.sqlstate, message: refusal.serverMessage };
    } else if (code === 'SIDEPOOL_ACQUIRE_TIMEOUT' || code === 'SIDEPOOL_POOL_OVERFLOW') {
      fields = {
        severity: 'FATAL',
        code: '53300',
        message: `sidepool: no backend in pool ${pgPool.pool.name} (${code === 'SIDEPOOL_ACQUIRE_TIMEOUT' ? `waited ${pgPool.pool.options.acquireTimeout}ms` : 'queue full'}; ${stats.active + stats.idle + stats.connecting}/${stats.maxSize} backends, ${stats.waiters} waiting)`,
      };
    } else if (code === 'SIDEPOOL_POOL_CLOSED') {
      fields = {
        severity: 'FATAL',
        code: '57P01',
        message: 'terminating connection due to administrator command',
      };
    } else {
      fields = {
        severity: 'FATAL',
        code: '08006',
        message: `sidepool: cannot reach the server: ${describe(err)}`,
      };
    }
    this.ctx.log.info(
      { session: this.id, code, sqlstate: fields.code },
      'client closed without a backend',
    );
    this.fatal(fields);
  }

  /**
   * A backend the pool handed over after a wait: the pool tells waiters on a tick of their
   * own, never inside the message callback that asked, so one that needs no check and no
   * SET is bound at once.
   */
  private bindWaited(link: Link): void {
    const ready = this.state === 'waiting' ? this.readyAsIs(link) : undefined;
    if (ready !== undefined) {
      this.attachBackend(ready);
      this.resumeClient();
      return;
    }
    void this.bind(link);
  }

  /** The link's backend, if it can be bound as it is: no check due, no SET needed. */
  private readyAsIs(link: Link): Backend | undefined {
    const backend = Backend.of(link);
    return !this.needsCheck(link, backend) && this.runsMyParameters(backend) ? backend : undefined;
  }

  /** Binds a backend after its check and SET, then lets the held message go on. */
  private async bind(link: Link): Promise<void> {
    const pgPool = this.pgPool as PgPool;
    // Never within the message callback that asked: the framer must hold the message first.
    await Promise.resolve();
    if (this.state !== 'waiting') {
      pgPool.pool.release(link, true);
      return;
    }
    const backend = Backend.of(link);
    try {
      if (this.needsCheck(link, backend)) {
        const checked = await backend.run('', 5000);
        if (checked.status !== 'I' || checked.error !== undefined) throw new Error('check failed');
      }
      const sql = this.runsMyParameters(backend)
        ? undefined
        : setParametersSql(this.params, backend);
      if (sql !== undefined) {
        const result = await backend.run(sql);
        if (result.error !== undefined) {
          backend.forgetApplied();
          pgPool.pool.release(link, false);
          if (this.state === 'waiting') {
            this.fatal({
              severity: 'FATAL',
              code: result.error.get('C') ?? '22023',
              message: result.error.get('M') ?? 'invalid startup parameter',
            });
          }
          return;
        }
        this.noteApplied(backend);
      }
    } catch (err) {
      this.ctx.log.info(
        { session: this.id, link: link.id, err: describe(err) },
        'backend failed its check: closed',
      );
      pgPool.pool.release(link, false);
      if (this.state === 'waiting') {
        this.state = 'idle';
        if (!this.bindForMessage()) return;
        this.resumeClient();
      }
      return;
    }
    if (this.state !== 'waiting') {
      pgPool.pool.release(link, true);
      return;
    }
    this.attachBackend(backend);
    this.resumeClient();
  }

  private attachBackend(backend: Backend): void {
    this.observer.waited((performance.now() - this.waitStartedAt) / 1000);
    this.backend = backend;
    this.state = 'bound';
    this.boundAt = performance.now();
    this.countClient('active');
    if (this.ctx.settings.poolMode === 'session' && this.pin.kind === 'shared') {
      this.pin = { kind: 'pinned', reason: 'session' };
    }
    if (this.statements !== undefined) backend.statements.countIn((this.pgPool as PgPool).prepared);
    backend.attach(this.backendSink);
    this.corkForChunk(backend.socket);
  }

  /** After a SET on bind: the server's reported values become the client's view. */
  private noteApplied(backend: Backend): void {
    const changed: Buffer[] = [];
    for (const [name, value] of backend.params) {
      const mine = this.params.get(name.toLowerCase());
      if (mine !== undefined && mine.value !== value) {
        mine.value = value;
        changed.push(parameterStatus(name, value));
      }
    }
    this.paramsKeyMemo = undefined;
    if (changed.length > 0) this.toClient(Buffer.concat(changed));
  }

  /** Bytes of sidepool's own for the client: after what was forwarded before them. */
  private toClient(bytes: Buffer): void {
    this.flushForwarded();
    this.socket.write(bytes);
  }

  /** A backend message passed on as it came; it leaves with its neighbours at chunkEnd. */
  private forward(slice: Buffer): void {
    if (this.forwarded.add(slice)) return;
    this.flushForwarded();
    this.forwarded.add(slice);
  }

  private flushForwarded(): void {
    const bytes = this.forwarded.take();
    if (bytes !== undefined) this.socket.write(bytes);
  }

  private get observer() {
    return (this.pgPool as PgPool).observer;
  }

  // ── backend messages ────────────────────────────────────────────────────

  private readonly backendSink: BackendSink = {
    message: (code, msg, request) => this.onBackendMessage(code, msg, request),
    streamStart: (code, _length, request) => {
      this.swallowing = request !== undefined && request.action === 'swallow';
      this.backendStreaming = true;
    },
    streamBytes: (bytes) => {
      if (!this.swallowing) this.forward(bytes);
    },
    streamEnd: () => {
      this.swallowing = false;
      this.backendStreaming = false;
      const backend = this.backend;
      if (backend?.queue.peek()?.action === 'answer') this.answerQueued(backend);
    },
    backendLost: (err) => this.backendLost(err),
    chunkStart: () => this.socket.cork(),
    chunkEnd: () => {
      this.flushForwarded();
      this.socket.uncork();
      return this.socket.writableLength > HIGH_WATER;
    },
  };

  private onBackendMessage(code: number, msg: Buffer, request: Outstanding | undefined): void {
    const backend = this.backend as Backend;
    if (request === undefined || request.action === 'forward') {
      this.forward(msg);
    } else if (request.action === 'replace') {
      this.toClient(code === Code.ErrorResponse ? (request.answer as Buffer) : msg);
    } else if (code === Code.ErrorResponse && request.code !== Code.Query) {
      // An injected Parse that fails fails the client's pipeline: the client sees why.
      this.toClient(msg);
    }
    if (code === Code.ErrorResponse && this.statements !== undefined) {
      this.noteStatementError(backend, msg);
    }
    if (code === Code.ParameterStatus) {
      const r = new BodyReader(msg, 5);
      const name = r.cstring();
      const value = r.cstring();
      const key = name.toLowerCase();
      const mine = this.params.get(key);
      if (mine !== undefined) mine.value = value;
      else this.params.set(key, { name, value });
      this.paramsKeyMemo = undefined;
      return;
    }
    if (backend.queue.peek()?.action === 'answer') this.answerQueued(backend);
    if (code === Code.ReadyForQuery) this.settle(backend);
  }

  /** After a ReadyForQuery, ours or the server's: nothing outstanding, idle → released. */
  private settle(backend: Backend): void {
    if (!backend.queue.isEmpty) return;
    if (this.endAfterHeld) {
      this.leaveAnswered();
      return;
    }
    if (backend.statements.needsReset && backend.status === 'I') {
      this.resetStatements(backend);
      return;
    }
    if (backend.status === 'I' && this.pin.kind === 'shared') {
      this.observer.transaction((performance.now() - this.boundAt) / 1000);
      this.release();
    } else {
      this.armTimer();
    }
  }

  /** Replies sidepool gives itself, once everything before them was forwarded. */
  private answerQueued(backend: Backend): void {
    if (this.backendStreaming) return;
    for (let head = backend.queue.peek(); head?.action === 'answer'; head = backend.queue.peek()) {
      backend.queue.reply(Code.ReadyForQuery);
      const answer = head.answer as Answer;
      this.toClient(typeof answer === 'function' ? answer(backend.status) : answer);
    }
  }

  /** ReadyForQuery idle, nothing outstanding: the backend goes back to the pool. */
  private release(): void {
    const backend = this.backend as Backend;
    if (!this.framer.atBoundary) return;
    backend.detach();
    backend.releasedAt = Date.now();
    this.backend = undefined;
    (this.pgPool as PgPool).pool.release(backend.link, true);
    this.state = 'idle';
    this.countClient('idle');
    if (this.draining) {
      this.fatal({
        severity: 'FATAL',
        code: '57P01',
        message: 'terminating connection due to administrator command',
      });
      return;
    }
    this.armTimer();
  }

  private backendLost(err: Error | undefined): void {
    const backend = this.backend;
    if (backend === undefined) return;
    this.backend = undefined;
    (this.pgPool as PgPool).pool.release(backend.link, false);
    this.ctx.log.info(
      { session: this.id, link: backend.link.id, err: err && describe(err) },
      'backend lost: client closed',
    );
    if (err instanceof ProtocolViolation) this.ctx.protocolError('server');
    this.fatal({
      severity: 'FATAL',
      code: '08006',
      message: 'sidepool: the server connection was lost',
    });
  }

  // ── leaving ─────────────────────────────────────────────────────────────

  /** The client is gone (or said Terminate): its backend is cleaned up and reused. */
  private leave(): void {
    if (this.state === 'ended') return;
    const backend = this.backend;
    this.backend = undefined;
    this.waiter?.cancel();
    this.waiter = undefined;
    const wasBound = this.state === 'bound';
    this.end();
    this.socket.destroy();
    if (backend !== undefined && wasBound) void this.cleanUp(backend);
  }

  /**
   * A backend whose client left: idle → back to the pool (reset first if the client held
   * session state); in a transaction → ROLLBACK first; running a query → cancelled and
   * closed.
   */
  private async cleanUp(backend: Backend): Promise<void> {
    const pgPool = this.pgPool as PgPool;
    backend.detach();
    if (!backend.isQuiet) {
      this.ctx.cancelBackend(backend.link.endpoint, backend.pid, backend.secretKey);
      pgPool.pool.release(backend.link, false);
      return;
    }
    try {
      if (backend.status !== 'I') {
        const rolled = await backend.run('ROLLBACK', 10_000);
        if (rolled.status !== 'I') throw new Error('ROLLBACK did not end the transaction');
      }
      if (this.pin.kind === 'pinned' && this.ctx.settings.resetQuery !== '') {
        const reset = await backend.run(this.ctx.settings.resetQuery, 10_000);
        if (reset.status !== 'I' || reset.error !== undefined)
          throw new Error('reset query failed');
        backend.forgetApplied();
        if (sessionEffect(this.ctx.settings.resetQuery)?.dropsStatements === true) {
          backend.statements.clear();
        }
      }
      if (backend.statements.needsReset) {
        backend.statements.clear();
        backend.statements.needsReset = false;
        const reset = await backend.run('DEALLOCATE ALL', 10_000);
        if (reset.status !== 'I' || reset.error !== undefined) {
          throw new Error('DEALLOCATE ALL failed');
        }
      }
      backend.releasedAt = Date.now();
      pgPool.pool.release(backend.link, true);
    } catch (err) {
      this.ctx.log.info(
        { link: backend.link.id, err: describe(err) },
        'backend not reusable after its client left: closed',
      );
      pgPool.pool.release(backend.link, false);
    }
  }

  private close(): void {
    this.leave();
  }

  /** Sends a FATAL ErrorResponse and closes. */
  private fatal(fields: ErrorFields): void {
    if (this.state === 'ended') return;
    if (!this.socket.destroyed && this.socket.writable) {
      this.flushForwarded();
      this.socket.end(errorResponse(fields));
    }
    this.leave();
  }

  private protocolViolation(err: unknown): void {
    this.ctx.protocolError('client');
    const message = err instanceof ProtocolViolation ? err.message : describe(err);
    this.ctx.log.info(
      { session: this.id, state: this.state, problem: message },
      'protocol violation from the client',
    );
    if (this.state === 'startup' || this.state === 'auth') {
      this.ctx.metricsAuthFailed(this.database, this.user, 'protocol');
    }
    // A half-relayed message cannot be finished: the backend is in an unknown state.
    const backend = this.backend;
    if (backend !== undefined && !backend.isQuiet) {
      this.backend = undefined;
      backend.detach();
      (this.pgPool as PgPool).pool.release(backend.link, false);
    }
    this.fatal({
      severity: 'FATAL',
      code: '08P01',
      message: `invalid message from the client: ${message}`,
    });
  }

  private end(): void {
    if (this.state === 'ended') return;
    this.state = 'ended';
    this.statements?.clear();
    this.countClient(undefined);
    this.clearTimer();
    this.ctx.unregisterCancel(this.pid);
    stopReading(this.socket);
    this.ctx.route.observer.closed(
      { bytesUp: this.bytesUp, bytesDown: this.bytesDown, error: undefined, brokenBy: undefined },
      (performance.now() - this.startedAt) / 1000,
    );
    this.ctx.route.sessionEnded(this);
  }

  private countClient(state: ClientCount | undefined): void {
    const pgPool = this.pgPool;
    if (pgPool === undefined) return;
    if (this.counted !== undefined) pgPool.clients[this.counted]--;
    this.counted = state;
    if (state !== undefined) pgPool.clients[state]++;
    pgPool.lastUsedAt = Date.now();
  }

  // ── timeouts ────────────────────────────────────────────────────────────

  private armTimer(): void {
    const { clientIdleTimeout, idleTransactionTimeout, queryTimeout } = this.ctx.settings;
    let ms = 0;
    if (this.state === 'idle') ms = clientIdleTimeout;
    else if (this.state === 'bound') {
      const backend = this.backend as Backend;
      ms = backend.queue.isEmpty
        ? backend.status === 'I'
          ? clientIdleTimeout
          : idleTransactionTimeout
        : queryTimeout;
    }
    if (ms <= 0) {
      this.clearTimer();
      return;
    }
    this.clearTimer();
    this.timer = setTimeout(onTimeout, ms, this);
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  timedOut(): void {
    this.timer = undefined;
    if (this.state === 'idle') {
      this.fatal({
        severity: 'FATAL',
        code: '57P05',
        message: 'terminating connection due to idle-session timeout (clientIdleTimeout)',
      });
      return;
    }
    if (this.state !== 'bound') return;
    const backend = this.backend as Backend;
    if (backend.queue.isEmpty) {
      if (backend.status === 'I') {
        this.fatal({
          severity: 'FATAL',
          code: '57P05',
          message: 'terminating connection due to idle-session timeout (clientIdleTimeout)',
        });
      } else {
        this.fatal({
          severity: 'FATAL',
          code: '25P03',
          message:
            'terminating connection due to idle-in-transaction timeout (idleTransactionTimeout)',
        });
      }
      return;
    }
    this.fatal({
      severity: 'FATAL',
      code: '57014',
      message: 'canceling statement due to statement timeout (queryTimeout)',
    });
  }
}

function passwordMatches(secret: Secret, password: string, user: string): boolean {
  switch (secret.kind) {
    case 'plain':
      return secret.password === password;
    case 'md5':
      return secret.hash === md5Secret(password, user);
    case 'scram': {
      const v = secret.verifier;
      const keys = keysFromPassword(password, v.salt, v.iterations);
      return keys.serverKey.equals(v.serverKey);
    }
  }
}

function printable(code: number): string {
  return code >= 0x20 && code < 0x7f ? `'${String.fromCharCode(code)}'` : `0x${code.toString(16)}`;
}

const kSession = Symbol('sidepool.pgSession');
type Tagged = Socket & { [kSession]?: PgSession };

function onClientBytes(this: Duplex, chunk: Buffer): number {
  return (this as Tagged)[kSession]?.clientBytes(chunk) ?? READ_PAUSE;
}
function onClientClose(this: Tagged): void {
  this[kSession]?.clientClosed();
}
function onClientEnd(this: Tagged): void {
  this[kSession]?.clientEnded();
}
function onClientError(): void {
  // The close that follows is what counts.
}
function onClientDrain(this: Tagged): void {
  this[kSession]?.clientDrained();
}
function onTimeout(session: PgSession): void {
  session.timedOut();
}
