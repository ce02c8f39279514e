import type tls from 'node:tls';
import { parseAddress, type Address } from '../../config/address.js';
import { postgresSchema, type PostgresConfig } from '../../config/schema.js';
import { describe } from '../../errors.js';
import type { Pool } from '../../pool/pool.js';
import { TlsMaterial } from '../../tls/material.js';
import type { ModeContext, ModeFactory, RouteMode } from '../mode.js';
import type { Route, SessionFactory } from '../route.js';
import { Credentials } from './auth/credentials.js';
import { AuthFile, parseSecret, type Secret } from './auth/secrets.js';
import { Backend } from './backend.js';
import type { CancelTarget, PgContext, PgPool } from './context.js';
import { BackendConnector, connectBackend } from './login.js';
import { cancelRequest } from './messages.js';
import { PgMetrics, type PgPoolGauges } from './metrics.js';
import { StatementRegistry } from './prepared.js';
import { PgSession } from './session.js';

/** How often pools made on first use are checked for disuse. */
const SWEEP_MS = 10_000;
/** The login after the TCP connect gets this long on top of connectTimeout. */
const LOGIN_EXTRA_MS = 5000;

/**
 * postgres mode: PostgreSQL clients log in to sidepool, which holds pools of logged-in
 * backends per (database, user) and binds one to a client per transaction (or per
 * session). See session.ts for a client's life, backend.ts for a backend's.
 */
export const postgresMode: ModeFactory = (ctx) => new PostgresMode(ctx);

class PostgresMode implements RouteMode {
  readonly createSession: SessionFactory;
  private readonly settings: PostgresConfig;
  private readonly pgPools = new Map<string, PgPool & { started: boolean; configured: boolean }>();
  private readonly cancels = new Map<number, CancelTarget>();
  private readonly authFile: AuthFile | undefined;
  private readonly credentials: Credentials;
  private readonly tlsMaterial: TlsMaterial | undefined;
  private readonly metrics: PgMetrics;
  private readonly context: PgContext;
  private route: Route | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;

  constructor(private readonly ctx: ModeContext) {
    const route = ctx.route;
    this.settings = route.postgres ?? postgresSchema.parse({ authType: 'trust' });
    this.authFile =
      this.settings.authFile === undefined
        ? undefined
        : new AuthFile({ file: this.settings.authFile, logger: ctx.log });
    this.credentials = new Credentials(
      this.authFile,
      this.settings.authUser === undefined ? undefined : (user, db) => this.authQuery(user, db),
    );
    this.tlsMaterial =
      route.tls === undefined
        ? undefined
        : new TlsMaterial({
            side: 'downstream',
            name: route.name,
            files:
              route.tls.ca === undefined
                ? { cert: route.tls.cert, key: route.tls.key }
                : { cert: route.tls.cert, key: route.tls.key, ca: route.tls.ca },
            certRole: 'server',
            contextOptions: { minVersion: route.tls.minVersion },
            logger: ctx.log,
          });
    this.metrics = new PgMetrics(ctx.metrics.registry, route.name, () => this.gauges());
    const material = this.tlsMaterial;
    const listen = parseAddress(route.listen, { allowAnyHost: true, allowPortZero: true });
    this.context = {
      route: undefined as unknown as Route,
      settings: this.settings,
      log: ctx.log,
      credentials: this.credentials,
      statements: new StatementRegistry(this.settings.maxPreparedStatementBytes),
      get tls(): tls.SecureContext | undefined {
        return material?.context;
      },
      unixListener: typeof listen === 'object' && listen.kind === 'unix',
      poolFor: (database, user) => this.poolFor(database, user, true),
      registerCancel: (pid, session) => this.cancels.set(pid, session),
      unregisterCancel: (pid) => this.cancels.delete(pid),
      cancel: (pid, key) => this.cancel(pid, key),
      cancelBackend: (endpoint, pid, key) => this.cancelBackend(endpoint, pid, key),
      isDraining: () => this.closing !== undefined,
      metricsAuthFailed: (database, user, reason) =>
        this.metrics.authFailed(database, user, reason),
      protocolError: (side) => this.metrics.protocolError(side),
    };
    this.createSession = (routeObject, id, socket) => {
      if (this.route === undefined) {
        this.route = routeObject;
        (this.context as { route: Route }).route = routeObject;
      }
      return new PgSession(this.context, id, socket);
    };
  }

  start(): void {
    this.authFile?.watch();
    this.tlsMaterial?.watch();
    for (const { database, user } of this.settings.pools) {
      const pgPool = this.poolFor(database, user, false);
      pgPool.configured = true;
      this.startIfLoginKnown(pgPool);
    }
    this.sweepTimer = setInterval(() => this.sweep(), SWEEP_MS);
    this.sweepTimer.unref();
  }

  *pools(): Iterable<Pool> {
    for (const pgPool of this.pgPools.values()) yield pgPool.pool;
  }

  view(pool: Pool): Record<string, unknown> {
    for (const pgPool of this.pgPools.values()) {
      if (pgPool.pool !== pool) continue;
      const g = this.gaugesOf(pgPool);
      return {
        database: pgPool.database,
        user: pgPool.user,
        poolMode: this.settings.poolMode,
        clients: g.clients,
        backends: g.backends,
      };
    }
    return {};
  }

  close(): Promise<void> {
    this.closing ??= this.shutDown(false);
    return this.closing;
  }

  async destroy(): Promise<void> {
    this.closing ??= this.shutDown(true);
    await Promise.all([...this.pgPools.values()].map((p) => p.pool.destroy()));
    await this.closing;
  }

  private async shutDown(force: boolean): Promise<void> {
    if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer);
    this.authFile?.close();
    this.tlsMaterial?.close();
    this.metrics.close();
    await Promise.all(
      [...this.pgPools.values()].map((p) => (force ? p.pool.destroy() : p.pool.close())),
    );
  }

  // ── pools ───────────────────────────────────────────────────────────────

  private poolFor(
    database: string,
    user: string,
    start: boolean,
  ): PgPool & { started: boolean; configured: boolean } {
    const key = `${database}\u0000${user}`;
    let pgPool = this.pgPools.get(key);
    if (pgPool === undefined) {
      const route = this.ctx.route;
      const connector = new BackendConnector({
        destination: this.ctx.destination,
        database,
        user,
        secret: () => this.credentials.upstreamSecret(user),
        timeoutMs: route.pool.connectTimeout > 0 ? route.pool.connectTimeout + LOGIN_EXTRA_MS : 0,
        onLogin: (login) => {
          const p = this.pgPools.get(key);
          if (p !== undefined) p.params = login.params;
        },
      });
      const { connectTimeout: _connectTimeout, ...settings } = route.pool;
      const pool = this.ctx.makePool(`${database}/${user}`, connector, settings, {
        // A backend sends nothing unasked while idle but its goodbye (57P01 at shutdown,
        // pg_terminate_backend): bytes on an idle link mean it is going away.
        keepIdleBytes: false,
        newestIdleFirst: true,
      });
      pgPool = {
        database,
        user,
        pool,
        connector,
        params: undefined,
        observer: this.metrics.observer(database, user),
        clients: { active: 0, waiting: 0, idle: 0 },
        prepared: { onBackends: 0 },
        lastUsedAt: Date.now(),
        started: false,
        configured: false,
      };
      this.pgPools.set(key, pgPool);
    }
    if (start && !pgPool.started) {
      pgPool.started = true;
      pgPool.pool.start();
    }
    return pgPool;
  }

  /**
   * Warms a configured pool when sidepool can log in as its user: a plain or md5 secret
   * in the file, or upstream trust. With a SCRAM verifier only, the first client's login
   * gives the keys (pass-through) and starts the warm-up.
   */
  private startIfLoginKnown(pgPool: PgPool & { started: boolean }): void {
    const secret = this.credentials.known(pgPool.user);
    if (
      secret !== undefined &&
      secret.kind === 'scram' &&
      this.credentials.upstreamSecret(pgPool.user) === undefined
    ) {
      this.ctx.log.info(
        { database: pgPool.database, user: pgPool.user },
        'pool waits for its first client to warm: the auth file has a SCRAM verifier (pass-through keys come from a client login)',
      );
      return;
    }
    pgPool.started = true;
    pgPool.pool.start();
  }

  /** Pools made on first use go once unused for the pool's idleTimeout. */
  private sweep(): void {
    const idleMs = this.ctx.route.pool.idleTimeout;
    if (idleMs <= 0) return;
    const now = Date.now();
    for (const [key, pgPool] of this.pgPools) {
      if (pgPool.configured) continue;
      const c = pgPool.clients;
      const s = pgPool.pool.stats();
      if (c.active + c.waiting + c.idle > 0 || s.active > 0 || s.connecting > 0) continue;
      if (now - pgPool.lastUsedAt < idleMs) continue;
      this.pgPools.delete(key);
      void pgPool.pool.close();
      this.ctx.forgetPool(pgPool.pool);
      this.ctx.log.info({ database: pgPool.database, user: pgPool.user }, 'unused pool closed');
    }
  }

  // ── cancel ──────────────────────────────────────────────────────────────

  private cancel(pid: number, key: number): void {
    const target = this.cancels.get(pid);
    if (target === undefined || target.cancelKey !== key) return;
    const backend = target.cancelTarget();
    if (backend !== undefined) this.cancelBackend(backend.endpoint, backend.pid, backend.secretKey);
  }

  private cancelBackend(endpoint: string, pid: number, key: number): void {
    const timeoutMs = this.ctx.route.pool.connectTimeout;
    connectBackend(
      this.ctx.destination,
      parseAddress(endpoint) as Address,
      endpoint,
      timeoutMs,
    ).then(
      (socket) => {
        socket.on('error', () => {});
        socket.end(cancelRequest(pid, key));
      },
      (err: unknown) =>
        this.ctx.log.warn({ endpoint, err: describe(err) }, 'cancel request failed'),
    );
  }

  // ── authQuery ───────────────────────────────────────────────────────────

  /** Runs authQuery as authUser on the client's database: the user's secret, or undefined. */
  private async authQuery(user: string, database: string): Promise<Secret | undefined> {
    const pgPool = this.poolFor(database, this.settings.authUser as string, true);
    const link = await pgPool.pool.acquire();
    const backend = Backend.of(link);
    try {
      const result = await backend.run(this.settings.authQuery, 10_000, [user]);
      pgPool.pool.release(link, result.status === 'I');
      if (result.error !== undefined) {
        throw new Error(
          `authQuery failed: ${result.error.get('C') ?? ''} ${result.error.get('M') ?? ''}`,
        );
      }
      const row = result.rows[0];
      const text = row?.[1];
      return text === undefined || text === null ? undefined : parseSecret(text);
    } catch (err) {
      pgPool.pool.release(link, false);
      throw err;
    }
  }

  // ── metrics ─────────────────────────────────────────────────────────────

  private *gauges(): Iterable<PgPoolGauges> {
    for (const pgPool of this.pgPools.values()) yield this.gaugesOf(pgPool);
  }

  private gaugesOf(pgPool: PgPool): PgPoolGauges {
    const s = pgPool.pool.stats();
    const checkAfter = this.settings.checkAfter;
    const used = checkAfter > 0 ? pgPool.pool.idleLongerThan(checkAfter) : 0;
    return {
      labels: { route: this.ctx.route.name, database: pgPool.database, user: pgPool.user },
      clients: { ...pgPool.clients },
      backends: { active: s.active, idle: s.idle - used, used, login: s.connecting },
      preparedStatements: pgPool.prepared.onBackends,
    };
  }
}
