import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { HttpResponseError, SidepoolError, codeOf, describe } from '../../errors.js';
import { lastIdleTurn, type Link } from '../../pool/link.js';
import { requestHead, responseHeaders, trailerFields, trailerSection } from './headers.js';
import { LinkLease, type LeaseHolder } from './link-lease.js';
import { noteKeepAliveTimeout } from './links.js';
import type { HttpFailure } from './observer.js';
import type { RequestShape } from './request-shape.js';
import type { BodyKind, ResponseHead } from './response-parser.js';
import { FAILURE_STATUS, sendError } from './responses.js';
import type { HttpRouteContext } from './settings.js';

/** Told when an exchange is over: its response went out, or failed, or the app left. */
export interface ExchangeOwner {
  exchangeDone(exchange: Exchange): void;
}

/**
 * The life of one exchange:
 *
 *   queued ──▶ acquiring ──▶ forwarding ──▶ responded ──▶ done
 *                 │  ▲           │               │           ▲
 *                 │  └── retry ──┤               │           │
 *                 └──────────────┴───────────────┴─▶ failed ─┘
 *
 * and from any phase to done when the app's connection goes.
 *
 * queued: behind earlier requests of the same connection; acquiring: waiting for a link;
 * forwarding: the request goes up and the response comes down; responded: the response
 * was read to its end and handed to Node, the link given back; failed: the app got an
 * error status, or its connection was cut; done: the response went out (or the
 * connection went) and the exchange holds nothing. A retry happens when a reused link
 * dies before any response byte, and once more when the link it took was reused too
 * (links that idled through the same burst go stale together); see MAX_ATTEMPTS.
 */
type ExchangePhase = 'queued' | 'acquiring' | 'forwarding' | 'responded' | 'failed' | 'done';

/**
 * The request as the upstream has it, on the current link: nothing yet (a chunked body's
 * first bytes may be held back), the head and part of the body, or all of it.
 */
type UpstreamRequest = 'unsent' | 'streaming' | 'sent';

/**
 * The app's request body as we read it: not yet (no link to send it on), being read, read
 * to its end (or there is none), or read and dropped (the exchange no longer needs it, but
 * the connection must get past it).
 */
type AppBody = 'waiting' | 'reading' | 'ended' | 'dropped';

/** Methods a retry cannot make happen twice (RFC 9110 §9.2.2). */
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** A request body up to this size is kept until the response starts, for a retry. */
const RETRY_BODY_LIMIT = 64 * 1024;
/**
 * Tries of one request at most: the first, one on a link that idled less than the stale
 * one, and one on a link nobody had idle when the second failed. A request that makes the
 * upstream drop the connection is not sent down every link of the pool.
 */
const MAX_ATTEMPTS = 3;

/**
 * What counts as progress of a request body for requestBodyTimeout: this many more bytes,
 * or its end. Counting reads instead would let a body trickled a byte at a time hold a
 * link for ever; this asks for a rate no real upload is below (1 KiB a minute by default).
 */
export const BODY_PROGRESS_BYTES = 1024;

const CRLF = '\r\n';

const kExchange = Symbol('sidepool.httpExchange');

interface Tagged {
  [kExchange]?: Exchange | undefined;
}

function ignoreError(): void {
  // The app's connection broke mid-request; the response's 'close' ends the exchange.
}

/**
 * One request from the app and its response from the upstream, over a link borrowed from
 * the pool for just this exchange. Bodies stream both ways with backpressure; the link
 * goes back to the pool when both sides allow keep-alive and both messages are complete.
 * The `on…` methods are called by the shared listeners at the end of this file.
 */
export class Exchange implements LeaseHolder {
  private phase: ExchangePhase = 'queued';
  private upstreamRequest: UpstreamRequest = 'unsent';
  private appBody: AppBody = 'waiting';
  /**
   * What the response said of the link: keep-alive, and a body with a known end that
   * nothing followed. Decided with the head, and again when the response is complete.
   */
  private linkReusable = false;
  private readonly lease: LinkLease;
  private attempts = 0;
  private staleBefore = 0;
  private head: string | undefined;
  private kept: Buffer[] | undefined;
  private keptBytes = 0;
  /** The first bytes of a chunked body, held until the read they came in is fully parsed. */
  private held: Buffer[] | undefined;
  private heldFlush: NodeJS.Immediate | undefined;
  /** Runs while we read the app's body and it owes us bytes (requestBodyTimeout). */
  private bodyTimer: NodeJS.Timeout | undefined;
  /** Body bytes since the body last made progress. */
  private bodyProgress = 0;
  private readonly startedAt = performance.now();

  constructor(
    private readonly ctx: HttpRouteContext,
    readonly req: IncomingMessage,
    readonly res: ServerResponse,
    private readonly shape: RequestShape,
    private readonly owner: ExchangeOwner,
  ) {
    this.lease = new LinkLease(ctx, this);
    (req as Tagged)[kExchange] = this;
    (res as Tagged)[kExchange] = this;
    const method = req.method ?? '';
    if (IDEMPOTENT.has(method) && shape.framing !== 'none') this.kept = [];
  }

  /** The request has been read to its end: a parse error after this belongs to a later one. */
  get requestComplete(): boolean {
    return this.req.complete;
  }

  /** queued → acquiring: its turn has come. */
  start(): void {
    this.moveTo('acquiring', 'queued');
    this.res.on('finish', resFinish);
    this.res.on('close', resClose);
    if (
      this.shape.framing === 'none' ||
      (this.shape.framing === 'length' && this.shape.length === 0)
    ) {
      this.appBody = 'ended';
    }
    this.lease.acquire(this.staleBefore);
  }

  /** The app's request turned out malformed (a bad chunk): fail it with `status`. */
  rejectRequest(status: number, reason: HttpFailure): void {
    if (this.phase === 'done') return;
    // Nothing written upstream yet: the link is as good as it was.
    this.fail(reason, status, true, this.upstreamRequest === 'unsent');
  }

  /** queued → done: its connection closes before its turn. */
  discard(): void {
    this.moveTo('done', 'queued');
    (this.req as Tagged)[kExchange] = undefined;
    (this.res as Tagged)[kExchange] = undefined;
  }

  /** Ends the exchange now: the app's connection is going away. */
  abort(): void {
    this.onResClose();
  }

  // ── link ───────────────────────────────────────────────────────────────

  private get upstream(): Socket | undefined {
    return this.lease.socket;
  }

  /** acquiring → forwarding: the request goes out on `link`. */
  linked(): void {
    this.moveTo('forwarding', 'acquiring');
    this.attempts++;
    if (!this.holdsChunkedStart || this.keptBytes > 0) this.writeHead();
    if (this.attempts > 1) {
      for (const chunk of this.kept ?? []) this.writeBody(chunk);
    }
    if (this.appBody === 'ended') this.endRequest();
    else if (this.appBody === 'waiting') {
      this.appBody = 'reading';
      this.req.on('data', reqData);
      this.req.on('end', reqEnd);
      this.req.on('error', ignoreError);
      // An app that asked for 100 Continue sends nothing before it: its clock starts then.
      if (!this.shape.expectContinue) this.startBodyClock();
    } else {
      this.req.resume();
      this.startBodyClock();
    }
  }

  noLink(reason: HttpFailure, cause: Error | undefined): void {
    this.fail(reason, FAILURE_STATUS[reason], false, false, cause);
  }

  /** Gives the link back: to idle when it can carry another request, closed otherwise. */
  private releaseLink(reusable: boolean): void {
    this.lease.release(reusable);
  }

  // ── request: app → upstream ────────────────────────────────────────────

  private writeHead(): void {
    if (this.upstreamRequest !== 'unsent') return;
    this.upstreamRequest = 'streaming';
    this.head ??= requestHead(this.req, this.shape, this.ctx.settings);
    (this.upstream as Socket).write(this.head, 'latin1');
  }

  private writeBody(chunk: Buffer): boolean {
    const socket = this.upstream as Socket;
    if (this.shape.framing !== 'chunked') return socket.write(chunk);
    socket.cork();
    socket.write(`${chunk.length.toString(16)}${CRLF}`, 'latin1');
    socket.write(chunk);
    const ok = socket.write(CRLF, 'latin1');
    socket.uncork();
    return ok;
  }

  /**
   * A chunked body's framing is only known good once parsed, and llhttp hands us the first
   * chunk before it has parsed what follows in the same read. So nothing of a chunked
   * request goes upstream before the end of that read: a malformed chunk, trailer or
   * terminator that came with it is refused with nothing sent.
   */
  private get holdsChunkedStart(): boolean {
    return (
      this.shape.framing === 'chunked' &&
      !this.shape.expectContinue &&
      this.upstreamRequest === 'unsent'
    );
  }

  onReqData(chunk: Buffer): void {
    this.bodyProgressed(chunk.length);
    if (this.kept !== undefined) {
      this.keptBytes += chunk.length;
      if (this.keptBytes > RETRY_BODY_LIMIT) this.kept = undefined;
      else this.kept.push(chunk);
    }
    if (this.upstream === undefined) return;
    if (this.holdsChunkedStart) {
      (this.held ??= []).push(chunk);
      this.heldFlush ??= setImmediate(flushHeld, this);
      return;
    }
    this.writeHead();
    if (chunk.length > 0 && !this.writeBody(chunk)) this.pauseRequest();
  }

  onReqEnd(): void {
    this.appBody = 'ended';
    this.stopBodyClock();
    if (this.upstream === undefined) return;
    if (this.holdsChunkedStart) this.heldFlush ??= setImmediate(flushHeld, this);
    else this.endRequest();
  }

  flushHeld(): void {
    this.heldFlush = undefined;
    if (this.phase !== 'forwarding' || this.upstream === undefined) return;
    this.writeHead();
    let ok = true;
    for (const chunk of this.held ?? []) ok = this.writeBody(chunk);
    this.held = undefined;
    if (this.appBody === 'ended') this.endRequest();
    else if (!ok) this.pauseRequest();
  }

  /** The link does not take more of the body now: the app is not at fault meanwhile. */
  private pauseRequest(): void {
    this.req.pause();
    this.stopBodyClock();
  }

  private endRequest(): void {
    this.writeHead();
    if (this.shape.framing === 'chunked') {
      const trailers = this.req.rawTrailers.length > 0 ? trailerSection(this.req.rawTrailers) : '';
      (this.upstream as Socket).write(`0${CRLF}${trailers}${CRLF}`, 'latin1');
    }
    this.upstreamRequest = 'sent';
    if (this.lease.responseDone) this.responseComplete();
  }

  upstreamDrained(): void {
    if (this.appBody !== 'reading') return;
    this.req.resume();
    this.startBodyClock();
  }

  // ── the request body's clock ───────────────────────────────────────────

  private startBodyClock(): void {
    const ms = this.ctx.settings.requestBodyTimeoutMs;
    if (ms === 0) return;
    this.bodyProgress = 0;
    if (this.bodyTimer === undefined) {
      this.bodyTimer = setTimeout(onBodyTimeout, ms, this);
      this.bodyTimer.unref();
    } else this.bodyTimer.refresh();
  }

  private stopBodyClock(): void {
    if (this.bodyTimer === undefined) return;
    clearTimeout(this.bodyTimer);
    this.bodyTimer = undefined;
  }

  private bodyProgressed(bytes: number): void {
    if (this.bodyTimer === undefined) {
      // The first bytes of a body that waited for 100 Continue.
      if (this.phase === 'forwarding' && this.appBody === 'reading') this.startBodyClock();
      return;
    }
    this.bodyProgress += bytes;
    if (this.bodyProgress >= BODY_PROGRESS_BYTES) {
      this.bodyProgress = 0;
      this.bodyTimer.refresh();
    }
  }

  bodyTimedOut(): void {
    this.bodyTimer = undefined;
    if (this.phase !== 'forwarding' || this.appBody !== 'reading') return;
    this.fail('body_timeout', FAILURE_STATUS.body_timeout, true, false);
  }

  // ── response: upstream → app ───────────────────────────────────────────

  onInterim(head: ResponseHead): void {
    if (this.res.headersSent) return;
    // Other 1xx codes have no ServerResponse method and are dropped.
    if (head.statusCode === 100) {
      this.res.writeContinue();
      if (this.appBody === 'reading' && this.bodyTimer === undefined) this.startBodyClock();
    } else if (head.statusCode === 102) this.res.writeProcessing();
    else if (head.statusCode === 103) {
      const hints = earlyHints(head.rawHeaders);
      if (hints !== undefined) {
        try {
          this.res.writeEarlyHints(hints);
        } catch {
          // Hints Node will not send are only hints.
        }
      }
    }
  }

  onHead(head: ResponseHead): BodyKind {
    if (head.statusCode === 101)
      throw new HttpResponseError('101 to a request that asked for no upgrade');
    const link = this.lease.link as Link;
    this.linkReusable = head.keepAlive;
    if (head.keepAliveTimeout !== undefined) noteKeepAliveTimeout(link, head.keepAliveTimeout);
    const headers = responseHeaders(
      head.rawHeaders,
      head.connectionTokens,
      head.transferEncoding,
      this.ctx.settings.forwardedHeaders ? `1.${head.minorVersion} sidepool` : undefined,
    );
    const status = head.statusCode;
    const bodyless = this.req.method === 'HEAD' || status === 204 || status === 304;
    if (!bodyless && !head.chunked && head.transferEncoding !== undefined) {
      // A transfer coding without chunked last (RFC 9112 §6.3): the body ends where the
      // upstream closes, and Node cannot chunk a body that carries a coding of its own. So
      // the app gets it as sent, delimited by the close of its connection too.
      this.res.shouldKeepAlive = false;
    }
    try {
      if (head.statusMessage === '') this.res.writeHead(status, headers);
      else this.res.writeHead(status, head.statusMessage, headers);
    } catch (err) {
      throw new HttpResponseError(`a head Node will not send: ${describe(err)}`);
    }
    if (bodyless) return 'none';
    // A body that runs until the upstream closes takes the link with it.
    if (!head.chunked && head.contentLength < 0) this.linkReusable = false;
    return 'message';
  }

  onBody(chunk: Buffer): void {
    this.lease.forward(chunk, this.res);
  }

  onTrailers(rawTrailers: string[]): void {
    const fields = trailerFields(rawTrailers);
    const pairs: [string, string][] = [];
    for (let i = 0; i < fields.length; i += 2)
      pairs.push([fields[i] as string, fields[i + 1] as string]);
    if (pairs.length > 0) this.res.addTrailers(pairs);
  }

  /** forwarding → responded. */
  onComplete(rest: Buffer | undefined): void {
    this.moveTo('responded', 'forwarding');
    // Bytes after a complete response: the upstream and we disagree on where it ended.
    if (rest !== undefined) this.linkReusable = false;
    this.res.end();
    if (this.upstreamRequest === 'sent') this.responseComplete();
    else {
      // The upstream answered before the whole request was sent (a 413, a 401, a final
      // status instead of 100 Continue): the rest of the body is read and dropped, and
      // the link, mid-request, is closed.
      this.stopReadingRequest();
      this.releaseLink(false);
    }
  }

  private responseComplete(): void {
    const reusable =
      this.linkReusable && this.lease.error === undefined && this.upstream?.readableEnded === false;
    this.releaseLink(reusable);
  }

  // ── upstream trouble ───────────────────────────────────────────────────

  upstreamTimedOut(): void {
    if (this.lease.pausedForApp) {
      // The link is quiet because we stopped reading it: the app is not taking the body.
      this.fail('send_timeout', 0, true, false);
      return;
    }
    const socket = this.upstream as Socket;
    // A stalled request body, with nothing of ours waiting to be sent, is the app's doing.
    const appStalled =
      this.appBody !== 'ended' && socket.writableLength === 0 && !this.lease.responseStarted;
    const reason: HttpFailure = appStalled ? 'body_timeout' : 'response_timeout';
    this.fail(reason, FAILURE_STATUS[reason], appStalled, false);
  }

  /** The link closed (or reset) before the response was complete. */
  upstreamLost(): void {
    const link = this.lease.link as Link;
    if (!this.lease.responseStarted && this.canRetry()) {
      this.retry(link);
      return;
    }
    // A reset or error in use counts against the endpoint (outlier detection); a plain
    // close does not: it is how keep-alive connections end.
    const error = this.lease.error;
    if (error !== undefined) this.ctx.route.pool.linkBroke(link);
    this.fail('upstream_error', 502, false, false, error);
  }

  /**
   * A stale keep-alive link: the upstream closed it as we sent. An idempotent request whose
   * body we still have goes again, on a link that idled less than this one did. That link
   * may be stale too (given back after this one was taken, it idled through the same
   * burst); then the last try takes no link that was idle at that moment.
   */
  private canRetry(): boolean {
    return (
      this.attempts < MAX_ATTEMPTS &&
      this.lease.linkWasIdle &&
      IDEMPOTENT.has(this.req.method ?? '') &&
      (this.shape.framing === 'none' || this.kept !== undefined) &&
      !this.res.headersSent
    );
  }

  /** forwarding → acquiring, at most MAX_ATTEMPTS - 1 times. */
  private retry(link: Link): void {
    this.moveTo('acquiring', 'forwarding');
    // Two stale links in a row: every link idle now is presumed stale (and closed when
    // met), so the last try gets a new link or one given back from here on.
    this.staleBefore = this.attempts >= MAX_ATTEMPTS - 1 ? lastIdleTurn() : link.idleTurn;
    this.releaseLink(false);
    // What was held of a chunked body is in `kept`, which the next attempt sends.
    if (this.heldFlush !== undefined) clearImmediate(this.heldFlush);
    this.heldFlush = undefined;
    this.held = undefined;
    this.upstreamRequest = 'unsent';
    if (this.appBody === 'reading') this.pauseRequest();
    this.ctx.observer.retried();
    const log = this.ctx.route.log;
    if (log.isLevelEnabled('debug')) {
      log.debug(
        { link: link.id, code: codeOf(this.lease.error), method: this.req.method },
        'stale link: request sent again on another link',
      );
    }
    this.lease.acquire(this.staleBefore);
  }

  badResponse(): void {
    this.fail('bad_response', 502, false, false);
  }

  // ── ending ─────────────────────────────────────────────────────────────

  /**
   * acquiring, forwarding or responded → failed: the app gets `status` when no response
   * has started, and its connection is cut when one has (a cut-short body must not look
   * complete). What follows (the response's close) is its consequence.
   */
  private fail(
    reason: HttpFailure,
    status: number,
    closeDownstream: boolean,
    linkReusable: boolean,
    cause?: Error,
  ): void {
    if (this.phase === 'done' || this.phase === 'failed') return;
    this.moveTo('failed', 'acquiring', 'forwarding', 'responded');
    this.ctx.observer.failed(reason);
    const log = this.ctx.route.log;
    if (log.isLevelEnabled('info')) {
      log.info(
        {
          reason,
          status: this.res.headersSent ? undefined : status,
          method: this.req.method,
          link: this.lease.link?.id,
          code: cause === undefined ? undefined : codeOf(cause),
          err: cause === undefined ? undefined : describe(cause),
          headersSent: this.res.headersSent || undefined,
        },
        'http exchange failed',
      );
    }
    this.releaseLink(linkReusable);
    this.lease.close();
    if (this.res.headersSent) {
      this.res.destroy();
      return;
    }
    const requestUnread = this.appBody !== 'ended';
    this.stopReadingRequest();
    // A request whose body was not read to its end leaves the connection out of step.
    sendError(this.res, status, reason, closeDownstream || requestUnread);
  }

  /** What is left of the app's body is read and dropped: the connection gets past it. */
  private stopReadingRequest(): void {
    this.stopBodyClock();
    this.req.off('data', reqData);
    this.req.off('end', reqEnd);
    this.kept = undefined;
    if (this.appBody === 'waiting' || this.appBody === 'reading') {
      this.appBody = 'dropped';
      this.req.resume();
    }
  }

  onResFinish(): void {
    this.ctx.observer.responded(this.res.statusCode, (performance.now() - this.startedAt) / 1000);
    this.finish();
  }

  onResClose(): void {
    if (this.phase === 'done') return;
    if (this.res.headersSent) {
      this.ctx.observer.responded(this.res.statusCode, (performance.now() - this.startedAt) / 1000);
    }
    if (this.phase !== 'failed') this.ctx.observer.failed('downstream_closed');
    this.finish();
  }

  /** Any phase → done, once. */
  private finish(): void {
    if (this.phase === 'done') return;
    this.phase = 'done';
    if (this.heldFlush !== undefined) clearImmediate(this.heldFlush);
    // Still holding the link here means the exchange did not end cleanly.
    this.lease.close();
    this.stopReadingRequest();
    this.req.off('error', ignoreError);
    this.res.off('finish', resFinish);
    this.res.off('close', resClose);
    this.owner.exchangeDone(this);
  }

  private moveTo(next: ExchangePhase, ...from: ExchangePhase[]): void {
    if (!from.includes(this.phase)) {
      throw new SidepoolError(
        'SIDEPOOL_HTTP_STATE',
        `exchange: ${this.phase} → ${next}, expected from ${from.join(' or ')}`,
      );
    }
    this.phase = next;
  }
}

/** 103 Early Hints go on only with a Link field, as Node requires. */
function earlyHints(rawHeaders: readonly string[]): Record<string, string | string[]> | undefined {
  const hints: Record<string, string | string[]> = {};
  let hasLink = false;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = (rawHeaders[i] as string).toLowerCase();
    const value = rawHeaders[i + 1] as string;
    if (name === 'link') hasLink = true;
    const prev = hints[name];
    hints[name] =
      prev === undefined ? value : Array.isArray(prev) ? [...prev, value] : [prev, value];
  }
  return hasLink ? hints : undefined;
}

// Listeners shared by every exchange, so that a request costs no closures: each finds its
// exchange on the emitter (the request or the response).
function reqData(this: Tagged, chunk: Buffer): void {
  this[kExchange]?.onReqData(chunk);
}
function reqEnd(this: Tagged): void {
  this[kExchange]?.onReqEnd();
}
function resFinish(this: Tagged): void {
  this[kExchange]?.onResFinish();
}
function resClose(this: Tagged): void {
  this[kExchange]?.onResClose();
}
function flushHeld(exchange: Exchange): void {
  exchange.flushHeld();
}
function onBodyTimeout(exchange: Exchange): void {
  exchange.bodyTimedOut();
}
