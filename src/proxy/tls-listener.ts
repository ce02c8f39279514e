import type net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { codeOf, describe } from '../errors.js';
import { TlsMaterial, type CertificateInfo, type TlsMaterialOptions } from '../tls/material.js';
import { CLIENT_CERT_MISSING, NO_TLS_OBSERVER, type TlsObserver } from '../tls/observer.js';

/** `route.tls` in the config. */
export interface RouteTlsSettings {
  /** The certificate (and chain) the listener presents, and its key. */
  cert: string;
  key: string;
  /** CAs whose client certificates are accepted; needed with requireClientCert. */
  ca?: string | undefined;
  /** mTLS: a downstream without a certificate that `ca` verifies is refused. */
  requireClientCert: boolean;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  /** A downstream that has not finished its handshake by then is closed. */
  handshakeTimeout: number;
}

export interface TlsTerminationOptions {
  route: string;
  settings: RouteTlsSettings;
  logger: Logger;
  observer?: TlsObserver;
  /** File watching, for tests. */
  watch?: Pick<TlsMaterialOptions, 'debounceMs' | 'pollIntervalMs'>;
}

/**
 * TLS termination for one route: makes the route's listener a TLS server, hands on only
 * downstreams whose handshake succeeded (and, with requireClientCert, whose certificate
 * verified), and closes and counts the rest: plain text, bad certificates, timeouts. The
 * listener keeps serving whatever one connection does.
 *
 * Owns the route's server material; when the files change, new handshakes use the new
 * material and established connections are left alone.
 */
export class TlsTermination {
  readonly route: string;
  readonly material: TlsMaterial;
  private readonly settings: RouteTlsSettings;
  private readonly log: Logger;
  private readonly observer: TlsObserver;
  /** Connections still in their handshake, by remote address, so close() can end them. */
  private readonly handshaking = new Map<string, net.Socket>();
  private unsubscribe: (() => void) | undefined;
  private closed = false;

  /** Loads the material now; throws TlsMaterialError when a file is unusable. */
  constructor(options: TlsTerminationOptions) {
    this.route = options.route;
    this.settings = options.settings;
    this.log = options.logger;
    this.observer = options.observer ?? NO_TLS_OBSERVER;
    const { cert, key, ca, minVersion } = options.settings;
    this.material = new TlsMaterial({
      side: 'downstream',
      name: this.route,
      files: ca === undefined ? { cert, key } : { cert, key, ca },
      certRole: 'server',
      contextOptions: { minVersion },
      logger: this.log,
      observer: this.observer,
      ...options.watch,
    });
  }

  /** The certificates in use (server certificate and chain, client CAs), for expiry metrics. */
  certificates(): readonly CertificateInfo[] {
    return this.material.certificates();
  }

  /**
   * Makes the route's listener. `onSecureConnection` gets each downstream once its
   * handshake succeeded and it was admitted.
   */
  createServer(
    serverOptions: net.ServerOpts,
    onSecureConnection: (socket: tls.TLSSocket) => void,
  ): tls.Server {
    if (this.unsubscribe !== undefined)
      throw new Error(`route ${this.route} already has a TLS server`);
    const server = tls.createServer({
      ...serverOptions,
      ...this.material.secureContextOptions(),
      requestCert: this.settings.requireClientCert,
      // Client certificates are checked in admit(), so that a refusal is logged and
      // counted with its reason; Node would close the connection without a word.
      rejectUnauthorized: false,
      handshakeTimeout: this.settings.handshakeTimeout,
    });
    server.on('connection', this.onConnection);
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      this.handshakeOver(socket);
      if (this.admit(socket)) onSecureConnection(socket);
    });
    server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
      this.handshakeOver(socket);
      this.refuse(socket, codeOf(err), err);
    });
    this.unsubscribe = this.material.onReload(() => {
      // Node keeps the session ticket keys across this, so tickets issued before resume.
      server.setSecureContext(this.material.secureContextOptions());
    });
    return server;
  }

  /** Starts re-reading the files when they change. */
  watch(): void {
    this.material.watch();
  }

  /**
   * Ends the connections still in their handshake (they hold no session that could
   * drain) and stops watching the files. Idempotent.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const socket of this.handshaking.values()) socket.destroy();
    this.handshaking.clear();
    this.unsubscribe?.();
    this.material.close();
  }

  private readonly onConnection = (socket: net.Socket): void => {
    if (this.closed) {
      socket.destroy();
      return;
    }
    // A unix socket peer has no address; its handshake is bounded by handshakeTimeout.
    const key = remoteKey(socket);
    if (key === undefined) return;
    this.handshaking.set(key, socket);
    socket.once('close', () => {
      if (this.handshaking.get(key) === socket) this.handshaking.delete(key);
    });
  };

  /** The TLS socket and the TCP socket under it share their remote address and port. */
  private handshakeOver(socket: tls.TLSSocket): void {
    const key = remoteKey(socket);
    if (key !== undefined) this.handshaking.delete(key);
  }

  private admit(socket: tls.TLSSocket): boolean {
    if (this.settings.requireClientCert && !socket.authorized) {
      const peer = socket.getPeerCertificate();
      const reason =
        peer === null || Object.keys(peer).length === 0
          ? CLIENT_CERT_MISSING
          : String(socket.authorizationError);
      this.refuse(socket, reason);
      return false;
    }
    this.observer.handshake('downstream', this.route, socket.isSessionReused());
    return true;
  }

  private refuse(socket: tls.TLSSocket, reason: string, err?: Error): void {
    this.observer.handshakeFailed('downstream', this.route, reason);
    this.log.info(
      {
        reason,
        remote:
          socket.remoteAddress === undefined
            ? undefined
            : `${socket.remoteAddress}:${socket.remotePort}`,
        err: err && describe(err),
      },
      'downstream TLS handshake failed: connection closed',
    );
    socket.destroy();
  }
}

function remoteKey(socket: net.Socket): string | undefined {
  return socket.remotePort === undefined
    ? undefined
    : `${socket.remoteAddress}|${socket.remotePort}`;
}
