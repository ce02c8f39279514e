import { STATUS_CODES, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { HttpResponseError, SidepoolError, codeOf, describe } from '../../errors.js';
import type { Link } from '../../pool/link.js';
import { CHUNK_KEPT, READ_PAUSE, readWith, stopReading } from '../../net/reads.js';
import { Splice, type SpliceOutcome } from '../splice.js';
import { requestHead, responseHeaders, type RequestTarget } from './headers.js';
import { LinkLease, type LeaseHolder } from './link-lease.js';
import type { HttpFailure } from './observer.js';
import type { BodyKind, ResponseHead } from './response-parser.js';
import { FAILURE_STATUS, sendRawErrorAndClose } from './responses.js';
import type { HttpRouteContext } from './settings.js';

/**
 *   acquiring ──▶ asking ──▶ spliced ──▶ done
 *       │           │
 *       │           └──▶ refused ──▶ done
 *       └──────────────────────────────▶ done
 *
 * acquiring: waiting for a link; asking: the upgrade (or CONNECT) went upstream and we wait
 * for its answer; spliced: the upstream switched (101, or 2xx to CONNECT) and bytes flow
 * both ways as in tcp mode; refused: any other answer, passed on, after which the app's
 * connection closes. Until the switch the app's socket is read by the tunnel: an app that
 * leaves ends it at once (the link closes), and what the app sends early waits.
 */
type TunnelState = 'acquiring' | 'asking' | 'refused' | 'spliced' | 'done';

/** What the app may send ahead of the switch before its socket stops being read. */
const MAX_HELD_BYTES = 64 * 1024;

const kTunnel = Symbol('sidepool.httpTunnel');

interface Tagged {
  [kTunnel]?: Tunnel | undefined;
}

/**
 * An Upgrade (WebSocket, h2c…) or CONNECT request. The link leaves the pool for good: it
 * carries another protocol from the switch on, and is closed when the tunnel ends.
 */
export class Tunnel implements LeaseHolder {
  private state: TunnelState = 'acquiring';
  private readonly lease: LinkLease;
  private splice: Splice | undefined;
  /** The link, once the splice has it. */
  private spliceLink: Link | undefined;
  /**
   * What the app sent after its request head (the session refuses upgrades with a body):
   * it is for the new protocol and waits for the switch. An upstream that refuses would
   * otherwise read it as HTTP, requests sidepool never saw.
   */
  private held: Buffer[] = [];
  private heldBytes = 0;
  /** Something of the upstream's answer (an interim response, a refusal) reached the app. */
  private wroteDownstream = false;
  private readonly isConnect: boolean;
  private readonly startedAt = performance.now();

  constructor(
    private readonly ctx: HttpRouteContext,
    private readonly req: IncomingMessage,
    /** Without a body: the session refuses an upgrade that has one. */
    private readonly shape: RequestTarget,
    private readonly down: Socket,
    early: Buffer,
    private readonly upgrade: string | undefined,
    private readonly onDone: (outcome: SpliceOutcome | undefined) => void,
  ) {
    this.isConnect = req.method === 'CONNECT';
    this.lease = new LinkLease(ctx, this);
    if (early.length > 0) this.hold(early);
  }

  /** Bytes flow both ways now; the splice sees either side close and ends the tunnel. */
  get spliced(): boolean {
    return this.state === 'spliced';
  }

  start(): void {
    const down = this.down as Socket & Tagged;
    down[kTunnel] = this;
    down.on('end', onDownEnd);
    readWith(down, onDownBytes);
    this.lease.acquire();
  }

  /** Ends the tunnel now: the app's connection is gone, or the session is destroyed. */
  destroy(): void {
    if (this.splice !== undefined) this.splice.destroy();
    else this.appLeft();
  }

  // ── the app's side, until the switch ───────────────────────────────────

  appBytes(chunk: Buffer): number {
    this.hold(chunk);
    return this.heldBytes > MAX_HELD_BYTES ? CHUNK_KEPT | READ_PAUSE : CHUNK_KEPT;
  }

  private hold(chunk: Buffer): void {
    this.held.push(chunk);
    this.heldBytes += chunk.length;
  }

  /** The app's FIN before the switch: it has gone (a tunnel is not half-closed before it opens). */
  appLeft(): void {
    if (this.state === 'done') return;
    if (this.state === 'acquiring' || this.state === 'asking') {
      this.ctx.observer.failed('downstream_closed');
    }
    this.lease.close();
    this.down.destroy();
    this.end(undefined);
  }

  private stopWatchingApp(): void {
    const down = this.down as Socket & Tagged;
    if (down[kTunnel] === undefined) return;
    down[kTunnel] = undefined;
    down.off('end', onDownEnd);
    stopReading(down);
  }

  // ── the link ───────────────────────────────────────────────────────────

  linked(): void {
    this.expect('acquiring', 'link');
    this.state = 'asking';
    const socket = this.lease.socket as Socket;
    socket.write(requestHead(this.req, this.shape, this.ctx.settings, this.upgrade), 'latin1');
  }

  noLink(reason: HttpFailure, cause: Error | undefined): void {
    this.fail(reason, cause);
  }

  upstreamLost(): void {
    this.fail('upstream_error', this.lease.error);
  }

  badResponse(): void {
    this.fail('bad_response');
  }

  upstreamTimedOut(): void {
    this.fail('response_timeout');
  }

  upstreamDrained(): void {
    // Nothing but the head is written before the switch.
  }

  // ── the upstream's answer ──────────────────────────────────────────────

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
    this.expect('asking', 'refuse');
    this.state = 'refused';
    // What the app sent for the new protocol is dropped with the connection.
    this.stopWatchingApp();
    this.held = [];
    this.heldBytes = 0;
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
    this.lease.forward(chunk, this.down);
  }

  onTrailers(): void {
    // A body sent until close has no trailer section.
  }

  onComplete(rest: Buffer | undefined): void {
    if (this.state === 'refused') {
      this.lease.release(false);
      this.down.destroySoon();
      this.end(undefined);
      return;
    }
    this.expect('asking', 'switch');
    this.state = 'spliced';
    this.stopWatchingApp();
    const link = this.lease.unbind() as Link;
    this.spliceLink = link;
    if (rest !== undefined) this.down.write(rest);
    const log = this.ctx.route.log;
    if (log.isLevelEnabled('debug')) {
      log.debug({ link: link.id, method: this.req.method, upgrade: this.upgrade }, 'tunnel open');
    }
    const early = { chunks: this.held, ended: false };
    this.held = [];
    this.heldBytes = 0;
    this.splice = new Splice(this.down, link.socket, this.onSpliceDone);
    this.splice.start(this.ctx.route.timeouts, early);
  }

  private readonly onSpliceDone = (outcome: SpliceOutcome): void => {
    if (this.spliceLink !== undefined) this.ctx.route.pool.release(this.spliceLink, false);
    this.spliceLink = undefined;
    this.end(outcome);
  };

  // ── ending ─────────────────────────────────────────────────────────────

  /** The tunnel could not be set up: the app gets a status, or a cut connection. */
  private fail(reason: HttpFailure, cause?: Error): void {
    if (this.state === 'done' || this.state === 'spliced') return;
    this.ctx.observer.failed(reason);
    this.ctx.route.log.info(
      {
        reason,
        method: this.req.method,
        link: this.lease.link?.id,
        code: cause === undefined ? undefined : codeOf(cause),
        err: cause === undefined ? undefined : describe(cause),
      },
      'http tunnel failed',
    );
    this.lease.close();
    this.stopWatchingApp();
    if (this.wroteDownstream) this.down.destroy();
    else {
      const status = FAILURE_STATUS[reason];
      this.ctx.observer.responded(status, (performance.now() - this.startedAt) / 1000);
      sendRawErrorAndClose(this.down, status, reason);
    }
    this.end(undefined);
  }

  /** Any state → done, once: the session hears of it exactly once. */
  private end(outcome: SpliceOutcome | undefined): void {
    if (this.state === 'done') return;
    this.state = 'done';
    this.stopWatchingApp();
    this.lease.close();
    this.onDone(outcome);
  }

  private expect(state: TunnelState, action: string): void {
    if (this.state !== state) {
      throw new SidepoolError(
        'SIDEPOOL_HTTP_STATE',
        `tunnel: ${action} while ${this.state}, expected ${state}`,
      );
    }
  }
}

function onDownBytes(this: Duplex, chunk: Buffer): number {
  return (this as Duplex & Tagged)[kTunnel]?.appBytes(chunk) ?? CHUNK_KEPT | READ_PAUSE;
}
function onDownEnd(this: Tagged): void {
  this[kTunnel]?.appLeft();
}
