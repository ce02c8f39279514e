import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { codeOf, describe } from '../../errors.js';
import type { Route, Session } from '../route.js';
import type { SpliceOutcome } from '../splice.js';
import { Exchange, type ExchangeOwner } from './exchange.js';
import type { HttpRouteContext } from './settings.js';
import type { HttpFailure } from './observer.js';
import { inspectRequest, isRefusal } from './request-shape.js';
import { sendError, sendRawErrorAndClose } from './responses.js';
import { RequestFeed, type FeedOwner } from './request-feed.js';
import { Tunnel } from './tunnel.js';

/**
 * Requests of one connection parsed and not yet answered (the running one, those queued
 * behind it, a refusal waiting for its turn). Past this many, no more of the app's bytes
 * are parsed and its socket is not read until one is answered: a client that pipelines
 * without end must not grow our memory without end.
 */
export const MAX_UNANSWERED = 16;

/** Where the route's HTTP server finds the session of a socket it parses for. */
const SESSION = Symbol('sidepool.httpSession');

interface TaggedSocket extends Socket {
  [SESSION]?: HttpSession;
}

export function sessionOf(socket: Socket): HttpSession | undefined {
  return (socket as TaggedSocket)[SESSION];
}

/**
 *   open ──▶ tunnel ──▶ ended
 *     │                  ▲
 *     ├──▶ closing ──────┤
 *     └──────────────────┘
 *
 * open: requests are parsed (by the route's node:http server) and answered in order, one
 * exchange at a time; closing: the connection's last request has been seen (one that was
 * refused, or that asked for close, or a response that closes the connection went out):
 * what came before it is answered, nothing after it is forwarded (RFC 9112 §9.6), and the
 * connection closes after the last answer; tunnel: an upgrade or CONNECT took the
 * connection over; ended: the socket closed and nothing of the session is left.
 */
type SessionState = 'open' | 'closing' | 'tunnel' | 'ended';

/** An error found in the app's byte stream, answered once the earlier requests are. */
interface PendingError {
  status: number;
  reason: HttpFailure;
}

/**
 * http mode: one app connection. Each request borrows a link for its exchange only, so
 * this connection holds no link between requests; pipelined requests are answered in
 * order (Node queues the responses; we run the exchanges one after another).
 */
export class HttpSession implements Session, ExchangeOwner, FeedOwner {
  private state: SessionState = 'open';
  private current: Exchange | undefined;
  private readonly queue: Exchange[] = [];
  private tunnel: Tunnel | undefined;
  private tunnelDone = false;
  private outcome: SpliceOutcome | undefined;
  private headersTimer: NodeJS.Timeout | undefined;
  private awaitingHead = false;
  private bytesAtWait = 0;
  private served = 0;
  private pendingError: PendingError | undefined;
  private clientErrored = false;
  private draining = false;
  /** Requests parsed and not yet answered (see MAX_UNANSWERED). */
  private unanswered = 0;
  private feed: RequestFeed | undefined;
  private firstSocketError: Error | undefined;
  private readonly startedAt = performance.now();

  constructor(
    private readonly ctx: HttpRouteContext,
    /** The route's node:http server, which parses requests off the sockets it is given. */
    private readonly parser: Server,
    readonly id: number,
    private readonly socket: Socket,
  ) {}

  private get route(): Route {
    return this.ctx.route;
  }

  get bytesUp(): number {
    return this.socket.bytesRead;
  }

  get bytesDown(): number {
    return this.socket.bytesWritten;
  }

  start(): void {
    const socket = this.socket;
    (socket as TaggedSocket)[SESSION] = this;
    // Ours stay on after an upgrade, when node:http takes its own listeners off.
    socket.on('error', onSocketError);
    socket.on('close', onSocketClose);
    this.parser.emit('connection', socket);
    this.feed = RequestFeed.take(socket, this);
    if (this.feed === undefined) {
      this.route.log.warn(
        { session: this.id },
        'node:http is not set up as expected: pipelined requests are bounded per read only',
      );
    }
    this.waitForHead();
  }

  destroy(): void {
    if (this.state === 'ended') return;
    if (this.tunnel !== undefined && !this.tunnelDone) this.tunnel.destroy();
    this.socket.destroy();
  }

  /** The route is closing: idle connections close now, busy ones after their response. */
  drain(): void {
    this.draining = true;
    if (this.state !== 'open') return;
    if (this.current === undefined) this.socket.destroySoon();
    else {
      for (const exchange of [this.current, ...this.queue]) {
        if (!exchange.res.headersSent) exchange.res.shouldKeepAlive = false;
      }
    }
  }

  // ── from the route's HTTP server ───────────────────────────────────────

  onRequest(req: IncomingMessage, res: ServerResponse, expectContinue: boolean): void {
    this.awaitingHead = false;
    this.unanswered++;
    if (this.state !== 'open') {
      this.ignore(req);
      return;
    }
    if (this.draining) res.shouldKeepAlive = false;
    const shape = inspectRequest(req, expectContinue);
    if (isRefusal(shape)) {
      // Node sends responses in request order, so this waits behind any exchange running.
      this.refuse(req, res, shape.status, shape.problem);
      return;
    }
    const exchange = new Exchange(this.ctx, req, res, shape, this);
    // Connection: close, or HTTP/1.0 without keep-alive: the last request of this connection.
    if (!res.shouldKeepAlive) this.state = 'closing';
    if (this.current === undefined) {
      this.current = exchange;
      exchange.start();
    } else this.queue.push(exchange);
  }

  onUpgrade(req: IncomingMessage, early: Buffer): void {
    this.awaitingHead = false;
    // node:http let go of the socket: its bytes are no longer parsed as HTTP.
    this.feed?.detach();
    if (this.state !== 'open') {
      // node:http let go of the socket; it closes after the last answer all the same.
      this.ignore(req);
      return;
    }
    const shape = inspectRequest(req, false);
    if (
      this.current !== undefined ||
      isRefusal(shape) ||
      shape.framing === 'chunked' ||
      shape.length > 0
    ) {
      // A tunnel pipelined behind requests, or one with a body: not worth the complexity
      // of making them work (Node 20 leaves an upgrade's body among the bytes after its
      // head, later versions parse it into the request, so the body cannot be told from
      // the new protocol's first bytes one way for both); the app gets a 400 and a closed
      // connection.
      this.ctx.observer.failed('bad_request');
      this.ctx.observer.responded(400, 0);
      if (this.current === undefined) sendRawErrorAndClose(this.socket, 400, 'bad_request');
      else this.socket.destroy();
      return;
    }
    this.state = 'tunnel';
    this.tunnel = new Tunnel(
      this.ctx,
      req,
      shape,
      this.socket,
      early,
      req.method === 'CONNECT' ? undefined : upgradeValue(req.rawHeaders),
      this.onTunnelDone,
    );
    this.tunnel.start();
  }

  /** llhttp refused the app's bytes (or the socket failed): answer, then close. */
  onClientError(err: Error): void {
    if (this.clientErrored) return;
    this.clientErrored = true;
    const code = codeOf(err);
    if (!code.startsWith('HPE_')) {
      this.socket.destroy();
      return;
    }
    const status =
      code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'HPE_CHUNK_EXTENSIONS_OVERFLOW' ? 413 : 400;
    const reason: HttpFailure = status === 431 ? 'headers_too_large' : 'bad_request';
    this.route.log.info(
      { session: this.id, code, reason, err: describe(err) },
      'malformed request from the app',
    );
    const current = this.current;
    if (current !== undefined && !current.requestComplete) {
      // The running request's own body is malformed.
      current.rejectRequest(status, reason);
    } else if (current !== undefined) {
      this.pendingError = { status, reason };
    } else {
      this.ctx.observer.failed(reason);
      this.ctx.observer.responded(status, 0);
      sendRawErrorAndClose(this.socket, status, reason);
    }
  }

  // ── exchanges ──────────────────────────────────────────────────────────

  private refuse(req: IncomingMessage, res: ServerResponse, status: number, problem: string): void {
    this.route.log.info(
      { session: this.id, status, problem, method: req.method },
      'request refused',
    );
    // The connection closes after this answer: a parse error that follows is part of it.
    this.clientErrored = true;
    this.state = 'closing';
    this.ctx.observer.failed('bad_request');
    const observer = this.ctx.observer;
    const started = performance.now();
    res.once('finish', () => {
      observer.responded(status, (performance.now() - started) / 1000);
      this.answered();
    });
    // The request's body, if any, is not read: the connection closes after the answer.
    sendError(res, status, 'bad_request', true);
  }

  /** A request after the connection's last one: never forwarded, never answered. */
  private ignore(req: IncomingMessage): void {
    const log = this.route.log;
    if (log.isLevelEnabled('debug')) {
      log.debug(
        { session: this.id, method: req.method },
        'request after the last one of its connection: not forwarded',
      );
    }
  }

  /** How many more requests may be parsed now (the feed asks before each slice). */
  roomForRequests(): number {
    return this.clientErrored ? 0 : MAX_UNANSWERED - this.unanswered;
  }

  private answered(): void {
    this.unanswered--;
    // Read again in batches, not a request at a time.
    if (this.unanswered <= MAX_UNANSWERED / 2) this.feed?.resume();
  }

  exchangeDone(exchange: Exchange): void {
    if (exchange !== this.current) return;
    this.current = undefined;
    this.served++;
    this.answered();
    if ((this.state !== 'open' && this.state !== 'closing') || this.socket.destroyed) return;
    if (this.socket.writableEnded) {
      // The response said Connection: close (node:http ended the socket after it): what was
      // queued behind it is not forwarded.
      this.state = 'closing';
      for (const queued of this.queue.splice(0)) queued.discard();
      return;
    }
    const next = this.queue.shift();
    if (next !== undefined) {
      this.current = next;
      next.start();
      return;
    }
    if (this.state === 'closing') {
      this.socket.destroySoon();
      return;
    }
    if (this.pendingError !== undefined) {
      const { status, reason } = this.pendingError;
      this.ctx.observer.failed(reason);
      this.ctx.observer.responded(status, 0);
      sendRawErrorAndClose(this.socket, status, reason);
      return;
    }
    if (this.draining) {
      this.socket.destroySoon();
      return;
    }
    this.waitForHead();
  }

  // ── the request-head timer ─────────────────────────────────────────────

  /**
   * Starts the wait for the next request head. A connection that sends part of a head and
   * stalls gets a 408; an idle keep-alive connection that sends nothing closes quietly.
   */
  private waitForHead(): void {
    const ms = this.ctx.settings.headersTimeoutMs;
    if (ms === 0 || this.clientErrored) return;
    this.awaitingHead = true;
    this.bytesAtWait = this.socket.bytesRead;
    if (this.headersTimer === undefined) {
      this.headersTimer = setTimeout(onHeadersTimeout, ms, this);
      this.headersTimer.unref();
    } else this.headersTimer.refresh();
  }

  headersTimedOut(): void {
    if (!this.awaitingHead || this.state !== 'open' || this.current !== undefined) return;
    this.awaitingHead = false;
    if (this.served > 0 && this.socket.bytesRead === this.bytesAtWait) {
      this.socket.destroySoon();
      return;
    }
    this.ctx.observer.failed('headers_timeout');
    this.ctx.observer.responded(408, this.ctx.settings.headersTimeoutMs / 1000);
    this.route.log.info({ session: this.id, served: this.served }, 'request head too slow');
    sendRawErrorAndClose(this.socket, 408, 'headers_timeout');
  }

  // ── ending ─────────────────────────────────────────────────────────────

  private readonly onTunnelDone = (outcome: SpliceOutcome | undefined): void => {
    this.tunnelDone = true;
    this.outcome = outcome;
    if (outcome === undefined && !this.socket.destroyed) this.socket.destroySoon();
    this.maybeEnd();
  };

  socketError(err: Error): void {
    this.firstSocketError ??= err;
  }

  socketClosed(): void {
    const current = this.current;
    this.current = undefined;
    current?.abort();
    for (const exchange of this.queue.splice(0)) exchange.abort();
    // A spliced tunnel notices the close itself and ends with its own outcome.
    if (this.tunnel !== undefined && !this.tunnelDone && !this.tunnel.spliced) {
      this.tunnel.destroy();
    }
    this.maybeEnd();
  }

  private maybeEnd(): void {
    if (this.state === 'ended' || !this.socket.destroyed) return;
    if (this.tunnel !== undefined && !this.tunnelDone) return;
    this.state = 'ended';
    if (this.headersTimer !== undefined) clearTimeout(this.headersTimer);
    this.headersTimer = undefined;
    const outcome: SpliceOutcome = this.outcome ?? {
      bytesUp: this.socket.bytesRead,
      bytesDown: this.socket.bytesWritten,
      error: this.firstSocketError,
      brokenBy: this.firstSocketError === undefined ? undefined : 'downstream',
    };
    this.route.observer.closed(outcome, (performance.now() - this.startedAt) / 1000);
    this.route.sessionEnded(this);
  }
}

function upgradeValue(rawHeaders: readonly string[]): string | undefined {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (name.length === 7 && name.toLowerCase() === 'upgrade') return rawHeaders[i + 1];
  }
  return undefined;
}

// Listeners and timer callbacks shared by every session: no closures per connection.
function onSocketError(this: TaggedSocket, err: Error): void {
  this[SESSION]?.socketError(err);
}
function onSocketClose(this: TaggedSocket): void {
  this[SESSION]?.socketClosed();
}
function onHeadersTimeout(session: HttpSession): void {
  session.headersTimedOut();
}
