import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { LinkClosedError, RedisProtocolError, describe } from '../../errors.js';
import type { HotCounter, HotHistogram } from '../../admin/hot-metrics.js';
import { CHUNK_KEPT, READ_MORE, READ_PAUSE, readWith, stopReading } from '../../net/reads.js';
import type { CloseReason, Link } from '../../pool/link.js';
import { REPLY_BAD, REPLY_MORE, ReplyFramer, isErrorType, isPushType } from './resp.js';

/** What a link multiplexer needs of a client session. */
export interface MuxClient {
  readonly socket: Socket;
  /** The client left: replies for it are dropped. */
  readonly gone: boolean;
  /**
   * Reply bytes for the client, in order; `replies` replies ended within them. Returns
   * true when the client wants `wake()` once the link's read is done (its last pending
   * reply came and it has input waiting).
   */
  deliver(bytes: Buffer, replies: number): boolean;
  /** See `deliver`: runs after the read that delivered, never inside it. */
  wake(): void;
  /** The client's unwritten replies passed the limit of a shared link: it must go. */
  overflowed(): void;
  /** A NOTIFY entry's reply was delivered: `type` is its RESP type byte. */
  notify(type: number, isReset: boolean): void;
  /**
   * The link was lost with `count` of the client's commands unanswered. `midReply`: part
   * of a reply was already delivered, so the client's stream cannot go on.
   */
  linkLost(count: number, cause: Error, midReply: boolean): void;
}

/** What a link multiplexer tells the set of links it belongs to. */
export interface MuxOwner {
  /** The link is gone (lost, closed, released): forget it. */
  muxClosed(mux: LinkMux): void;
  /** The link has room again below maxPending: clients waiting for one may come. */
  roomOn(mux: LinkMux): void;
}

export interface MuxSettings {
  /** One upstream write holds at most this many bytes (a larger command goes alone). */
  maxBatchBytes: number;
  /** Replies outstanding on a shared link before clients wait for room. */
  maxPending: number;
}

export interface MuxMetrics {
  ok: HotCounter;
  error: HotCounter;
  /** Commands per upstream write. */
  batch: HotHistogram;
}

/** Reply actions: what a reply is for. */
export const FORWARD = 0;
/** A command sidepool sent itself (RESET, AUTH, SELECT on the way back to the pool). */
export const SWALLOW = 1;
/** Forwarded, and the client is told the reply's type (AUTH as another user, RESET). */
export const NOTIFY = 2;

type MuxState = 'open' | 'restoring' | 'closed';

/**
 * A pinned link stops reading while its client has more than this of replies unwritten
 * (the client's own link, as with Redis; Redis's own output limits then apply).
 */
const CLIENT_HIGH_WATER = 1024 * 1024;
/**
 * Replies a client of a shared link may have unwritten. Past it, a client with whole
 * replies waiting is closed (a shared link never waits for one client's complete replies);
 * one in the middle of a large reply holds the link's reads until it drains, since the
 * rest of that reply is its own: bounded memory for a 512 MB value.
 */
export const CLIENT_OUTPUT_LIMIT = 32 * 1024 * 1024;
/** A shared link held this long for a client that does not drain: the client is closed. */
export const STALLED_CLIENT_MS = 2000;
/** The first batch buffer; it doubles up to maxBatchBytes as batches grow. */
const FIRST_BATCH_BYTES = 4096;
/** A link being restored (RESET, AUTH, SELECT) that does not answer in this long is closed. */
const RESTORE_TIMEOUT_MS = 5000;

/**
 * At most this many turns of a busy event loop a shared link's batch waits for more
 * commands. When sidepool's one thread is saturated by clients that each send one command
 * (a connection per request), about one command arrives per turn: written at the end of
 * its turn, every command costs an upstream write and a wake-up of Redis, the largest cost
 * per request there (perf: a fifth of sidepool's CPU). Held for the turns that follow, a
 * batch gathers several: with eight turns Redis read 10–12 times per 100 commands against
 * 54–71 (twemproxy, whose writes wait for the next epoll_wait: 11–23), and sidepool spent
 * less CPU per request. A turn of a saturated loop lasts tens of microseconds, so a batch
 * waits a few hundred at most.
 */
const MAX_BATCH_TURNS = 8;
/**
 * The loop waited for I/O at least this long (ms) since the last flush: it is not busy,
 * and a batch leaves at the end of the turn its first command came in, as a lone client
 * needs (a wait would only add latency: nothing else is coming).
 */
const NOT_BUSY_IDLE_MS = 0.02;
const loopTiming = performance.nodeTiming;
let idleAtFlush = 0;
/** Counts flushes: the turn whose commands `flushDirty` writes next. */
let turn = 0;

/** Links with a batch to write; written in one setImmediate at the end of the turn. */
const dirty: LinkMux[] = [];
let flushQueued = false;

function flushDirty(): void {
  flushQueued = false;
  // Node's own count of the time the loop spent waiting for I/O: unchanged since the last
  // flush means events were ready at every poll since.
  const idle = loopTiming.idleTime;
  const busy = idle - idleAtFlush < NOT_BUSY_IDLE_MS;
  idleAtFlush = idle;
  let held = 0;
  // A flush may mark more (a restore after a reply): loop until none are left.
  for (let i = 0; i < dirty.length; i++) {
    const mux = dirty[i] as LinkMux;
    if (busy && mux.holdsBatch(turn)) dirty[held++] = mux;
    else mux.flush();
  }
  dirty.length = held;
  turn++;
  if (held > 0) {
    flushQueued = true;
    setImmediate(flushDirty);
  }
}

/**
 * One upstream link and the commands outstanding on it: a shared link carries the
 * commands of many clients, a pinned link those of one. Commands are copied into one
 * batch per link and written once per turn of the event loop (or when the batch is full);
 * replies are framed and handed back, in order, to the client of the oldest outstanding
 * command (an ordered queue of owners and actions, like PgBouncer's and undici's).
 */
export class LinkMux {
  readonly role: 'shared' | 'pinned';
  state: MuxState = 'open';
  /**
   * Replies match commands one to one. Not after a pinned client subscribes, monitors or
   * turns replies off: then everything the link sends is the client's, until RESET.
   */
  counted = true;
  /** The client of a pinned link. */
  owner: MuxClient | undefined;
  /** When the link last had nothing outstanding (performance.now()). */
  idleSince = performance.now();
  /** Clients bound to this link (replies pending on it) that wait for room to send more. */
  readonly blocked: MuxClient[] = [];

  private readonly socket: Duplex;
  private owners: Array<MuxClient | undefined>;
  private actions: Uint8Array;
  private head = 0;
  private size = 0;
  private batch: Buffer;
  private batchLength = 0;
  private batchCommands = 0;
  /** The batch waits in `dirty` for its write. */
  private marked = false;
  /** The turns in which the batch's first and latest commands came (see `flushDirty`). */
  private batchFirstTurn = 0;
  private batchLastTurn = 0;
  private readonly framer = new ReplyFramer();
  /** A RESET went out on an uncounted link: its reply makes the link counted again. */
  private awaitingReset = false;
  /** Replies still matched to commands sent before the link went uncounted. */
  private leadIn = 0;
  /** After a restore: its replies all came as expected. */
  private restoreOk = true;
  private restoreTimer: NodeJS.Timeout | undefined;
  private onRestored: ((ok: boolean) => void) | undefined;
  private pausedFor: MuxClient | undefined;
  private stallTimer: NodeJS.Timeout | undefined;
  private readonly woken: MuxClient[] = [];
  /** The socket's error, the cause named to clients when the link closes. */
  socketError: Error | undefined;

  constructor(
    readonly link: Link,
    role: 'shared' | 'pinned',
    private readonly settings: MuxSettings,
    private readonly set: MuxOwner,
    private readonly metrics: MuxMetrics,
    /** The protocol the link speaks now (pool links: 2; RESP3 lanes and clients: 3). */
    public protocol: 2 | 3 = 2,
  ) {
    this.role = role;
    this.socket = link.socket;
    this.owners = new Array<MuxClient | undefined>(16);
    this.actions = new Uint8Array(16);
    this.batch = Buffer.allocUnsafeSlow(Math.min(FIRST_BATCH_BYTES, settings.maxBatchBytes));
    const socket = this.socket as Muxed;
    socket[kMux] = this;
    socket.on('end', onLinkEnd);
    socket.on('error', onLinkError);
    socket.on('close', onLinkClose);
    readWith(socket, onLinkBytes);
  }

  /** Replies outstanding, counting commands in the batch not written yet. */
  get pending(): number {
    return this.size;
  }

  /** Replies awaited from Redis: commands written and not yet answered. */
  get inFlight(): number {
    return this.size > this.batchCommands ? this.size - this.batchCommands : 0;
  }

  /** Whether new clients may be placed on this (shared) link. */
  get placeable(): boolean {
    return this.state === 'open' && !this.link.expired;
  }

  /** Whether the link has nothing outstanding and nothing to write. */
  get quiet(): boolean {
    return this.size === 0 && this.batchLength === 0;
  }

  /**
   * Queues a command for the next write: `buf[start, end)`, or the `pieces` it spans.
   * `action` says what its reply is for. A command never straddles two writes.
   */
  append(
    client: MuxClient | undefined,
    buf: Buffer,
    start: number,
    end: number,
    pieces: Buffer[] | undefined,
    action = FORWARD,
  ): void {
    let size = end - start;
    if (pieces !== undefined) {
      size = 0;
      for (const piece of pieces) size += piece.length;
    }
    this.reserve(size);
    if (pieces === undefined) {
      buf.copy(this.batch, this.batchLength, start, end);
    } else {
      let at = this.batchLength;
      for (const piece of pieces) at += piece.copy(this.batch, at);
    }
    this.batchLength += size;
    this.batchCommands++;
    if (this.counted || action !== FORWARD) this.push(client, action);
    this.batchLastTurn = turn;
    if (!this.marked) {
      this.marked = true;
      this.batchFirstTurn = turn;
      dirty.push(this);
      if (!flushQueued) {
        flushQueued = true;
        setImmediate(flushDirty);
      }
    }
  }

  /** Writes part of a command too large to batch, after what is batched. */
  writeLarge(bytes: Buffer): void {
    this.flush();
    this.socket.write(bytes);
  }

  /** Records that the large command written with `writeLarge` has ended. */
  endLarge(client: MuxClient): void {
    this.batchCommands++;
    if (this.counted) this.push(client, FORWARD);
    this.flush();
  }

  /** Whether the link's socket holds more unwritten bytes than it should: stop sending. */
  get backedUp(): boolean {
    return this.socket.writableLength > this.settings.maxBatchBytes * 4;
  }

  /** Runs `callback` once the socket's buffer drains (or the link goes). */
  onceDrained(callback: () => void): void {
    this.socket.once('drain', callback);
  }

  /**
   * Everything sent from now on is the pinned client's, unmatched (subscribe, monitor,
   * replies off). What is outstanding now (sidepool's own HELLO or CLIENT SETNAME, the
   * client's earlier commands) still gets its reply matched first.
   */
  uncount(): void {
    this.counted = false;
    this.leadIn = this.size;
  }

  /** Sends RESET on an uncounted link; its reply (a NOTIFY to the client) counts again. */
  sendReset(client: MuxClient | undefined, bytes: Buffer, action = NOTIFY): void {
    if (!this.counted) this.awaitingReset = true;
    this.append(client, bytes, 0, bytes.length, undefined, action);
  }

  /**
   * In a busy loop, whether the batch waits for another turn: a shared link's batch does
   * while it keeps growing (a command came this turn), for at most MAX_BATCH_TURNS turns.
   * A pinned link carries one client, whose pipeline arrives in one read anyway.
   */
  holdsBatch(now: number): boolean {
    return (
      this.role === 'shared' &&
      this.state === 'open' &&
      this.marked &&
      this.batchLastTurn === now &&
      now - this.batchFirstTurn < MAX_BATCH_TURNS - 1
    );
  }

  /** Writes the batch now: at the end of its turn, or when it is full. */
  flush(): void {
    this.marked = false;
    const length = this.batchLength;
    if (length === 0 || this.state === 'closed') return;
    this.metrics.batch.observe(this.batchCommands);
    this.batchLength = 0;
    this.batchCommands = 0;
    const socket = this.socket;
    socket.write(this.batch.subarray(0, length));
    // The kernel took it all: the buffer is free again. Else the write still holds it.
    if (socket.writableLength !== 0) this.batch = Buffer.allocUnsafeSlow(this.batch.length);
  }

  /**
   * Puts the link back in its default state after a pinned client: `commands` (RESET,
   * AUTH, SELECT) are sent and their replies checked; `done(ok)` runs after the last (or
   * when one fails, or after a timeout: ok false).
   */
  restore(commands: Buffer, replies: number, done: (ok: boolean) => void): void {
    this.state = 'restoring';
    this.owner = undefined;
    this.restoreOk = true;
    this.onRestored = done;
    if (!this.counted) this.awaitingReset = true;
    // The RESET's reply must be seen as such; the rest only must not be errors.
    for (let i = 0; i < replies; i++) this.push(undefined, SWALLOW);
    this.reserve(commands.length);
    commands.copy(this.batch, this.batchLength);
    this.batchLength += commands.length;
    this.batchCommands += replies;
    this.flush();
    this.restoreTimer = setTimeout(() => this.finishRestore(false), RESTORE_TIMEOUT_MS);
    this.restoreTimer.unref();
  }

  /** Stops reading and hands the link's socket back: the caller returns it to the pool. */
  detach(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.clearTimers();
    const socket = this.socket as Muxed;
    socket.off('end', onLinkEnd);
    socket.off('error', onLinkError);
    socket.off('close', onLinkClose);
    socket[kMux] = undefined;
    stopReading(socket);
    this.set.muxClosed(this);
  }

  /**
   * The link is lost or must go: every client with a command outstanding is told, in
   * order of its commands, and the link is closed. Idempotent.
   */
  lose(cause: Error, reason: CloseReason): void {
    if (this.state === 'closed') return;
    const restoring = this.onRestored;
    this.detach();
    this.link.close(reason, cause);
    if (restoring !== undefined) {
      this.onRestored = undefined;
      restoring(false);
    }
    const midReply = this.framer.midValue;
    const headOwner =
      this.size > 0
        ? this.actions[this.head] === SWALLOW
          ? undefined
          : this.owners[this.head]
        : this.owner;
    const counts = new Map<MuxClient, number>();
    for (let i = 0; i < this.size; i++) {
      const at = (this.head + i) & (this.owners.length - 1);
      const owner = this.owners[at];
      if (owner !== undefined && this.actions[at] !== SWALLOW) {
        counts.set(owner, (counts.get(owner) ?? 0) + 1);
      }
    }
    this.size = 0;
    const pinned = this.owner;
    if (pinned !== undefined && !counts.has(pinned)) counts.set(pinned, 0);
    for (const [client, count] of counts) {
      if (!client.gone) client.linkLost(count, cause, midReply && client === headOwner);
    }
    for (const client of this.blocked) if (!counts.has(client) && !client.gone) client.wake();
    this.blocked.length = 0;
  }

  private reserve(size: number): void {
    if (this.batchLength + size > this.batch.length) {
      if (this.batchLength > 0 && this.batchLength + size > this.settings.maxBatchBytes) {
        this.flush();
      }
      if (size > this.batch.length - this.batchLength) {
        let capacity = this.batch.length;
        while (capacity < this.batchLength + size) capacity *= 2;
        const grown = Buffer.allocUnsafeSlow(capacity);
        this.batch.copy(grown, 0, 0, this.batchLength);
        this.batch = grown;
      }
    }
  }

  private push(client: MuxClient | undefined, action: number): void {
    let capacity = this.owners.length;
    if (this.size === capacity) {
      const owners = new Array<MuxClient | undefined>(capacity * 2);
      const actions = new Uint8Array(capacity * 2);
      for (let i = 0; i < this.size; i++) {
        const at = (this.head + i) & (capacity - 1);
        owners[i] = this.owners[at];
        actions[i] = this.actions[at] as number;
      }
      this.owners = owners;
      this.actions = actions;
      this.head = 0;
      capacity *= 2;
    }
    const at = (this.head + this.size) & (capacity - 1);
    this.owners[at] = client;
    this.actions[at] = action;
    this.size++;
  }

  /** Reads replies: frames them and hands each run of one client's bytes to the client. */
  read(chunk: Buffer): number {
    const framer = this.framer;
    const len = chunk.length;
    const shared = this.role === 'shared';
    let pos = 0;
    let runOwner: MuxClient | undefined;
    let runStart = 0;
    let runReplies = 0;
    let kept = false;
    while (pos < len) {
      const end = framer.next(chunk, pos);
      if (end === REPLY_BAD) {
        this.lose(
          new RedisProtocolError(`the upstream sent a malformed reply: ${framer.error}`),
          'error',
        );
        return READ_PAUSE;
      }
      let target: MuxClient | undefined;
      let consumed = false;
      let action = FORWARD;
      if (end === REPLY_MORE) {
        // Part of a value: for whoever the value is for.
        if (this.size > 0 && (this.counted || this.leadIn > 0)) {
          const at = this.head;
          target = this.actions[at] === SWALLOW ? undefined : this.owners[at];
        } else if (shared) {
          this.lose(new RedisProtocolError('the upstream sent a reply nobody asked for'), 'error');
          return READ_PAUSE;
        } else {
          target = this.state === 'restoring' ? undefined : this.owner;
        }
      } else if (!this.counted) {
        if (this.leadIn > 0 && this.size > 0 && !isPushType(framer.type)) {
          this.leadIn--;
          consumed = true;
        } else if (this.awaitingReset && framer.isReset && this.size > 0) {
          this.awaitingReset = false;
          this.counted = true;
          consumed = true;
        } else {
          target = this.state === 'restoring' ? undefined : this.owner;
        }
      } else if (this.size === 0 || isPushType(framer.type)) {
        if (shared) {
          this.lose(new RedisProtocolError('the upstream sent a reply nobody asked for'), 'error');
          return READ_PAUSE;
        }
        target = this.state === 'restoring' ? undefined : this.owner;
      } else {
        consumed = true;
      }
      if (consumed) {
        const at = this.head;
        target = this.owners[at];
        action = this.actions[at] as number;
        this.owners[at] = undefined;
        this.head = (at + 1) & (this.owners.length - 1);
        this.size--;
        if (action === SWALLOW) {
          target = undefined;
          if (isErrorType(framer.type)) this.restoreOk = false;
        } else if (isErrorType(framer.type)) this.metrics.error.inc();
        else this.metrics.ok.inc();
      }
      if (target !== runOwner) {
        if (runOwner !== undefined && pos > runStart)
          kept = this.emit(runOwner, chunk, runStart, pos, runReplies) || kept;
        runOwner = target;
        runStart = pos;
        runReplies = 0;
      }
      if (end === REPLY_MORE) {
        pos = len;
        break;
      }
      if (consumed && target !== undefined) runReplies++;
      pos = end;
      if (action === NOTIFY && target !== undefined) {
        kept = this.emit(target, chunk, runStart, pos, runReplies) || kept;
        runOwner = undefined;
        runStart = pos;
        runReplies = 0;
        if (!target.gone) target.notify(framer.type, framer.isReset);
      }
      if (this.state === 'closed') return kept ? CHUNK_KEPT : READ_MORE;
    }
    if (runOwner !== undefined && pos > runStart) {
      kept = this.emit(runOwner, chunk, runStart, pos, runReplies, framer.midValue) || kept;
    }
    return this.afterRead(runOwner, kept);
  }

  /**
   * Hands bytes to a client; returns whether its socket still holds them (the chunk is
   * kept). `partial`: they end inside a reply.
   */
  private emit(
    client: MuxClient,
    chunk: Buffer,
    start: number,
    end: number,
    replies: number,
    partial = false,
  ): boolean {
    if (client.gone) return false;
    if (client.deliver(chunk.subarray(start, end), replies)) this.woken.push(client);
    const buffered = client.socket.writableLength;
    if (this.role === 'shared' && !partial && buffered > CLIENT_OUTPUT_LIMIT) client.overflowed();
    return buffered > 0;
  }

  private afterRead(lastOwner: MuxClient | undefined, kept: boolean): number {
    if (this.size === 0) this.idleSince = performance.now();
    if (this.state === 'restoring' && this.size === 0) this.finishRestore(this.restoreOk);
    const woken = this.woken;
    if (woken.length > 0) {
      // Copied: a client woken may place commands here and be woken again later.
      const clients = woken.splice(0, woken.length);
      for (const client of clients) if (!client.gone) client.wake();
    }
    if (this.state === 'open' && this.size < this.settings.maxPending) {
      while (this.blocked.length > 0 && this.size < this.settings.maxPending) {
        (this.blocked.shift() as MuxClient).wake();
      }
      if (this.role === 'shared') this.set.roomOn(this);
    }
    const flags = kept ? CHUNK_KEPT : READ_MORE;
    // Released to the pool (which reads it now) or lost: not ours to pause.
    if (this.state === 'closed') return flags;
    // Backpressure: a pinned link waits for its client; a shared link only in the middle of
    // one client's large reply (the rest of the reply is that client's anyway).
    const pinned = this.role === 'pinned';
    const slow = pinned ? this.owner : this.framer.midValue ? lastOwner : undefined;
    const limit = pinned ? CLIENT_HIGH_WATER : CLIENT_OUTPUT_LIMIT;
    if (slow !== undefined && !slow.gone && slow.socket.writableLength > limit) {
      this.pauseFor(slow);
      return flags | READ_PAUSE;
    }
    return flags;
  }

  private pauseFor(client: MuxClient): void {
    this.pausedFor = client;
    client.socket.once('drain', this.resume);
    client.socket.once('close', this.resume);
    if (this.role === 'shared') {
      this.stallTimer = setTimeout(this.stalled, STALLED_CLIENT_MS);
      this.stallTimer.unref();
    }
  }

  private readonly resume = (): void => {
    const client = this.pausedFor;
    if (client === undefined) return;
    this.pausedFor = undefined;
    client.socket.off('drain', this.resume);
    client.socket.off('close', this.resume);
    if (this.stallTimer !== undefined) clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
    if (this.state !== 'closed') this.socket.resume();
  };

  private readonly stalled = (): void => {
    const client = this.pausedFor;
    this.stallTimer = undefined;
    if (client === undefined) return;
    this.resume();
    if (!client.gone) client.overflowed();
  };

  private finishRestore(ok: boolean): void {
    const done = this.onRestored;
    if (done === undefined) return;
    this.onRestored = undefined;
    if (this.restoreTimer !== undefined) clearTimeout(this.restoreTimer);
    this.restoreTimer = undefined;
    done(ok && this.size === 0 && this.counted);
  }

  private clearTimers(): void {
    if (this.restoreTimer !== undefined) clearTimeout(this.restoreTimer);
    this.restoreTimer = undefined;
    const client = this.pausedFor;
    if (client !== undefined) {
      this.pausedFor = undefined;
      client.socket.off('drain', this.resume);
      client.socket.off('close', this.resume);
    }
    if (this.stallTimer !== undefined) clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
  }
}

const kMux = Symbol('sidepool.redis-mux');
type Muxed = Duplex & { [kMux]?: LinkMux | undefined };

function onLinkBytes(this: Duplex, chunk: Buffer): number {
  const mux = (this as Muxed)[kMux];
  return mux === undefined ? READ_PAUSE : mux.read(chunk);
}

function onLinkEnd(this: Muxed): void {
  this[kMux]?.lose(new LinkClosedError('Redis closed the connection'), 'remote_closed');
}

function onLinkError(this: Muxed, err: Error): void {
  const mux = this[kMux];
  if (mux !== undefined) mux.socketError ??= err;
}

function onLinkClose(this: Muxed): void {
  const mux = this[kMux];
  if (mux === undefined) return;
  const cause = mux.socketError;
  mux.lose(
    new LinkClosedError(
      cause === undefined
        ? 'the connection to Redis closed'
        : `the connection to Redis failed: ${describe(cause)}`,
    ),
    'error',
  );
}
