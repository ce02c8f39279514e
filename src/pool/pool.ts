import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import {
  AcquireAbortedError,
  AcquireTimeoutError,
  DialError,
  PoolClosedError,
  PoolOverflowError,
  UpstreamDownError,
  codeOf,
  describe,
} from '../errors.js';
import { Backoff } from './backoff.js';
import { UpstreamIdleLimit } from './idle-limit.js';
import { Link, type CloseReason, type LinkOwner, type LinkState } from './link.js';
import { WaiterQueue, type QueueEntry } from './waiters.js';

/** A made connection and the endpoint it went to. */
export interface Dialed {
  socket: Duplex;
  endpoint: string;
}

/** What the pool needs from the upstream layer: a way to make one connection. */
export interface Connector {
  dial(): Promise<Dialed>;
  /** True when no dial can be expected to succeed now: waiters then fail fast. */
  isDown?(): boolean;
  /** A link to this endpoint broke in use (a reset): for outlier detection. */
  linkBroke?(endpoint: string): void;
  /**
   * Why this endpoint takes no new links now (unhealthy or ejected; removed from
   * discovery), or undefined while it does. A link to it is closed when released rather
   * than reused, so health and balance hold per request and not only per dial.
   */
  whyUnavailable?(endpoint: string): 'unhealthy' | 'endpoint_removed' | undefined;
}

export type AcquireResult = 'idle' | 'dialed' | 'timeout' | 'overflow' | 'aborted' | 'failed';
export type DialResult = 'success' | 'error' | 'timeout' | 'tls_error';
export type EvictionReason = Extract<
  CloseReason,
  'idle' | 'lifetime' | 'remote_closed' | 'error' | 'unhealthy' | 'endpoint_removed'
>;

const EVICTIONS: ReadonlySet<CloseReason> = new Set([
  'idle',
  'lifetime',
  'remote_closed',
  'error',
  'unhealthy',
  'endpoint_removed',
]);

/**
 * Told of what happens in a pool, for metrics. Called on the hot path: implementations
 * must be cheap and must not throw.
 */
export interface PoolObserver {
  acquired(result: AcquireResult, waitedSeconds: number): void;
  dialed(result: DialResult, endpoint: string, seconds: number): void;
  evicted(reason: EvictionReason): void;
}

/** An idle link the upstream closes this soon after its dial, unused, was a failed dial. */
const YOUNG_LINK_MS = 1000;

/**
 * After the upstream closes an idle link, warm-up waits this long before it dials again
 * (a downstream that needs a link does not wait). The upstream may be shutting down: a
 * server that still accepts while it stops (PostgreSQL forks a child for each connection
 * and waits up to authentication_timeout for its startup packet) is held up by every warm
 * link dialed into it, and by nothing an app sends at once.
 */
const WARM_UP_PAUSE_MS = 2000;

const NO_OBSERVER: PoolObserver = { acquired() {}, dialed() {}, evicted() {} };

export interface PoolSettings {
  minIdle: number;
  maxSize: number;
  maxWaiters: number;
  acquireTimeout: number;
  idleTimeout: number;
  maxLifetime: number;
}

export interface PoolOptions extends PoolSettings {
  /** The destination in readable form, for logs and metrics. */
  name: string;
  connector: Connector;
  logger: Logger;
  observer?: PoolObserver;
  /** Keep bytes that arrive on idle links (tcp), or treat them as a broken link (http). */
  keepIdleBytes?: boolean;
  /**
   * Take the most recently idle link (LIFO) rather than the oldest (FIFO). LIFO suits
   * reusable links (http): a busy core stays warm and the excess idles out. FIFO suits
   * one-shot links (tcp): every warm link is used in turn, spread over the endpoints
   * they were dialed to, and none sits idle until a NAT forgets it.
   */
  newestIdleFirst?: boolean;
  backoff?: Backoff;
}

export interface PoolStats {
  idle: number;
  active: number;
  connecting: number;
  waiters: number;
  maxSize: number;
  minIdle: number;
}

type WaiterCallback = (err: Error | null, link?: Link) => void;

/**
 * A waiter's life: queued, then handed its link or error (which the pool delivers after
 * the loop that decided it), then done; or cancelled, from either of the first two.
 */
type WaiterState = 'queued' | 'handed' | 'done' | 'cancelled';

/** A downstream waiting for a link. `cancel()` takes it out of the queue. */
export class Waiter implements QueueEntry<Waiter> {
  queuePrev: Waiter | undefined;
  queueNext: Waiter | undefined;
  queued = false;
  /** When the wait times out (performance.now() ms), and after how long; 0: never. */
  deadline = 0;
  timeoutMs = 0;
  state: WaiterState = 'queued';
  /** What the waiter was handed, until it is delivered. */
  link: Link | undefined;
  error: Error | undefined;
  result: AcquireResult = 'failed';
  readonly enqueuedAt = performance.now();

  constructor(
    private readonly pool: Pool,
    readonly callback: WaiterCallback,
  ) {}

  cancel(): void {
    this.pool.cancel(this);
  }
}

type PoolState = 'open' | 'closing' | 'closed';

/**
 * The links of one destination: idle (taken oldest-first, or newest-first for reusable
 * links), active and connecting, plus a FIFO of waiters. Every change goes through
 * `pulse()`, which serves waiters, dials up to maxSize and tops up to minIdle.
 *
 * The pool knows nothing of modes: a caller takes a link, uses `link.socket`, and hands it
 * back with `release(link, reusable)`.
 */
export class Pool extends EventEmitter implements LinkOwner {
  readonly name: string;
  private settings: PoolSettings;
  private readonly connector: Connector;
  private readonly log: Logger;
  private readonly observer: PoolObserver;
  private readonly keepIdleBytes: boolean;
  private readonly newestIdleFirst: boolean;
  private readonly backoff: Backoff;
  private readonly idleLimit = new UpstreamIdleLimit();

  /**
   * Running totals since the pool was made, for `/pools`. `callbackErrors`: waiter
   * callbacks that threw (a bug in the code that borrowed the link; the link was closed).
   */
  readonly totals = {
    dials: 0,
    dialFailures: 0,
    acquired: 0,
    refused: 0,
    evictions: 0,
    callbackErrors: 0,
  };
  private readonly idle: Link[] = [];
  private readonly active = new Set<Link>();
  private readonly connecting = new Set<Link>();
  private readonly waiters = new WaiterQueue<Waiter>();
  private state: PoolState = 'open';
  private nextLinkId = 1;
  private retryAt = 0;
  /** Links with this id or above were dialed after the last failed dial. */
  private firstLinkSinceFailure = 0;
  /** Warm-up (dials for minIdle, not for waiters) waits until then. */
  private warmUpAt = 0;
  private wakeTimer: NodeJS.Timeout | undefined;
  private wakeTimerAt = 0;
  /**
   * One timer for every queued waiter's acquireTimeout, set for the earliest deadline, not
   * one per waiter: at a full pool nearly every acquire waits, and most are served long
   * before their deadline. It holds the process open only while someone waits.
   */
  private waitTimer: NodeJS.Timeout | undefined;
  private waitTimerAt = 0;
  private pulseQueued = false;
  /** A caller queued since the last dial started: during a backoff it gets a dial now. */
  private demand = false;
  /** Waiters handed a link or an error, to be told once the current loop is done. */
  private handed: Waiter[] = [];
  private deliveryQueued = false;
  private warm = false;
  private closed: Promise<void> | undefined;
  private resolveClosed: (() => void) | undefined;

  constructor(options: PoolOptions) {
    super();
    this.name = options.name;
    this.settings = pickSettings(options);
    this.connector = options.connector;
    this.log = options.logger;
    this.observer = options.observer ?? NO_OBSERVER;
    this.keepIdleBytes = options.keepIdleBytes ?? true;
    this.newestIdleFirst = options.newestIdleFirst ?? false;
    this.backoff = options.backoff ?? new Backoff();
  }

  /** Starts warming: dials up to minIdle links. */
  start(): void {
    this.pulse();
  }

  get options(): Readonly<PoolSettings> {
    return this.settings;
  }

  /** Applies new sizes and timeouts; existing links keep running and converge. */
  configure(settings: PoolSettings): void {
    this.settings = pickSettings(settings);
    // Shrinking: idle links above the new limits go now; active ones go on release.
    while (this.idle.length > 0 && this.total > this.settings.maxSize) {
      this.idle[0]?.close('idle');
    }
    this.pulse();
  }

  stats(): PoolStats {
    return {
      idle: this.idle.length,
      active: this.active.size,
      connecting: this.connecting.size,
      waiters: this.waiters.size,
      maxSize: this.settings.maxSize,
      minIdle: this.settings.minIdle,
    };
  }

  /** How many idle links have been idle longer than `ms`. */
  idleLongerThan(ms: number): number {
    const before = Date.now() - ms;
    let n = 0;
    for (const link of this.idle) if (link.idleSince < before) n++;
    return n;
  }

  get isWarm(): boolean {
    return this.warm;
  }

  /**
   * The idle age (ms) at which the upstream was seen to close links, once learned: warm
   * links are then recycled well before it (see UpstreamIdleLimit).
   */
  get upstreamIdleLimitMs(): number | undefined {
    return this.idleLimit.limitMs;
  }

  /** A fresh link's idle timer: its dial counts against a learned limit. */
  private idleTimeoutFor(link: Link): number {
    if (this.idleLimit.recycleMs === undefined) return this.idleTimeoutMs;
    return Math.max(1, this.idleTimeoutMs - (Date.now() - link.createdAt));
  }

  /** How long a link may sit idle: idleTimeout, or less when the upstream's limit is known. */
  private get idleTimeoutMs(): number {
    const configured = this.settings.idleTimeout;
    const recycle = this.idleLimit.recycleMs;
    if (recycle === undefined) return configured;
    return configured > 0 ? Math.min(configured, recycle) : recycle;
  }

  /**
   * Takes an idle link now, or returns undefined. Never jumps the queue: with waiters
   * queued, the idle link is theirs. `newest` takes the most recently idle link whatever
   * the pool's order: after a link turned out dead, the one least likely to be dead too.
   */
  tryAcquire(options?: { newest?: boolean }): Link | undefined {
    if (this.state !== 'open' || this.waiters.size > 0) return undefined;
    const link = this.takeIdle(options?.newest === true);
    if (link === undefined) return undefined;
    this.leased(link);
    link.lease();
    this.active.add(link);
    this.totals.acquired++;
    this.observer.acquired('idle', 0);
    this.schedulePulse();
    return link;
  }

  /**
   * Queues for a link. The callback runs later, exactly once, with the link or with an
   * AcquireTimeoutError, PoolOverflowError, PoolClosedError or UpstreamDownError (no link
   * alive and the dial made for it failed); not at all after `cancel()`.
   */
  wait(callback: WaiterCallback): Waiter {
    const waiter = new Waiter(this, callback);
    if (this.state !== 'open') {
      this.handOut(waiter, new PoolClosedError(this.name), undefined, 'failed');
      return waiter;
    }
    if (this.waiters.size >= this.settings.maxWaiters) {
      this.handOut(
        waiter,
        new PoolOverflowError(this.name, this.settings.maxWaiters),
        undefined,
        'overflow',
      );
      return waiter;
    }
    this.waiters.push(waiter);
    this.demand = true;
    if (this.settings.acquireTimeout > 0) {
      waiter.timeoutMs = this.settings.acquireTimeout;
      waiter.deadline = waiter.enqueuedAt + waiter.timeoutMs;
      this.armWaitTimer(waiter.deadline);
    }
    this.pulse();
    return waiter;
  }

  /** Promise form of tryAcquire-then-wait, with an optional abort signal. */
  acquire(signal?: AbortSignal): Promise<Link> {
    const link = this.tryAcquire();
    if (link !== undefined) return Promise.resolve(link);
    return new Promise((resolve, reject) => {
      const waiter = this.wait((err, got) => {
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(got as Link);
      });
      const onAbort = (): void => {
        waiter.cancel();
        reject(new AcquireAbortedError(this.name));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Takes a waiter out of the queue: the downstream left. A link it was handed but not yet
   * told of goes back to the pool unused.
   */
  cancel(waiter: Waiter): void {
    if (waiter.state !== 'queued' && waiter.state !== 'handed') return;
    const link = waiter.link;
    waiter.state = 'cancelled';
    waiter.link = undefined;
    this.waiters.remove(waiter);
    this.queueMaybeEmpty();
    this.observer.acquired('aborted', (performance.now() - waiter.enqueuedAt) / 1000);
    if (link !== undefined) this.release(link, true);
  }

  /**
   * Hands a link back. A reusable link that is still healthy and not past its lifetime
   * goes back to idle; any other is closed and, below minIdle, replaced.
   */
  release(link: Link, reusable: boolean): void {
    if (link.state !== 'active') return;
    if (!link.hasLiveSocket) {
      link.socketClosed();
      return;
    }
    if (!reusable || link.expired || this.state !== 'open' || this.total > this.settings.maxSize) {
      link.close(link.expired && reusable ? 'lifetime' : 'released');
      return;
    }
    const unavailable = this.connector.whyUnavailable?.(link.endpoint);
    if (unavailable !== undefined) {
      this.log.info(
        { link: link.id, endpoint: link.endpoint, reason: unavailable },
        'link to an unavailable endpoint closed on release',
      );
      link.close(unavailable);
      return;
    }
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      this.queueMaybeEmpty();
      // Waiters queue only while no idle link is left: the released one is the next one's.
      this.leased(link);
      link.handOn();
      this.handOut(waiter, undefined, link, 'idle');
      return;
    }
    this.active.delete(link);
    link.release(this.idleTimeoutMs);
    this.idle.push(link);
    this.pulse();
  }

  /**
   * Graceful close: no new links, waiters fail with PoolClosedError, idle links close,
   * and the promise resolves when the last active link is released. Idempotent.
   */
  close(): Promise<void> {
    if (this.closed === undefined) {
      this.state = 'closing';
      this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
      this.clearWake();
      this.failWaiters(new PoolClosedError(this.name));
      for (const link of [...this.idle, ...this.connecting]) link.close('pool_closed');
      this.checkClosed();
    }
    return this.closed;
  }

  /** Forceful close: every link, active ones too, is closed now. Idempotent. */
  destroy(): Promise<void> {
    const closed = this.close();
    for (const link of [...this.active]) link.close('pool_closed');
    return closed;
  }

  /** Closes the idle links to one endpoint (it went unhealthy, was ejected or removed). */
  evictIdle(endpoint: string, reason: 'unhealthy' | 'endpoint_removed'): void {
    for (const link of this.idle.filter((l) => l.endpoint === endpoint)) link.close(reason);
  }

  /** A link broke in use: tell the upstream layer, for outlier detection. */
  linkBroke(link: Link): void {
    this.connector.linkBroke?.(link.endpoint);
  }

  /** Something outside changed (an endpoint came back): reconcile now. */
  poke(): void {
    this.schedulePulse();
  }

  /**
   * The next idle link with a live socket and short of the upstream's idle limit; dead ones
   * met on the way are closed, and ones whose recycling a busy loop delayed are recycled.
   */
  private takeIdle(newest = this.newestIdleFirst): Link | undefined {
    const recycleMs = this.idleLimit.recycleMs;
    const now = recycleMs === undefined ? 0 : Date.now();
    for (;;) {
      const link = newest ? this.idle.pop() : this.idle.shift();
      if (link === undefined) return undefined;
      if (!link.hasLiveSocket) link.socketClosed();
      else if (recycleMs !== undefined && now - link.upstreamIdleSince >= recycleMs)
        link.close('idle');
      else return link;
    }
  }

  // ── LinkOwner ────────────────────────────────────────────────────────────

  linkIdleExpired(link: Link): void {
    // Above minIdle the link simply goes. At or below it, it is replaced by a fresh one,
    // so that no upstream or NAT idle timer kills a link before we hand it out.
    link.close('idle');
  }

  linkLifetimeExpired(link: Link): void {
    link.close('lifetime');
  }

  linkClosed(link: Link, from: LinkState, reason: CloseReason, error: Error | undefined): void {
    if (from === 'idle') removeFrom(this.idle, link);
    else if (from === 'active') this.active.delete(link);
    else this.connecting.delete(link);
    // The last link that could serve the queue is gone: the queue gets a dial of its own
    // (which either serves it or, failing, fails it fast).
    if (from !== 'connecting' && this.waiters.size > 0 && this.idle.length + this.active.size === 0)
      this.demand = true;
    if (EVICTIONS.has(reason)) {
      this.totals.evictions++;
      this.observer.evicted(reason as EvictionReason);
      if (from === 'idle' && (reason === 'remote_closed' || reason === 'error')) {
        // An upstream that accepts and at once closes (full, restarting, refusing us) would
        // have us redial in a hot loop: a link lost unused soon after its dial counts as a
        // failed dial and backs off.
        const now = Date.now();
        const young = link.uses === 0 && now - link.createdAt < YOUNG_LINK_MS;
        const retryInMs = young ? this.failDial() : undefined;
        this.warmUpAt = Math.max(this.warmUpAt, now + WARM_UP_PAUSE_MS);
        if (this.idleLimit.observe(now - link.upstreamIdleSince, now)) this.learnedIdleLimit();
        this.log.info(
          {
            link: link.id,
            endpoint: link.endpoint,
            reason,
            err: error && describe(error),
            idleMs: now - link.idleSince,
            retryInMs,
            warmUpInMs: WARM_UP_PAUSE_MS,
          },
          young ? 'link lost right after its dial' : 'idle link lost',
        );
      }
    }
    if (this.state === 'open') this.schedulePulse();
    else this.checkClosed();
  }

  /** The upstream's idle limit is known (or lower): recycle idle links before it from now on. */
  private learnedIdleLimit(): void {
    const recycleMs = this.idleLimit.recycleMs as number;
    this.log.warn(
      { upstreamIdleLimitMs: this.idleLimit.limitMs, recycleAfterMs: recycleMs },
      'the upstream closes idle links at about the same age: warm links are recycled before it',
    );
    const now = Date.now();
    for (const link of [...this.idle]) {
      const idleMs = now - link.upstreamIdleSince;
      if (idleMs >= recycleMs) link.close('idle');
      else link.rearmIdleTimer(recycleMs - idleMs);
    }
  }

  // ── reconcile ───────────────────────────────────────────────────────────

  private get total(): number {
    return this.idle.length + this.active.size + this.connecting.size;
  }

  /**
   * Fail fast only when nothing can serve a waiter: no link is alive (a busy one will be
   * released, and in modes that reuse links it serves the queue) and the connector says no
   * dial can succeed now.
   */
  private upstreamDown(): boolean {
    return this.idle.length + this.active.size === 0 && this.connector.isDown?.() === true;
  }

  /**
   * A link is taken. One dialed since the last failed dial proves dials work again and
   * ends the backoff; an older one proves nothing about the upstream now.
   */
  private leased(link: Link): void {
    if (this.backoff.failures > 0 && link.id >= this.firstLinkSinceFailure) this.backoff.succeed();
  }

  /**
   * The one reconcile step: serve waiters from idle links, dial for the waiters that no
   * dial in flight will serve, top up to minIdle, never above maxSize; after a failure,
   * one dial at a time until one succeeds.
   */
  private pulse(): void {
    if (this.state !== 'open') return;
    while (this.waiters.size > 0) {
      const link = this.takeIdle();
      if (link === undefined) break;
      const waiter = this.waiters.shift() as Waiter;
      this.leased(link);
      link.lease();
      this.active.add(link);
      this.handOut(waiter, undefined, link, link.uses === 1 ? 'dialed' : 'idle');
    }
    this.queueMaybeEmpty();

    // Dials in flight serve waiters first; the rest of them count toward minIdle.
    const now = Date.now();
    const forWaiters = Math.max(0, this.waiters.size - this.connecting.size);
    let forWarmth = Math.max(
      0,
      this.settings.minIdle -
        this.idle.length -
        Math.max(0, this.connecting.size - this.waiters.size),
    );
    if (forWarmth > 0 && now < this.warmUpAt) {
      this.wakeAt(this.warmUpAt);
      forWarmth = 0;
    }
    let dials = Math.min(forWaiters + forWarmth, this.settings.maxSize - this.total);
    if (dials <= 0) return;
    if (this.backoff.failures > 0) {
      // One dial at a time until one succeeds. Warm-up waits out the backoff; a caller
      // that came since the last dial does not: its dial may be the first success, which
      // ends the outage for everyone.
      if (this.connecting.size > 0) return;
      if (now < this.retryAt && !(this.demand && this.waiters.size > 0)) {
        this.wakeAt(this.retryAt);
        return;
      }
      dials = 1;
    }
    this.demand = false;
    for (let i = 0; i < dials; i++) this.dial();
  }

  private schedulePulse(): void {
    if (this.pulseQueued) return;
    this.pulseQueued = true;
    setImmediate(this.queuedPulse);
  }

  private readonly queuedPulse = (): void => {
    this.pulseQueued = false;
    this.pulse();
  };

  private dial(): void {
    const link = new Link(this.nextLinkId++, this, this.keepIdleBytes);
    this.connecting.add(link);
    const started = performance.now();
    this.connector
      .dial()
      .then(
        ({ socket, endpoint }) => {
          this.totals.dials++;
          this.observer.dialed('success', endpoint, (performance.now() - started) / 1000);
          if (link.isClosed) {
            socket.destroy();
            return;
          }
          // A connect alone does not end a backoff: an upstream that accepts and closes
          // at once must still be retried slowly. A link that serves (lease) does.
          this.connecting.delete(link);
          link.connected(
            socket,
            endpoint,
            this.idleTimeoutFor(link),
            lifetimeWithJitter(this.settings.maxLifetime),
          );
          this.idle.push(link);
          this.pulse();
          this.checkWarm();
        },
        (err: unknown) => {
          const error = err instanceof Error ? err : new Error(String(err));
          const code = codeOf(error);
          const result: DialResult =
            code === 'SIDEPOOL_CONNECT_TIMEOUT'
              ? 'timeout'
              : code === 'SIDEPOOL_TLS_HANDSHAKE_FAILED'
                ? 'tls_error'
                : 'error';
          const endpoint = error instanceof DialError ? error.endpoint : this.name;
          this.totals.dialFailures++;
          this.observer.dialed(result, endpoint, (performance.now() - started) / 1000);
          if (link.isClosed) return;
          const delay = this.failDial();
          this.log.warn(
            {
              code,
              cause: error.cause === undefined ? undefined : codeOf(error.cause),
              err: describe(error),
              failures: this.backoff.failures,
              retryInMs: delay,
            },
            'dial failed',
          );
          link.close('dial_failed', error);
          if (this.waiters.size > 0 && this.upstreamDown()) {
            this.log.warn(
              { waiters: this.waiters.size },
              'every endpoint is down: failing queued downstreams',
            );
            this.failWaiters(new UpstreamDownError(this.name));
          }
        },
      )
      // Only a fault of the pool itself (or a 'warm' listener) can land here: say so loudly
      // rather than leave an unhandled rejection.
      .catch((err: unknown) => {
        this.log.error({ err: describe(err) }, 'pool fault after a dial');
      });
  }

  /** Records a failed dial; returns how long until the next one may start. */
  private failDial(): number {
    // Failures of dials that were in flight together are one step of backoff, not many.
    const now = Date.now();
    this.firstLinkSinceFailure = this.nextLinkId;
    if (now < this.retryAt && this.backoff.failures > 0) return this.retryAt - now;
    const delay = this.backoff.fail();
    this.retryAt = now + delay;
    return delay;
  }

  /** Pulses again at `time` (epoch ms): one timer, for the earliest time asked. */
  private wakeAt(time: number): void {
    if (this.wakeTimer !== undefined && this.wakeTimerAt <= time) return;
    this.clearWake();
    this.wakeTimerAt = time;
    this.wakeTimer = setTimeout(this.wake, Math.max(0, time - Date.now()));
    this.wakeTimer.unref();
  }

  private readonly wake = (): void => {
    this.wakeTimer = undefined;
    this.pulse();
  };

  private clearWake(): void {
    if (this.wakeTimer !== undefined) clearTimeout(this.wakeTimer);
    this.wakeTimer = undefined;
  }

  private checkWarm(): void {
    if (!this.warm && this.idle.length + this.active.size >= this.settings.minIdle) {
      this.warm = true;
      this.log.info({ links: this.idle.length + this.active.size }, 'pool warm');
      this.emit('warm');
    }
  }

  /** The wait timer fires by `deadline` at the latest; a ref while anyone is queued. */
  private armWaitTimer(deadline: number): void {
    const timer = this.waitTimer;
    if (timer !== undefined && this.waitTimerAt <= deadline) {
      timer.ref();
      return;
    }
    if (timer !== undefined) clearTimeout(timer);
    this.waitTimerAt = deadline;
    this.waitTimer = setTimeout(this.waitTimerFired, Math.max(1, deadline - performance.now()));
  }

  /** Times out every waiter past its deadline, then waits for the earliest one left. */
  private readonly waitTimerFired = (): void => {
    this.waitTimer = undefined;
    const now = performance.now();
    let next = Infinity;
    for (let waiter = this.waiters.first; waiter !== undefined;) {
      const after = waiter.queueNext;
      if (waiter.deadline > 0) {
        if (waiter.deadline <= now) this.timeOut(waiter);
        else next = Math.min(next, waiter.deadline);
      }
      waiter = after;
    }
    if (next !== Infinity) this.armWaitTimer(next);
  };

  /** Nobody queued: the wait timer no longer holds the process open. */
  private queueMaybeEmpty(): void {
    if (this.waiters.size === 0) this.waitTimer?.unref();
  }

  private clearWaitTimer(): void {
    if (this.waitTimer !== undefined) clearTimeout(this.waitTimer);
    this.waitTimer = undefined;
  }

  private timeOut(waiter: Waiter): void {
    if (waiter.state !== 'queued') return;
    this.waiters.remove(waiter);
    this.queueMaybeEmpty();
    this.handOut(
      waiter,
      new AcquireTimeoutError(this.name, waiter.timeoutMs),
      undefined,
      'timeout',
    );
  }

  private failWaiters(err: Error): void {
    for (let waiter = this.waiters.shift(); waiter; waiter = this.waiters.shift()) {
      this.handOut(waiter, err, undefined, 'failed');
    }
    this.clearWaitTimer();
  }

  /**
   * Decides what a waiter gets; it is told after the loop that decided it, on the next
   * tick. So borrower code never runs inside the pool's own loops (pulse, a dial's
   * settlement, close), whose invariants hold whatever that code does.
   */
  private handOut(
    waiter: Waiter,
    error: Error | undefined,
    link: Link | undefined,
    result: AcquireResult,
  ): void {
    waiter.state = 'handed';
    waiter.error = error;
    waiter.link = link;
    waiter.result = result;
    this.handed.push(waiter);
    if (!this.deliveryQueued) {
      this.deliveryQueued = true;
      process.nextTick(this.deliver);
    }
  }

  private readonly deliver = (): void => {
    this.deliveryQueued = false;
    const batch = this.handed;
    this.handed = [];
    for (const waiter of batch) this.tell(waiter);
  };

  /** Tells one waiter; a callback that throws is logged and counted, its link closed. */
  private tell(waiter: Waiter): void {
    if (waiter.state !== 'handed') return;
    let { link, error, result } = waiter;
    waiter.link = undefined;
    waiter.error = undefined;
    if (link !== undefined && link.state !== 'active') {
      // Closed since it was handed out (destroy(), or its socket died): queue again.
      if (this.state === 'open') {
        waiter.state = 'queued';
        this.waiters.unshift(waiter);
        if (waiter.deadline > 0) this.armWaitTimer(waiter.deadline);
        this.schedulePulse();
        return;
      }
      link = undefined;
      error = new PoolClosedError(this.name);
      result = 'failed';
    }
    waiter.state = 'done';
    if (link !== undefined) this.totals.acquired++;
    else this.totals.refused++;
    this.observer.acquired(result, (performance.now() - waiter.enqueuedAt) / 1000);
    try {
      waiter.callback(error ?? null, link);
    } catch (err) {
      this.totals.callbackErrors++;
      this.log.error(
        { link: link?.id, err: describe(err), stack: err instanceof Error ? err.stack : undefined },
        'a waiter callback threw',
      );
      // Its holder may have written to it: the link cannot be trusted to anyone else.
      if (link?.state === 'active') link.close('released');
    }
  }

  private checkClosed(): void {
    if (this.state === 'closing' && this.total === 0) {
      this.state = 'closed';
      this.resolveClosed?.();
    }
  }
}

function pickSettings(s: PoolSettings): PoolSettings {
  return {
    minIdle: s.minIdle,
    maxSize: s.maxSize,
    maxWaiters: s.maxWaiters,
    acquireTimeout: s.acquireTimeout,
    idleTimeout: s.idleTimeout,
    maxLifetime: s.maxLifetime,
  };
}

/**
 * ±10%, so that links dialed together don't all reconnect together. Long lifetimes are
 * whole seconds: Node keeps one timer list per distinct duration, and an unref()ed list
 * outlives its cleared timers until the duration passes, so a duration per link in
 * milliseconds leaked a list per link for an hour (seen in the churn soak).
 */
export function lifetimeWithJitter(ms: number, random: () => number = Math.random): number {
  if (ms <= 0) return 0;
  const jittered = ms * (0.9 + random() * 0.2);
  return ms >= 10_000 ? Math.round(jittered / 1000) * 1000 : Math.round(jittered);
}

function removeFrom(list: Link[], link: Link): void {
  const i = list.lastIndexOf(link);
  if (i >= 0) list.splice(i, 1);
}
