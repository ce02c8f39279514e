import net from 'node:net';
import type { Logger } from 'pino';
import type { Address } from '../config/address.js';
import { SidepoolError, codeOf, describe } from '../errors.js';
import { adoptOwnReads, type OwnReads } from '../net/reads.js';
import type { Pool } from '../pool/pool.js';
import type { RouteMode } from './mode.js';
import type { SpliceOutcome, SpliceTimeouts } from './splice.js';
import { Listener, type ListenerTarget } from './listener.js';
import type { TlsTermination } from './tls-listener.js';
import { TcpSession } from './tcp.js';

/** One downstream connection handled by a route's mode. */
export interface Session {
  readonly id: number;
  /** Bytes relayed so far toward the upstream and toward the app. */
  readonly bytesUp: number;
  readonly bytesDown: number;
  start(): void;
  /** Ends the session now; it then calls `route.sessionEnded(this)`. */
  destroy(): void;
  /**
   * The route stopped accepting: end once the work under way is done. Modes that hold a
   * connection open between requests (http keep-alive) close it now when idle.
   */
  drain?(): void;
}

/** Makes the session for a new downstream socket: what a mode is, to a route. */
export type SessionFactory = (route: Route, id: number, socket: net.Socket) => Session;

const tcpSession: SessionFactory = (route, id, socket) => new TcpSession(route, id, socket);

/** Told of downstream sessions, for metrics. Called on the hot path: must be cheap. */
export interface RouteObserver {
  opened(): void;
  /** A session ended; `seconds` from accept to close. */
  closed(outcome: SpliceOutcome, seconds: number): void;
  /** A downstream closed without a session: no link in time, queue full, pool closed. */
  refused(code: string): void;
}

const NO_OBSERVER: RouteObserver = { opened() {}, closed() {}, refused() {} };

export interface RouteOptions {
  name: string;
  listen: Address;
  /** The destination's pool, for modes that use one (tcp, http). */
  pool?: Pool;
  /** A protocol mode with pools of its own (postgres, redis); it makes the sessions. */
  mode?: RouteMode;
  logger: Logger;
  /** Session idle and half-close timeouts. */
  timeouts: SpliceTimeouts;
  observer?: RouteObserver;
  /** The route's mode when it uses the destination's pool; tcp when not given. */
  createSession?: SessionFactory;
  /** TLS termination: downstreams speak TLS to the listener. The route owns it. */
  tls?: TlsTermination;
  /**
   * Accepted downstreams read into buffers sidepool reuses (net/reads.ts): `views` for
   * sessions that splice or copy what they keep, `copies` for those that keep slices
   * (postgres); not with TLS termination, whose socket Node's TLS reads.
   */
  ownReads?: OwnReads;
  /**
   * Bind a socket of this process's own with SO_REUSEPORT (a TCP port other than 0), rather
   * than share the cluster primary's listening socket: each worker then has its own accept
   * queue, and the kernel spreads new connections over them by hash.
   */
  reusePort?: boolean;
}

type RouteState = 'new' | 'listening' | 'closing' | 'closed';

/**
 * One route: the sessions a listener hands it, each in the route's mode, on the route's
 * pool. Owns those sessions until they end, and its listener until a reload hands that
 * to the route that replaces it.
 */
export class Route implements ListenerTarget {
  readonly name: string;
  /** The protocol mode holding pools of its own, when the route has one. */
  readonly mode: RouteMode | undefined;
  private readonly destinationPool: Pool | undefined;
  readonly log: Logger;
  readonly observer: RouteObserver;
  /** Applied to sessions that start from now on (a reload may change them). */
  timeouts: SpliceTimeouts;
  private listener: Listener;
  /** TLS termination, when the listener speaks TLS; owned by the route. */
  readonly tls: TlsTermination | undefined;
  /** With TLS, the server (never bound) that handshakes the sockets the listener accepts. */
  private readonly tlsServer: net.Server | undefined;
  private readonly sessions = new Set<Session>();
  private readonly createSession: SessionFactory;
  /** How accepted sockets read: into our buffers (net/reads.ts), or undefined: the usual way. */
  readonly ownReads: OwnReads | undefined;
  private state: RouteState = 'new';
  private nextSessionId = 1;
  private endedBytesUp = 0;
  private endedBytesDown = 0;
  private drained: (() => void) | undefined;
  private closing: Promise<void> | undefined;

  constructor(options: RouteOptions) {
    this.name = options.name;
    this.mode = options.mode;
    this.destinationPool = options.pool;
    this.log = options.logger;
    this.observer = options.observer ?? NO_OBSERVER;
    this.timeouts = options.timeouts;
    this.createSession = options.mode?.createSession ?? options.createSession ?? tcpSession;
    this.tls = options.tls;
    this.ownReads = this.tls === undefined ? options.ownReads : undefined;
    this.listener = new Listener(
      options.listen,
      `route ${this.name}`,
      this.log,
      this.ownReads !== undefined,
      options.reusePort === true,
    );
    if (this.tls !== undefined) {
      this.tlsServer = this.tls.createServer(
        { allowHalfOpen: true, noDelay: true },
        this.onConnection,
      );
      this.tlsServer.on('error', (err) => {
        this.log.error({ code: codeOf(err), err: describe(err) }, 'TLS server error');
      });
    }
  }

  /** Binds a listener of its own. Rejects with ListenError (port in use, no permission, …). */
  async listen(): Promise<void> {
    if (this.state !== 'new') return;
    await this.listener.listen();
    this.adopt(this.listener);
  }

  /**
   * Starts accepting on `listener`, already bound: one bound for this route, or the
   * listener of the route this one replaces (which then stops getting connections).
   */
  adopt(listener: Listener): void {
    if (this.state !== 'new') throw new Error(`route ${this.name} is ${this.state}`);
    this.listener = listener;
    this.state = 'listening';
    listener.handTo(this);
    this.tls?.watch();
    this.log.info(
      { listen: this.address, tls: this.tls !== undefined, reusePort: listener.reusePort },
      'route listening',
    );
  }

  /** The destination's pool of a tcp or http route. */
  get pool(): Pool {
    if (this.destinationPool === undefined) {
      throw new SidepoolError(
        'SIDEPOOL_NO_ROUTE_POOL',
        `route ${this.name} has pools per session key, not one destination pool`,
      );
    }
    return this.destinationPool;
  }

  /** Every pool the route's sessions take links from. */
  pools(): Iterable<Pool> {
    if (this.mode !== undefined) return this.mode.pools();
    return this.destinationPool === undefined ? [] : [this.destinationPool];
  }

  /** The listener this route accepts on, for the route that replaces it. */
  get currentListener(): Listener {
    return this.listener;
  }

  get isListening(): boolean {
    return (
      this.state === 'listening' && this.listener.isListening && this.listener.isHandingTo(this)
    );
  }

  /** The bound address (with the real port when the config said port 0). */
  get address(): string {
    return this.listener.address;
  }

  /** The bound TCP port, for tests and the demo. */
  get port(): number {
    return this.listener.port;
  }

  get activeSessions(): number {
    return this.sessions.size;
  }

  /**
   * Stops accepting (closing the listener, unless a route that replaces this one has it
   * now); resolves when every session has ended. Idempotent.
   */
  close(): Promise<void> {
    if (this.closing === undefined) {
      const wasListening = this.state === 'listening';
      this.state = 'closing';
      for (const session of this.sessions) session.drain?.();
      this.tls?.close();
      if (this.listener.isHandingTo(this) || !wasListening) this.listener.close();
      this.closing = (
        this.sessions.size === 0
          ? Promise.resolve()
          : new Promise<void>((resolve) => (this.drained = resolve))
      ).then(() => {
        this.state = 'closed';
      });
      if (wasListening) this.log.info('route stopped accepting');
    }
    return this.closing;
  }

  /** Ends every session now; `close()` then resolves. */
  destroySessions(): void {
    for (const session of [...this.sessions]) session.destroy();
  }

  /** Bytes relayed so far, live sessions included: `up` toward the upstream, `down` toward the app. */
  bytesSoFar(): { up: number; down: number } {
    let up = this.endedBytesUp;
    let down = this.endedBytesDown;
    for (const session of this.sessions) {
      up += session.bytesUp;
      down += session.bytesDown;
    }
    return { up, down };
  }

  /** Called by a session when it has ended. */
  sessionEnded(session: Session): void {
    this.endedBytesUp += session.bytesUp;
    this.endedBytesDown += session.bytesDown;
    this.sessions.delete(session);
    if (this.sessions.size === 0) this.drained?.();
  }

  /** A socket the listener accepted. */
  accept(socket: net.Socket): void {
    if (this.tlsServer !== undefined) this.tlsServer.emit('connection', socket);
    else this.onConnection(socket);
  }

  private readonly onConnection = (accepted: net.Socket): void => {
    if (this.state !== 'listening') {
      accepted.destroy();
      return;
    }
    const socket = this.ownReads === undefined ? accepted : adoptOwnReads(accepted, this.ownReads);
    const session = this.createSession(this, this.nextSessionId++, socket);
    this.sessions.add(session);
    this.observer.opened();
    session.start();
  };
}
