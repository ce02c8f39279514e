import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { codeOf } from '../errors.js';

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
 * is torn down too, with a reset where the break was a reset. A slow reader pauses the
 * other side's reads, so nothing buffers without bound.
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

  constructor(
    private readonly down: Duplex,
    private readonly up: Duplex,
    private readonly onDone: (outcome: SpliceOutcome) => void,
  ) {}

  /**
   * Starts relaying. `early` holds what the downstream sent before the splice began (and
   * whether its FIN came too): it goes upstream first.
   */
  start(timeouts: SpliceTimeouts, early?: { chunks: Buffer[]; ended: boolean }): void {
    const { down, up } = this;
    const { idleTimeoutMs, halfCloseTimeoutMs } = timeouts;
    this.halfCloseTimeoutMs = halfCloseTimeoutMs;
    if (early !== undefined) {
      for (const chunk of early.chunks) {
        this.bytesUp += chunk.length;
        up.write(chunk);
      }
      if (early.ended) {
        up.end();
        this.startHalfCloseTimer();
      }
    }
    down.on('data', this.onDownData);
    up.on('data', this.onUpData);
    down.on('end', this.onDownEnd);
    up.on('end', this.onUpEnd);
    down.on('drain', this.onDownDrain);
    up.on('drain', this.onUpDrain);
    down.on('error', this.onDownError);
    up.on('error', this.onUpError);
    down.on('close', this.onDownClose);
    up.on('close', this.onUpClose);
    if (idleTimeoutMs > 0) {
      (down as Socket).setTimeout?.(idleTimeoutMs, this.onTimeout);
    }
    // A socket that closed before we listened would never tell us.
    if (down.destroyed) this.onDownClose();
    else if (up.destroyed) this.onUpClose();
    else {
      down.resume();
      up.resume();
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

  private readonly onDownData = (chunk: Buffer): void => {
    this.bytesUp += chunk.length;
    if (!this.up.write(chunk)) this.down.pause();
  };

  private readonly onUpData = (chunk: Buffer): void => {
    this.bytesDown += chunk.length;
    if (!this.down.write(chunk)) this.up.pause();
  };

  private readonly onUpDrain = (): void => {
    this.down.resume();
  };

  private readonly onDownDrain = (): void => {
    this.up.resume();
  };

  private readonly onDownEnd = (): void => {
    this.up.end();
    this.startHalfCloseTimer();
  };

  private readonly onUpEnd = (): void => {
    this.down.end();
    this.startHalfCloseTimer();
  };

  private startHalfCloseTimer(): void {
    if (this.halfCloseTimeoutMs > 0 && this.halfCloseTimer === undefined && !this.done) {
      this.halfCloseTimer = setTimeout(this.onTimeout, this.halfCloseTimeoutMs);
    }
  }

  private readonly onDownError = (err: Error): void => {
    this.noteBreak('downstream', err);
  };

  private readonly onUpError = (err: Error): void => {
    this.noteBreak('upstream', err);
  };

  private readonly onTimeout = (): void => {
    this.noteBreak('timeout', undefined);
    this.down.destroy();
    this.up.destroy();
  };

  private readonly onDownClose = (): void => {
    this.downClosed = true;
    if (!closedCleanly(this.down)) {
      this.noteBreak('downstream', undefined);
      abort(this.up, this.error);
    }
    this.finish();
  };

  private readonly onUpClose = (): void => {
    this.upClosed = true;
    if (!closedCleanly(this.up)) {
      this.noteBreak('upstream', undefined);
      abort(this.down, this.error);
    }
    this.finish();
  };

  private noteBreak(side: NonNullable<SpliceOutcome['brokenBy']>, err: Error | undefined): void {
    if (this.brokenBy !== undefined) return;
    this.brokenBy = side;
    this.error = err;
  }

  private finish(): void {
    if (this.done || !this.downClosed || !this.upClosed) return;
    this.done = true;
    if (this.halfCloseTimer !== undefined) clearTimeout(this.halfCloseTimer);
    const { down, up } = this;
    down.off('data', this.onDownData);
    up.off('data', this.onUpData);
    down.off('end', this.onDownEnd);
    up.off('end', this.onUpEnd);
    down.off('drain', this.onDownDrain);
    up.off('drain', this.onUpDrain);
    // The error listeners stay: a late error on a destroyed socket must not go unhandled.
    this.onDone({
      bytesUp: this.bytesUp,
      bytesDown: this.bytesDown,
      error: this.error,
      brokenBy: this.brokenBy,
    });
  }
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
