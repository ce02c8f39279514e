import net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { formatAddress, type Address } from '../config/address.js';
import {
  ConnectTimeoutError,
  DialAbortedError,
  TlsHandshakeError,
  TlsPeerClosedError,
  codeOf,
  describe,
} from '../errors.js';
import { neverThrowErrors } from '../net/guard.js';
import { TlsMaterial, type CertificateInfo, type TlsMaterialOptions } from '../tls/material.js';
import { NO_TLS_OBSERVER, type TlsObserver } from '../tls/observer.js';
import { defaultTrust } from '../tls/trust.js';
import { TlsSessionCache } from './tls-sessions.js';

/** `upstream.tls` in the config. */
export interface UpstreamTlsSettings {
  /** SNI and the name verified; default: the host of the address (or the DNS name). */
  servername?: string | undefined;
  /** PEM bundle of trusted CAs; default: Node's bundled roots and the system store (trust.ts). */
  ca?: string | undefined;
  /** Client certificate and key, for upstreams that require mTLS. */
  cert?: string | undefined;
  key?: string | undefined;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  alpn?: readonly string[] | undefined;
  sessionResumption: boolean;
  insecureSkipVerify: boolean;
}

export interface TlsOriginationOptions {
  /** The pool's readable name, for logs and the observer. */
  pool: string;
  settings: UpstreamTlsSettings;
  /**
   * The name to verify when the settings give none and the endpoints are addresses that
   * DNS discovery resolved: the DNS name. Otherwise each endpoint's own host is used.
   */
  defaultServername?: string | undefined;
  logger: Logger;
  observer?: TlsObserver;
  /** File watching, for tests. */
  watch?: Pick<TlsMaterialOptions, 'debounceMs' | 'pollIntervalMs'>;
}

/** How long a dial may take, all of it, and how much of that is left for the handshake. */
export interface HandshakeBudget {
  timeoutMs: number;
  connectTimeoutMs: number;
}

/** After this long without a new refusal, an endpoint's refusal streak starts over. */
const REFUSAL_MEMORY_MS = 60_000;
/** How long waiting dials give a finished first handshake to deliver its session ticket. */
const TICKET_WAIT_MS = 500;

interface Refusal {
  cause: Error;
  at: number;
  streak: number;
  /** Dials still to fail at once. */
  pending: number;
}

/**
 * TLS origination for one destination: turns a connected TCP socket into a verified TLS
 * link. Owns the destination's client material (CA, client certificate; re-read when the
 * files change) and its session cache.
 *
 * Verification is on unless `insecureSkipVerify` says otherwise, and a failure is never
 * retried without it. A failure rejects with TlsHandshakeError, whose `reason` says why.
 */
export class TlsOrigination {
  readonly pool: string;
  readonly material: TlsMaterial;
  readonly sessions = new TlsSessionCache();
  /**
   * Per endpoint, the first handshake in flight while no session is cached: dials that
   * start meanwhile wait for its session, so a pool warming N links pays one full
   * handshake and N-1 resumed ones instead of N full ones.
   */
  private readonly firstSessions = new Map<string, Promise<void>>();
  private readonly settings: UpstreamTlsSettings;
  private readonly defaultServername: string | undefined;
  private readonly log: Logger;
  private readonly observer: TlsObserver;
  private readonly refusals = new Map<string, Refusal>();
  private readonly unsubscribe: () => void;

  /** Loads the material now; throws TlsMaterialError when a file is unusable. */
  constructor(options: TlsOriginationOptions) {
    this.pool = options.pool;
    this.settings = options.settings;
    this.defaultServername = options.defaultServername;
    this.log = options.logger;
    this.observer = options.observer ?? NO_TLS_OBSERVER;
    const { ca, cert, key, minVersion } = options.settings;
    const trust = ca === undefined ? defaultTrust() : undefined;
    this.material = new TlsMaterial({
      side: 'upstream',
      name: this.pool,
      files: pickDefined({ ca, cert, key }),
      certRole: 'client',
      contextOptions: { minVersion, ...(trust?.ca !== undefined ? { ca: trust.ca } : {}) },
      logger: this.log,
      observer: this.observer,
      ...options.watch,
    });
    // A resumed session skips certificate verification: after the CA or the client
    // certificate changed, every new link must verify again.
    this.unsubscribe = this.material.onReload(() => this.sessions.clear());
    if (trust !== undefined && !options.settings.insecureSkipVerify) {
      this.log.info(
        { pool: this.pool, trust: trust.sources, certificates: trust.ca?.length },
        trust.systemStore
          ? "upstream TLS trusts Node's bundled roots and the system's CA store (no tls.ca given)"
          : "upstream TLS trusts Node's bundled roots only: this Node cannot read the system's CA store; give a private CA as tls.ca or in NODE_EXTRA_CA_CERTS",
      );
    }
    if (options.settings.insecureSkipVerify) {
      this.log.warn(
        { pool: this.pool },
        'upstream TLS certificate verification is OFF (insecureSkipVerify): links are encrypted but the upstream is not authenticated',
      );
    }
  }

  /** The certificates in use (client certificate, CAs), for expiry metrics. */
  certificates(): readonly CertificateInfo[] {
    return this.material.certificates();
  }

  /**
   * A dial that should fail at once, without connecting, or undefined. An upstream that
   * refused a link right after its TLS 1.3 handshake (a rejected client certificate is
   * only reported then) would otherwise look like a good dial followed by a lost link,
   * and the pool would redial at once, forever. Failing the next dials instead makes the
   * pool back off: after the n-th refusal in a row, the next n dials fail.
   */
  refusal(endpoint: string): TlsHandshakeError | undefined {
    const refusal = this.refusals.get(endpoint);
    if (refusal === undefined || refusal.pending === 0) return undefined;
    refusal.pending--;
    return new TlsHandshakeError(endpoint, refusal.cause);
  }

  /**
   * Runs the TLS handshake on a connected socket and resolves with the verified TLS
   * socket. While the endpoint's first handshake is in flight and no session is cached,
   * it first waits for that session (at most half the budget), so that it can resume.
   * Rejects, the socket destroyed, with TlsHandshakeError on any failure: a timeout
   * (reason SIDEPOOL_CONNECT_TIMEOUT, over the wait and the handshake together), or the
   * upstream resetting or closing the connection, while waiting too; with
   * DialAbortedError when `signal` aborts. From start to settlement the socket it holds
   * has an 'error' listener of ours.
   */
  handshake(
    socket: net.Socket,
    address: Address,
    budget: HandshakeBudget,
    signal?: AbortSignal,
  ): Promise<tls.TLSSocket> {
    const endpoint = formatAddress(address);
    return new Promise((resolve, reject) => {
      let phase: 'waiting' | 'handshaking' | 'settled' = 'waiting';
      let secure: tls.TLSSocket | undefined;
      let waitTimer: NodeJS.Timeout | undefined;
      const deadline =
        budget.timeoutMs > 0
          ? setTimeout(
              () => fail(new ConnectTimeoutError(endpoint, budget.connectTimeoutMs)),
              budget.timeoutMs,
            )
          : undefined;

      const onWaitError = (err: Error): void => fail(err);
      const onWaitClose = (): void => fail(new TlsPeerClosedError('during'));
      const onAbort = (): void => fail(new DialAbortedError(endpoint));
      const onSecure = (): void => {
        const connected = secure as tls.TLSSocket;
        // rejectUnauthorized already refused an unverified peer; this is the belt.
        if (!this.settings.insecureSkipVerify && !connected.authorized) {
          fail(
            Object.assign(new Error('the upstream certificate is not verified'), {
              code: String(connected.authorizationError ?? 'UNAUTHORIZED'),
            }),
          );
          return;
        }
        phase = 'settled';
        cleanup();
        this.observer.handshake('upstream', this.pool, connected.isSessionReused());
        if (connected.getProtocol() === 'TLSv1.3')
          this.watchForRefusal(connected, endpoint, budget.connectTimeoutMs);
        resolve(connected);
      };
      const onError = (err: Error): void => fail(err);
      const onClose = (): void => fail(new TlsPeerClosedError('during'));

      const begin = (): void => {
        if (phase !== 'waiting') return;
        phase = 'handshaking';
        if (waitTimer !== undefined) clearTimeout(waitTimer);
        socket.off('error', onWaitError);
        socket.off('close', onWaitClose);
        secure = this.startTls(socket, address);
        secure.once('secureConnect', onSecure);
        secure.once('error', onError);
        secure.once('close', onClose);
      };
      const fail = (cause: Error): void => {
        if (phase === 'settled') return;
        const handshaking = phase === 'handshaking';
        phase = 'settled';
        cleanup();
        secure?.destroy();
        socket.destroy();
        if (cause instanceof DialAbortedError) {
          reject(cause);
          return;
        }
        if (handshaking) this.sessions.delete(endpoint);
        const error = new TlsHandshakeError(endpoint, cause);
        this.observer.handshakeFailed('upstream', this.pool, error.reason);
        reject(error);
      };
      const cleanup = (): void => {
        if (deadline !== undefined) clearTimeout(deadline);
        if (waitTimer !== undefined) clearTimeout(waitTimer);
        signal?.removeEventListener('abort', onAbort);
        socket.off('error', onWaitError);
        socket.off('close', onWaitClose);
        secure?.off('secureConnect', onSecure);
        secure?.off('error', onError);
        secure?.off('close', onClose);
      };

      if (signal?.aborted === true) {
        fail(new DialAbortedError(endpoint));
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      const first =
        this.settings.sessionResumption && this.sessions.get(endpoint) === undefined
          ? this.firstSessions.get(endpoint)
          : undefined;
      if (first === undefined) {
        begin();
        return;
      }
      // The connected socket waits: an upstream that resets it meanwhile fails this dial.
      socket.once('error', onWaitError);
      socket.once('close', onWaitClose);
      void first.then(begin);
      // With no dial timeout the first handshake has none either; the abort still ends it.
      if (budget.timeoutMs > 0) waitTimer = setTimeout(begin, budget.timeoutMs / 2);
    });
  }

  /**
   * Starts the TLS handshake on `socket`. The first handshake to an endpoint with no cached
   * session registers itself, so that dials starting meanwhile wait for its session.
   */
  private startTls(socket: net.Socket, address: Address): tls.TLSSocket {
    const endpoint = formatAddress(address);
    const host = this.serverName(address);
    const resumption = this.settings.sessionResumption;
    let releaseFirst: (() => void) | undefined;
    if (
      resumption &&
      this.sessions.get(endpoint) === undefined &&
      !this.firstSessions.has(endpoint) &&
      // A server that issued no ticket in TICKET_WAIT_MS would make every burst of dials wait.
      !this.sessions.isTicketless(endpoint)
    ) {
      this.firstSessions.set(endpoint, new Promise<void>((resolve) => (releaseFirst = resolve)));
    }
    const settleFirst = (): void => {
      if (releaseFirst === undefined) return;
      this.firstSessions.delete(endpoint);
      releaseFirst();
      releaseFirst = undefined;
    };
    const secure = tls.connect({
      socket,
      secureContext: this.material.context,
      // SNI carries names only (RFC 6066); an IP address is still what is verified.
      servername: net.isIP(host) === 0 ? host : undefined,
      host,
      rejectUnauthorized: !this.settings.insecureSkipVerify,
      ALPNProtocols: this.settings.alpn,
      session: resumption ? this.sessions.get(endpoint) : undefined,
    });
    neverThrowErrors(secure);
    if (resumption) {
      secure.on('session', (session: Buffer) => {
        this.sessions.set(endpoint, session);
        settleFirst();
      });
      // A handshake that fails, closes, or completes without a ticket soon after (a server
      // that issues none) frees the waiters too. TLS 1.3 tickets come after the handshake,
      // late on a busy event loop (50 ms was missed under load, and six warm-up dials all
      // paid full handshakes), so the wait is generous and paid once per ticketless server.
      secure.once('close', settleFirst);
      secure.once('secureConnect', () =>
        setTimeout(() => {
          if (releaseFirst !== undefined && this.sessions.get(endpoint) === undefined) {
            this.sessions.markTicketless(endpoint);
          }
          settleFirst();
        }, TICKET_WAIT_MS).unref(),
      );
    }
    return secure;
  }

  /** Stops watching the material's files. Idempotent. */
  close(): void {
    this.unsubscribe();
    this.material.close();
  }

  private serverName(address: Address): string {
    return (
      this.settings.servername ??
      this.defaultServername ??
      (address.kind === 'tcp' ? address.host : 'localhost')
    );
  }

  /**
   * With TLS 1.3 the client finishes its handshake before the server has checked the
   * client's certificate; a server that then refuses us sends an alert (or just closes)
   * a moment later. A link that ends that way before we wrote to it and before the server
   * sent a session ticket (which it does only once it accepted us) was refused.
   */
  private watchForRefusal(secure: tls.TLSSocket, endpoint: string, windowMs: number): void {
    const connectedAt = Date.now();
    const onRefused = (cause: Error): void => {
      done();
      if (secure.bytesWritten > 0 || Date.now() - connectedAt > windowMs) return;
      this.recordRefusal(endpoint, cause);
    };
    const onError = (err: Error): void => onRefused(err);
    const onEnd = (): void => onRefused(new TlsPeerClosedError('after'));
    const onAccepted = (): void => {
      done();
      this.refusals.delete(endpoint);
    };
    const done = (): void => {
      secure.off('session', onAccepted);
      secure.off('error', onError);
      secure.off('end', onEnd);
      secure.off('close', done);
    };
    secure.once('session', onAccepted);
    secure.once('error', onError);
    secure.once('end', onEnd);
    secure.once('close', done);
  }

  private recordRefusal(endpoint: string, cause: Error): void {
    const now = Date.now();
    for (const [name, old] of this.refusals) {
      if (now - old.at > REFUSAL_MEMORY_MS) this.refusals.delete(name);
    }
    const streak = (this.refusals.get(endpoint)?.streak ?? 0) + 1;
    this.refusals.set(endpoint, { cause, at: now, streak, pending: streak });
    this.sessions.delete(endpoint);
    const reason = codeOf(cause);
    this.observer.handshakeFailed('upstream', this.pool, reason);
    this.log.warn(
      { endpoint, reason, err: describe(cause), streak },
      'upstream refused the link right after the TLS handshake',
    );
  }
}

function pickDefined<T extends Record<string, string | undefined>>(
  record: T,
): Partial<Record<keyof T, string>> {
  return Object.fromEntries(Object.entries(record).filter(([, v]) => v !== undefined)) as Partial<
    Record<keyof T, string>
  >;
}
