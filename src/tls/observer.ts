/** Which side of sidepool a TLS event happened on. */
export type TlsSide =
  /** Origination: sidepool is the client of an upstream. */
  | 'upstream'
  /** Termination: an app (or another pod) is the client of a route's listener. */
  | 'downstream';

/**
 * Told of TLS events, for metrics. `name` is the pool name (`host:port+tls`) on the
 * upstream side and the route name on the downstream side. Called on the hot path:
 * implementations must be cheap and must not throw.
 */
export interface TlsObserver {
  /** A handshake completed; `resumed` when a cached session was resumed. */
  handshake(side: TlsSide, name: string, resumed: boolean): void;
  /**
   * A handshake failed, or the peer was refused (downstream) or refused us (upstream)
   * right after it. `reason` is a stable code: Node's or OpenSSL's (`CERT_HAS_EXPIRED`,
   * `ERR_TLS_CERT_ALTNAME_INVALID`, `ERR_SSL_WRONG_VERSION_NUMBER`, …) or ours
   * (`SIDEPOOL_CONNECT_TIMEOUT`, `SIDEPOOL_TLS_CLIENT_CERT_MISSING`, …).
   */
  handshakeFailed(side: TlsSide, name: string, reason: string): void;
  /** Certificate files changed and were re-read: now in use, or rejected (the old stay). */
  reloaded(side: TlsSide, name: string, result: 'success' | 'rejected'): void;
}

export const NO_TLS_OBSERVER: TlsObserver = {
  handshake() {},
  handshakeFailed() {},
  reloaded() {},
};

/** A client certificate was required and the downstream sent none. */
export const CLIENT_CERT_MISSING = 'SIDEPOOL_TLS_CLIENT_CERT_MISSING';
