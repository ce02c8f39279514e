import type { Duplex } from 'node:stream';
import { LinkClosedError, SidepoolError } from '../errors.js';
import { CHUNK_KEPT, READ_PAUSE, readWith, stopReading } from '../net/reads.js';

/**
 * The life of one upstream connection:
 *
 *   connecting ──▶ idle ⇄ active
 *        │          │       │
 *        └──────────┴───────┴──▶ closed
 *
 * Only the methods below move a link between states; each asserts the state it leaves.
 */
export type LinkState = 'connecting' | 'idle' | 'active' | 'closed';

/** Why a link closed. The first six are the evictions counted in metrics. */
export type CloseReason =
  | 'idle'
  | 'lifetime'
  | 'remote_closed'
  | 'error'
  | 'unhealthy'
  | 'endpoint_removed'
  | 'released'
  | 'pool_closed'
  | 'dial_failed';

/** The pool's side of a link: told when the link's timers fire and when it closes. */
export interface LinkOwner {
  linkIdleExpired(link: Link): void;
  linkLifetimeExpired(link: Link): void;
  linkClosed(link: Link, from: LinkState, reason: CloseReason, error: Error | undefined): void;
}

/**
 * Bytes an upstream may send on an idle link before it is taken (a server greeting, as
 * MySQL or SMTP send) are kept and replayed to the session that takes the link. More than
 * this while nobody listens is a misbehaving upstream.
 */
const MAX_IDLE_BYTES = 64 * 1024;

/**
 * Counts the moments links go idle (or are handed on), process-wide: an order of them finer
 * than Date.now's milliseconds, in which a loopback link can be given back, taken and given
 * back again.
 */
let idleTurns = 0;

/** The idle turn of the link that went idle last: every link idle now has one at most this. */
export function lastIdleTurn(): number {
  return idleTurns;
}

export class Link {
  readonly id: number;
  /** The endpoint (`host:port`) this link was dialed to; set when the dial succeeds. */
  endpoint = '';
  state: LinkState = 'connecting';
  readonly createdAt: number;
  idleSince = 0;
  /** When the link last went idle or was handed on, as a `lastIdleTurn()` value. */
  idleTurn = 0;
  uses = 0;
  /** Set when maxLifetime passed while the link was active: it must not go back to idle. */
  expired = false;
  /** Whether bytes that arrive while idle are kept (tcp) or mean the link is broken (http). */
  readonly keepIdleBytes: boolean;

  private socketRef: Duplex | undefined;
  private readonly owner: LinkOwner;
  private idleTimer: NodeJS.Timeout | undefined;
  private lifetimeTimer: NodeJS.Timeout | undefined;
  private idleChunks: Buffer[] | undefined;
  private idleBytes = 0;
  private lastError: Error | undefined;

  constructor(id: number, owner: LinkOwner, keepIdleBytes = true, now = Date.now()) {
    this.id = id;
    this.owner = owner;
    this.keepIdleBytes = keepIdleBytes;
    this.createdAt = now;
  }

  /** The upstream socket. Only the holder of an active link may read or write it. */
  get socket(): Duplex {
    if (this.socketRef === undefined) throw new LinkClosedError(`link ${this.id} has no socket`);
    return this.socketRef;
  }

  /** connecting → idle: the dial succeeded. */
  connected(socket: Duplex, endpoint: string, idleTimeoutMs: number, lifetimeMs: number): void {
    this.expect('connecting');
    this.socketRef = socket;
    this.endpoint = endpoint;
    // Shared listener functions that find the link on the socket: no closures per link.
    (socket as Linked)[kLink] = this;
    socket.on('error', onError);
    socket.on('close', onClose);
    if (lifetimeMs > 0) {
      this.lifetimeTimer = setTimeout(onLifetime, lifetimeMs, this);
      this.lifetimeTimer.unref();
    }
    this.enterIdle(idleTimeoutMs);
  }

  /**
   * idle → active: a caller takes the link, which stops reading until the caller reads
   * it. Bytes that arrived while idle wait in `takeIdleBytes()`.
   */
  lease(): void {
    this.expect('idle');
    this.state = 'active';
    this.uses++;
    this.clearIdleTimer();
    const socket = this.socket;
    stopReading(socket);
    socket.off('end', onIdleEnd);
  }

  /**
   * active → active: released while a caller waited, the link goes straight to that caller
   * (a lease that skips idle, whose reader, listener and timer would be set up and taken
   * down again within one tick).
   */
  handOn(): void {
    this.expect('active');
    this.uses++;
    this.markIdle();
  }

  /** What the upstream sent while the link sat idle (a greeting), for its holder to pass on. */
  takeIdleBytes(): Buffer[] | undefined {
    const chunks = this.idleChunks;
    this.idleChunks = undefined;
    this.idleBytes = 0;
    return chunks;
  }

  /** active → idle: the caller is done and the link can serve again. */
  release(idleTimeoutMs: number): void {
    this.expect('active');
    this.enterIdle(idleTimeoutMs);
  }

  /** Any state → closed, the socket destroyed. Idempotent: the owner hears of it once. */
  close(reason: CloseReason, error?: Error): void {
    if (this.state === 'closed') return;
    const from = this.state;
    this.state = 'closed';
    this.clearIdleTimer();
    if (this.lifetimeTimer !== undefined) clearTimeout(this.lifetimeTimer);
    this.lifetimeTimer = undefined;
    this.idleChunks = undefined;
    const socket = this.socketRef;
    if (socket !== undefined) {
      socket.off('close', onClose);
      socket.destroy();
    }
    this.owner.linkClosed(this, from, reason, error ?? this.lastError);
  }

  /**
   * Since when the upstream may count this link idle: the start of its dial while it has
   * not carried a session (a server's login timer starts at its accept, which a busy loop
   * may see long before our connect callback runs), else when it last went idle.
   */
  get upstreamIdleSince(): number {
    return this.uses === 0 ? this.createdAt : this.idleSince;
  }

  get isClosed(): boolean {
    return this.state === 'closed';
  }

  /**
   * Whether the socket can still carry bytes. A socket destroyed a moment ago emits 'close'
   * only on the next tick, so the link may not know it is dead yet: ask before handing out.
   */
  get hasLiveSocket(): boolean {
    const socket = this.socketRef;
    return (
      socket !== undefined && !socket.destroyed && !socket.readableEnded && !socket.writableEnded
    );
  }

  private enterIdle(idleTimeoutMs: number): void {
    this.state = 'idle';
    this.markIdle();
    const socket = this.socket;
    // An idle link must notice the upstream's FIN or stray bytes at once, so it reads.
    socket.on('end', onIdleEnd);
    readWith(socket, onIdleBytes);
    if (idleTimeoutMs > 0) {
      this.idleTimer = setTimeout(onIdleTimeout, idleTimeoutMs, this);
      this.idleTimer.unref();
    }
  }

  /** Notes the moment the link went idle: its time, and its turn among all links'. */
  private markIdle(): void {
    this.idleSince = Date.now();
    this.idleTurn = ++idleTurns;
  }

  /** Restarts the idle timer of an idle link: it fires `ms` from now. */
  rearmIdleTimer(ms: number): void {
    if (this.state !== 'idle') return;
    this.clearIdleTimer();
    this.idleTimer = setTimeout(onIdleTimeout, ms, this);
    this.idleTimer.unref();
  }

  private clearIdleTimer(): void {
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private expect(state: LinkState): void {
    if (this.state !== state) {
      throw new SidepoolError(
        'SIDEPOOL_LINK_STATE',
        `link ${this.id} is ${this.state}, expected ${state}`,
      );
    }
  }

  /** Bytes arrived while idle: kept for the next holder (tcp), or the link is broken (http). */
  idleData(chunk: Buffer): number {
    if (!this.keepIdleBytes) {
      this.close('error', new LinkClosedError('the upstream sent bytes on an idle link'));
      return READ_PAUSE;
    }
    this.idleBytes += chunk.length;
    if (this.idleBytes > MAX_IDLE_BYTES) {
      this.close(
        'error',
        new LinkClosedError(`the upstream sent over ${MAX_IDLE_BYTES} bytes on an idle link`),
      );
      return READ_PAUSE;
    }
    (this.idleChunks ??= []).push(chunk);
    return CHUNK_KEPT;
  }

  idleExpired(): void {
    this.idleTimer = undefined;
    if (this.state === 'idle') this.owner.linkIdleExpired(this);
  }

  lifetimeExpired(): void {
    this.lifetimeTimer = undefined;
    if (this.state === 'idle') this.owner.linkLifetimeExpired(this);
    else this.expired = true;
  }

  noteError(err: Error): void {
    this.lastError = err;
  }

  /**
   * The socket closed under us: an idle link was closed by the upstream; an active one
   * ended with its session (the holder closed it) or broke.
   */
  socketClosed(): void {
    const reason: CloseReason =
      this.state === 'idle'
        ? this.lastError
          ? 'error'
          : 'remote_closed'
        : this.lastError
          ? 'error'
          : 'released';
    this.close(reason);
  }
}

const kLink = Symbol('sidepool.link');
type Linked = Duplex & { [kLink]?: Link };

function linkOf(socket: Linked): Link {
  return socket[kLink] as Link;
}
function onIdleBytes(this: Linked, chunk: Buffer): number {
  return linkOf(this).idleData(chunk);
}
function onIdleEnd(this: Linked): void {
  linkOf(this).close('remote_closed');
}
function onError(this: Linked, err: Error): void {
  linkOf(this).noteError(err);
}
function onClose(this: Linked): void {
  linkOf(this).socketClosed();
}
function onIdleTimeout(link: Link): void {
  link.idleExpired();
}
function onLifetime(link: Link): void {
  link.lifetimeExpired();
}
