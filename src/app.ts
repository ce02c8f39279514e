import { lookup } from 'node:dns/promises';
import net from 'node:net';
import type { Logger } from 'pino';
import { openAdmin, type AdminServer } from './admin/server.js';
import { Metrics } from './admin/metrics.js';
import { listenAddress, parseAddress } from './config/address.js';
import { destinationKey, destinationName } from './config/load.js';
import { effectiveConfig } from './config/effective.js';
import { redact } from './config/redact.js';
import { planReload, type ReloadPlan } from './config/reload-plan.js';
import type { Config, RouteConfig } from './config/schema.js';
import { ConfigError, ResolveError, codeOf, reloadProblems } from './errors.js';
import { Pool, type Connector, type PoolSettings } from './pool/pool.js';
import { httpSessionFactory, httpSettings } from './proxy/http/mode.js';
import { Listener } from './proxy/listener.js';
import type { ModeContext } from './proxy/mode.js';
import { MODES, NEGOTIATES_TLS, ownReadsOf } from './proxy/modes.js';
import { Route } from './proxy/route.js';
import { TlsTermination } from './proxy/tls-listener.js';
import { earliestExpiries, type CertificateOwner } from './tls/material.js';
import type { TlsObserver } from './tls/observer.js';
import { Destination } from './upstream/destination.js';

type AppState = 'new' | 'running' | 'draining' | 'stopped';

export interface AppOptions {
  /** Re-reads the configuration, for SIGHUP and `POST /reload`. */
  loadConfig?: () => Promise<Config>;
  /** Told when a drain that the admin endpoint started has finished. */
  onStopped?: () => void;
  metrics?: Metrics;
  /** Told of TLS handshakes, their failures and certificate reloads. */
  tlsObserver?: TlsObserver;
  /**
   * Routes bind sockets of their own with SO_REUSEPORT (a worker, where the platform has
   * it: net/reuse-port.ts) instead of sharing the cluster primary's.
   */
  reusePort?: boolean;
}

/**
 * Wires config → pools → routes → admin, and owns them all. The shutdown order is
 * written here and nowhere else:
 *
 *   1. readiness turns 503 (draining);
 *   2. listeners keep accepting for `drain.delay`, then close;
 *   3. sessions get `drain.timeout` to end; the rest are ended;
 *   4. pools close;
 *   5. the admin server closes last, so metrics stay scrapeable throughout.
 */
export class App {
  config: Config;
  readonly log: Logger;
  readonly metrics: Metrics;
  private readonly tlsObserver: TlsObserver;
  /** The admin server on admin.listen. */
  admin: AdminServer | undefined;
  /** The admin control server on admin.controlListen, when there is one. */
  adminControl: AdminServer | undefined;
  /** Destination pools (tcp, http) by destination key. Modes keep their own: see allPools(). */
  readonly pools = new Map<string, Pool>();
  /** Where each pool's links go, by the same key. */
  readonly destinations = new Map<string, Destination>();
  /** Routes by name. */
  readonly routes = new Map<string, Route>();
  /** The destination (and its key) each route dials: live, retiring, or built by a reload. */
  private readonly routeDestinations = new Map<Route, { key: string; destination: Destination }>();
  /** Routes removed or replaced by a reload, finishing their sessions by a deadline. */
  private readonly retiring = new Map<Route, NodeJS.Timeout | undefined>();
  /** Pools (and their destinations) replaced by a reload, closing once no route uses them. */
  private readonly retiredUpstreams = new Set<Upstream>();
  private readonly options: AppOptions;
  private state: AppState = 'new';
  private stopping: Promise<void> | undefined;
  private reloading: Promise<unknown> = Promise.resolve();

  constructor(config: Config, logger: Logger, options: AppOptions = {}) {
    this.config = config;
    this.log = logger;
    this.options = options;
    this.metrics = options.metrics ?? new Metrics();
    this.tlsObserver = options.tlsObserver ?? this.metrics.tlsObserver();
    this.metrics.attach({
      pools: () => this.allPools(),
      routes: () => [...this.routes.values(), ...this.retiring.keys()],
      isDraining: () => this.state === 'draining' || this.state === 'stopped',
      endpoints: () => this.endpointStates(),
      certificateExpiries: () => this.certificateExpiries(),
    });
  }

  /** The earliest expiry of the certificates each TLS route and pool has loaded. */
  certificateExpiries(): ReturnType<typeof earliestExpiries> {
    const owners: CertificateOwner[] = [];
    for (const route of [...this.routes.values(), ...this.retiring.keys()]) {
      if (route.tls !== undefined) {
        owners.push({ owner: `route/${route.name}`, certificates: route.tls.certificates() });
      }
    }
    for (const destination of this.destinations.values()) {
      if (destination.tls !== undefined) {
        owners.push({
          owner: `pool/${destination.name}`,
          certificates: destination.tls.certificates(),
        });
      }
    }
    return earliestExpiries(owners);
  }

  /**
   * Every pool: the destination pools (live and retired by a reload), and those of the
   * modes of live and retiring routes.
   */
  *allPools(): Iterable<Pool> {
    yield* this.pools.values();
    for (const { pool } of this.retiredUpstreams) if (pool !== undefined) yield pool;
    for (const route of [...this.routes.values(), ...this.retiring.keys()]) {
      if (route.mode !== undefined) yield* route.mode.pools();
    }
  }

  /**
   * Resolves upstreams, builds pools and routes, binds every listener, starts warming:
   * the plan of a reload from no routes, so that a failure leaves nothing behind.
   */
  async start(): Promise<void> {
    await this.applyPlan(this.config, planReload({ ...this.config, routes: [] }, this.config));
    try {
      if (this.config.admin !== false) {
        [this.admin, this.adminControl] = await openAdmin(
          this.config.admin,
          this.adminHandlers(),
          this.log,
        );
      }
    } catch (err) {
      await this.stop(0);
      throw err;
    }
    this.state = 'running';
  }

  /** The first route's bound port, for tests and the demo. */
  get firstRoute(): Route {
    const route = this.routes.values().next().value;
    if (route === undefined) throw new Error('no routes');
    return route;
  }

  /** Sessions open now, on live routes and on routes a reload retired. */
  get activeSessions(): number {
    let n = 0;
    for (const route of [...this.routes.values(), ...this.retiring.keys()])
      n += route.activeSessions;
    return n;
  }

  get isDraining(): boolean {
    return this.state === 'draining';
  }

  /** Computed from the config in force: every route in it listening (and healthy, if asked). */
  readiness(): { ready: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (this.state === 'draining' || this.state === 'stopped') reasons.push('draining');
    else if (this.state !== 'running') reasons.push('starting');
    for (const routeConfig of this.config.routes) {
      const route = this.routes.get(routeConfig.name);
      if (route === undefined || !route.isListening) {
        reasons.push(`route ${routeConfig.name} is not listening`);
      } else if (routeConfig.readyWhen === 'upstreamHealthy' && !this.upstreamHealthy(route)) {
        const upstream = this.routeDestinations.get(route)?.destination.name ?? route.name;
        reasons.push(`route ${route.name}: upstream ${upstream} is not healthy`);
      }
    }
    return { ready: reasons.length === 0, reasons };
  }

  /** Some endpoint is up, and something proves it: a passed probe, or a link dialed. */
  private upstreamHealthy(route: Route): boolean {
    const destination = this.routeDestinations.get(route)?.destination;
    if (destination === undefined || destination.isDown()) return false;
    if (destination.hasProbes) {
      return destination.endpoints.all.some((e) => e.health === 'healthy' && e.probeSuccesses > 0);
    }
    const pools = [...route.pools()];
    return pools.length === 0 || pools.some((p) => p.totals.dials > 0 || p.options.minIdle === 0);
  }

  private *endpointStates(): Iterable<{ pool: string; endpoint: string; up: boolean }> {
    const now = Date.now();
    for (const [key, destination] of this.destinations) {
      const pool = this.pools.get(key)?.name ?? key;
      for (const e of destination.endpoints.all) yield { pool, endpoint: e.name, up: e.isUp(now) };
    }
  }

  /** A JSON-ready picture of every pool, for `/pools`; pools a reload replaced say so. */
  poolsView(): unknown {
    const upstreams: Array<Upstream & { pool: Pool; retiring: boolean }> = [
      ...[...this.pools].map(([key, pool]) => ({
        key,
        pool,
        destination: this.destinations.get(key) as Destination,
        retiring: false,
      })),
      ...[...this.retiredUpstreams].flatMap((u) =>
        u.pool === undefined ? [] : [{ ...u, pool: u.pool, retiring: true }],
      ),
    ];
    const routes = [...this.routes.values(), ...this.retiring.keys()];
    const destinationPools = upstreams.map(({ key, pool, destination, retiring }) => ({
      pool: pool.name,
      destination: key,
      ...(retiring ? { retiring: true } : {}),
      routes: routes.filter((r) => [...r.pools()].includes(pool)).map((r) => r.name),
      warm: pool.isWarm,
      ...pool.stats(),
      upstreamIdleLimitMs: pool.upstreamIdleLimitMs ?? null,
      totals: { ...pool.totals },
      endpoints: destination.view(),
    }));
    const modePools = routes.flatMap((route) => {
      const mode = route.mode;
      if (mode === undefined) return [];
      const upstream = this.routeDestinations.get(route);
      const retiring = this.retiring.has(route);
      return [...mode.pools()].map((pool) => ({
        pool: pool.name,
        destination: upstream?.key ?? '',
        ...(retiring ? { retiring: true } : {}),
        routes: [route.name],
        warm: pool.isWarm,
        ...pool.stats(),
        upstreamIdleLimitMs: pool.upstreamIdleLimitMs ?? null,
        totals: { ...pool.totals },
        ...mode.view?.(pool),
        endpoints: upstream?.destination.view() ?? [],
      }));
    });
    return [...destinationPools, ...modePools];
  }

  /**
   * Drains and stops (see the class comment). Idempotent: a second call returns the
   * same promise.
   */
  stop(timeoutMs = this.config.drain.timeout, delayMs = 0): Promise<void> {
    this.stopping ??= this.drain(timeoutMs, delayMs);
    return this.stopping;
  }

  /**
   * Re-reads the configuration and applies it whole, or not at all (see planReload):
   * new routes start, removed routes drain, changed routes and destinations are rebuilt
   * beside the old ones, sizes and timeouts apply to what runs. Reloads run one at a time.
   */
  reload(): Promise<{ ok: boolean; problems?: string[] }> {
    const next = this.reloading.then(() => this.reloadNow());
    this.reloading = next.catch(() => undefined);
    return next;
  }

  private async reloadNow(): Promise<{ ok: boolean; problems?: string[] }> {
    if (this.options.loadConfig === undefined || this.state !== 'running') {
      const problem = this.state !== 'running' ? 'not running' : 'no config file to reload from';
      this.log.warn({ problem }, 'reload refused');
      return { ok: false, problems: [problem] };
    }
    try {
      const next = await this.options.loadConfig();
      const bound = new Map([...this.routes].map(([name, route]) => [name, route.address]));
      const plan = planReload(this.config, next, bound);
      if (plan.refusals.length > 0) throw new ConfigError(plan.refusals);
      await this.applyPlan(next, plan);
      this.metrics.configReloads.inc({ result: 'success' });
      this.log.info({ routes: [...this.routes.keys()] }, 'config reloaded');
      return { ok: true };
    } catch (err) {
      this.metrics.configReloads.inc({ result: 'failure' });
      const problems = reloadProblems(err);
      for (const problem of problems) {
        this.log.error(
          { code: codeOf(err), problem },
          'reload rejected: the running config is kept',
        );
      }
      return { ok: false, problems };
    }
  }

  /**
   * Applies a plan: every prepare step, undoing those done if one fails (the error is
   * thrown and nothing has changed); then every commit step, which cannot fail.
   */
  private async applyPlan(next: Config, plan: ReloadPlan): Promise<void> {
    const routeConfig = (name: string): RouteConfig =>
      next.routes.find((r) => r.name === name) as RouteConfig;
    const made = new Map<string, Upstream>();
    const built = new Map<string, Route>();
    const bound = new Map<string, Listener>();
    const undo: Array<() => void> = [];
    try {
      for (const step of plan.prepare) {
        if (step.kind === 'create-destination') {
          const config = routeConfig(step.route);
          await checkResolvable([config]);
          const upstream = this.makeUpstream(step.key, config, made);
          made.set(step.key, upstream);
          undo.push(() => {
            upstream.destination.close();
            void upstream.pool?.destroy();
          });
          await upstream.destination.resolve();
        } else if (step.kind === 'build-route') {
          const config = routeConfig(step.route);
          const key = destinationKey(config);
          const upstream = made.get(key) ?? this.upstream(key);
          const route = this.makeRoute(config, upstream);
          built.set(step.route, route);
          undo.push(() => {
            this.routeDestinations.delete(route);
            void route.close().then(() => route.mode?.destroy());
          });
        } else {
          const route = built.get(step.route) as Route;
          const listener = new Listener(
            listenAddress(step.listen),
            `route ${step.route}`,
            route.log,
            route.ownReads !== undefined,
            this.options.reusePort === true,
          );
          undo.push(() => listener.close());
          await listener.listen();
          bound.set(step.route, listener);
        }
      }
    } catch (err) {
      for (const step of undo.reverse()) step();
      throw err;
    }

    const oldRoutes = new Map(this.routes);
    for (const step of plan.commit) {
      switch (step.kind) {
        case 'attach': {
          const route = built.get(step.route) as Route;
          const listener =
            step.listener === 'bound'
              ? (bound.get(step.route) as Listener)
              : (oldRoutes.get(step.listener.takeFrom) as Route).currentListener;
          this.routes.set(step.route, route);
          route.adopt(listener);
          route.mode?.start();
          break;
        }
        case 'retire-route': {
          const route = oldRoutes.get(step.route) as Route;
          if (this.routes.get(step.route) === route) this.routes.delete(step.route);
          this.retire(route, step.reason, next.drain.timeout);
          break;
        }
        case 'retire-destination': {
          this.retiredUpstreams.add(this.upstream(step.key));
          this.pools.delete(step.key);
          this.destinations.delete(step.key);
          break;
        }
        case 'start-destination': {
          const { pool, destination } = made.get(step.key) as Upstream;
          if (pool !== undefined) this.pools.set(step.key, pool);
          this.destinations.set(step.key, destination);
          pool?.start();
          destination.startProbes();
          break;
        }
        case 'resize-pool': {
          // The destination's pool, or (postgres, redis) the pools of the routes' modes.
          const destinationPool = this.pools.get(step.key);
          const pools =
            destinationPool !== undefined
              ? [destinationPool]
              : [...this.routes.values()]
                  .filter((r) => this.routeDestinations.get(r)?.key === step.key)
                  .flatMap((r) => [...r.pools()]);
          const settings = routeConfig(step.route).pool;
          for (const pool of pools) {
            pool.configure(settings);
            this.log.info(
              { pool: pool.name, changed: step.changed, ...settings },
              'pool settings changed',
            );
          }
          break;
        }
        case 'reconfigure-route': {
          const config = routeConfig(step.route);
          (this.routes.get(step.route) as Route).timeouts = sessionTimeouts(config);
          this.log.info({ route: step.route, changed: step.changed }, 'route settings changed');
          break;
        }
        case 'log-level':
          this.log.level = step.level;
          break;
      }
    }
    this.config = next;
    this.closeUnusedPools();
  }

  /**
   * A route leaves: it stops accepting (unless its listener went to the route that
   * replaces it) and its sessions get drain.timeout to end, then are ended.
   */
  private retire(route: Route, reason: 'removed' | 'rebuilt', timeoutMs: number): void {
    const deadline = setTimeout(() => {
      this.log.warn(
        { route: route.name, sessions: route.activeSessions, timeoutMs },
        'retired route: drain timeout, ending its sessions',
      );
      route.destroySessions();
    }, timeoutMs);
    deadline.unref();
    this.retiring.set(route, deadline);
    this.log.info(
      { route: route.name, reason, activeSessions: route.activeSessions, timeoutMs },
      reason === 'removed' ? 'route removed: draining' : 'route rebuilt: the old one drains',
    );
    void route
      .close()
      .then(() => route.mode?.close())
      .then(() => {
        clearTimeout(deadline);
        this.retiring.delete(route);
        this.routeDestinations.delete(route);
        this.metrics.routeGone(route);
        this.closeUnusedPools();
      });
  }

  /** Pools a reload replaced or dropped close gracefully once no route uses them. */
  private closeUnusedPools(): void {
    const used = new Set<Destination>();
    for (const route of [...this.routes.values(), ...this.retiring.keys()]) {
      const upstream = this.routeDestinations.get(route);
      if (upstream !== undefined) used.add(upstream.destination);
    }
    for (const upstream of this.retiredUpstreams) {
      if (used.has(upstream.destination)) continue;
      this.retiredUpstreams.delete(upstream);
      upstream.destination.close();
      void upstream.pool?.close();
      this.log.info({ pool: upstream.destination.name }, 'pool closed: no route uses it');
    }
  }

  private async drain(timeoutMs: number, delayMs: number): Promise<void> {
    this.state = 'draining';
    this.log.info({ delayMs, timeoutMs }, 'draining: not ready any more');
    if (delayMs > 0) await sleep(delayMs);
    const routes = [...this.routes.values(), ...this.retiring.keys()];
    const active = routes.reduce((n, r) => n + r.activeSessions, 0);
    const closed = Promise.all(routes.map((route) => route.close()));
    this.log.info({ activeSessions: active, timeoutMs }, 'draining: listeners closed');
    const timedOut = await Promise.race([
      closed.then(() => false),
      sleep(timeoutMs).then(() => true),
    ]);
    if (timedOut) {
      const left = routes.reduce((n, r) => n + r.activeSessions, 0);
      this.log.warn({ sessions: left }, 'drain timeout: ending the remaining sessions');
      for (const route of routes) route.destroySessions();
      await closed;
    }
    for (const deadline of this.retiring.values()) clearTimeout(deadline);
    const upstreams = [
      ...this.retiredUpstreams,
      ...[...this.pools.keys()].map((key) => this.upstream(key)),
    ];
    await Promise.all([
      ...upstreams.map(({ pool }) => pool?.destroy()),
      ...routes.map((route) => route.mode?.destroy()),
    ]);
    for (const { destination } of upstreams) destination.close();
    await Promise.all([this.admin?.close(), this.adminControl?.close()]);
    this.state = 'stopped';
    this.log.info('stopped');
  }

  private adminHandlers() {
    return {
      metrics: async () => ({
        contentType: this.metrics.contentType,
        body: await this.metrics.render(),
      }),
      readiness: () => this.readiness(),
      pools: () => this.poolsView(),
      config: () => redact(effectiveConfig(this.config)),
      reload: () => this.reload(),
      drain: () => {
        void this.stop(this.config.drain.timeout, this.config.drain.delay).then(() =>
          this.options.onStopped?.(),
        );
      },
    };
  }

  private upstream(key: string): Upstream {
    return {
      key,
      pool: this.pools.get(key),
      destination: this.destinations.get(key) as Destination,
    };
  }

  private makeRoute(routeConfig: RouteConfig, upstream: Upstream): Route {
    const { pool, destination } = upstream;
    const mode = MODES[routeConfig.mode]?.(this.modeContext(routeConfig, destination));
    const route = new Route({
      name: routeConfig.name,
      listen: listenAddress(routeConfig.listen),
      pool: mode === undefined ? pool : undefined,
      mode,
      timeouts: sessionTimeouts(routeConfig),
      logger: this.log.child({ route: routeConfig.name, pool: pool?.name ?? routeConfig.name }),
      observer: this.metrics.routeObserver(routeConfig.name),
      createSession:
        routeConfig.mode === 'http' && pool !== undefined
          ? httpSessionFactory({
              settings: httpSettings(routeConfig),
              observer: this.metrics.httpObserver(routeConfig.name, pool.name),
            })
          : undefined,
      ownReads: ownReadsOf(routeConfig.mode, routeConfig.tls !== undefined),
      reusePort: this.options.reusePort === true,
      tls:
        routeConfig.tls === undefined || NEGOTIATES_TLS.has(routeConfig.mode)
          ? undefined
          : new TlsTermination({
              route: routeConfig.name,
              settings: routeConfig.tls,
              logger: this.log.child({ route: routeConfig.name }),
              observer: this.tlsObserver,
            }),
    });
    this.routeDestinations.set(route, { key: upstream.key, destination });
    return route;
  }

  /**
   * A new pool and destination for `key`, not started. It keeps the name of the pool it
   * replaces, so that its metrics go on; else the readable name (`db:5432+tls`), unless
   * another pool to the same endpoints has that already.
   */
  private makeUpstream(key: string, route: RouteConfig, made: Map<string, Upstream>): Upstream {
    const taken = [...this.destinations.values(), ...[...made.values()].map((u) => u.destination)];
    const readable = destinationName(route);
    const name =
      this.destinations.get(key)?.name ?? (taken.some((d) => d.name === readable) ? key : readable);
    const destination = new Destination(
      name,
      route,
      this.log.child({ pool: name }),
      this.metrics.destinationObserver(name),
      this.tlsObserver,
      NEGOTIATES_TLS.has(route.mode),
      ownReadsOf(route.mode, route.upstream.tls !== undefined),
    );
    // postgres and redis routes hold pools of their own (their mode makes them).
    const pool =
      MODES[route.mode] !== undefined
        ? undefined
        : this.makePool(destination, name, destination.dialer, route.pool, {
            // Bytes on an idle http link are a broken upstream, not a greeting to replay;
            // and reused links are taken newest first, so that the excess idles out.
            keepIdleBytes: route.mode !== 'http',
            newestIdleFirst: route.mode === 'http',
          });
    return { key, pool, destination };
  }

  private makePool(
    destination: Destination,
    name: string,
    connector: Connector,
    settings: PoolSettings,
    options: { keepIdleBytes?: boolean; newestIdleFirst?: boolean } = {},
  ): Pool {
    const pool = new Pool({
      name,
      ...settings,
      connector,
      logger: this.log.child({ pool: name }),
      observer: this.metrics.poolObserver(name),
      ...options,
    });
    destination.attach(pool);
    return pool;
  }

  private modeContext(route: RouteConfig, destination: Destination): ModeContext {
    return {
      route,
      destination,
      log: this.log.child({ route: route.name }),
      metrics: this.metrics,
      makePool: (suffix, connector, settings, options) =>
        this.makePool(destination, `${route.name}/${suffix}`, connector, settings, options),
      forgetPool: (pool) => destination.detach(pool),
    };
  }
}

/** A pool and the destination its links go to, by destination key. */
interface Upstream {
  key: string;
  /** The destination's pool; none for modes that hold pools of their own (postgres, redis). */
  pool: Pool | undefined;
  destination: Destination;
}

function sessionTimeouts(route: RouteConfig): Route['timeouts'] {
  return { idleTimeoutMs: route.idleTimeout, halfCloseTimeoutMs: route.halfCloseTimeout };
}

/** An upstream host that does not resolve is a config mistake: say so and stop. */
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
