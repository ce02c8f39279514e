import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { codeOf } from '../errors.js';
import { CHUNK_KEPT, READ_MORE, READ_PAUSE, readWith, stopReading } from '../net/reads.js';
import { holdWriteErrors } from '../net/writes.js';

/** How a splice ended, for the session's log line and metrics. */
export interface SpliceOutcome {
  /** Bytes read from the downstream and sent upstream. */
  bytesUp: number;
  /** Bytes read from the upstream and sent downstream. */
  bytesDown: number;
  /** The first error on either side; undefined when both closed cleanly. */
  error: Error | undefined;
  /** Which side broke the session; undefined when it ended cleanly. */
  brokenBy: 'downstream' | 'upstream' | 'timeout' | 'proxy' | undefined;
}

/**
 * What went upstream before the upstream sent any byte back. If the upstream closes or
 * resets first, the link was most likely dead when it was taken (its FIN or RST already
 * on the way) and nothing was processed: the session may replay this on another link.
 */
export interface Unanswered {
  chunks: Buffer[];
  bytes: number;
  /** The downstream's FIN went up too. */
  ended: boolean;
}

/** At most this much is kept for a replay; a session that sent more stays on its link. */
const MAX_REPLAY_BYTES = 64 * 1024;
/**
 * A close this long after the splice began, or after the first byte went up, is the
 * upstream's answer (it had time to act on the bytes, or its own timer ran out on the
 * session), not a link that was dead when taken: no replay.
 */
const REPLAY_WINDOW_MS = 1000;

export interface SpliceTimeouts {
  /** No bytes either way for this long ends the session; 0 = never. */
  idleTimeoutMs: number;
  /**
   * Once one side has sent its FIN, the other must finish within this long; 0 = never.
   * Without it, a peer that vanished after a half-close would hold the session forever.
   */
  halfCloseTimeoutMs: number;
}

/**
 * The byte relay between a downstream socket and a link's socket, both opened with
 * `allowHalfOpen`. A FIN on one side becomes a FIN on the other (the other direction keeps
 * flowing); when either side breaks (error, reset, or a close before its FIN), the other
 * is torn down too, with a reset where the break was a reset, but only once everything
 * read from the broken side has been written to it: a server's last reply before its
 * reset reaches the app. A write that fails because its peer reset does not end that
 * side's reads either (net/writes.ts). A slow reader pauses the other side's reads, so
 * nothing buffers without bound.
 *
 * Written with plain listeners rather than `stream.pipeline` because a proxy needs what
 * pipeline does not give: reset propagation, one completion for both directions, and byte
 * counts without an extra transform on the data path.
 */
export class Splice {
  bytesUp = 0;
  bytesDown = 0;
  private error: Error | undefined;
  private brokenBy: SpliceOutcome['brokenBy'];
  private downClosed = false;
  private upClosed = false;
  private done = false;
  private halfCloseTimer: NodeJS.Timeout | undefined;
  private halfCloseTimeoutMs = 0;
  /** Kept while the upstream has not answered and the session could still move. */
  private unanswered: Unanswered | undefined;
  /** When the splice began, then when the first byte went up: the replay window's start. */
  private replayFrom = 0;

  /**
   * `onUnanswered`, when given, is called instead of `onDone` if the upstream closes or
   * resets before sending any byte (within a short window and a byte bound): both sockets
   * are then released by the splice, untouched, for the session to go on with another link.
   */
  constructor(
    private readonly down: Duplex,
    private readonly up: Duplex,
    private readonly onDone: (outcome: SpliceOutcome) => void,
    private readonly onUnanswered?: (sent: Unanswered) => void,
  ) {}

  /**
   * Starts relaying. `early` holds what the downstream sent before the splice began (and
   * whether its FIN came too): it goes upstream first. `greeting` holds what the upstream
   * sent before (on an idle link): it goes downstream first.
   */
  start(
    timeouts: SpliceTimeouts,
    early?: { chunks: Buffer[]; ended: boolean },
    greeting?: Buffer[],
  ): void {
    const down = this.down as Spliced;
    const up = this.up as Spliced;
    const { idleTimeoutMs, halfCloseTimeoutMs } = timeouts;
    this.halfCloseTimeoutMs = halfCloseTimeoutMs;
    if (this.onUnanswered !== undefined && (greeting === undefined || greeting.length === 0)) {
      this.unanswered = { chunks: [], bytes: 0, ended: false };
      this.replayFrom = performance.now();
    }
    if (early !== undefined) {
      this.bytesUp += sendAhead(early.chunks, up);
      for (const chunk of early.chunks) this.keepSent(chunk);
      if (early.ended) {
        if (this.unanswered !== undefined) this.unanswered.ended = true;
        up.end();
        this.startHalfCloseTimer();
      }
    }
    if (greeting !== undefined) this.bytesDown += sendAhead(greeting, down);
    // The listeners are shared functions that find their splice on the socket: a session
    // costs no closures, which shows at tens of thousands of connections.
    down[kSplice] = this;
    up[kSplice] = this;
    down.on('end', onDownEnd);
    up.on('end', onUpEnd);
    down.on('drain', onDownDrain);
    up.on('drain', onUpDrain);
    down.on('error', onDownError);
    up.on('error', onUpError);
    down.on('close', onDownClose);
    up.on('close', onUpClose);
    holdWriteErrors(down, onDownWriteFailed);
    holdWriteErrors(up, onUpWriteFailed);
    if (idleTimeoutMs > 0) (down as Duplex as Socket).setTimeout?.(idleTimeoutMs, onIdleTimeout);
    // A socket that closed before we listened would never tell us.
    if (down.destroyed) this.downClose();
    else if (up.destroyed) this.upClose();
    else {
      readWith(down, onDownBytes);
      readWith(up, onUpBytes);
    }
  }

  /** Tears both sides down now. */
  destroy(err?: Error): void {
    if (this.brokenBy === undefined) {
      this.brokenBy = 'proxy';
      this.error = err;
    }
    this.down.destroy();
    this.up.destroy();
  }

  downData(chunk: Buffer): number {
    this.bytesUp += chunk.length;
    const flags = relay(chunk, this.up);
    return this.unanswered !== undefined && this.keepSent(chunk) ? flags | CHUNK_KEPT : flags;
  }

  upData(chunk: Buffer): number {
    this.unanswered = undefined;
    this.bytesDown += chunk.length;
    return relay(chunk, this.down);
  }

  /** The app read what we wrote: the upstream may be read again. */
  downDrained(): void {
    this.up.resume();
  }

  upDrained(): void {
    this.down.resume();
  }

  downEnd(): void {
    if (this.unanswered !== undefined) this.unanswered.ended = true;
    this.up.end();
    this.startHalfCloseTimer();
  }

  upEnd(): void {
    if (this.moveOn()) return;
    this.down.end();
    this.startHalfCloseTimer();
  }

  timeOut(): void {
    this.noteBreak('timeout', undefined);
    this.down.destroy();
    this.up.destroy();
  }

  noteBreak(side: NonNullable<SpliceOutcome['brokenBy']>, err: Error | undefined): void {
    if (this.brokenBy !== undefined) return;
    this.brokenBy = side;
    this.error = err;
  }

  downClose(): void {
    this.downClosed = true;
    if (!closedCleanly(this.down)) {
      this.noteBreak('downstream', undefined);
      this.abortAfterFlush(this.up);
    }
    this.finish();
  }

  upClose(): void {
    if (this.moveOn()) return;
    this.upClosed = true;
    if (!closedCleanly(this.up)) {
      this.noteBreak('upstream', undefined);
      this.abortAfterFlush(this.down);
    }
    this.finish();
  }

  /**
   * One side's peer reset while we were writing to it: its reads go on until what it sent
   * before has been passed on, within the half-close timeout.
   */
  writeFailed(): void {
    this.startHalfCloseTimer();
  }

  /**
   * Passes the break on to `socket` once the bytes queued for it have gone out (the last
   * ones the broken side sent), or at once when none are queued. An app that does not
   * read them has the half-close timeout to do so.
   */
  private abortAfterFlush(socket: Duplex): void {
    if (socket.destroyed) return;
    if (socket.writableLength === 0) {
      abort(socket, this.error);
      return;
    }
    socket.once('finish', () => abort(socket, this.error));
    socket.end();
    this.startHalfCloseTimer();
  }

  private startHalfCloseTimer(): void {
    if (this.halfCloseTimeoutMs > 0 && this.halfCloseTimer === undefined && !this.done) {
      this.halfCloseTimer = setTimeout(onHalfCloseTimeout, this.halfCloseTimeoutMs, this);
    }
  }

  /** Keeps a chunk sent upstream for a replay; false (and no more keeping) past the bound. */
  private keepSent(chunk: Buffer): boolean {
    const sent = this.unanswered;
    if (sent === undefined) return false;
    if (sent.bytes + chunk.length > MAX_REPLAY_BYTES) {
      this.unanswered = undefined;
      return false;
    }
    if (sent.bytes === 0) this.replayFrom = performance.now();
    sent.chunks.push(chunk);
    sent.bytes += chunk.length;
    return true;
  }

  /**
   * The upstream closed or reset before answering: when a replay is allowed, let go of
   * both sockets and hand what was sent to the session. True when it did.
   */
  private moveOn(): boolean {
    const sent = this.unanswered;
    if (sent === undefined || this.done || this.downClosed || this.down.destroyed) return false;
    this.unanswered = undefined;
    // The app said nothing and half-closed: the upstream's close answers that FIN, and
    // another link would answer it the same way.
    if (sent.bytes === 0 && sent.ended) return false;
    if (performance.now() - this.replayFrom > REPLAY_WINDOW_MS) return false;
    this.done = true;
    this.stopRelaying();
    const down = this.down as Spliced;
    const up = this.up as Spliced;
    down.off('error', onDownError);
    down.off('close', onDownClose);
    up.off('close', onUpClose);
    down.off('timeout', onIdleTimeout);
    (down as Duplex as Socket).setTimeout?.(0);
    down[kSplice] = undefined;
    // The link's error listener stays: the session closes the link next.
    (this.onUnanswered as (sent: Unanswered) => void)(sent);
    return true;
  }

  /** No more relaying: no reads, no end or drain handling, no half-close timer. */
  private stopRelaying(): void {
    if (this.halfCloseTimer !== undefined) clearTimeout(this.halfCloseTimer);
    const down = this.down as Spliced;
    const up = this.up as Spliced;
    stopReading(down);
    stopReading(up);
    down.off('end', onDownEnd);
    up.off('end', onUpEnd);
    down.off('drain', onDownDrain);
    up.off('drain', onUpDrain);
  }

  private finish(): void {
    if (this.done || !this.downClosed || !this.upClosed) return;
    this.done = true;
    this.stopRelaying();
    // The error listeners stay: a late error on a destroyed socket must not go unhandled.
    this.onDone({
      bytesUp: this.bytesUp,
      bytesDown: this.bytesDown,
      error: this.error,
      brokenBy: this.brokenBy,
    });
  }
}

const kSplice = Symbol('sidepool.splice');
type Spliced = Duplex & { [kSplice]?: Splice };

function splice(socket: Spliced): Splice {
  return socket[kSplice] as Splice;
}

function onDownBytes(this: Spliced, chunk: Buffer): number {
  return splice(this).downData(chunk);
}
function onUpBytes(this: Spliced, chunk: Buffer): number {
  return splice(this).upData(chunk);
}

/** Writes what one side sent before the splice began; returns its byte count. */
function sendAhead(chunks: Buffer[], to: Duplex): number {
  let bytes = 0;
  for (const chunk of chunks) {
    bytes += chunk.length;
    to.write(chunk);
  }
  return bytes;
}

/**
 * Writes a chunk on. Bytes the kernel did not take at once stay queued in the chunk's
 * memory, which must then not be read into again; past the high-water mark they also stop
 * reading until the other side drains.
 */
function relay(chunk: Buffer, to: Duplex): number {
  const more = to.write(chunk);
  if (to.writableLength === 0) return READ_MORE;
  return more ? CHUNK_KEPT : CHUNK_KEPT | READ_PAUSE;
}
// A drained side lets the other side read again.
function onDownDrain(this: Spliced): void {
  splice(this).downDrained();
}
function onUpDrain(this: Spliced): void {
  splice(this).upDrained();
}
function onDownEnd(this: Spliced): void {
  splice(this).downEnd();
}
function onUpEnd(this: Spliced): void {
  splice(this).upEnd();
}
function onDownError(this: Spliced, err: Error): void {
  splice(this).noteBreak('downstream', err);
}
function onUpError(this: Spliced, err: Error): void {
  splice(this).noteBreak('upstream', err);
}
function onDownWriteFailed(this: Spliced): void {
  splice(this).writeFailed();
}
function onUpWriteFailed(this: Spliced): void {
  splice(this).writeFailed();
}
function onDownClose(this: Spliced): void {
  splice(this).downClose();
}
function onUpClose(this: Spliced): void {
  splice(this).upClose();
}
function onIdleTimeout(this: Spliced): void {
  splice(this).timeOut();
}
function onHalfCloseTimeout(s: Splice): void {
  s.timeOut();
}

/** Both directions finished: we read the peer's FIN and our FIN went out. */
function closedCleanly(socket: Duplex): boolean {
  return socket.readableEnded && socket.writableFinished && !socket.errored;
}

/** Passes a break on: a reset where the break was a reset, otherwise a plain close. */
function abort(socket: Duplex, err: Error | undefined): void {
  if (socket.destroyed) return;
  const net = socket as Socket;
  if (codeOf(err) === 'ECONNRESET' && typeof net.resetAndDestroy === 'function')
    net.resetAndDestroy();
  else socket.destroy();
}
