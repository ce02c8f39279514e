import type { RouteConfig } from '../../config/schema.js';
import type { Pool } from '../../pool/pool.js';
import type { ModeContext, ModeFactory, RouteMode } from '../mode.js';
import type { SessionFactory } from '../route.js';
import { RedisLogin, SecretFile, authCommand, type UpstreamLogin } from './auth.js';
import { lookupCommand } from './commands.js';
import { Database } from './database.js';
import type { MuxSettings } from './link-mux.js';
import {
  CLIENT_STATES,
  RedisMetrics,
  type RedisGaugeSource,
  type RedisObserver,
} from './metrics.js';
import { encodeCommand, type NameLookup } from './resp.js';
import { RedisSession } from './session.js';

/** A redis route's `redis:` settings, defaults filled (see the config schema). */
export type RedisSettings = NonNullable<RouteConfig['redis']>;

/** What a session needs of its route's redis mode. */
export interface RedisModeContext {
  readonly settings: MuxSettings;
  readonly lookup: NameLookup;
  /** Clients must AUTH with this password; undefined: no client authentication. */
  readonly clientPassword: SecretFile | undefined;
  /** The Redis user sidepool logs in as (AUTH with another user pins). */
  readonly username: string | undefined;
  readonly sessions: Set<RedisSession>;
  readonly observer: RedisObserver;
  /** SELECT of this index or above is refused at once (Redis refused it before). */
  readonly databasesBelow: number;
  /** The database's shared links and pool, made on first use. */
  database(index: number): Database;
  /** Redis refused SELECT `index`: no database at or above it exists. */
  databaseRefused(index: number): void;
  /** Closes and forgets a database no client uses (a SELECT that failed). */
  forgetIfUnused(db: Database): void;
  /**
   * What puts a link back in the pool's state after a pinned client: RESET (when asked),
   * AUTH, SELECT; and how many replies they bring.
   */
  restoreCommands(database: number, withReset: boolean): { bytes: Buffer; replies: number };
}

const RESET_COMMAND = encodeCommand(['RESET']);
/** How often unused databases (other than 0) are looked for. */
const FORGET_CHECK_MS = 10_000;

/**
 * The redis mode of a route: many app connections multiplexed onto a few pipelined links
 * per database, connection state handled by pinning (see session.ts). Pools per database
 * come from the app (`ctx.makePool`); database 0's is made and warmed at start, others on
 * the first SELECT, and forgotten when unused for the pool's idle timeout.
 */
export class RedisMode implements RouteMode, RedisModeContext, RedisGaugeSource {
  readonly createSession: SessionFactory;
  readonly settings: MuxSettings;
  readonly lookup = lookupCommand;
  readonly clientPassword: SecretFile | undefined;
  readonly username: string | undefined;
  readonly sessions = new Set<RedisSession>();
  readonly observer: RedisObserver;
  readonly route: string;
  databasesBelow = 2_147_483_647;
  private readonly login: UpstreamLogin;
  private readonly databases = new Map<number, Database>();
  private readonly metrics: RedisMetrics;
  private forgetTimer: NodeJS.Timeout | undefined;
  private state: 'new' | 'running' | 'closing' = 'new';

  constructor(private readonly ctx: ModeContext) {
    const settings = ctx.route.redis as RedisSettings;
    this.route = ctx.route.name;
    this.settings = { maxBatchBytes: settings.maxBatchBytes, maxPending: settings.maxPending };
    const password =
      settings.auth === undefined ? undefined : new SecretFile(settings.auth.passwordFile);
    this.username = settings.auth?.username;
    this.login = { username: this.username, password };
    this.clientPassword =
      settings.clientAuth === false
        ? undefined
        : settings.clientAuth === undefined
          ? password
          : new SecretFile(settings.clientAuth.passwordFile);
    this.metrics = RedisMetrics.of(ctx.metrics);
    this.observer = this.metrics.observer(this.route);
    this.metrics.watch(this);
    this.createSession = (route, id, socket) => new RedisSession(this, route, id, socket);
  }

  start(): void {
    if (this.state !== 'new') return;
    this.state = 'running';
    this.database(0);
    this.forgetTimer = setInterval(() => this.forgetUnused(), FORGET_CHECK_MS);
    this.forgetTimer.unref();
  }

  *pools(): Iterable<Pool> {
    for (const db of this.databases.values()) yield db.pool;
  }

  view(pool: Pool): Record<string, unknown> {
    for (const db of this.databases.values()) {
      if (db.pool !== pool) continue;
      return {
        database: db.index,
        clients: db.clients,
        sharedLinks: db.shared.length,
        pinnedLinks: db.pinned.size,
        pendingReplies: [...db.shared, ...db.pinned].reduce((n, m) => n + m.pending, 0),
        queuedClients: db.queued,
      };
    }
    return {};
  }

  database(index: number): Database {
    let db = this.databases.get(index);
    if (db === undefined) {
      const route = this.ctx.route;
      const connector = new RedisLogin(
        this.ctx.destination.dialer,
        this.login,
        index,
        route.pool.connectTimeout,
      );
      const pool = this.ctx.makePool(`db${index}`, connector, route.pool, {
        // Redis sends nothing unasked: bytes on an idle link mean it is broken.
        keepIdleBytes: false,
        newestIdleFirst: true,
      });
      const made = new Database(
        index,
        pool,
        this.settings,
        this.metrics.muxMetrics(this.route, pool.name),
      );
      connector.onRefused = (err) => {
        this.ctx.log.warn(
          { pool: pool.name, code: err.code, reply: err.reply },
          'Redis refused the login',
        );
        made.loginRefused(err);
      };
      db = made;
      this.databases.set(index, db);
      if (this.state !== 'closing') db.start();
    }
    return db;
  }

  databaseRefused(index: number): void {
    this.databasesBelow = Math.min(this.databasesBelow, index);
  }

  forgetIfUnused(db: Database): void {
    if (db.index === 0 || !db.unused || this.databases.get(db.index) !== db) return;
    this.databases.delete(db.index);
    void db.close().then(() => this.ctx.forgetPool(db.pool));
  }

  restoreCommands(database: number, withReset: boolean): { bytes: Buffer; replies: number } {
    const parts: Buffer[] = [];
    if (withReset) parts.push(RESET_COMMAND);
    const auth = authCommand(this.login);
    if (auth !== undefined) parts.push(auth);
    if (database !== 0) parts.push(encodeCommand(['SELECT', String(database)]));
    return { bytes: Buffer.concat(parts), replies: parts.length };
  }

  clientStates(): Record<(typeof CLIENT_STATES)[number], number> {
    const counts = { shared: 0, queued: 0, pinned: 0 };
    for (const session of this.sessions) counts[session.state]++;
    return counts;
  }

  *linkPending(): Iterable<{ pool: string; link: number; pending: number }> {
    for (const db of this.databases.values()) {
      for (const mux of [...db.shared, ...db.pinned]) {
        yield { pool: db.pool.name, link: mux.link.id, pending: mux.pending };
      }
    }
  }

  async close(): Promise<void> {
    this.state = 'closing';
    this.stopTimer();
    await Promise.all([...this.databases.values()].map((db) => db.close()));
    this.metrics.unwatch(this);
  }

  async destroy(): Promise<void> {
    this.state = 'closing';
    this.stopTimer();
    await Promise.all([...this.databases.values()].map((db) => db.destroy()));
    this.metrics.unwatch(this);
  }

  /** Databases other than 0 unused for the pool's idle timeout are closed and forgotten. */
  private forgetUnused(): void {
    const idle = this.ctx.route.pool.idleTimeout;
    if (idle <= 0) return;
    const now = Date.now();
    for (const db of [...this.databases.values()]) {
      if (db.index !== 0 && db.unused && now - db.lastUsed >= idle) this.forgetIfUnused(db);
    }
  }

  private stopTimer(): void {
    if (this.forgetTimer !== undefined) clearInterval(this.forgetTimer);
    this.forgetTimer = undefined;
  }
}

export const redisMode: ModeFactory = (ctx) => new RedisMode(ctx);
