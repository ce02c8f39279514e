import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { HttpResponseError, codeOf, describe } from '../../errors.js';
import type { Link } from '../../pool/link.js';
import type { Waiter } from '../../pool/pool.js';
import { Splice, type SpliceOutcome } from '../splice.js';
import type { HttpRouteContext } from './exchange.js';
import { requestHead, responseHeaders, type RequestTarget } from './headers.js';
import { fitForRequest, takeIdleLink } from './links.js';
import type { HttpFailure } from './observer.js';
import {
  ResponseParser,
  type BodyKind,
  type ResponseHandler,
  type ResponseHead,
} from './response-parser.js';
import {
  FAILURE_STATUS,
  acquireFailure,
  dialCounts,
  type DialCounts,
  sendRawErrorAndClose,
} from './responses.js';

/**
 *   acquiring ──▶ asking ──▶ spliced ──▶ done
 *                   │
 *                   └──▶ refused ──▶ done
 *
 * asking: the upgrade (or CONNECT) went upstream and we wait for its answer; spliced: the
 * upstream switched (101, or 2xx to CONNECT) and bytes flow both ways as in tcp mode;
 * refused: any other answer, passed on, after which the app's connection closes.
 */
type TunnelState = 'acquiring' | 'asking' | 'spliced' | 'refused' | 'done';

/**
 * An Upgrade (WebSocket, h2c…) or CONNECT request. The link leaves the pool for good: it
 * carries another protocol from the switch on, and is closed when the tunnel ends.
 */
export class Tunnel implements ResponseHandler {
  private state: TunnelState = 'acquiring';
  private link: Link | undefined;
  private upstream: Socket | undefined;
  private waiter: Waiter | undefined;
  private dialsBeforeWait: DialCounts | undefined;
  private parser: ResponseParser | undefined;
  private splice: Splice | undefined;
  private wroteDownstream = false;
  private upstreamPaused = false;
  private upstreamError: Error | undefined;
  private readonly isConnect: boolean;
  private readonly startedAt = performance.now();

  constructor(
    private readonly ctx: HttpRouteContext,
    private readonly req: IncomingMessage,
    /** Framed by length or not at all: the session refuses a chunked upgrade. */
    private readonly shape: RequestTarget,
    private readonly down: Socket,
    private readonly early: Buffer,
    private readonly upgrade: string | undefined,
    private readonly onDone: (outcome: SpliceOutcome | undefined) => void,
  ) {
    this.isConnect = req.method === 'CONNECT';
  }

  /** Bytes flow both ways now; the splice sees either side close and ends the tunnel. */
  get spliced(): boolean {
    return this.splice !== undefined;
  }

  start(): void {
    const link = takeIdleLink(this.ctx.route.pool, this.ctx.settings.upstreamKeepAliveMs, 0);
    if (link !== undefined) this.attach(link);
    else {
      this.dialsBeforeWait = dialCounts(this.ctx.route.pool);
      this.waiter = this.ctx.route.pool.wait(this.onLink);
    }
  }

  /** Ends the tunnel now: the app's connection is gone, or the session is destroyed. */
  destroy(): void {
    if (this.splice !== undefined) {
      this.splice.destroy();
      return;
    }
    if (this.state === 'done') return;
    if (this.state !== 'refused' && !this.wroteDownstream)
      this.ctx.observer.failed('downstream_closed');
    this.down.destroy();
    this.end(undefined);
  }

  private readonly onLink = (err: Error | null, link?: Link): void => {
    this.waiter = undefined;
    if (this.state === 'done') {
      if (link !== undefined) this.ctx.route.pool.release(link, true);
      return;
    }
    if (err !== null || link === undefined) {
      const reason = acquireFailure(
        err ?? new Error('no link'),
        this.ctx.route.pool,
        this.dialsBeforeWait ?? dialCounts(this.ctx.route.pool),
      );
      this.fail(reason, err ?? undefined);
      return;
    }
    if (!fitForRequest(link, this.ctx.settings.upstreamKeepAliveMs, 0, Date.now())) {
      link.close('idle');
      this.start();
      return;
    }
    this.attach(link);
  };

  private attach(link: Link): void {
    this.state = 'asking';
    this.link = link;
    if (link.uses > 1) this.ctx.observer.reused();
    const socket = link.socket as Socket;
    this.upstream = socket;
    this.parser = new ResponseParser(this);
    socket.on('data', this.onUpData);
    socket.on('end', this.onUpEnd);
    socket.on('error', this.onUpError);
    socket.on('close', this.onUpClose);
    socket.on('timeout', this.onUpTimeout);
    if (this.ctx.settings.responseTimeoutMs > 0)
      socket.setTimeout(this.ctx.settings.responseTimeoutMs);
    socket.resume();
    socket.write(requestHead(this.req, this.shape, this.ctx.settings, this.upgrade), 'latin1');
    // What the app sent after its request head (a body, or early frames) follows it.
    if (this.early.length > 0) socket.write(this.early);
  }

  private detach(): Socket | undefined {
    const socket = this.upstream;
    if (socket === undefined) return undefined;
    this.upstream = undefined;
    socket.off('data', this.onUpData);
    socket.off('end', this.onUpEnd);
    socket.off('error', this.onUpError);
    socket.off('close', this.onUpClose);
    socket.off('timeout', this.onUpTimeout);
    if (this.ctx.settings.responseTimeoutMs > 0) socket.setTimeout(0);
    if (this.upstreamPaused) {
      this.upstreamPaused = false;
      this.down.off('drain', this.onDownDrain);
      socket.resume();
    }
    return socket;
  }

  private readonly onUpData = (chunk: Buffer): void => {
    const error = (this.parser as ResponseParser).execute(chunk);
    if (error !== undefined) {
      this.ctx.route.log.warn(
        { link: this.link?.id, endpoint: this.link?.endpoint, problem: error.problem },
        'malformed response from the upstream',
      );
      this.fail('bad_response');
    }
  };

  onInterim(head: ResponseHead): void {
    this.wroteDownstream = true;
    this.down.write(head.rawBytes);
  }

  onHead(head: ResponseHead): BodyKind {
    const switched = this.isConnect
      ? head.statusCode >= 200 && head.statusCode < 300
      : head.statusCode === 101;
    this.wroteDownstream = true;
    this.ctx.observer.responded(head.statusCode, (performance.now() - this.startedAt) / 1000);
    if (switched) {
      // The switch goes to the app as the upstream wrote it: its Upgrade, Connection and
      // Sec-WebSocket-* fields are for the app.
      this.down.write(head.rawBytes);
      return 'tunnel';
    }
    if (head.statusCode === 101) throw new HttpResponseError('101 to a CONNECT');
    this.state = 'refused';
    // The refusal is passed on with a body until close: the app's connection ends after it,
    // since it is no longer in step with an HTTP parser.
    const fields = responseHeaders(head.rawHeaders, head.connectionTokens, undefined, undefined);
    let text = `HTTP/1.1 ${head.statusCode} ${head.statusMessage || STATUS_CODES[head.statusCode] || ''}\r\n`;
    for (let i = 0; i < fields.length; i += 2) {
      if (!head.chunked || (fields[i] as string).toLowerCase() !== 'content-length') {
        text += `${fields[i]}: ${fields[i + 1]}\r\n`;
      }
    }
    this.down.write(`${text}Connection: close\r\n\r\n`, 'latin1');
    return this.req.method === 'HEAD' || head.statusCode === 204 || head.statusCode === 304
      ? 'none'
      : 'message';
  }

  onBody(chunk: Buffer): void {
    if (!this.down.write(chunk) && !this.upstreamPaused && this.upstream !== undefined) {
      this.upstreamPaused = true;
      this.upstream.pause();
      this.down.once('drain', this.onDownDrain);
    }
  }

  onTrailers(): void {
    // A body sent until close has no trailer section.
  }

  onComplete(rest: Buffer | undefined): void {
    const link = this.link as Link;
    const socket = this.detach() as Socket;
    if (this.state === 'refused') {
      this.down.destroySoon();
      this.ctx.route.pool.release(link, false);
      this.end(undefined);
      return;
    }
    this.state = 'spliced';
    if (rest !== undefined) this.down.write(rest);
    const log = this.ctx.route.log;
    if (log.isLevelEnabled('debug')) {
      log.debug({ link: link.id, method: this.req.method, upgrade: this.upgrade }, 'tunnel open');
    }
    this.splice = new Splice(this.down, socket, this.onSpliceDone);
    this.splice.start(this.ctx.route.timeouts);
  }

  private readonly onDownDrain = (): void => {
    this.upstreamPaused = false;
    this.upstream?.resume();
  };

  private readonly onSpliceDone = (outcome: SpliceOutcome): void => {
    if (this.link !== undefined) this.ctx.route.pool.release(this.link, false);
    this.end(outcome);
  };

  private readonly onUpEnd = (): void => {
    const parser = this.parser as ResponseParser;
    if (parser.done) return;
    if (parser.finish() === undefined) return;
    this.fail('upstream_error');
  };

  private readonly onUpError = (err: Error): void => {
    this.upstreamError ??= err;
  };

  private readonly onUpClose = (): void => {
    if (this.state === 'done') return;
    this.fail('upstream_error', this.upstreamError);
  };

  private readonly onUpTimeout = (): void => {
    this.fail('response_timeout');
  };

  /** The tunnel could not be set up: the app gets a status, or a cut connection. */
  private fail(reason: HttpFailure, cause?: Error): void {
    if (this.state === 'done') return;
    this.ctx.observer.failed(reason);
    this.ctx.route.log.info(
      {
        reason,
        method: this.req.method,
        link: this.link?.id,
        code: cause === undefined ? undefined : codeOf(cause),
        err: cause === undefined ? undefined : describe(cause),
      },
      'http tunnel failed',
    );
    if (this.waiter !== undefined) {
      this.waiter.cancel();
      this.waiter = undefined;
    }
    this.detach();
    if (this.link !== undefined) this.ctx.route.pool.release(this.link, false);
    if (this.wroteDownstream) this.down.destroy();
    else {
      const status = FAILURE_STATUS[reason];
      this.ctx.observer.responded(status, (performance.now() - this.startedAt) / 1000);
      sendRawErrorAndClose(this.down, status, reason);
    }
    this.end(undefined);
  }

  private end(outcome: SpliceOutcome | undefined): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.onDone(outcome);
  }
}
