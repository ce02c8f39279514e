import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { codeOf, describe } from '../errors.js';
import { CHUNK_KEPT, READ_PAUSE, readWith, stopReading } from '../net/reads.js';
import type { Link } from '../pool/link.js';
import type { Waiter } from '../pool/pool.js';
import type { Route, Session } from './route.js';
import { Splice, type SpliceOutcome, type Unanswered } from './splice.js';

type SessionState = 'waiting' | 'spliced' | 'ended';

/** What a queued downstream sent before it had a link. */
interface EarlyBytes {
  chunks: Buffer[];
  bytes: number;
  ended: boolean;
}

/** Past this, a queued downstream is paused until its link comes (TCP backpressure). */
const MAX_EARLY_BYTES = 64 * 1024;

/**
 * How many times a session moves to another link because its upstream closed before
 * answering. More than one dead link in a row happens after an upstream restart, when
 * every idle link dies at once; past this the app sees the close.
 */
const MAX_MOVES = 2;

/**
 * tcp mode: one downstream socket spliced onto one link for the rest of its life. The
 * link's bytes belong to this session, so the link is closed afterwards, never reused.
 *
 * A link can die between the pool's last look at it and the session's first bytes (the
 * upstream's FIN or RST already in the kernel, or crossing them: a restart, an idle or
 * login timer). When the upstream closes before sending anything back, the session moves
 * to another link with what it had sent (see Splice: bounded in bytes and time), so the
 * app never sees a dead link.
 */
export class TcpSession implements Session {
  private state: SessionState = 'waiting';
  private link: Link | undefined;
  private waiter: Waiter | undefined;
  private splice: Splice | undefined;
  private readonly startedAt = performance.now();
  private early: EarlyBytes | undefined;
  private moves = 0;
  private errorsHandled = false;

  constructor(
    private readonly route: Route,
    readonly id: number,
    private readonly socket: Socket,
  ) {}

  start(): void {
    this.acquire();
  }

  private acquire(): void {
    // After a dead link, the newest idle one: the least likely to have died too.
    const link = this.route.pool.tryAcquire({ newest: this.moves > 0 });
    if (link !== undefined) {
      this.attach(link, false);
      return;
    }
    // While queued we keep reading (up to a bound), so that a reset or close from the
    // downstream is seen at once and takes it out of the queue. A FIN is a half-close, not
    // a departure: the bytes and the FIN go upstream once a link comes.
    this.early ??= { chunks: [], bytes: 0, ended: false };
    (this.socket as Waiting)[kSession] = this;
    this.socket.on('end', onWaitingEnd);
    this.handleErrors();
    this.socket.on('close', onWaitingClose);
    readWith(this.socket, onWaitingBytes);
    this.waiter = this.route.pool.wait((err, link) => this.onLink(err, link));
  }

  get bytesUp(): number {
    return this.splice?.bytesUp ?? 0;
  }

  get bytesDown(): number {
    return this.splice?.bytesDown ?? 0;
  }

  /** Ends the session now, whatever its state. */
  destroy(): void {
    if (this.splice !== undefined) this.splice.destroy();
    else if (this.state === 'waiting') {
      this.waiter?.cancel();
      this.socket.destroy();
      this.end();
    }
  }

  private onLink(err: Error | null, link?: Link): void {
    this.waiter = undefined;
    this.socket.off('close', onWaitingClose);
    this.socket.off('end', onWaitingEnd);
    stopReading(this.socket);
    if (err !== null || link === undefined) {
      this.refuse(err ?? new Error('no link'));
      return;
    }
    if (this.socket.destroyed) {
      // The downstream vanished between the link's arrival and now; the link is unused.
      this.route.pool.release(link, true);
      this.end();
      return;
    }
    this.attach(link, true);
  }

  private attach(link: Link, waited: boolean): void {
    this.state = 'spliced';
    this.link = link;
    const log = this.route.log;
    if (log.isLevelEnabled('debug')) {
      log.debug(
        { session: this.id, link: link.id, endpoint: link.endpoint, reused: link.uses > 1, waited },
        'session open',
      );
    }
    this.splice = new Splice(
      this.socket,
      link.socket,
      (outcome) => this.spliceDone(outcome),
      this.moves < MAX_MOVES ? (sent) => this.linkDied(sent) : undefined,
    );
    this.splice.start(this.route.timeouts, this.early, link.takeIdleBytes());
    this.early = undefined;
  }

  /** The upstream closed the link before answering: go on with another, replaying `sent`. */
  private linkDied(sent: Unanswered): void {
    const link = this.link as Link;
    this.link = undefined;
    this.splice = undefined;
    this.moves++;
    this.route.pool.release(link, false);
    this.route.log.info(
      {
        session: this.id,
        link: link.id,
        endpoint: link.endpoint,
        replayBytes: sent.bytes,
        move: this.moves,
      },
      'upstream closed the link before answering: the session moves to another',
    );
    this.state = 'waiting';
    this.early = { chunks: sent.chunks, bytes: sent.bytes, ended: sent.ended };
    this.handleErrors();
    // The FINs of other dead links may wait in the same batch of I/O events as this one's:
    // choose the next link once they are read, and their links have left the pool.
    setImmediate(onMoveOn, this);
  }

  /** Between splices the downstream's errors need a listener; its close is what counts. */
  private handleErrors(): void {
    if (this.errorsHandled) return;
    this.errorsHandled = true;
    this.socket.on('error', onWaitingError);
  }

  /** After a dead link: take another, unless the downstream left meanwhile. */
  moveOn(): void {
    if (this.state !== 'waiting') return;
    if (this.socket.destroyed) this.end();
    else this.acquire();
  }

  private spliceDone(outcome: SpliceOutcome): void {
    const link = this.link as Link;
    this.route.pool.release(link, false);
    const seconds = (performance.now() - this.startedAt) / 1000;
    this.route.observer.closed(outcome, seconds);
    const log = this.route.log;
    if (outcome.brokenBy === 'upstream' && outcome.error !== undefined) {
      this.route.pool.linkBroke(link);
      log.info(
        {
          session: this.id,
          link: link.id,
          code: codeOf(outcome.error),
          err: describe(outcome.error),
        },
        'upstream broke the session',
      );
    }
    if (log.isLevelEnabled('debug')) {
      log.debug(
        {
          session: this.id,
          link: link.id,
          bytesUp: outcome.bytesUp,
          bytesDown: outcome.bytesDown,
          durationMs: Math.round(seconds * 1000),
          brokenBy: outcome.brokenBy,
          code: outcome.error && codeOf(outcome.error),
        },
        'session closed',
      );
    }
    this.end();
  }

  private refuse(err: Error): void {
    const code = codeOf(err);
    this.route.observer.refused(code);
    this.route.log.warn(
      {
        session: this.id,
        code,
        err: err.message,
        waitedMs: Math.round(performance.now() - this.startedAt),
      },
      'downstream closed without a link',
    );
    this.socket.destroy();
    this.end();
  }

  waitingData(chunk: Buffer): number {
    const early = this.early as EarlyBytes;
    early.chunks.push(chunk);
    early.bytes += chunk.length;
    return early.bytes >= MAX_EARLY_BYTES ? CHUNK_KEPT | READ_PAUSE : CHUNK_KEPT;
  }

  waitingEnd(): void {
    (this.early as EarlyBytes).ended = true;
  }

  /** The downstream left while queued: it leaves the queue. */
  waitingClosed(): void {
    this.waiter?.cancel();
    this.waiter = undefined;
    this.end();
  }

  private end(): void {
    if (this.state === 'ended') return;
    this.state = 'ended';
    this.route.sessionEnded(this);
  }
}

const kSession = Symbol('sidepool.tcp-session');
type Waiting = Socket & { [kSession]?: TcpSession };

function onMoveOn(session: TcpSession): void {
  session.moveOn();
}
function onWaitingBytes(this: Duplex, chunk: Buffer): number {
  return (this as Waiting)[kSession]?.waitingData(chunk) ?? READ_PAUSE;
}
function onWaitingEnd(this: Waiting): void {
  this[kSession]?.waitingEnd();
}
function onWaitingError(): void {
  // The close that follows is what counts.
}
function onWaitingClose(this: Waiting): void {
  this[kSession]?.waitingClosed();
}
