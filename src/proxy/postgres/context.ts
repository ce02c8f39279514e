import type { Logger } from 'pino';
import type { PostgresConfig } from '../../config/schema.js';
import type { Link } from '../../pool/link.js';
import type { Pool, Waiter } from '../../pool/pool.js';
import type { Route } from '../route.js';
import type { Credentials } from './auth/credentials.js';
import type { BackendConnector } from './login.js';
import type { StatementCount, StatementRegistry } from './prepared.js';
import type { PinReason } from './sql.js';
import type { AuthFailure, PgObserver } from './metrics.js';
import type tls from 'node:tls';

/** Client states counted per pool (pgbouncer_exporter's cl_active, cl_waiting, cl_idle). */
export type ClientCount = 'active' | 'waiting' | 'idle';

/** One (database, user) pool of a postgres route. */
export interface PgPool {
  readonly database: string;
  readonly user: string;
  readonly pool: Pool;
  readonly connector: BackendConnector;
  /** The server's parameters as the last login reported them; undefined before any login. */
  params: Map<string, string> | undefined;
  readonly observer: PgObserver;
  /** Clients by state, for metrics and /pools. */
  readonly clients: Record<ClientCount, number>;
  /** Shared prepared statements on this pool's backends. */
  readonly prepared: StatementCount;
  /** Links leased as something other than a client's (login, checks, resets), for metrics. */
  lastUsedAt: number;
}

/** What a postgres session needs from its route's mode. */
export interface PgContext {
  readonly route: Route;
  readonly settings: PostgresConfig;
  readonly log: Logger;
  readonly credentials: Credentials;
  /** The route's shared prepared statements (transaction pooling). */
  readonly statements: StatementRegistry;
  /** TLS for clients that send SSLRequest, when the route has `tls`. */
  readonly tls: tls.SecureContext | undefined;
  readonly unixListener: boolean;
  /** The pool of (database, user), made on first use. */
  poolFor(database: string, user: string): PgPool;
  /** Cancel keys: a session registers the pid and key it gave its client. */
  registerCancel(pid: number, session: CancelTarget): void;
  unregisterCancel(pid: number): void;
  /** Sends a CancelRequest for the backend bound to the session with this pid and key. */
  cancel(pid: number, key: number): void;
  /** Cancels a running query on a backend (on a fresh connection, as PostgreSQL wants). */
  cancelBackend(endpoint: string, pid: number, secretKey: number): void;
  readonly isDraining: () => boolean;
  /** A login refused before the client's pool was made, for metrics. */
  metricsAuthFailed(database: string, user: string, reason: AuthFailure): void;
  /** A connection closed for bytes that break the protocol, for metrics. */
  protocolError(side: 'client' | 'server'): void;
}

export interface CancelTarget {
  readonly cancelKey: number;
  /** The bound backend's endpoint and key, when a query may run on it. */
  cancelTarget(): { endpoint: string; pid: number; secretKey: number } | undefined;
}

export type { Link, Waiter, PinReason };
