import { lookup } from 'node:dns/promises';
import net from 'node:net';
import type { Logger } from 'pino';
import { parseAddress, type Address } from './config/address.js';
import { destinationKey } from './config/load.js';
import type { Config, RouteConfig } from './config/schema.js';
import { ResolveError } from './errors.js';
import { Pool } from './pool/pool.js';
import { Route } from './proxy/route.js';
import { Dialer } from './upstream/dialer.js';

type AppState = 'new' | 'running' | 'draining' | 'stopped';

/**
 * Wires config → pools → routes, and owns them. The shutdown order is written here and
 * nowhere else: stop accepting, let sessions finish up to the drain timeout, end the
 * rest, then close the pools.
 */
export class App {
  readonly config: Config;
  readonly log: Logger;
  readonly pools = new Map<string, Pool>();
  readonly routes: Route[] = [];
  private state: AppState = 'new';
  private stopping: Promise<void> | undefined;

  constructor(config: Config, logger: Logger) {
    this.config = config;
    this.log = logger;
  }

  /** Resolves upstreams, builds pools and routes, binds every listener, starts warming. */
  async start(): Promise<void> {
    await checkResolvable(this.config.routes);
    for (const routeConfig of this.config.routes) {
      const pool = this.poolFor(routeConfig);
      this.routes.push(
        new Route({
          name: routeConfig.name,
          listen: parseAddress(routeConfig.listen, {
            allowAnyHost: true,
            allowPortZero: true,
          }) as Address,
          pool,
          timeouts: {
            idleTimeoutMs: routeConfig.idleTimeout,
            halfCloseTimeoutMs: routeConfig.halfCloseTimeout,
          },
          logger: this.log.child({ route: routeConfig.name, pool: pool.name }),
        }),
      );
    }
    try {
      for (const route of this.routes) await route.listen();
    } catch (err) {
      await this.stop(0);
      throw err;
    }
    for (const pool of this.pools.values()) pool.start();
    this.state = 'running';
  }

  get isRunning(): boolean {
    return this.state === 'running';
  }

  /**
   * Drains and stops: listeners close after `delayMs`, sessions get `timeoutMs` to end,
   * the rest are ended, pools close. Idempotent.
   */
  stop(timeoutMs = this.config.drain.timeout, delayMs = 0): Promise<void> {
    this.stopping ??= this.drain(timeoutMs, delayMs);
    return this.stopping;
  }

  private async drain(timeoutMs: number, delayMs: number): Promise<void> {
    this.state = 'draining';
    if (delayMs > 0) {
      this.log.info({ delayMs }, 'draining: listeners keep accepting for the drain delay');
      await sleep(delayMs);
    }
    const active = this.routes.reduce((n, r) => n + r.activeSessions, 0);
    this.log.info({ activeSessions: active, timeoutMs }, 'draining: listeners closed');
    const closed = Promise.all(this.routes.map((route) => route.close()));
    const timedOut = await Promise.race([
      closed.then(() => false),
      sleep(timeoutMs).then(() => true),
    ]);
    if (timedOut) {
      const left = this.routes.reduce((n, r) => n + r.activeSessions, 0);
      this.log.warn({ sessions: left }, 'drain timeout: ending the remaining sessions');
      for (const route of this.routes) route.destroySessions();
      await closed;
    }
    await Promise.all([...this.pools.values()].map((pool) => pool.destroy()));
    this.state = 'stopped';
    this.log.info('stopped');
  }

  private poolFor(route: RouteConfig): Pool {
    const key = destinationKey(route);
    let pool = this.pools.get(key);
    if (pool === undefined) {
      const endpoints = route.upstream.addresses.map((text) => parseAddress(text) as Address);
      pool = new Pool({
        name: key,
        ...route.pool,
        connector: new Dialer({ endpoints, connectTimeout: route.pool.connectTimeout }),
        logger: this.log.child({ pool: key }),
      });
      this.pools.set(key, pool);
    }
    return pool;
  }
}

/** An upstream host that does not resolve at start is a config mistake: say so and stop. */
async function checkResolvable(routes: readonly RouteConfig[]): Promise<void> {
  const hosts = new Set<string>();
  for (const route of routes) {
    for (const text of route.upstream.addresses) {
      const address = parseAddress(text);
      if (typeof address === 'object' && address.kind === 'tcp' && net.isIP(address.host) === 0) {
        hosts.add(address.host);
      }
    }
  }
  await Promise.all(
    [...hosts].map(async (host) => {
      try {
        await lookup(host);
      } catch (err) {
        throw new ResolveError(host, err);
      }
    }),
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
