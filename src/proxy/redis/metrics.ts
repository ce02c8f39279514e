import { Gauge } from 'prom-client';
import type { Metrics } from '../../admin/metrics.js';
import { CounterFamily, HistogramFamily, type HotCounter } from '../../admin/hot-metrics.js';
import { PIN_REASONS, type PinReason } from './commands.js';
import type { MuxMetrics } from './link-mux.js';

/** What happened to a command. */
export type CommandResult = 'ok' | 'error' | 'local' | 'failed' | 'no_link' | 'refused';
export const COMMAND_RESULTS: readonly CommandResult[] = [
  'ok',
  'error',
  'local',
  'failed',
  'no_link',
  'refused',
];

/** Why sidepool closed a client (or failed its credentials). */
export type ClientErrorReason =
  'protocol_error' | 'slow_reader' | 'auth_failed' | 'link_lost_mid_reply' | 'pinned_link_lost';
const CLIENT_ERRORS: readonly ClientErrorReason[] = [
  'protocol_error',
  'slow_reader',
  'auth_failed',
  'link_lost_mid_reply',
  'pinned_link_lost',
];

export const CLIENT_STATES = ['shared', 'queued', 'pinned'] as const;

/** Told of a redis route's events; bound to the route's series up front. */
export interface RedisObserver {
  command(result: CommandResult): void;
  pinned(reason: PinReason): void;
  clientError(reason: ClientErrorReason): void;
  authFailed(): void;
}

/** What the gauges read from a redis route at scrape time. */
export interface RedisGaugeSource {
  readonly route: string;
  /** Clients by state. */
  clientStates(): Record<(typeof CLIENT_STATES)[number], number>;
  /** Replies outstanding on each link now. */
  linkPending(): Iterable<{ pool: string; link: number; pending: number }>;
}

const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/**
 * The sidepool_redis_* families, registered once per Metrics (every redis route shares
 * them), with series bound per route and pool when those are made.
 */
export class RedisMetrics {
  private readonly sources = new Set<RedisGaugeSource>();

  private readonly commands: CounterFamily;
  private readonly pins: CounterFamily;
  private readonly clientErrors: CounterFamily;
  private readonly batches: HistogramFamily;

  private constructor(metrics: Metrics) {
    const registry = metrics.registry;
    this.commands = new CounterFamily(
      'sidepool_redis_commands_total',
      'Redis commands by result: ok and error (Redis answered, with an error for error), local (answered by sidepool), failed (its link was lost, or its transaction was), no_link (no link within acquireTimeout, queue full, upstream down), refused (malformed, not authenticated, not proxied).',
      registry,
    );
    this.pins = new CounterFamily(
      'sidepool_redis_pins_total',
      'Clients given a link of their own, by reason: transaction, blocking, large_command (calls); pubsub, monitor, client_reply, tracking, auth, connection_flag (the rest of the session).',
      registry,
    );
    this.clientErrors = new CounterFamily(
      'sidepool_redis_client_errors_total',
      'Redis clients closed or refused by sidepool, by reason: protocol_error (malformed input), slow_reader (replies not read), auth_failed (wrong password, not closed), link_lost_mid_reply, pinned_link_lost (state the client relied on went with its link).',
      registry,
    );
    this.batches = new HistogramFamily(
      'sidepool_redis_batch_commands',
      'Commands per write to a Redis link.',
      BATCH_BUCKETS,
      registry,
    );
    const sources = this.sources;
    const clients = new Gauge({
      name: 'sidepool_redis_clients',
      help: 'Redis clients by state: shared (on shared links), queued (waiting for a link), pinned (on a link of their own).',
      labelNames: ['route', 'state'] as const,
      registers: [registry],
      collect() {
        clients.reset();
        for (const source of sources) {
          const states = source.clientStates();
          for (const state of CLIENT_STATES) {
            clients.set({ route: source.route, state }, states[state]);
          }
        }
      },
    });
    const pending = new Gauge({
      name: 'sidepool_redis_pending_replies',
      help: 'Replies outstanding on each Redis link (shared and pinned). With workers, links of the same number in different workers add up.',
      labelNames: ['pool', 'link'] as const,
      registers: [registry],
      collect() {
        pending.reset();
        for (const source of sources) {
          for (const l of source.linkPending()) {
            pending.set({ pool: l.pool, link: String(l.link) }, l.pending);
          }
        }
      },
    });
  }

  private static readonly byMetrics = new WeakMap<Metrics, RedisMetrics>();

  /** The families of `metrics`, registered on first use. */
  static of(metrics: Metrics): RedisMetrics {
    let found = RedisMetrics.byMetrics.get(metrics);
    if (found === undefined) {
      found = new RedisMetrics(metrics);
      RedisMetrics.byMetrics.set(metrics, found);
    }
    return found;
  }

  /** A route's gauges are read from `source` until `unwatch`. */
  watch(source: RedisGaugeSource): void {
    this.sources.add(source);
  }

  unwatch(source: RedisGaugeSource): void {
    this.sources.delete(source);
  }

  observer(route: string): RedisObserver {
    const byResult = new Map<CommandResult, HotCounter>(
      COMMAND_RESULTS.map((result) => [result, this.commands.series({ route, result })]),
    );
    const byReason = new Map<PinReason, HotCounter>(
      PIN_REASONS.map((reason) => [reason, this.pins.series({ route, reason })]),
    );
    const errors = new Map<ClientErrorReason, HotCounter>(
      CLIENT_ERRORS.map((reason) => [reason, this.clientErrors.series({ route, reason })]),
    );
    const authFailed = errors.get('auth_failed') as HotCounter;
    return {
      command: (result) => byResult.get(result)?.inc(),
      pinned: (reason) => byReason.get(reason)?.inc(),
      clientError: (reason) => errors.get(reason)?.inc(),
      authFailed: () => authFailed.inc(),
    };
  }

  /** The series a route's links count into: results of forwarded commands, batch sizes. */
  muxMetrics(route: string, pool: string): MuxMetrics {
    return {
      ok: this.commands.series({ route, result: 'ok' }),
      error: this.commands.series({ route, result: 'error' }),
      batch: this.batches.series({ pool }),
    };
  }
}
