import { lookup } from 'node:dns/promises';
import net from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import type { Logger } from 'pino';
import { AdminServer } from './admin/server.js';
import { Metrics } from './admin/metrics.js';
import { listenAddress, parseAddress } from './config/address.js';
import { destinationKey, destinationName } from './config/load.js';
import type { Config, RouteConfig } from './config/schema.js';
import { ResolveError, codeOf, reloadProblems } from './errors.js';
import { Pool, type Connector, type PoolSettings } from './pool/pool.js';
import { httpSessionFactory, httpSettings } from './proxy/http/mode.js';
import type { ModeContext } from './proxy/mode.js';
import { MODES, NEGOTIATES_TLS } from './proxy/modes.js';
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
  admin: AdminServer | undefined;
  /** Destination pools (tcp, http) by destination key. Modes keep their own: see allPools(). */
  readonly pools = new Map<string, Pool>();
  /** Where each pool's links go, by the same key. */
  readonly destinations = new Map<string, Destination>();
  /** Routes by name. */
  readonly routes = new Map<string, Route>();
  /** The destination key of each route (live or retiring). */
  private readonly routeDestinations = new Map<Route, string>();
  /** Routes removed by a reload, finishing their sessions. */
  private readonly retiring = new Set<Route>();
  private readonly options: AppOptions;
  private state: AppState = 'new';
  private stopping: Promise<void> | undefined;
  private reloading: Promise<unknown> = Promise.resolve();
  private applying = false;

  constructor(config: Config, logger: Logger, options: AppOptions = {}) {
    this.config = config;
    this.log = logger;
    this.options = options;
    this.metrics = options.metrics ?? new Metrics();
    this.tlsObserver = options.tlsObserver ?? this.metrics.tlsObserver();
    this.metrics.attach({
      pools: () => this.allPools(),
      routes: () => [...this.routes.values(), ...this.retiring],
      isDraining: () => this.state === 'draining' || this.state === 'stopped',
      endpoints: () => this.endpointStates(),
      certificateExpiries: () => this.certificateExpiries(),
    });
  }

  /** The earliest expiry of the certificates each TLS route and pool has loaded. */
  certificateExpiries(): ReturnType<typeof earliestExpiries> {
    const owners: CertificateOwner[] = [];
    for (const route of [...this.routes.values(), ...this.retiring]) {
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

  /** Every pool: the destination pools, and those of the modes of live and retiring routes. */
  *allPools(): Iterable<Pool> {
    yield* this.pools.values();
    for (const route of [...this.routes.values(), ...this.retiring]) {
      if (route.mode !== undefined) yield* route.mode.pools();
    }
  }

  /** Resolves upstreams, builds pools and routes, binds every listener, starts warming. */
  async start(): Promise<void> {
    await checkResolvable(this.config.routes);
    const routes = this.config.routes.map((routeConfig) => this.makeRoute(routeConfig));
    try {
      await Promise.all([...this.destinations.values()].map((d) => d.resolve()));
      for (const route of routes) {
        await route.listen();
        this.routes.set(route.name, route);
      }
      if (this.config.admin !== false) {
        this.admin = new AdminServer(
          listenAddress(this.config.admin.listen),
          this.adminHandlers(),
          this.log,
        );
        await this.admin.listen();
      }
    } catch (err) {
      for (const route of routes) void route.close();
      await this.stop(0);
      throw err;
    }
    for (const pool of this.pools.values()) pool.start();
    for (const route of this.routes.values()) route.mode?.start();
    for (const destination of this.destinations.values()) destination.startProbes();
    this.state = 'running';
  }

  /** The first route's bound port, for tests and the demo. */
  get firstRoute(): Route {
    const route = this.routes.values().next().value;
    if (route === undefined) throw new Error('no routes');
    return route;
  }

  get isDraining(): boolean {
    return this.state === 'draining';
  }

  readiness(): { ready: boolean; reasons: string[] } {
    const reasons: string[] = [];
    if (this.state === 'draining' || this.state === 'stopped') reasons.push('draining');
    else if (this.state !== 'running') reasons.push('starting');
    for (const route of this.routes.values()) {
      if (!route.isListening) reasons.push(`route ${route.name} is not listening`);
      const wantsUpstream =
        this.config.routes.find((r) => r.name === route.name)?.readyWhen === 'upstreamHealthy';
      if (wantsUpstream && !this.upstreamHealthy(route)) {
        const upstream = this.destinationOfRoute(route)?.name ?? route.name;
        reasons.push(`route ${route.name}: upstream ${upstream} is not healthy`);
      }
    }
    return { ready: reasons.length === 0, reasons };
  }

  /** Some endpoint is up, and something proves it: a passed probe, or a link dialed. */
  private upstreamHealthy(route: Route): boolean {
    const destination = this.destinationOfRoute(route);
    if (destination === undefined || destination.isDown()) return false;
    if (destination.hasProbes) {
      return destination.endpoints.all.some((e) => e.health === 'healthy' && e.probeSuccesses > 0);
    }
    const pools = [...route.pools()];
    return pools.length === 0 || pools.some((p) => p.totals.dials > 0 || p.options.minIdle === 0);
  }

  private destinationOfRoute(route: Route): Destination | undefined {
    const key = this.routeDestinations.get(route);
    return key === undefined ? undefined : this.destinations.get(key);
  }

  private *endpointStates(): Iterable<{ pool: string; endpoint: string; up: boolean }> {
    const now = Date.now();
    for (const [key, destination] of this.destinations) {
      const pool = this.pools.get(key)?.name ?? key;
      for (const e of destination.endpoints.all) yield { pool, endpoint: e.name, up: e.isUp(now) };
    }
  }

  /** A JSON-ready picture of every pool, for `/pools`. */
  poolsView(): unknown {
    const live = [...this.routes.values()];
    const destinationPools = [...this.pools.entries()].map(([key, pool]) => ({
      pool: pool.name,
      destination: key,
      routes: live.filter((r) => [...r.pools()].includes(pool)).map((r) => r.name),
      warm: pool.isWarm,
      ...pool.stats(),
      upstreamIdleLimitMs: pool.upstreamIdleLimitMs ?? null,
      totals: { ...pool.totals },
      endpoints: this.destinations.get(key)?.view() ?? [],
    }));
    const modePools = live.flatMap((route) => {
      const mode = route.mode;
      if (mode === undefined) return [];
      const key = this.routeDestinations.get(route) ?? '';
      return [...mode.pools()].map((pool) => ({
        pool: pool.name,
        destination: key,
        routes: [route.name],
        warm: pool.isWarm,
        ...pool.stats(),
        upstreamIdleLimitMs: pool.upstreamIdleLimitMs ?? null,
        totals: { ...pool.totals },
        ...mode.view?.(pool),
        endpoints: this.destinations.get(key)?.view() ?? [],
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
   * Re-reads the configuration and applies it: new routes start, removed routes drain,
   * changed pool settings apply to the running pools. An invalid configuration changes
   * nothing. Reloads run one at a time.
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
      await this.apply(next);
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

  private async apply(next: Config): Promise<void> {
    this.applying = true;
    try {
      await this.applyNow(next);
    } finally {
      this.applying = false;
      this.closeUnusedPools();
    }
  }

  private async applyNow(next: Config): Promise<void> {
    await checkResolvable(next.routes);
    const kept = new Map<string, RouteConfig>();
    const added: RouteConfig[] = [];
    const removed: Route[] = [];
    for (const routeConfig of next.routes) {
      const current = this.routes.get(routeConfig.name);
      const before = this.config.routes.find((r) => r.name === routeConfig.name);
      if (current !== undefined && before !== undefined && sameShape(before, routeConfig)) {
        kept.set(routeConfig.name, routeConfig);
      } else {
        added.push(routeConfig);
        if (current !== undefined) removed.push(current);
      }
    }
    for (const route of this.routes.values()) {
      if (!next.routes.some((r) => r.name === route.name)) removed.push(route);
    }

    const known = new Set(this.destinations.keys());
    // A route that moves or changes upstream may reuse its old address: the old listener
    // goes first. Its sessions go on draining.
    for (const route of removed) this.retire(route);
    const started: Route[] = [];
    try {
      for (const routeConfig of added) {
        const route = this.makeRoute(routeConfig);
        started.push(route);
        await route.listen();
      }
    } catch (err) {
      for (const route of started) void route.close();
      throw err;
    }
    await Promise.all(
      [...this.destinations.entries()]
        .filter(([key]) => !known.has(key))
        .map(([, d]) => d.resolve()),
    );
    for (const route of started) {
      this.routes.set(route.name, route);
      if (route.mode !== undefined) route.mode.start();
      else route.pool.start();
    }
    for (const [key, destination] of this.destinations)
      if (!known.has(key)) destination.startProbes();
    for (const [name, routeConfig] of kept) {
      const route = this.routes.get(name) as Route;
      route.timeouts = {
        idleTimeoutMs: routeConfig.idleTimeout,
        halfCloseTimeoutMs: routeConfig.halfCloseTimeout,
      };
      for (const pool of route.pools()) {
        if (!isDeepStrictEqual(pool.options, pickPool(routeConfig))) {
          pool.configure(routeConfig.pool);
          this.log.info({ pool: pool.name, ...routeConfig.pool }, 'pool settings changed');
        }
      }
    }
    if (next.log.level !== this.config.log.level) this.log.level = next.log.level;
    if (!isDeepStrictEqual(next.admin, this.config.admin)) {
      this.log.warn('admin settings change on restart only; the admin server keeps its address');
    }
    this.config = next;
  }

  private retire(route: Route): void {
    this.routes.delete(route.name);
    this.retiring.add(route);
    this.log.info(
      { route: route.name, activeSessions: route.activeSessions },
      'route removed: draining',
    );
    void route
      .close()
      .then(() => route.mode?.close())
      .then(() => {
        this.retiring.delete(route);
        this.closeUnusedPools();
      });
  }

  /** Pools that no route (live or draining) uses any more close gracefully. */
  private closeUnusedPools(): void {
    // Mid-reload, new pools exist before their routes are in place: wait for the end.
    if (this.applying) return;
    const used = new Set<Pool>();
    const usedDestinations = new Set<string>();
    for (const route of [...this.routes.values(), ...this.retiring]) {
      for (const pool of route.pools()) used.add(pool);
      const key = this.routeDestinations.get(route);
      if (key !== undefined) usedDestinations.add(key);
    }
    for (const [route] of this.routeDestinations) {
      if (this.routes.get(route.name) !== route && !this.retiring.has(route)) {
        this.routeDestinations.delete(route);
      }
    }
    for (const [key, pool] of this.pools) {
      if (!used.has(pool)) {
        this.pools.delete(key);
        void pool.close();
        this.log.info({ pool: pool.name }, 'pool closed: no route uses it');
      }
    }
    for (const [key, destination] of this.destinations) {
      if (!usedDestinations.has(key)) {
        destination.close();
        this.destinations.delete(key);
      }
    }
  }

  private async drain(timeoutMs: number, delayMs: number): Promise<void> {
    this.state = 'draining';
    this.log.info({ delayMs, timeoutMs }, 'draining: not ready any more');
    if (delayMs > 0) await sleep(delayMs);
    const routes = [...this.routes.values(), ...this.retiring];
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
    await Promise.all([
      ...[...this.pools.values()].map((pool) => pool.destroy()),
      ...routes.map((route) => route.mode?.destroy()),
    ]);
    for (const destination of this.destinations.values()) destination.close();
    await this.admin?.close();
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
      config: () => redact(this.config),
      reload: () => this.reload(),
      drain: () => {
        void this.stop(this.config.drain.timeout, this.config.drain.delay).then(() =>
          this.options.onStopped?.(),
        );
      },
    };
  }

  private makeRoute(routeConfig: RouteConfig): Route {
    const modeFactory = MODES[routeConfig.mode];
    const destination = this.destinationFor(routeConfig);
    const mode = modeFactory?.(this.modeContext(routeConfig, destination));
    const pool = mode === undefined ? this.poolFor(routeConfig, destination) : undefined;
    const route = new Route({
      name: routeConfig.name,
      listen: listenAddress(routeConfig.listen),
      pool,
      mode,
      timeouts: {
        idleTimeoutMs: routeConfig.idleTimeout,
        halfCloseTimeoutMs: routeConfig.halfCloseTimeout,
      },
      logger: this.log.child({ route: routeConfig.name, pool: pool?.name ?? routeConfig.name }),
      observer: this.metrics.routeObserver(routeConfig.name),
      createSession:
        routeConfig.mode === 'http' && pool !== undefined
          ? httpSessionFactory({
              settings: httpSettings(routeConfig),
              observer: this.metrics.httpObserver(routeConfig.name, pool.name),
            })
          : undefined,
      ownReads: routeConfig.mode === 'tcp' || routeConfig.mode === 'redis',
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
    this.routeDestinations.set(route, destinationKey(routeConfig));
    return route;
  }

  /** The destination of a route's upstream: shared by the routes with the same key. */
  private destinationFor(route: RouteConfig): Destination {
    const key = destinationKey(route);
    let destination = this.destinations.get(key);
    if (destination === undefined) {
      // Readable (`db:5432+tls`) unless another destination has that name already.
      const readable = destinationName(route);
      const taken = [...this.destinations.values()].some((d) => d.name === readable);
      const name = taken ? key : readable;
      destination = new Destination(
        name,
        route,
        this.log.child({ pool: name }),
        this.metrics.destinationObserver(name),
        this.tlsObserver,
        NEGOTIATES_TLS.has(route.mode),
      );
      this.destinations.set(key, destination);
    }
    return destination;
  }

  private poolFor(route: RouteConfig, destination: Destination): Pool {
    const key = destinationKey(route);
    let pool = this.pools.get(key);
    if (pool === undefined) {
      pool = this.makePool(destination, destination.name, destination.dialer, route.pool, {
        // Bytes on an idle http link are a broken upstream, not a greeting to replay; and
        // reused links are taken newest first, so that the excess idles out.
        keepIdleBytes: route.mode !== 'http',
        newestIdleFirst: route.mode === 'http',
      });
      this.pools.set(key, pool);
    }
    return pool;
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

/** Routes keep running across a reload when what they listen on and dial is unchanged. */
function sameShape(a: RouteConfig, b: RouteConfig): boolean {
  return (
    a.listen === b.listen &&
    a.mode === b.mode &&
    destinationKey(a) === destinationKey(b) &&
    (a.mode !== 'http' || isDeepStrictEqual(httpSettings(a), httpSettings(b))) &&
    isDeepStrictEqual(modeSettings(a), modeSettings(b)) &&
    isDeepStrictEqual(a.tls, b.tls)
  );
}

/** A protocol mode's own settings (the route's key named like the mode), if it has any. */
function modeSettings(route: RouteConfig): unknown {
  return (route as unknown as Record<string, unknown>)[route.mode];
}

function pickPool(route: RouteConfig) {
  const { connectTimeout: _connectTimeout, ...settings } = route.pool;
  return settings;
}

const SECRET_KEYS = new Set(['passphrase', 'password', 'secret', 'token']);

/** The config for display: secret values replaced. */
export function redact(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redact);
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, SECRET_KEYS.has(k) ? '[redacted]' : redact(v)]),
    );
  }
  return value;
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
