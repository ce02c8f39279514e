import { Gauge, type Registry } from 'prom-client';
import {
  CounterFamily,
  HistogramFamily,
  type HotCounter,
  type HotHistogram,
} from '../../admin/hot-metrics.js';
import { PIN_REASONS, type PinReason } from './sql.js';

/** Why a client's login failed, for sidepool_postgres_auth_failures_total. */
export type AuthFailure =
  | 'wrong_password'
  | 'unknown_user'
  | 'unsupported_method'
  | 'protocol'
  | 'tls_required'
  | 'upstream_refused';

/** Told of one (database, user) pool's events; series bound when the pool is made. */
export interface PgObserver {
  transaction(seconds: number): void;
  query(): void;
  waited(seconds: number): void;
  pinned(reason: PinReason): void;
  authFailed(reason: AuthFailure): void;
  /** A Parse sent upstream for a named statement (the client's or one sidepool injected). */
  prepareSent(): void;
  /** A client's named Parse answered from the backend's list, not sent. */
  prepareSaved(): void;
  /** A statement closed on a backend to keep its list within maxPreparedStatements. */
  preparedEvicted(): void;
}

/** What the gauges read at scrape time. */
export interface PgPoolGauges {
  labels: { route: string; database: string; user: string };
  clients: Record<'active' | 'waiting' | 'idle', number>;
  backends: Record<'active' | 'idle' | 'used' | 'login', number>;
  /** Shared prepared statements on the pool's backends, summed. */
  preparedStatements: number;
}

const WAIT_BUCKETS = [0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const TRANSACTION_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

/**
 * The postgres families of one registry: made once, whatever the number of postgres
 * routes, which each add a source of gauge readings.
 */
class PgFamilies {
  readonly sources = new Set<() => Iterable<PgPoolGauges>>();
  readonly transactions: CounterFamily;
  readonly queries: CounterFamily;
  readonly pins: CounterFamily;
  readonly authFailures: CounterFamily;
  readonly protocolErrors: CounterFamily;
  readonly preparesSent: CounterFamily;
  readonly preparesSaved: CounterFamily;
  readonly preparedEvictions: CounterFamily;
  readonly waitSeconds: HistogramFamily;
  readonly transactionSeconds: HistogramFamily;

  constructor(registry: Registry) {
    this.transactions = new CounterFamily(
      'sidepool_postgres_transactions_total',
      'Transactions (and statements outside one) run through a postgres pool.',
      registry,
    );
    this.queries = new CounterFamily(
      'sidepool_postgres_queries_total',
      'Queries (Query messages and extended-protocol Executes) run through a postgres pool.',
      registry,
    );
    this.pins = new CounterFamily(
      'sidepool_postgres_pins_total',
      'Clients pinned to their backend in transaction pooling, by reason: set, listen, advisory_lock, prepare (SQL PREPARE), prepared (a named Parse, with maxPreparedStatements: 0), cursor_with_hold, temp_table.',
      registry,
    );
    this.authFailures = new CounterFamily(
      'sidepool_postgres_auth_failures_total',
      'Client logins refused, by reason: wrong_password, unknown_user, unsupported_method, protocol, tls_required, upstream_refused.',
      registry,
    );
    this.protocolErrors = new CounterFamily(
      'sidepool_postgres_protocol_errors_total',
      'Connections closed for bytes that break the PostgreSQL protocol, by side: client, server.',
      registry,
    );
    this.preparesSent = new CounterFamily(
      'sidepool_postgres_prepares_sent_total',
      'Parse messages of named statements sent to backends (transaction pooling with maxPreparedStatements): a client Parse the backend lacked, or one injected before a Bind or Describe.',
      registry,
    );
    this.preparesSaved = new CounterFamily(
      'sidepool_postgres_prepares_saved_total',
      'Client Parse messages of named statements answered by sidepool because the backend had the statement already.',
      registry,
    );
    this.preparedEvictions = new CounterFamily(
      'sidepool_postgres_prepared_evictions_total',
      'Statements closed on a backend to keep it within maxPreparedStatements (least recently used first).',
      registry,
    );
    const prepared: Gauge = new Gauge({
      name: 'sidepool_postgres_prepared_statements',
      help: "Shared prepared statements on a pool's backends, summed over its backends.",
      labelNames: ['route', 'database', 'user'] as const,
      registers: [registry],
      collect: () => {
        prepared.reset();
        for (const g of this.readings()) prepared.set(g.labels, g.preparedStatements);
      },
    });
    this.waitSeconds = new HistogramFamily(
      'sidepool_postgres_client_wait_seconds',
      'Time a client waited for a backend when it began a transaction (or its session).',
      WAIT_BUCKETS,
      registry,
    );
    this.transactionSeconds = new HistogramFamily(
      'sidepool_postgres_transaction_seconds',
      'Time a backend was bound to a client for one transaction (transaction pooling).',
      TRANSACTION_BUCKETS,
      registry,
    );
    this.stateGauge(
      registry,
      'sidepool_postgres_clients',
      'Postgres clients by state: active (bound to a backend), waiting (for one), idle (logged in, between transactions).',
      (g) => g.clients,
    );
    this.stateGauge(
      registry,
      'sidepool_postgres_backends',
      'Postgres backends by state: active (bound to a client), idle, used (idle past checkAfter: checked before reuse), login (connecting and logging in).',
      (g) => g.backends,
    );
  }

  /** A gauge of counts by state per pool, read from the sources at scrape time. */
  private stateGauge(
    registry: Registry,
    name: string,
    help: string,
    pick: (g: PgPoolGauges) => Record<string, number>,
  ): void {
    const gauge: Gauge = new Gauge({
      name,
      help,
      labelNames: ['route', 'database', 'user', 'state'] as const,
      registers: [registry],
      collect: () => {
        gauge.reset();
        for (const g of this.readings()) {
          for (const [state, n] of Object.entries(pick(g))) gauge.set({ ...g.labels, state }, n);
        }
      },
    });
  }

  private *readings(): Iterable<PgPoolGauges> {
    for (const source of this.sources) yield* source();
  }
}

const families = new WeakMap<Registry, PgFamilies>();

function familiesOf(registry: Registry): PgFamilies {
  let f = families.get(registry);
  if (f === undefined) {
    f = new PgFamilies(registry);
    families.set(registry, f);
  }
  return f;
}

/** A route's postgres metrics: a gauge source, and an observer per pool. */
export class PgMetrics {
  private readonly families: PgFamilies;
  private readonly protocolErrors: Record<'client' | 'server', HotCounter>;

  constructor(
    registry: Registry,
    private readonly route: string,
    gauges: () => Iterable<PgPoolGauges>,
  ) {
    this.families = familiesOf(registry);
    this.families.sources.add(gauges);
    this.gauges = gauges;
    this.protocolErrors = {
      client: this.families.protocolErrors.series({ route, side: 'client' }),
      server: this.families.protocolErrors.series({ route, side: 'server' }),
    };
  }

  private readonly gauges: () => Iterable<PgPoolGauges>;

  protocolError(side: 'client' | 'server'): void {
    this.protocolErrors[side].inc();
  }

  /** A failed login before the client named a pool we could make (bad startup packet). */
  authFailed(database: string, user: string, reason: AuthFailure): void {
    this.families.authFailures.series({ route: this.route, database, user, reason }).inc();
  }

  observer(database: string, user: string): PgObserver {
    const labels = { route: this.route, database, user };
    const f = this.families;
    const transactions = f.transactions.series(labels);
    const queries = f.queries.series(labels);
    const wait: HotHistogram = f.waitSeconds.series(labels);
    const transactionSeconds: HotHistogram = f.transactionSeconds.series(labels);
    const sent = f.preparesSent.series(labels);
    const saved = f.preparesSaved.series(labels);
    const evicted = f.preparedEvictions.series(labels);
    const pins = new Map(
      PIN_REASONS.map((reason) => [reason, f.pins.series({ ...labels, reason })]),
    );
    return {
      transaction(seconds) {
        transactions.inc();
        transactionSeconds.observe(seconds);
      },
      query() {
        queries.inc();
      },
      waited(seconds) {
        wait.observe(seconds);
      },
      pinned(reason) {
        pins.get(reason)?.inc();
      },
      authFailed: (reason) => this.authFailed(database, user, reason),
      prepareSent() {
        sent.inc();
      },
      prepareSaved() {
        saved.inc();
      },
      preparedEvicted() {
        evicted.inc();
      },
    };
  }

  /** The route is gone: its gauges stop being read. */
  close(): void {
    this.families.sources.delete(this.gauges);
  }
}
