import net from 'node:net';
import type { Address } from '../config/address.js';
import { formatAddress } from '../config/address.js';
import {
  ConnectError,
  ConnectTimeoutError,
  DialAbortedError,
  NoHealthyEndpointError,
} from '../errors.js';
import { neverThrowErrors } from '../net/guard.js';
import { connectOwnReads, type OwnReads } from '../net/reads.js';
import type { Connector, Dialed } from '../pool/pool.js';
import type { Endpoint, EndpointSet } from './endpoints.js';
import type { TlsOrigination } from './tls.js';

export interface DialerOptions {
  /** The destination's readable name, for errors. */
  name: string;
  endpoints: EndpointSet;
  connectTimeout: number;
  /** TCP keep-alive probe delay on every upstream socket. */
  keepAliveDelay?: number;
  /** TLS to the upstream: every connection is handshaken and verified before use. */
  tls?: TlsOrigination;
  /**
   * Links read into buffers sidepool reuses (net/reads.ts): `views` for modes whose links
   * feed a splice or a multiplexer, `copies` for postgres, whose sessions keep slices; not
   * with TLS, whose socket Node's TLS layer reads.
   */
  ownReads?: OwnReads;
}

/**
 * Makes links: asks the endpoint set which endpoint is next, connects with a timeout,
 * and sets the socket up for pooling (keep-alive, no Nagle delay, half-close allowed so
 * that a downstream FIN can be passed on as a FIN). Reports each outcome to the endpoint
 * set, which runs outlier detection on it.
 */
export class Dialer implements Connector {
  readonly name: string;
  readonly endpoints: EndpointSet;
  private readonly connectTimeout: number;
  private readonly keepAliveDelay: number;
  private readonly tls: TlsOrigination | undefined;
  private readonly ownReads: OwnReads | undefined;
  /** Aborted by close(): every dial and probe connection in flight gives up. */
  private readonly closing = new AbortController();

  constructor(options: DialerOptions) {
    this.name = options.name;
    this.endpoints = options.endpoints;
    this.connectTimeout = options.connectTimeout;
    this.keepAliveDelay = options.keepAliveDelay ?? 30_000;
    this.tls = options.tls;
    this.ownReads = options.tls === undefined ? options.ownReads : undefined;
  }

  /**
   * Dials the endpoint the balancer picks; when that fails, the next one, until each
   * available endpoint was tried once: one dead endpoint costs a retry, not a failed dial.
   */
  async dial(): Promise<Dialed> {
    const tried = new Set<Endpoint>();
    let lastError: Error | undefined;
    for (let endpoint = this.endpoints.pick(); endpoint; endpoint = this.endpoints.pick(tried)) {
      tried.add(endpoint);
      let socket: net.Socket;
      try {
        const refused = this.tls?.refusal(endpoint.name);
        if (refused !== undefined) throw refused;
        socket = await this.connect(endpoint.address, this.connectTimeout, this.ownReads);
      } catch (err) {
        if (err instanceof DialAbortedError) throw err;
        this.endpoints.failed(endpoint, true);
        lastError = err as Error;
        continue;
      }
      this.endpoints.dialSucceeded(endpoint);
      const connected = endpoint;
      this.endpoints.linkOpened(connected);
      socket.once('close', () => this.endpoints.linkClosed(connected));
      return { socket, endpoint: connected.name };
    }
    throw lastError ?? new NoHealthyEndpointError(this.name);
  }

  /** No endpoint can be expected to take a dial now. */
  isDown(): boolean {
    return this.endpoints.allDown;
  }

  /** Why `endpointName` takes no new links now, or undefined while it does. */
  whyUnavailable(endpointName: string): 'unhealthy' | 'endpoint_removed' | undefined {
    const endpoint = this.endpoints.find(endpointName);
    if (endpoint === undefined || endpoint.removed) return 'endpoint_removed';
    return endpoint.isAvailable() ? undefined : 'unhealthy';
  }

  /** A link to `endpoint` broke (reset): counts toward its ejection. */
  linkBroke(endpointName: string): void {
    const endpoint = this.endpoints.find(endpointName);
    if (endpoint !== undefined) this.endpoints.failed(endpoint, false);
  }

  /**
   * One connection to one address, ready to carry bytes (TLS handshaken, when the
   * upstream is TLS); also what active probes use. Rejects with ConnectTimeoutError,
   * ConnectError or TlsHandshakeError, or DialAbortedError once the dialer is closed. With
   * `ownReads`, the socket reads into our buffers. The socket never throws an 'error'
   * (net/guard.ts): its holder listens for what it needs.
   */
  connect(
    address: Address,
    timeoutMs = this.connectTimeout,
    ownReads?: OwnReads,
  ): Promise<net.Socket> {
    const name = formatAddress(address);
    const signal = this.closing.signal;
    if (signal.aborted) return Promise.reject(new DialAbortedError(name));
    const startedAt = performance.now();
    return new Promise((resolve, reject) => {
      const options: net.NetConnectOpts =
        address.kind === 'unix'
          ? { path: address.path, allowHalfOpen: true }
          : {
              host: address.host,
              port: address.port,
              allowHalfOpen: true,
              noDelay: true,
              keepAlive: true,
              keepAliveInitialDelay: this.keepAliveDelay,
            };
      const socket =
        ownReads === undefined ? net.connect(options) : connectOwnReads(options, ownReads);
      neverThrowErrors(socket);
      const timer =
        timeoutMs > 0
          ? setTimeout(() => fail(new ConnectTimeoutError(name, timeoutMs)), timeoutMs)
          : undefined;
      const onConnect = (): void => {
        cleanup();
        if (this.tls === undefined) {
          resolve(socket);
          return;
        }
        // The connect timeout covers the handshake too: it gets what is left.
        const left = timeoutMs > 0 ? Math.max(1, timeoutMs - (performance.now() - startedAt)) : 0;
        this.tls
          .handshake(socket, address, { timeoutMs: left, connectTimeoutMs: timeoutMs }, signal)
          .then(resolve, reject);
      };
      const onError = (err: Error): void => fail(new ConnectError(name, err));
      const onAbort = (): void => fail(new DialAbortedError(name));
      const fail = (err: Error): void => {
        cleanup();
        socket.destroy();
        reject(err);
      };
      const cleanup = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        socket.off('connect', onConnect);
        socket.off('error', onError);
        signal.removeEventListener('abort', onAbort);
      };
      socket.once('connect', onConnect);
      socket.once('error', onError);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Gives up every dial in flight, their sockets destroyed; no new ones start. Idempotent. */
  close(): void {
    this.closing.abort();
  }
}
