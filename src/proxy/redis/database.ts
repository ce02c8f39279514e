import type { Link } from '../../pool/link.js';
import type { Pool, Waiter } from '../../pool/pool.js';
import { WaiterQueue, type QueueEntry } from '../../pool/waiters.js';
import { PoolClosedError, PoolOverflowError, codeOf } from '../../errors.js';
import { LinkMux, SWALLOW, type MuxMetrics, type MuxOwner, type MuxSettings } from './link-mux.js';
import { encodeCommand } from './resp.js';

/** RESP protocol version of a client or a link. */
export type Protocol = 2 | 3;

/** A client waiting for room on a shared link. */
export interface PlacementWaiter extends QueueEntry<PlacementWaiter> {
  /** A link has room: the client sends what it holds. */
  placed(mux: LinkMux): void;
  /** No link came: `err` says why (pool closed, upstream down, …). */
  placementFailed(err: Error): void;
}

/**
 * A shared link with nothing outstanding goes back to the pool after this long, so that
 * the pool's idle timeout, lifetime and endpoint eviction apply to it (the next command
 * takes it back at once).
 */
const SHARED_LINGER_MS = 1000;

const HELLO_3 = encodeCommand(['HELLO', '3']);
const HELLO_2 = encodeCommand(['HELLO', '2']);

/** The shared links of one protocol, the clients queued for them, and the pool request. */
class Lane {
  readonly shared: LinkMux[] = [];
  readonly waiting = new WaiterQueue<PlacementWaiter>();
  request: Waiter | undefined;

  constructor(readonly protocol: Protocol) {}
}

/**
 * One Redis database (SELECT n) of a route: its pool, the links of that pool shared by the
 * database's clients, and the clients waiting for room on one. Pool links speak RESP2;
 * RESP3 clients share links switched with HELLO 3 (switched back before they return).
 * A client is placed on the shared link of its protocol with the fewest replies
 * outstanding; past maxPending on every such link the pool gives another (idle, or dialed
 * below maxSize); past that, clients queue here, bounded by the pool's maxWaiters (each
 * timed by acquireTimeout by the client).
 */
export class Database implements MuxOwner {
  readonly pinned = new Set<LinkMux>();
  /** Sessions whose current database this is. */
  clients = 0;
  /** When the database last had a client or a link in use (for forgetting it). */
  lastUsed = Date.now();
  /** A link to this database was made once: SELECT of it is answered at once. */
  verified = false;
  private readonly lanes = [new Lane(2), new Lane(3)] as const;
  private readonly verifiers = new Set<{
    callback: (err: Error | null) => void;
    waiter: Waiter | undefined;
  }>();
  private sweep: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    readonly index: number,
    readonly pool: Pool,
    private readonly settings: MuxSettings,
    private readonly metrics: MuxMetrics,
  ) {}

  /** Starts the pool (warming minIdle) and the sweep of quiet shared links. */
  start(): void {
    this.pool.start();
    this.sweep = setInterval(() => this.sweepQuiet(), SHARED_LINGER_MS);
    this.sweep.unref();
  }

  /** Every shared link, of both protocols. */
  get shared(): LinkMux[] {
    return [...this.lanes[0].shared, ...this.lanes[1].shared];
  }

  private lane(protocol: Protocol): Lane {
    return this.lanes[protocol - 2] as Lane;
  }

  /**
   * Of the shared links with room, the one with the fewest replies in flight (commands
   * written and not answered); else one more from the pool if it has an idle link; else
   * undefined (the caller queues with `queue`). Commands waiting in a link's batch do not
   * count: clients that come while a batch gathers join it (the first link of the
   * fewest), so one write carries them, rather than each going to another link in a write
   * of its own.
   */
  place(protocol: Protocol): LinkMux | undefined {
    const lane = this.lane(protocol);
    let best: LinkMux | undefined;
    for (const mux of lane.shared) {
      if (!mux.placeable || mux.pending >= this.settings.maxPending) continue;
      if (best === undefined || mux.inFlight < best.inFlight) best = mux;
    }
    if (best !== undefined) return best;
    const link = this.pool.tryAcquire();
    return link === undefined ? undefined : this.addShared(link, lane);
  }

  /** Queues a client for room on a shared link; returns an error when the queue is full. */
  queue(client: PlacementWaiter, protocol: Protocol): Error | undefined {
    const max = this.pool.options.maxWaiters;
    if (this.lanes[0].waiting.size + this.lanes[1].waiting.size >= max) {
      return new PoolOverflowError(this.pool.name, max);
    }
    const lane = this.lane(protocol);
    lane.waiting.push(client);
    this.requestLink(lane);
    return undefined;
  }

  /** Takes a client out of the queue (it left, or timed out). */
  unqueue(client: PlacementWaiter): void {
    for (const lane of this.lanes) lane.waiting.remove(client);
  }

  get queued(): number {
    return this.lanes[0].waiting.size + this.lanes[1].waiting.size;
  }

  /** A link of the client's own (a pin): now, or later through `callback`. */
  acquirePinned(callback: (err: Error | null, link?: Link) => void): Link | Waiter {
    return this.pool.tryAcquire() ?? this.pool.wait(callback);
  }

  /** Wraps a link taken for a pin, switched to the client's protocol. */
  pin(link: Link, protocol: Protocol): LinkMux {
    this.verified = true;
    const mux = new LinkMux(link, 'pinned', this.settings, this, this.metrics, protocol);
    if (protocol === 3) mux.append(undefined, HELLO_3, 0, HELLO_3.length, undefined, SWALLOW);
    this.pinned.add(mux);
    return mux;
  }

  /**
   * Ends a pin: the link goes back to the pool (`reusable`; switched back to RESP2 first
   * when it speaks RESP3) or is closed.
   */
  unpin(mux: LinkMux, reusable: boolean): void {
    if (reusable && mux.protocol === 3 && mux.state === 'open') {
      this.switchBack(mux);
      return;
    }
    mux.detach();
    this.pool.release(mux.link, reusable);
  }

  /** HELLO 2, then back to the pool (closed if that fails). */
  private switchBack(mux: LinkMux): void {
    mux.restore(HELLO_2, 1, (ok) => {
      mux.protocol = 2;
      mux.detach();
      this.pool.release(mux.link, ok);
    });
  }

  /**
   * Proves the database exists: its first link (whose login SELECTs it) becomes a shared
   * link, and `callback(null)` runs; or Redis refuses the login, or no link comes:
   * `callback(err)`. Returns a function that cancels.
   */
  verify(protocol: Protocol, callback: (err: Error | null) => void): () => void {
    const entry = { callback, waiter: undefined as Waiter | undefined };
    this.verifiers.add(entry);
    entry.waiter = this.pool.wait((err, link) =>
      queueMicrotask(() => {
        if (!this.verifiers.delete(entry)) {
          if (link !== undefined) this.pool.release(link, true);
          return;
        }
        if (link !== undefined) this.roomOn(this.addShared(link, this.lane(protocol)));
        callback(link === undefined ? (err ?? new Error('no link')) : null);
      }),
    );
    return () => {
      if (this.verifiers.delete(entry)) entry.waiter?.cancel();
    };
  }

  /**
   * Redis refused a new link's login: whoever waits for this database's first link, or
   * for room on a shared one, hears why now rather than at acquireTimeout.
   */
  loginRefused(err: Error): void {
    for (const entry of [...this.verifiers]) {
      this.verifiers.delete(entry);
      entry.waiter?.cancel();
      entry.callback(err);
    }
    for (const lane of this.lanes) this.failWaiting(lane, err);
  }

  // ── MuxOwner ─────────────────────────────────────────────────────────────

  muxClosed(mux: LinkMux): void {
    this.lastUsed = Date.now();
    if (mux.role === 'pinned') {
      this.pinned.delete(mux);
      return;
    }
    for (const lane of this.lanes) {
      const i = lane.shared.indexOf(mux);
      if (i >= 0) lane.shared.splice(i, 1);
    }
  }

  roomOn(mux: LinkMux): void {
    const waiting = this.lane(mux.protocol).waiting;
    while (waiting.size > 0 && mux.placeable && mux.pending < this.settings.maxPending) {
      (waiting.shift() as PlacementWaiter).placed(mux);
    }
  }

  // ── lifecycle ────────────────────────────────────────────────────────────

  /** No client, no link in use, nothing queued: the database can be forgotten. */
  get unused(): boolean {
    return (
      this.clients === 0 &&
      this.lanes.every((lane) => lane.shared.length === 0 && lane.waiting.size === 0) &&
      this.pinned.size === 0 &&
      this.verifiers.size === 0 &&
      this.pool.stats().active === 0
    );
  }

  /** Shared links go back to the pool; waiting clients fail; the pool closes when idle. */
  close(): Promise<void> {
    this.stopSweep();
    this.closed = true;
    for (const lane of this.lanes) {
      for (const mux of [...lane.shared]) this.releaseShared(mux);
      lane.request?.cancel();
      lane.request = undefined;
      this.failWaiting(lane, new PoolClosedError(this.pool.name));
    }
    return this.pool.close();
  }

  /** Every link closes now. */
  destroy(): Promise<void> {
    this.stopSweep();
    this.closed = true;
    const closed = this.pool.destroy();
    for (const mux of [...this.shared, ...this.pinned]) {
      mux.lose(new Error('sidepool is shutting down'), 'pool_closed');
    }
    return closed;
  }

  private addShared(link: Link, lane: Lane): LinkMux {
    this.verified = true;
    const mux = new LinkMux(link, 'shared', this.settings, this, this.metrics, lane.protocol);
    // Pool links speak RESP2: a RESP3 lane's link switches first, in the same write.
    if (lane.protocol === 3) mux.append(undefined, HELLO_3, 0, HELLO_3.length, undefined, SWALLOW);
    lane.shared.push(mux);
    return mux;
  }

  /** Asks the pool for one more shared link for a lane, once at a time. */
  private requestLink(lane: Lane): void {
    if (lane.request !== undefined || this.closed) return;
    // The pool may answer before wait() returns: act once the caller is done.
    lane.request = this.pool.wait((err, link) =>
      queueMicrotask(() => this.linkCame(lane, err, link)),
    );
  }

  private linkCame(lane: Lane, err: Error | null, link: Link | undefined): void {
    lane.request = undefined;
    if (this.closed) {
      if (link !== undefined) this.pool.release(link, true);
      return;
    }
    if (link !== undefined) {
      const mux = this.addShared(link, lane);
      this.roomOn(mux);
    } else if (err !== null && codeOf(err) !== 'SIDEPOOL_ACQUIRE_TIMEOUT') {
      this.failWaiting(lane, err);
      return;
    }
    // The queued clients time out on their own clocks; keep asking while they wait.
    if (lane.waiting.size > 0) this.requestLink(lane);
  }

  private failWaiting(lane: Lane, err: Error): void {
    for (let client = lane.waiting.shift(); client; client = lane.waiting.shift()) {
      client.placementFailed(err);
    }
  }

  /** A quiet shared link goes back to the pool (a RESP3 one after HELLO 2). */
  private releaseShared(mux: LinkMux): void {
    this.unpin(mux, true);
  }

  /** Shared links quiet for a while (or past their lifetime) go back to the pool. */
  private sweepQuiet(): void {
    const now = performance.now();
    for (const mux of this.shared) {
      if (
        mux.state === 'open' &&
        mux.quiet &&
        mux.blocked.length === 0 &&
        (mux.link.expired || now - mux.idleSince >= SHARED_LINGER_MS)
      ) {
        this.releaseShared(mux);
      }
    }
    if (this.shared.length > 0 || this.pinned.size > 0 || this.clients > 0) {
      this.lastUsed = Date.now();
    }
  }

  private stopSweep(): void {
    if (this.sweep !== undefined) clearInterval(this.sweep);
    this.sweep = undefined;
  }
}
