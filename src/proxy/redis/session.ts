import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { AcquireTimeoutError, codeOf, describe } from '../../errors.js';
import { CHUNK_KEPT, READ_MORE, READ_PAUSE, readWith, stopReading } from '../../net/reads.js';
import { Link } from '../../pool/link.js';
import type { Waiter } from '../../pool/pool.js';
import type { Route, Session } from '../route.js';
import type { SpliceOutcome } from '../splice.js';
import {
  AUTH,
  BLOCKING,
  CLIENT,
  CONNECTION_FLAG,
  DISCARD,
  EXEC,
  FORWARD,
  HELLO,
  MONITOR,
  MULTI,
  PING,
  QUIT,
  REFUSED,
  RESET,
  SELECT,
  SUBSCRIBE,
  UNSUBSCRIBE,
  UNWATCH,
  WATCH,
  XREAD,
  keyword,
  resettable,
  xreadBlocks,
  type PinReason,
} from './commands.js';
import type { Database, PlacementWaiter, Protocol } from './database.js';
import { FORWARD as A_FORWARD, NOTIFY, SWALLOW, type LinkMux, type MuxClient } from './link-mux.js';
import type { CommandResult } from './metrics.js';
import type { RedisModeContext } from './mode.js';
import * as R from './replies.js';
import {
  FRAME_COMMAND,
  FRAME_EMPTY,
  FRAME_ERROR,
  FRAME_LARGE,
  FRAME_NEED_MORE,
  RequestFramer,
  commandArgs,
  encodeCommand,
  errorReply,
  isErrorType,
} from './resp.js';

/** Why a session's input is on hold, and what resumes it. */
type Hold =
  | 'none'
  /** Replies outstanding must come first (a local answer, a pin, a SELECT). */
  | 'replies'
  /** The client's link is at maxPending. */
  | 'room'
  /** Queued for room on a shared link of its database. */
  | 'queued'
  /** Waiting for a link of its own from the pool. */
  | 'pin'
  /** SELECT of a database not reached yet: waiting for its first link. */
  | 'select'
  /** A RESET went to the pinned link; the session is shared again at its reply. */
  | 'reset'
  /** The link's socket holds too many unwritten bytes. */
  | 'upstream';

/** The session's life: open, then closing (answers what it read, then ends), then closed. */
type Phase = 'open' | 'closing' | 'closed';

/**
 * Transactions. `watch` and `multi` hold a pinned link. When that link is lost, the
 * transaction's promise must still hold, so sidepool answers in Redis's words: after a
 * lost MULTI every command fails and EXEC is EXECABORT; after a lost WATCH a later
 * MULTI…EXEC runs nothing and EXEC answers nil, as when a watched key changed.
 */
type Txn = 'none' | 'watch' | 'multi' | 'lost_watch' | 'lost_multi' | 'doomed_multi';

interface Pin {
  mux: LinkMux;
  reason: PinReason;
  /** `call`: the pin ends when the call (transaction, blocking command) is answered. */
  level: 'call' | 'session';
}

/** A command larger than maxBatchBytes, streamed to a pinned link. */
interface LargeCommand {
  command: number;
  /** Its bytes read before it was known to be large; written once a link is ready. */
  pieces: Buffer[] | undefined;
  /** Its bytes go nowhere: no link came, or the client may not send it. */
  dropped: Buffer | undefined;
}

/** What a session states is in, for sidepool_redis_clients. */
export type ClientState = 'shared' | 'queued' | 'pinned';

/** Notifications awaited from NOTIFY entries, in order. */
type Awaited = 'auth' | 'reset';

/**
 * One app connection in redis mode. Commands go, in order, to a shared link of the
 * client's database (the one with the fewest replies outstanding, kept while replies are
 * outstanding so that they come back in order) or, while the client holds connection
 * state, to a link of its own (a pin). The decisions are made in one place, `dispatch`;
 * a pin ends in one place, `unpin`.
 */
export class RedisSession implements Session, MuxClient, PlacementWaiter {
  queuePrev: PlacementWaiter | undefined;
  queueNext: PlacementWaiter | undefined;
  queued = false;

  bytesUp = 0;
  bytesDown = 0;
  phase: Phase = 'open';
  private hold: Hold = 'none';
  private db: Database;
  /** The shared link while replies are outstanding on it. */
  private mux: LinkMux | undefined;
  private pin: Pin | undefined;
  /** Replies outstanding on `mux` or the pin. */
  private pending = 0;
  private txn: Txn = 'none';
  /** RESP2 or RESP3 (after HELLO 3): the lane of shared links, the shape of local answers. */
  private protocol: Protocol = 2;
  private authenticated: boolean;
  private name: Buffer | undefined;
  private readonly framer: RequestFramer;
  private held: Buffer | undefined;
  private heldAt = 0;
  private backlog: Buffer[] | undefined;
  private large: LargeCommand | undefined;
  private waiter: Waiter | undefined;
  private cancelSelect: (() => void) | undefined;
  private waitTimer: NodeJS.Timeout | undefined;
  /**
   * The answer the held command gets when the input resumes, instead of being sent: its
   * link did not come, or it was answered while on hold (a SELECT of a new database).
   */
  private heldOutcome: { reply: Buffer; result: CommandResult } | undefined;
  private readonly awaited: Awaited[] = [];
  /** Said to the client, then the connection ends (QUIT, a protocol error). */
  private lastWords: Buffer | undefined;
  private ended = false;
  private readonly startedAt = performance.now();

  constructor(
    private readonly mode: RedisModeContext,
    private readonly route: Route,
    readonly id: number,
    readonly socket: Socket,
  ) {
    this.db = mode.database(0);
    this.db.clients++;
    this.authenticated = mode.clientPassword === undefined;
    this.framer = new RequestFramer(mode.lookup, mode.settings.maxBatchBytes);
    this.framer.unauthenticated = !this.authenticated;
  }

  get gone(): boolean {
    return this.phase === 'closed';
  }

  /** For sidepool_redis_clients. */
  get state(): ClientState {
    if (this.pin !== undefined) return 'pinned';
    return this.hold === 'queued' || this.hold === 'pin' || this.hold === 'select'
      ? 'queued'
      : 'shared';
  }

  start(): void {
    const socket = this.socket as Socket & { [kSession]?: RedisSession };
    socket[kSession] = this;
    socket.on('end', onClientEnd);
    socket.on('error', onClientError);
    socket.on('close', onClientClose);
    const idle = this.route.timeouts.idleTimeoutMs;
    if (idle > 0) {
      socket.setTimeout(idle);
      socket.on('timeout', onClientTimeout);
    }
    this.mode.sessions.add(this);
    readWith(socket, onClientBytes);
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** The route stops accepting: end once what was read is answered. */
  drain(): void {
    if (this.phase !== 'open') return;
    if (this.pin?.level === 'session' && !this.pin.mux.counted) this.socket.destroy();
    else this.closeWhenDone();
  }

  // ── input ──────────────────────────────────────────────────────────────

  /** Bytes from the app. */
  read(chunk: Buffer): number {
    this.bytesUp += chunk.length;
    if (this.phase !== 'open') return READ_MORE;
    if (this.hold !== 'none') {
      (this.backlog ??= []).push(chunk);
      return CHUNK_KEPT | READ_PAUSE;
    }
    return this.consume(chunk, 0);
  }

  /** Frames and dispatches commands from `buf` at `pos` until it ends or the input holds. */
  private consume(buf: Buffer, pos: number): number {
    const framer = this.framer;
    const len = buf.length;
    // Parts of a large command go to the link's socket as they are, which may keep them.
    let kept = READ_MORE;
    while (pos < len) {
      if (this.large !== undefined) {
        kept = CHUNK_KEPT;
        pos = this.streamLarge(buf, pos);
        if (pos < 0) return CHUNK_KEPT | (this.hold === 'none' ? READ_MORE : READ_PAUSE);
        continue;
      }
      const r = framer.next(buf, pos);
      if (r === FRAME_COMMAND) {
        // The common case: a command with no connection state, on a shared link with room.
        if (
          framer.command === FORWARD &&
          framer.inline === undefined &&
          this.pin === undefined &&
          this.txn === 'none' &&
          this.authenticated
        ) {
          const mux = this.mux ?? this.db.place(this.protocol);
          if (mux !== undefined && mux.pending < this.mode.settings.maxPending) {
            mux.append(this, buf, framer.start, framer.end, framer.pieces);
            this.mux = mux;
            this.pending++;
            pos = framer.end;
            continue;
          }
        }
        if (!this.dispatch(buf)) return this.keepHeld(buf);
        if (this.phase !== 'open') return READ_PAUSE;
        pos = framer.end;
        // Answered, but what follows waits (a RESET on a pinned link).
        if (this.hold !== 'none') return this.holdAt(buf, pos);
        continue;
      }
      if (r === FRAME_NEED_MORE) return framer.midCommand ? CHUNK_KEPT : kept;
      if (r === FRAME_EMPTY) {
        pos = framer.end;
        continue;
      }
      if (r === FRAME_LARGE) {
        this.large = { command: framer.command, pieces: framer.pieces, dropped: undefined };
        pos = framer.end;
        kept = CHUNK_KEPT;
        if (!this.startLarge()) return this.holdAt(buf, pos);
        continue;
      }
      this.protocolError(framer.error);
      return READ_PAUSE;
    }
    return kept;
  }

  /** Holds the command just framed (re-framed on resume) and the rest of `buf`. */
  private keepHeld(buf: Buffer): number {
    const framer = this.framer;
    if (framer.pieces === undefined) return this.holdAt(buf, framer.start);
    this.held = Buffer.concat([...framer.pieces, buf.subarray(framer.end)]);
    this.heldAt = 0;
    return CHUNK_KEPT | READ_PAUSE;
  }

  private holdAt(buf: Buffer, pos: number): number {
    this.held = buf;
    this.heldAt = pos;
    return CHUNK_KEPT | READ_PAUSE;
  }

  /** Input stops until `resume()`. Returns false, for dispatch to return. */
  private suspend(hold: Exclude<Hold, 'none'>): false {
    this.hold = hold;
    stopReading(this.socket);
    return false;
  }

  /** The hold is over: what was held is processed, then reading goes on. */
  private resume(): void {
    if (this.phase === 'closed') return;
    this.hold = 'none';
    for (;;) {
      const held = this.held;
      if (held !== undefined) {
        this.held = undefined;
        this.consume(held, this.heldAt);
      } else {
        const next = this.backlog?.shift();
        if (next === undefined) break;
        this.consume(next, 0);
      }
      if (this.hold !== 'none' || this.gone) return;
    }
    if (this.backlog !== undefined && this.backlog.length === 0) this.backlog = undefined;
    if (this.phase === 'open' && !this.ended) readWith(this.socket, onClientBytes);
    else this.closeWhenDone();
  }

  // ── dispatch: the one place that decides where a command goes ───────────

  /** Returns false when the input must hold (the command is framed again on resume). */
  private dispatch(buf: Buffer): boolean {
    const command = this.framer.command;
    const outcome = this.heldOutcome;
    if (outcome !== undefined) {
      this.heldOutcome = undefined;
      return this.answer(outcome.reply, outcome.result);
    }
    if (!this.authenticated) return this.unauthenticatedCommand(buf, command);
    if (this.txn === 'lost_multi' || this.txn === 'doomed_multi' || this.txn === 'lost_watch') {
      const handled = this.emulatedTransaction(buf, command);
      if (handled !== undefined) return handled;
    }
    if (this.pin !== undefined) return this.dispatchPinned(buf, command, this.pin);
    switch (command) {
      case FORWARD:
      case EXEC:
      case DISCARD:
      case UNWATCH:
        return this.forwardShared(buf);
      case PING:
        return this.pending > 0 ? this.forwardShared(buf) : this.ping(buf);
      case QUIT:
        return this.quit();
      case RESET:
        return this.framer.argc === 1 ? this.resetShared() : this.forwardShared(buf);
      case AUTH:
        return this.auth(buf);
      case HELLO:
        return this.hello(buf);
      case SELECT:
        return this.select(buf);
      case CLIENT:
        return this.client(buf);
      case UNSUBSCRIBE:
        return this.unsubscribe(buf);
      case MULTI:
        return this.framer.argc === 1
          ? this.pinFor(buf, 'transaction', 'call')
          : this.forwardShared(buf);
      case WATCH:
        return this.framer.argc >= 2
          ? this.pinFor(buf, 'transaction', 'call')
          : this.forwardShared(buf);
      case BLOCKING:
        return this.pinFor(buf, 'blocking', 'call');
      case XREAD:
        return xreadBlocks(this.args(buf))
          ? this.pinFor(buf, 'blocking', 'call')
          : this.forwardShared(buf);
      case SUBSCRIBE:
        return this.pinFor(buf, 'pubsub', 'session');
      case MONITOR:
        return this.pinFor(buf, 'monitor', 'session');
      case CONNECTION_FLAG:
        return this.pinFor(buf, 'connection_flag', 'session');
      case REFUSED:
        return this.answer(R.REPLICATION_REFUSED, 'refused');
      default:
        return this.forwardShared(buf);
    }
  }

  /** A pinned client: everything goes to its link, watching for what ends or widens the pin. */
  private dispatchPinned(buf: Buffer, command: number, pin: Pin): boolean {
    const counted = pin.mux.counted;
    if (pin.level === 'call' && this.txn === 'multi') {
      // In MULTI every command is queued by Redis; commands that change the connection
      // keep the link for the session.
      switch (command) {
        case QUIT:
          return this.quit();
        case RESET:
          return this.framer.argc === 1 ? this.resetPinned(buf, pin) : this.forwardPinned(buf, pin);
        case EXEC:
        case DISCARD:
          this.txn = 'none';
          return this.forwardPinned(buf, pin);
        case FORWARD:
        case MULTI:
        case WATCH:
        case UNWATCH:
        case BLOCKING:
        case XREAD:
        case PING:
          return this.forwardPinned(buf, pin);
        default:
          // SELECT, CLIENT SETNAME, HELLO, SUBSCRIBE…: queued, they change the link when
          // EXEC runs it, so it stays the client's.
          this.widenPin(pin, this.connectionReason(buf, command) ?? pin.reason);
          return this.forwardPinned(buf, pin);
      }
    }
    switch (command) {
      case QUIT:
        return counted ? this.quit() : this.forwardQuit(buf, pin);
      case RESET:
        return this.framer.argc === 1 ? this.resetPinned(buf, pin) : this.forwardPinned(buf, pin);
      case REFUSED:
        return this.pending > 0
          ? this.suspend('replies')
          : this.answer(R.REPLICATION_REFUSED, 'refused');
      case MULTI:
        if (this.framer.argc === 1 && this.txn !== 'multi') this.txn = 'multi';
        return this.forwardPinned(buf, pin);
      case WATCH:
        if (this.framer.argc >= 2 && this.txn === 'none') this.txn = 'watch';
        return this.forwardPinned(buf, pin);
      case UNWATCH:
        if (this.txn === 'watch') this.txn = 'none';
        return this.forwardPinned(buf, pin);
      case AUTH:
        return counted ? this.auth(buf) : this.forwardPinned(buf, pin);
      case HELLO:
        return counted ? this.hello(buf) : this.forwardPinned(buf, pin);
      default:
        break;
    }
    if (pin.level === 'session') {
      const reason = this.connectionReason(buf, command);
      if (reason !== undefined) this.widenPin(pin, reason);
      return this.forwardPinned(buf, pin);
    }
    // A call pin (a blocking call, a WATCH, a large command) outside MULTI.
    switch (command) {
      case FORWARD:
      case EXEC:
      case DISCARD:
      case BLOCKING:
      case XREAD:
        return this.forwardPinned(buf, pin);
      case SUBSCRIBE:
      case MONITOR:
      case CONNECTION_FLAG:
        this.widenPin(pin, this.connectionReason(buf, command) ?? pin.reason);
        return this.forwardPinned(buf, pin);
      default:
        break;
    }
    // A command answered locally when shared: after the call, which may end the pin.
    if (this.pending > 0) return this.suspend('replies');
    switch (command) {
      case SELECT:
        // The WATCH stays on this link: the link moves with the client, for the session.
        this.widenPin(pin, pin.reason);
        return this.forwardPinned(buf, pin);
      case PING:
        return this.ping(buf);
      case CLIENT: {
        const reason = this.connectionReason(buf, command);
        if (reason !== undefined) {
          this.widenPin(pin, reason);
          return this.forwardPinned(buf, pin);
        }
        return this.client(buf);
      }
      case UNSUBSCRIBE:
        return this.unsubscribe(buf);
      default:
        return this.forwardPinned(buf, pin);
    }
  }

  /**
   * For a command that puts the connection in a state of its own (subscribed, monitoring,
   * replies off, tracking, cluster flags): the pin reason, held for the rest of the session.
   */
  private connectionReason(buf: Buffer, command: number): PinReason | undefined {
    switch (command) {
      case SUBSCRIBE:
        return 'pubsub';
      case MONITOR:
        return 'monitor';
      case CONNECTION_FLAG:
        return 'connection_flag';
      case CLIENT: {
        const args = this.args(buf);
        const sub = keyword(args[1]);
        const value = keyword(args[2]);
        if (sub === 'REPLY' && (value === 'OFF' || value === 'SKIP')) return 'client_reply';
        if (sub === 'TRACKING' && value === 'ON') return 'tracking';
        if ((sub === 'NO-EVICT' || sub === 'NO-TOUCH') && value === 'ON') return 'connection_flag';
        return undefined;
      }
      default:
        return undefined;
    }
  }

  // ── shared links ─────────────────────────────────────────────────────────

  private forwardShared(buf: Buffer): boolean {
    let mux = this.mux;
    if (mux === undefined) {
      mux = this.db.place(this.protocol);
      if (mux === undefined) return this.queueForLink(this.protocol);
    }
    if (mux.pending >= this.mode.settings.maxPending) {
      this.mux = mux;
      mux.blocked.push(this);
      return this.suspend('room');
    }
    this.send(mux, buf, A_FORWARD);
    this.mux = mux;
    return true;
  }

  /** Forwards on the client's pin when it has one, else on a shared link. */
  private forwardEither(buf: Buffer): boolean {
    return this.pin === undefined ? this.forwardShared(buf) : this.forwardPinned(buf, this.pin);
  }

  /** Queues the client for room on a shared link (all full, the pool at maxSize). */
  private queueForLink(protocol: Protocol): boolean {
    const err = this.db.queue(this, protocol);
    if (err !== undefined) return this.answer(this.failure(err), 'no_link');
    const timeout = this.db.pool.options.acquireTimeout;
    if (timeout > 0) {
      this.waitTimer = setTimeout(() => {
        this.waitTimer = undefined;
        this.db.unqueue(this);
        this.failHeldWith(new AcquireTimeoutError(this.db.pool.name, timeout));
      }, timeout);
    }
    return this.suspend('queued');
  }

  /** PlacementWaiter: a shared link has room. */
  placed(mux: LinkMux): void {
    this.clearWait();
    this.mux = mux;
    this.resume();
  }

  /** PlacementWaiter: no shared link will come. */
  placementFailed(err: Error): void {
    this.clearWait();
    this.failHeldWith(err);
  }

  /** The held command (or large command) is answered with `err` and the input goes on. */
  private failHeldWith(err: Error): void {
    const reply = this.failure(err);
    if (this.large !== undefined) this.dropLarge(reply);
    else this.heldOutcome = { reply, result: 'no_link' };
    this.resume();
  }

  /** Queues the framed command (its bytes, or an inline command encoded) on `mux`. */
  private send(mux: LinkMux, buf: Buffer, action: number): void {
    const framer = this.framer;
    if (framer.inline !== undefined) {
      const bytes = encodeCommand(framer.inline);
      mux.append(this, bytes, 0, bytes.length, undefined, action);
    } else {
      mux.append(this, buf, framer.start, framer.end, framer.pieces, action);
    }
    if (mux.counted) this.pending++;
  }

  // ── pins ─────────────────────────────────────────────────────────────────

  /** Takes a link of the client's own, then dispatches the command again, pinned. */
  private pinFor(buf: Buffer, reason: PinReason, level: 'call' | 'session'): boolean {
    if (this.pending > 0) return this.suspend('replies');
    const got = this.db.acquirePinned(this.pinCallback(reason, level));
    if (got instanceof Link) {
      this.attachPin(got, reason, level);
      // The framer's fields still describe the command: dispatch it again, pinned.
      return this.dispatch(buf);
    }
    this.waiter = got;
    return this.suspend('pin');
  }

  /**
   * The pool may answer a waiter before `wait()` returns; the session acts on it after the
   * command that asked has been dispatched.
   */
  private pinCallback(reason: PinReason, level: 'call' | 'session') {
    return (err: Error | null, link?: Link): void =>
      queueMicrotask(() => this.pinLink(err, link, reason, level));
  }

  private pinLink(
    err: Error | null,
    link: Link | undefined,
    reason: PinReason,
    level: 'call' | 'session',
  ): void {
    this.waiter = undefined;
    if (this.phase === 'closed') {
      if (link !== undefined) this.db.pool.release(link, true);
      return;
    }
    if (link === undefined) {
      // A MULTI that cannot start must not let its commands run one by one.
      if (reason === 'transaction' && this.framer.command === MULTI && this.large === undefined) {
        this.txn = 'lost_multi';
      }
      this.failHeldWith(err ?? new Error('no link'));
      return;
    }
    this.attachPin(link, reason, level);
    this.resume();
  }

  private attachPin(link: Link, reason: PinReason, level: 'call' | 'session'): void {
    const mux = this.db.pin(link, this.protocol);
    mux.owner = this;
    this.pin = { mux, reason, level };
    this.mode.observer.pinned(reason);
    if (level === 'session') this.carryName(mux);
  }

  /** A pin widens to the session (the connection changed); counted under its reason. */
  private widenPin(pin: Pin, reason: PinReason): void {
    if (pin.level === 'session' && pin.reason === reason) return;
    if (pin.level === 'call') this.carryName(pin.mux);
    if (pin.reason !== reason) this.mode.observer.pinned(reason);
    pin.level = 'session';
    pin.reason = reason;
  }

  /** A name set locally goes to a link pinned for the session, where CLIENT GETNAME goes. */
  private carryName(mux: LinkMux): void {
    if (this.name === undefined) return;
    const bytes = encodeCommand(['CLIENT', 'SETNAME', this.name]);
    mux.append(undefined, bytes, 0, bytes.length, undefined, SWALLOW);
  }

  private forwardPinned(buf: Buffer, pin: Pin): boolean {
    const mux = pin.mux;
    if (mux.counted && this.pending >= this.mode.settings.maxPending) {
      mux.blocked.push(this);
      return this.suspend('room');
    }
    if (mux.backedUp) {
      mux.onceDrained(() => this.wakeFrom('upstream'));
      return this.suspend('upstream');
    }
    const command = this.framer.command;
    const goesUncounted =
      command === SUBSCRIBE ||
      command === MONITOR ||
      (command === CLIENT && this.connectionReason(buf, command) === 'client_reply') ||
      (command === UNSUBSCRIBE && pin.level === 'session');
    if (goesUncounted && mux.counted) {
      // From this command on, replies stop matching commands (one per channel, none at
      // all, a stream of lines): everything is the client's.
      mux.uncount();
      this.pending = 0;
    }
    this.send(mux, buf, A_FORWARD);
    return true;
  }

  /**
   * Ends a pin. `clean`: the link is as the pool gave it (a call answered), back at once;
   * else it is reset first (RESET, AUTH, SELECT), or closed when that cannot be trusted.
   */
  private unpin(clean: boolean): void {
    const pin = this.pin;
    if (pin === undefined) return;
    this.pin = undefined;
    this.pending = 0;
    const mux = pin.mux;
    mux.owner = undefined;
    if (mux.state !== 'open') return;
    if (clean) {
      this.db.unpin(mux, true);
      return;
    }
    const blockedCall = mux.counted && mux.pending > 0 && pin.reason === 'blocking';
    if (!resettable(pin.reason) || blockedCall) {
      this.db.unpin(mux, false);
      return;
    }
    const db = this.db;
    const restore = this.mode.restoreCommands(db.index, true);
    mux.restore(restore.bytes, restore.replies, (ok) => {
      mux.protocol = 2;
      db.unpin(mux, ok);
    });
  }

  // ── large commands ───────────────────────────────────────────────────────

  /** A large command was framed: it goes to a link of its own (pinned for the call). */
  private startLarge(): boolean {
    const large = this.large as LargeCommand;
    if (large.dropped !== undefined) return true;
    if (!this.authenticated) {
      this.dropLarge(R.NOAUTH);
      return true;
    }
    if (this.txn === 'lost_multi') {
      this.dropLarge(R.EXECABORT);
      return true;
    }
    if (this.pin === undefined) {
      if (this.pending > 0) return this.suspend('replies');
      const reason = largeReason(large.command);
      const level = reason === 'pubsub' || reason === 'monitor' ? 'session' : 'call';
      const got = this.db.acquirePinned(this.pinCallback(reason, level));
      if (!(got instanceof Link)) {
        this.waiter = got;
        return this.suspend('pin');
      }
      this.attachPin(got, reason, level);
    }
    const pin = this.pin as Pin;
    if (large.command === SUBSCRIBE || large.command === MONITOR)
      this.widenPin(pin, largeReason(large.command));
    for (const piece of large.pieces ?? []) pin.mux.writeLarge(piece);
    large.pieces = undefined;
    return true;
  }

  /** The rest of a large command: written to the pin (or dropped). Returns -1 on hold. */
  private streamLarge(buf: Buffer, pos: number): number {
    const large = this.large as LargeCommand;
    if (large.pieces !== undefined && !this.startLarge()) {
      this.holdAt(buf, pos);
      return -1;
    }
    const framer = this.framer;
    const r = framer.next(buf, pos);
    if (r === FRAME_ERROR) {
      // Redis has part of a command: the link cannot be trusted.
      this.pin?.mux.lose(new Error('the client sent a malformed command'), 'error');
      this.protocolError(framer.error);
      return -1;
    }
    const part = buf.subarray(framer.start, framer.end);
    const mux = this.pin?.mux;
    if (large.dropped === undefined && mux !== undefined && mux.state === 'open')
      mux.writeLarge(part);
    if (r === FRAME_NEED_MORE) {
      if (mux !== undefined && mux.backedUp && large.dropped === undefined) {
        mux.onceDrained(() => this.wakeFrom('upstream'));
        this.suspend('upstream');
        return -1;
      }
      return buf.length;
    }
    this.large = undefined;
    if (large.dropped !== undefined) {
      this.answer(large.dropped, 'failed');
    } else if (mux !== undefined && mux.state === 'open') {
      mux.endLarge(this);
      if (mux.counted) this.pending++;
    }
    return framer.end;
  }

  private dropLarge(error: Buffer): void {
    const large = this.large;
    if (large === undefined) return;
    large.dropped = error;
    large.pieces = undefined;
  }

  // ── commands answered here ───────────────────────────────────────────────

  /** Writes a local answer (only with nothing outstanding: replies stay in order). */
  private answer(bytes: Buffer, result: CommandResult = 'local'): true {
    if (this.phase !== 'closed') this.socket.write(bytes);
    this.bytesDown += bytes.length;
    this.mode.observer.command(result);
    return true;
  }

  /** An answer that must follow the outstanding replies. */
  private answerAfterReplies(bytes: Buffer): boolean {
    if (this.pending > 0) return this.suspend('replies');
    return this.answer(bytes);
  }

  private ping(buf: Buffer): boolean {
    if (this.pending > 0) return this.suspend('replies');
    const argc = this.framer.argc;
    if (argc === 1) return this.answer(R.PONG);
    if (argc === 2) return this.answer(R.bulk(this.args(buf)[1] as Buffer));
    return this.answer(R.wrongArity('ping'));
  }

  private quit(): boolean {
    if (this.pending > 0) return this.suspend('replies');
    this.answer(R.OK);
    this.lastWords = undefined;
    this.closeWhenDone();
    return true;
  }

  /** QUIT on a link whose replies are not counted: Redis answers and closes the link. */
  private forwardQuit(buf: Buffer, pin: Pin): boolean {
    this.send(pin.mux, buf, A_FORWARD);
    this.phase = 'closing';
    stopReading(this.socket);
    return true;
  }

  private resetShared(): boolean {
    if (this.pending > 0) return this.suspend('replies');
    this.resetState();
    return this.answer(R.RESET_REPLY);
  }

  /** RESET on a pinned link: Redis resets it; at its reply the client is shared again. */
  private resetPinned(buf: Buffer, pin: Pin): boolean {
    const mux = pin.mux;
    const framer = this.framer;
    if (framer.inline !== undefined) {
      const bytes = encodeCommand(framer.inline);
      mux.sendReset(this, bytes);
    } else if (framer.pieces === undefined) {
      mux.sendReset(this, buf.subarray(framer.start, framer.end));
    } else {
      mux.sendReset(this, Buffer.concat(framer.pieces));
    }
    if (mux.counted) this.pending++;
    this.awaited.push('reset');
    this.suspend('reset');
    return true;
  }

  /** What RESET does to the client's own state. */
  private resetState(): void {
    this.txn = 'none';
    this.name = undefined;
    this.protocol = 2;
    this.mux = undefined;
    this.moveTo(this.mode.database(0));
    if (this.mode.clientPassword !== undefined) {
      this.authenticated = false;
      this.framer.unauthenticated = true;
    }
  }

  private moveTo(db: Database): void {
    if (db === this.db) return;
    this.db.clients--;
    this.db.lastUsed = Date.now();
    this.db = db;
    db.clients++;
    this.mux = undefined;
  }

  private unauthenticatedCommand(buf: Buffer, command: number): boolean {
    switch (command) {
      case AUTH:
        return this.auth(buf);
      case HELLO:
        return this.hello(buf);
      case QUIT:
        return this.quit();
      case RESET:
        return this.answerAfterReplies(R.RESET_REPLY);
      default:
        if (this.pending > 0) return this.suspend('replies');
        return this.answer(R.NOAUTH, 'refused');
    }
  }

  /**
   * AUTH. sidepool's own user (redis.auth.username, or `default`) is checked here against
   * the client password; another user pins a link and Redis checks it.
   */
  private auth(buf: Buffer): boolean {
    if (this.pending > 0) return this.suspend('replies');
    const args = this.args(buf);
    if (args.length < 2) return this.answer(R.wrongArity('auth'));
    if (args.length > 3) return this.answer(R.SYNTAX_ERROR);
    const user = args.length === 3 ? (args[1] as Buffer).toString('latin1') : undefined;
    const password = args[args.length - 1] as Buffer;
    const check = this.checkCredentials(user, password);
    if (check === 'other_user') return this.authOtherUser(buf);
    return this.answer(this.authResult(check));
  }

  /** Local credential check. */
  private checkCredentials(
    user: string | undefined,
    password: Buffer,
  ): 'ok' | 'wrong' | 'not_configured' | 'other_user' {
    const ours = this.mode.username ?? 'default';
    if (user !== undefined && user !== ours) return 'other_user';
    const secret = this.mode.clientPassword;
    if (secret === undefined) return user === undefined ? 'not_configured' : 'ok';
    return secret.matches(password) ? 'ok' : 'wrong';
  }

  private authResult(check: 'ok' | 'wrong' | 'not_configured'): Buffer {
    if (check === 'ok') {
      this.authenticated = true;
      this.framer.unauthenticated = false;
      return R.OK;
    }
    this.mode.observer.authFailed();
    return check === 'wrong' ? R.WRONGPASS : R.AUTH_NOT_CONFIGURED;
  }

  /** AUTH (or HELLO AUTH) as another Redis user: on a link of the client's own. */
  private authOtherUser(buf: Buffer): boolean {
    const pin = this.pin;
    if (pin === undefined) return this.pinFor(buf, 'auth', 'call');
    this.send(pin.mux, buf, NOTIFY);
    this.awaited.push('auth');
    return true;
  }

  private hello(buf: Buffer): boolean {
    if (this.pending > 0) return this.suspend('replies');
    const args = this.args(buf);
    let version: number | undefined;
    if (args.length >= 2) {
      version = R.parseInteger(args[1] as Buffer);
      if (version === undefined) return this.answer(R.HELLO_BAD_VERSION);
      if (version !== 2 && version !== 3) return this.answer(R.NOPROTO);
    }
    let user: string | undefined;
    let password: Buffer | undefined;
    let name: Buffer | undefined;
    for (let i = 2; i < args.length; i++) {
      const option = keyword(args[i]);
      const more = args.length - 1 - i;
      if (option === 'AUTH' && more >= 2) {
        user = (args[i + 1] as Buffer).toString('latin1');
        password = args[i + 2];
        i += 2;
      } else if (option === 'SETNAME' && more >= 1) {
        name = args[i + 1];
        i++;
      } else {
        return this.answer(R.helloSyntax(args[i] as Buffer));
      }
    }
    if (password !== undefined) {
      const check = this.checkCredentials(user, password);
      if (check === 'other_user') return this.authOtherUser(buf);
      if (check !== 'ok') {
        this.mode.observer.authFailed();
        return this.answer(R.WRONGPASS);
      }
      this.authenticated = true;
      this.framer.unauthenticated = false;
    }
    if (!this.authenticated) return this.answer(R.HELLO_NOAUTH, 'refused');
    if (name !== undefined && !R.validClientName(name)) return this.answer(R.BAD_CLIENT_NAME);
    const pin = this.pin;
    if (pin !== undefined) {
      // The pinned link's protocol (or name) changes: it stays the client's, and RESET
      // puts it back before it returns to the pool.
      const forward: Array<string | Buffer> = ['HELLO'];
      if (version !== undefined) forward.push(String(version));
      if (name !== undefined) forward.push('SETNAME', name);
      const bytes = encodeCommand(forward);
      this.widenPin(pin, pin.reason);
      pin.mux.append(this, bytes, 0, bytes.length, undefined, A_FORWARD);
      if (pin.mux.counted) this.pending++;
      if (version !== undefined) this.protocol = pin.mux.protocol = version as Protocol;
      return true;
    }
    // Shared: the server's description, from a shared link of the protocol asked for
    // (HELLO of the protocol a link already speaks changes nothing there).
    const protocol = (version ?? this.protocol) as Protocol;
    let mux = this.mux?.protocol === protocol ? this.mux : undefined;
    mux ??= this.db.place(protocol);
    if (mux === undefined) return this.queueForLink(protocol);
    if (name !== undefined) this.name = name.length > 0 ? Buffer.from(name) : undefined;
    this.protocol = protocol;
    const bytes = encodeCommand(['HELLO', String(protocol)]);
    mux.append(this, bytes, 0, bytes.length, undefined, A_FORWARD);
    this.mux = mux;
    this.pending++;
    return true;
  }

  private select(buf: Buffer): boolean {
    if (this.pending > 0) return this.suspend('replies');
    const args = this.args(buf);
    if (args.length !== 2) return this.forwardEither(buf);
    const index = R.parseInteger(args[1] as Buffer);
    if (index === undefined || index > 2_147_483_647 || index < -2_147_483_648) {
      return this.answer(R.NOT_AN_INTEGER);
    }
    if (index < 0 || index >= this.mode.databasesBelow) return this.answer(R.DB_OUT_OF_RANGE);
    if (index === this.db.index) return this.answer(R.OK);
    const target = this.mode.database(index);
    if (target.verified) {
      this.moveTo(target);
      return this.answer(R.OK);
    }
    // A database not reached yet: its first link proves it exists (its login SELECTs it).
    const mux = target.place(this.protocol);
    if (mux !== undefined) {
      this.moveTo(target);
      return this.answer(R.OK);
    }
    this.cancelSelect = target.verify(this.protocol, (err) => {
      this.cancelSelect = undefined;
      if (this.phase === 'closed') return;
      if (err === null) {
        this.moveTo(target);
        this.heldOutcome = { reply: R.OK, result: 'local' };
      } else if (codeOf(err) === 'SIDEPOOL_REDIS_SELECT_FAILED') {
        // Redis has no such database: its own answer, and the pool goes.
        this.mode.databaseRefused(index);
        this.heldOutcome = { reply: R.DB_OUT_OF_RANGE, result: 'local' };
      } else {
        this.heldOutcome = { reply: this.failure(err), result: 'no_link' };
      }
      this.mode.forgetIfUnused(target);
      this.resume();
    });
    return this.suspend('select');
  }

  private client(buf: Buffer): boolean {
    const args = this.args(buf);
    const sub = keyword(args[1]);
    if (sub === 'SETNAME' && args.length === 3) {
      if (this.pending > 0) return this.suspend('replies');
      const name = args[2] as Buffer;
      if (!R.validClientName(name)) return this.answer(R.BAD_CLIENT_NAME);
      this.name = name.length > 0 ? Buffer.from(name) : undefined;
      return this.answer(R.OK);
    }
    if (sub === 'GETNAME' && args.length === 2) {
      return this.answerAfterReplies(this.name === undefined ? this.nil() : R.bulk(this.name));
    }
    if (sub === 'ID' && args.length === 2) return this.answerAfterReplies(R.integer(this.id));
    if (sub === 'REPLY' && args.length === 3 && keyword(args[2]) === 'ON') {
      return this.answerAfterReplies(R.OK);
    }
    const reason = this.connectionReason(buf, CLIENT);
    if (reason !== undefined) return this.pinFor(buf, reason, 'session');
    return this.forwardEither(buf);
  }

  private unsubscribe(buf: Buffer): boolean {
    if (this.pending > 0) return this.suspend('replies');
    const args = this.args(buf);
    const kind = (args[0] as Buffer).toString('latin1').toLowerCase();
    return this.answer(R.unsubscribedReplies(kind, args.slice(1), this.protocol));
  }

  /** Transactions whose link was lost (see Txn); undefined: dispatch as usual. */
  private emulatedTransaction(buf: Buffer, command: number): boolean | undefined {
    if (command === QUIT) return undefined;
    if (command === RESET && this.framer.argc === 1) return undefined;
    if (this.pending > 0) return this.suspend('replies');
    if (this.txn === 'lost_watch') {
      switch (command) {
        case MULTI:
          this.txn = 'doomed_multi';
          return this.answer(R.OK);
        case UNWATCH:
          this.txn = 'none';
          return this.answer(R.OK);
        case WATCH:
          return this.answer(R.OK);
        default:
          return undefined;
      }
    }
    switch (command) {
      case EXEC: {
        const lost = this.txn === 'lost_multi';
        this.txn = 'none';
        // An aborted EXEC answers a null array (RESP3: null), as when a watched key changed.
        const aborted = this.protocol === 3 ? R.NULL : R.NULL_ARRAY;
        return this.answer(lost ? R.EXECABORT : aborted, lost ? 'failed' : 'local');
      }
      case DISCARD:
        this.txn = 'none';
        return this.answer(R.OK);
      case MULTI:
        return this.answer(R.MULTI_NESTED);
      case WATCH:
        return this.answer(R.WATCH_IN_MULTI);
      default:
        return this.answer(
          this.txn === 'lost_multi'
            ? R.sidepoolError(
                'the transaction was aborted: its link was lost',
                'SIDEPOOL_LINK_CLOSED',
              )
            : R.QUEUED,
          this.txn === 'lost_multi' ? 'failed' : 'local',
        );
    }
  }

  // ── MuxClient: replies ───────────────────────────────────────────────────

  deliver(bytes: Buffer, replies: number): boolean {
    const socket = this.socket;
    socket.write(bytes);
    this.bytesDown += bytes.length;
    if (replies > 0 && this.pending > 0) {
      this.pending -= replies;
      if (this.pending < 0) this.pending = 0;
      if (this.pending === 0) {
        if (this.pin === undefined) this.mux = undefined;
        return true;
      }
    }
    return false;
  }

  /** Replies pile up for a client that does not read them: it goes, the link goes on. */
  overflowed(): void {
    if (this.phase === 'closed') return;
    this.mode.observer.clientError('slow_reader');
    this.route.log.warn(
      { session: this.id, buffered: this.socket.writableLength },
      'redis client does not read its replies: closed',
    );
    this.socket.destroy();
  }

  wake(): void {
    if (this.phase === 'closed') return;
    const pin = this.pin;
    if (
      pin !== undefined &&
      pin.level === 'call' &&
      this.pending === 0 &&
      this.txn === 'none' &&
      this.large === undefined &&
      this.awaited.length === 0 &&
      pin.mux.counted &&
      pin.mux.quiet
    ) {
      this.unpin(true);
    }
    if (this.hold === 'replies' && this.pending === 0) this.resume();
    else if (this.hold === 'room') this.resume();
    else if (this.phase === 'closing') this.closeWhenDone();
  }

  private wakeFrom(hold: Hold): void {
    if (this.hold === hold) this.resume();
  }

  notify(type: number, isReset: boolean): void {
    const kind = this.awaited.shift();
    if (kind === 'auth') {
      if (!isErrorType(type)) {
        this.authenticated = true;
        this.framer.unauthenticated = false;
        if (this.pin !== undefined) this.widenPin(this.pin, 'auth');
      }
      return;
    }
    if (kind === 'reset' && this.pin !== undefined) {
      // Redis reset the link: it goes back to the pool after AUTH and SELECT.
      const pin = this.pin;
      this.pin = undefined;
      this.pending = 0;
      const mux = pin.mux;
      mux.owner = undefined;
      const db = this.db;
      mux.protocol = 2;
      if (!isReset || !resettable(pin.reason)) {
        db.unpin(mux, false);
      } else {
        const restore = this.mode.restoreCommands(db.index, false);
        if (restore.replies === 0) db.unpin(mux, true);
        else mux.restore(restore.bytes, restore.replies, (ok) => db.unpin(mux, ok));
      }
      this.resetState();
      this.wakeFrom('reset');
    }
  }

  linkLost(count: number, cause: Error, midReply: boolean): void {
    if (this.phase === 'closed') return;
    if (this.phase === 'closing' && this.pin !== undefined && !this.pin.mux.counted) {
      // QUIT went to Redis, which closed the link as it answered.
      this.pin = undefined;
      this.socket.end();
      return;
    }
    const error = this.failure(cause);
    if (midReply) {
      // Part of a reply went out: nothing can follow it on this connection.
      this.mode.observer.clientError('link_lost_mid_reply');
      this.socket.destroy();
      return;
    }
    for (let i = 0; i < count; i++) this.answer(error, 'failed');
    this.pending = 0;
    const pin = this.pin;
    if (pin === undefined) {
      this.mux = undefined;
    } else {
      this.pin = undefined;
      if (pin.level === 'session') {
        // Subscriptions, RESP3, tracking: state the client relies on is gone with the link.
        this.mode.observer.clientError('pinned_link_lost');
        this.socket.end();
        this.phase = 'closing';
        return;
      }
      if (this.txn === 'multi') this.txn = 'lost_multi';
      else if (this.txn === 'watch') this.txn = 'lost_watch';
      if (this.large !== undefined) this.dropLarge(error);
    }
    this.awaited.length = 0;
    queueMicrotask(() => this.wakeAfterLoss());
  }

  private wakeAfterLoss(): void {
    if (this.phase === 'closed') return;
    if (
      this.hold === 'replies' ||
      this.hold === 'room' ||
      this.hold === 'reset' ||
      this.hold === 'upstream'
    ) {
      this.resume();
    } else if (this.phase === 'closing') this.closeWhenDone();
  }

  // ── ends ─────────────────────────────────────────────────────────────────

  /** Malformed input: the protocol error after the outstanding replies, then the end. */
  private protocolError(message: string): void {
    this.mode.observer.clientError('protocol_error');
    this.mode.observer.command('refused');
    this.route.log.info(
      { session: this.id, problem: message },
      'redis client sent malformed input: closing it',
    );
    this.lastWords = errorReply(`ERR ${message}`);
    this.closeWhenDone();
  }

  /** Closes once the outstanding replies are out (QUIT, a protocol error, FIN, drain). */
  private closeWhenDone(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closing';
    stopReading(this.socket);
    if (this.pending > 0 && this.pin?.mux.counted !== false) return;
    const words = this.lastWords;
    this.lastWords = undefined;
    // Like redis-server: once the last reply is written the connection closes, whether or
    // not the client has finished sending (a client mid-way through megabytes would not).
    const socket = this.socket;
    if (
      this.ended &&
      words === undefined &&
      socket.writableLength === 0 &&
      !(socket instanceof TLSSocket)
    ) {
      // The client has ended and every reply is with the kernel: closing sends our FIN
      // after them, as a shutdown would, without its round through the stream (the common
      // end of a connection-per-request client). Not over TLS: its end sends close_notify,
      // without which a client cannot tell our end from a cut connection.
      socket.destroy();
      return;
    }
    socket.end(words ?? Buffer.alloc(0), () => socket.destroy());
  }

  /** The client half-closed: what it sent is answered, then the connection ends. */
  peerEnded(): void {
    this.ended = true;
    if (this.hold === 'none' && this.phase === 'open') this.closeWhenDone();
  }

  /** The socket closed: the session lets go of everything. Once. */
  closed(): void {
    if (this.phase === 'closed') return;
    this.phase = 'closed';
    this.clearWait();
    this.waiter?.cancel();
    this.waiter = undefined;
    this.cancelSelect?.();
    this.db.unqueue(this);
    this.db.clients--;
    this.db.lastUsed = Date.now();
    if (this.pin !== undefined) {
      const pin = this.pin;
      if (this.large !== undefined && pin.mux.state === 'open') {
        // Redis holds part of a command: the link goes.
        pin.mux.lose(new Error('the client left mid-command'), 'error');
      }
      this.unpin(
        pin.level === 'call' && this.pending === 0 && this.txn === 'none' && pin.mux.counted,
      );
    }
    this.held = undefined;
    this.backlog = undefined;
    this.large = undefined;
    this.mode.sessions.delete(this);
    const outcome: SpliceOutcome = {
      bytesUp: this.bytesUp,
      bytesDown: this.bytesDown,
      error: undefined,
      brokenBy: undefined,
    };
    this.route.observer.closed(outcome, (performance.now() - this.startedAt) / 1000);
    this.route.sessionEnded(this);
  }

  private clearWait(): void {
    if (this.waitTimer !== undefined) clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
  }

  timedOut(): void {
    if (this.pending === 0 && this.hold === 'none' && this.pin === undefined) this.socket.destroy();
  }

  // ── helpers ──────────────────────────────────────────────────────────────

  /** A null reply: RESP2's nil bulk, RESP3's null. */
  private nil(): Buffer {
    return this.protocol === 3 ? R.NULL : R.NIL;
  }

  /** The framed command's arguments (name first). */
  private args(buf: Buffer): Buffer[] {
    const framer = this.framer;
    if (framer.inline !== undefined) return framer.inline;
    const bytes =
      framer.pieces === undefined
        ? buf.subarray(framer.start, framer.end)
        : Buffer.concat(framer.pieces);
    return commandArgs(bytes);
  }

  /**
   * An error reply for a failure of sidepool's (no link, link lost), naming the cause;
   * when no link came, with the pool's state.
   */
  private failure(err: Error): Buffer {
    const code = codeOf(err);
    let what = describe(err);
    if (NO_LINK_CODES.has(code)) {
      const pool = this.db.pool;
      const s = pool.stats();
      what += ` (${s.active + s.connecting} of ${s.maxSize} links in use, ${s.idle} idle, ${this.db.queued + s.waiters} waiting)`;
    }
    return R.sidepoolError(what, code);
  }
}

/** Failures to get a link, whose error names the pool's state. */
const NO_LINK_CODES: ReadonlySet<string> = new Set([
  'SIDEPOOL_ACQUIRE_TIMEOUT',
  'SIDEPOOL_POOL_OVERFLOW',
  'SIDEPOOL_UPSTREAM_DOWN',
]);

function largeReason(command: number): PinReason {
  switch (command) {
    case SUBSCRIBE:
      return 'pubsub';
    case MONITOR:
      return 'monitor';
    case MULTI:
    case WATCH:
      return 'transaction';
    case BLOCKING:
    case XREAD:
      return 'blocking';
    default:
      return 'large_command';
  }
}

const kSession = Symbol('sidepool.redis-session');
type WithSession = Duplex & { [kSession]?: RedisSession };

function onClientBytes(this: Duplex, chunk: Buffer): number {
  const session = (this as WithSession)[kSession];
  return session === undefined ? READ_PAUSE : session.read(chunk);
}
function onClientEnd(this: WithSession): void {
  this[kSession]?.peerEnded();
}
function onClientError(): void {
  // The close that follows is what counts.
}
function onClientClose(this: WithSession): void {
  this[kSession]?.closed();
}
function onClientTimeout(this: WithSession): void {
  this[kSession]?.timedOut();
}
