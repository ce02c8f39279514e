import type { Logger } from 'pino';
import type { Metrics } from '../admin/metrics.js';
import type { RouteConfig } from '../config/schema.js';
import type { Connector, Pool, PoolSettings } from '../pool/pool.js';
import type { Destination } from '../upstream/destination.js';
import type { SessionFactory } from './route.js';

/**
 * What the app gives a protocol mode that keeps pools of its own (postgres: one per
 * database and user; redis: one per database) rather than one pool per destination.
 */
export interface ModeContext {
  /** The route's config: validated, defaults filled. */
  readonly route: RouteConfig;
  /**
   * Endpoints, health and the dialer of the route's upstream. `destination.dialer.dial()`
   * makes one raw connection to a healthy endpoint. For modes that negotiate TLS inside
   * their protocol (postgres: SSLRequest), the dialer makes plain TCP and the mode runs
   * `destination.tls.handshake()` on the socket itself.
   */
  readonly destination: Destination;
  /** A child logger bound to the route. */
  readonly log: Logger;
  /** Where a mode registers metric families of its own. */
  readonly metrics: Metrics;
  /**
   * A pool of links to the route's destination that `connector` makes (typically a dial
   * through `destination.dialer`, then the protocol's login). It is named
   * `${route}/${suffix}`, observed in the pool metrics under that name, listed in /pools,
   * and its idle links are evicted when an endpoint goes down. The mode owns it: it starts
   * the pool and closes it.
   */
  makePool(
    suffix: string,
    connector: Connector,
    settings: PoolSettings,
    options?: { keepIdleBytes?: boolean; newestIdleFirst?: boolean },
  ): Pool;
  /** Stops observing a pool the mode made and closed (e.g. unused past its idle timeout). */
  forgetPool(pool: Pool): void;
}

/** A protocol mode's part of a route: its sessions, and the pools it holds. */
export interface RouteMode {
  readonly createSession: SessionFactory;
  /** The route's listener is bound: warm what the config names. */
  start(): void;
  /** Every pool the mode holds now, for metrics, /pools and readiness. */
  pools(): Iterable<Pool>;
  /** Mode-specific numbers for a pool's entry in /pools. */
  view?(pool: Pool): Record<string, unknown>;
  /** The route's sessions have ended: close the pools gracefully. Idempotent. */
  close(): Promise<void>;
  /** Close every pool and link now. Idempotent. */
  destroy(): Promise<void>;
}

export type ModeFactory = (ctx: ModeContext) => RouteMode;
