import type { Socket } from 'node:net';
import type { Writable } from 'node:stream';
import { SidepoolError } from '../../errors.js';
import type { Link } from '../../pool/link.js';
import type { Waiter } from '../../pool/pool.js';
import { fitForRequest, takeIdleLink } from './links.js';
import type { HttpFailure } from './observer.js';
import { ResponseParser, type ResponseHandler } from './response-parser.js';
import { acquireFailure, dialCounts, type DialCounts } from './responses.js';
import type { HttpRouteContext } from './settings.js';

/**
 *   free ──▶ waiting ──▶ bound ──▶ free      (a retry takes another link)
 *     │                    ▲
 *     └────────────────────┘
 *
 * free: no link; waiting: queued in the pool for one; bound: the link's socket is ours, its
 * response parsed into the holder; closed (from any state, for good): the holder is done,
 * and a link that still arrives goes back to the pool.
 */
type LeaseState = 'free' | 'waiting' | 'bound' | 'closed';

/** What a lease tells the exchange or tunnel that holds it. */
export interface LeaseHolder extends ResponseHandler {
  /** A link is bound: the request goes out now. `wasIdle`: it sat in the pool, and may be stale. */
  linked(link: Link, wasIdle: boolean): void;
  /** No link to be had: the pool timed out, overflowed, closed, or the upstream is down. */
  noLink(reason: HttpFailure, cause: Error | undefined): void;
  /** The link closed, or sent its FIN, before the response was complete. */
  upstreamLost(): void;
  /** The response is malformed (the lease logged it); the link must not be reused. */
  badResponse(): void;
  /** Nothing moved on the link for responseTimeout. */
  upstreamTimedOut(): void;
  /** The link's socket took what was queued for it: more of the request may go. */
  upstreamDrained(): void;
}

const kLease = Symbol('sidepool.httpLease');

interface Tagged {
  [kLease]?: LinkLease | undefined;
}

/**
 * A link borrowed from the route's pool for one exchange or tunnel: taken idle or waited
 * for, its socket listened to and timed (responseTimeout), its response fed to a parser
 * whose handler is the holder, its reads paused while the app is not taking the response,
 * and given back to the pool (or closed) exactly once. The listeners are shared functions
 * that find their lease on the socket: a request costs no closures.
 */
export class LinkLease {
  private state: LeaseState = 'free';
  private bound: Link | undefined;
  private upstream: Socket | undefined;
  private parser: ResponseParser | undefined;
  private waiter: Waiter | undefined;
  private dialsBeforeWait: DialCounts | undefined;
  private staleBefore = 0;
  /** Reading the link stopped until the app, this sink, drains. */
  private pausedFor: Writable | undefined;
  private started = false;
  private wasIdle = false;
  /** The first error the link's socket reported since it was bound. */
  private firstError: Error | undefined;

  constructor(
    private readonly ctx: HttpRouteContext,
    private readonly holder: LeaseHolder,
  ) {}

  get link(): Link | undefined {
    return this.bound;
  }

  /** The link's socket, while bound. */
  get socket(): Socket | undefined {
    return this.upstream;
  }

  /** The bound link had sat idle in the pool: the upstream may have closed it meanwhile. */
  get linkWasIdle(): boolean {
    return this.wasIdle;
  }

  /** A byte of the response has arrived since the link was bound. */
  get responseStarted(): boolean {
    return this.started;
  }

  /** The response has been read to its end (or found malformed). */
  get responseDone(): boolean {
    return this.parser?.done === true;
  }

  /** The link is not read because the app is not taking what was sent to it. */
  get pausedForApp(): boolean {
    return this.pausedFor !== undefined;
  }

  /** A reset or error on the link since it was bound. */
  get error(): Error | undefined {
    return this.firstError;
  }

  get isBound(): boolean {
    return this.state === 'bound';
  }

  /**
   * free → waiting or bound: takes an idle link fit for a request, or queues for one.
   * `staleBefore` (an idle turn, `Link.idleTurn`): links that went idle at or before it are
   * presumed dead (after one was).
   */
  acquire(staleBefore = 0): void {
    this.expect('free', 'acquire');
    this.staleBefore = staleBefore;
    const pool = this.ctx.route.pool;
    const link = takeIdleLink(pool, this.ctx.settings.upstreamKeepAliveMs, staleBefore);
    if (link !== undefined) {
      this.bind(link, true);
      return;
    }
    this.state = 'waiting';
    this.dialsBeforeWait = dialCounts(pool);
    this.waiter = pool.wait((err, waited) => this.onWaited(err, waited));
  }

  private onWaited(err: Error | null, link: Link | undefined): void {
    this.waiter = undefined;
    const pool = this.ctx.route.pool;
    if (this.state !== 'waiting') {
      // The holder gave up while the pool was handing the link over.
      if (link !== undefined) pool.release(link, true);
      return;
    }
    if (err !== null || link === undefined) {
      this.state = 'free';
      const cause = err ?? new Error('no link');
      this.holder.noLink(
        acquireFailure(cause, pool, this.dialsBeforeWait ?? dialCounts(pool)),
        err ?? undefined,
      );
      return;
    }
    // A dial for this wait, or a link given back since `staleBefore` was taken (within the
    // same millisecond, as loopback allows), went idle at a later turn: fit.
    if (!fitForRequest(link, this.ctx.settings.upstreamKeepAliveMs, this.staleBefore, Date.now())) {
      link.close('idle');
      this.state = 'free';
      this.acquire(this.staleBefore);
      return;
    }
    // Served from the queue: a fresh dial, or a link another request just gave back.
    this.bind(link, link.uses > 1);
  }

  /** free or waiting → bound. */
  private bind(link: Link, wasIdle: boolean): void {
    this.state = 'bound';
    this.bound = link;
    this.wasIdle = wasIdle;
    this.started = false;
    this.firstError = undefined;
    if (link.uses > 1) this.ctx.observer.reused();
    const socket = link.socket as Socket;
    this.upstream = socket;
    (socket as Tagged)[kLease] = this;
    this.parser = new ResponseParser(this.holder);
    socket.on('data', onUpData);
    socket.on('end', onUpEnd);
    socket.on('error', onUpError);
    socket.on('close', onUpClose);
    socket.on('drain', onUpDrain);
    socket.on('timeout', onUpTimeout);
    if (this.ctx.settings.responseTimeoutMs > 0) {
      socket.setTimeout(this.ctx.settings.responseTimeoutMs);
    }
    socket.resume();
    this.holder.linked(link, wasIdle);
  }

  /**
   * bound → free: takes the link off the lease, its listeners and timer removed, and hands
   * it over (to a splice) without returning it to the pool.
   */
  unbind(): Link | undefined {
    if (this.state !== 'bound') return undefined;
    this.state = 'free';
    const link = this.bound as Link;
    const socket = this.upstream as Socket;
    this.bound = undefined;
    this.upstream = undefined;
    (socket as Tagged)[kLease] = undefined;
    socket.off('data', onUpData);
    socket.off('end', onUpEnd);
    socket.off('error', onUpError);
    socket.off('close', onUpClose);
    socket.off('drain', onUpDrain);
    socket.off('timeout', onUpTimeout);
    if (this.ctx.settings.responseTimeoutMs > 0) socket.setTimeout(0);
    this.stopWaitingForApp();
    return link;
  }

  /** Gives the link back: to idle when it can carry another request, closed otherwise. */
  release(reusable: boolean): void {
    const link = this.unbind();
    if (link !== undefined) this.ctx.route.pool.release(link, reusable);
  }

  /** Any state → closed: the wait is cancelled and a bound link closed. Idempotent. */
  close(): void {
    if (this.state === 'closed') return;
    if (this.waiter !== undefined) {
      this.waiter.cancel();
      this.waiter = undefined;
    }
    this.release(false);
    this.state = 'closed';
  }

  /**
   * Writes response bytes to the app. When the app does not take them, the link is not read
   * until it does: nothing buffers without bound, and the link's timer then measures how
   * long the app has not been reading.
   */
  forward(chunk: Buffer, sink: Writable): void {
    if (sink.write(chunk) || this.pausedFor !== undefined || this.upstream === undefined) return;
    this.pausedFor = sink;
    (sink as Tagged)[kLease] = this;
    this.upstream.pause();
    sink.once('drain', onSinkDrain);
  }

  sinkDrained(): void {
    if (this.pausedFor === undefined) return;
    this.stopWaitingForApp();
    this.upstream?.resume();
  }

  private stopWaitingForApp(): void {
    const sink = this.pausedFor;
    if (sink === undefined) return;
    this.pausedFor = undefined;
    (sink as Tagged)[kLease] = undefined;
    sink.off('drain', onSinkDrain);
  }

  // ── the link's socket ──────────────────────────────────────────────────

  upData(chunk: Buffer): void {
    this.started = true;
    const error = (this.parser as ResponseParser).execute(chunk);
    if (error === undefined) return;
    this.ctx.route.log.warn(
      { link: this.bound?.id, endpoint: this.bound?.endpoint, problem: error.problem },
      'malformed response from the upstream',
    );
    this.holder.badResponse();
  }

  upEnd(): void {
    const parser = this.parser as ResponseParser;
    if (parser.done) return;
    // A body delimited by the close completes here (the holder's onComplete runs).
    if (parser.finish() !== undefined) this.holder.upstreamLost();
  }

  upError(err: Error): void {
    this.firstError ??= err;
  }

  upClose(): void {
    if ((this.parser as ResponseParser).done) this.release(false);
    else this.holder.upstreamLost();
  }

  upDrain(): void {
    this.holder.upstreamDrained();
  }

  upTimeout(): void {
    this.holder.upstreamTimedOut();
  }

  private expect(state: LeaseState, action: string): void {
    if (this.state !== state) {
      throw new SidepoolError(
        'SIDEPOOL_HTTP_STATE',
        `link lease: ${action} while ${this.state}, expected ${state}`,
      );
    }
  }
}

function lease(emitter: Tagged): LinkLease | undefined {
  return emitter[kLease];
}
function onUpData(this: Tagged, chunk: Buffer): void {
  lease(this)?.upData(chunk);
}
function onUpEnd(this: Tagged): void {
  lease(this)?.upEnd();
}
function onUpError(this: Tagged, err: Error): void {
  lease(this)?.upError(err);
}
function onUpClose(this: Tagged): void {
  lease(this)?.upClose();
}
function onUpDrain(this: Tagged): void {
  lease(this)?.upDrain();
}
function onUpTimeout(this: Tagged): void {
  lease(this)?.upTimeout();
}
function onSinkDrain(this: Tagged): void {
  lease(this)?.sinkDrained();
}
