import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { CounterFamily, HistogramFamily, type HotCounter } from './hot-metrics.js';
import { FAULT_KINDS, type FaultKind } from '../faults.js';
import type { Pool, PoolObserver } from '../pool/pool.js';
import { HTTP_FAILURES, type HttpObserver } from '../proxy/http/observer.js';
import type { Route, RouteObserver } from '../proxy/route.js';
import type { TlsObserver } from '../tls/observer.js';
import type { DestinationObserver } from '../upstream/destination.js';

/** What the metrics read at scrape time: the live pools and routes, and the drain state. */
export interface MetricsSource {
  pools(): Iterable<Pool>;
  routes(): Iterable<Route>;
  isDraining(): boolean;
  /** Every endpoint of every pool, and whether it takes dials now. */
  endpoints?(): Iterable<{ pool: string; endpoint: string; up: boolean }>;
  /** Certificate expiry times (seconds since the epoch) by owner (route or pool) and role. */
  certificateExpiries?(): Iterable<{
    owner: string;
    role: 'server' | 'client' | 'ca';
    expiresAt: number;
  }>;
  /** With `workers` above 1, in the primary: the workers running and restarted so far. */
  workers?(): { running: number; restarts: number };
}

const ACQUIRE_BUCKETS = [0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const CONNECT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const SESSION_BUCKETS = [0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600];
const REQUEST_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
];

/**
 * sidepool's Prometheus metrics. Events on the data path go through observers whose
 * label children are bound when the pool or route is made; states (connections by
 * state, waiters, active downstreams, bytes of live sessions) are read at scrape time,
 * so they cost the data path nothing.
 */
export class Metrics {
  readonly registry = new Registry();
  private source: MetricsSource | undefined;
  /**
   * Bytes already added to the counter, per route object: a reload can run an old route
   * (draining) and its replacement under one name, each with totals of its own.
   */
  private readonly bytesReported = new Map<Route, { up: number; down: number }>();
  /** Each pool observer's series by endpoint and result, to drop an endpoint's. */
  private readonly endpointConnects = new Map<string, Map<string, HotCounter>>();

  private readonly poolConnections = new Gauge({
    name: 'sidepool_pool_connections',
    help: 'Upstream links by state.',
    labelNames: ['pool', 'state'] as const,
    registers: [this.registry],
    collect: () => {
      this.poolConnections.reset();
      for (const pool of this.pools()) {
        const s = pool.stats();
        this.poolConnections.set({ pool: pool.name, state: 'idle' }, s.idle);
        this.poolConnections.set({ pool: pool.name, state: 'active' }, s.active);
        this.poolConnections.set({ pool: pool.name, state: 'connecting' }, s.connecting);
      }
    },
  });

  private readonly poolMax = new Gauge({
    name: 'sidepool_pool_max_connections',
    help: 'The pool maxSize.',
    labelNames: ['pool'] as const,
    registers: [this.registry],
    collect: () => {
      this.poolMax.reset();
      for (const pool of this.pools()) this.poolMax.set({ pool: pool.name }, pool.options.maxSize);
    },
  });

  private readonly poolIdleLimit = new Gauge({
    name: 'sidepool_pool_upstream_idle_limit_seconds',
    help: 'The idle age at which the upstream was seen to close links (learned; warm links are recycled at half of it). Absent until learned.',
    labelNames: ['pool'] as const,
    registers: [this.registry],
    collect: () => {
      this.poolIdleLimit.reset();
      for (const pool of this.pools()) {
        const ms = pool.upstreamIdleLimitMs;
        if (ms !== undefined) this.poolIdleLimit.set({ pool: pool.name }, ms / 1000);
      }
    },
  });

  private readonly poolWaiters = new Gauge({
    name: 'sidepool_pool_waiters',
    help: 'Downstreams queued for a link.',
    labelNames: ['pool'] as const,
    registers: [this.registry],
    collect: () => {
      this.poolWaiters.reset();
      for (const pool of this.pools())
        this.poolWaiters.set({ pool: pool.name }, pool.stats().waiters);
    },
  });

  private readonly acquireSeconds = new HistogramFamily(
    'sidepool_pool_acquire_seconds',
    'Time a downstream waited for a link.',
    ACQUIRE_BUCKETS,
    this.registry,
  );

  private readonly acquires = new CounterFamily(
    'sidepool_pool_acquires_total',
    'Link acquisitions by result: idle (at once), dialed (waited for a dial), timeout, overflow (queue full), aborted (the downstream left), failed (pool closed or failing fast).',
    this.registry,
  );

  private readonly upstreamConnects = new CounterFamily(
    'sidepool_upstream_connects_total',
    'Upstream dials by endpoint and result.',
    this.registry,
  );

  private readonly connectSeconds = new HistogramFamily(
    'sidepool_upstream_connect_seconds',
    'Time to dial an upstream link (TCP connect plus TLS handshake).',
    CONNECT_BUCKETS,
    this.registry,
  );

  private readonly evictions = new CounterFamily(
    'sidepool_pool_evictions_total',
    'Links closed by the pool or lost, by reason.',
    this.registry,
  );

  private readonly downstreamConnections = new CounterFamily(
    'sidepool_downstream_connections_total',
    'Downstream connections accepted.',
    this.registry,
  );

  private readonly downstreamActive = new Gauge({
    name: 'sidepool_downstream_active',
    help: 'Downstream connections open now (queued or spliced).',
    labelNames: ['route'] as const,
    registers: [this.registry],
    collect: () => {
      this.downstreamActive.reset();
      for (const route of this.routes())
        this.downstreamActive.set({ route: route.name }, route.activeSessions);
    },
  });

  private readonly bytes = new Counter({
    name: 'sidepool_bytes_total',
    help: 'Bytes relayed, by the direction they were sent: upstream (toward the upstream) or downstream (toward the app).',
    labelNames: ['route', 'direction'] as const,
    registers: [this.registry],
    collect: () => this.flushBytes(),
  });

  private readonly sessionSeconds = new HistogramFamily(
    'sidepool_session_duration_seconds',
    'Downstream session duration, from accept to close.',
    SESSION_BUCKETS,
    this.registry,
  );

  private readonly endpointUp = new Gauge({
    name: 'sidepool_endpoint_up',
    help: '1 when the endpoint takes new dials (healthy, not ejected, its last dial did not fail), 0 when it does not.',
    labelNames: ['pool', 'endpoint'] as const,
    registers: [this.registry],
    // Each worker ejects on its own: 1 only while no worker has the endpoint out.
    aggregator: 'min',
    collect: () => {
      this.endpointUp.reset();
      for (const e of this.source?.endpoints?.() ?? []) {
        this.endpointUp.set({ pool: e.pool, endpoint: e.endpoint }, e.up ? 1 : 0);
      }
    },
  });

  private readonly healthProbes = new Counter({
    name: 'sidepool_health_probes_total',
    help: 'Active health probes by result.',
    labelNames: ['pool', 'endpoint', 'result'] as const,
    registers: [this.registry],
  });

  private readonly ejections = new Counter({
    name: 'sidepool_endpoint_ejections_total',
    help: 'Endpoints ejected by outlier detection.',
    labelNames: ['pool', 'endpoint'] as const,
    registers: [this.registry],
  });

  private readonly certificateExpiry = new Gauge({
    name: 'sidepool_tls_certificate_expiry_timestamp_seconds',
    help: 'When a loaded certificate expires (seconds since the epoch).',
    labelNames: ['owner', 'role'] as const,
    registers: [this.registry],
    aggregator: 'min',
    collect: () => {
      this.certificateExpiry.reset();
      for (const cert of this.source?.certificateExpiries?.() ?? []) {
        this.certificateExpiry.set({ owner: cert.owner, role: cert.role }, cert.expiresAt);
      }
    },
  });

  private readonly httpRequests = new CounterFamily(
    'sidepool_http_requests_total',
    'HTTP responses sent to apps (http mode), by status class: 1xx (upgrades), 2xx … 5xx.',
    this.registry,
  );

  private readonly httpRequestSeconds = new HistogramFamily(
    'sidepool_http_request_duration_seconds',
    'From a request head read to its response sent (http mode).',
    REQUEST_BUCKETS,
    this.registry,
  );

  private readonly httpRetries = new CounterFamily(
    'sidepool_http_retries_total',
    'Requests sent again on a fresh link after a reused one closed before answering.',
    this.registry,
  );

  private readonly httpErrors = new CounterFamily(
    'sidepool_http_errors_total',
    'Failed HTTP exchanges by reason: bad_request, headers_too_large, headers_timeout, body_timeout, acquire_timeout, pool_overflow, pool_closed (503), upstream_error, bad_response (502), response_timeout (504), send_timeout, downstream_closed.',
    this.registry,
  );

  private readonly poolReuses = new CounterFamily(
    'sidepool_pool_reuses_total',
    'Requests sent on a link that had carried one before (http mode).',
    this.registry,
  );

  private readonly tlsHandshakes = new CounterFamily(
    'sidepool_tls_handshakes_total',
    'TLS handshakes by side (upstream: origination, downstream: termination), owner (pool or route) and result: full, resumed, failed.',
    this.registry,
  );

  private readonly tlsFailures = new CounterFamily(
    'sidepool_tls_handshake_failures_total',
    'Failed TLS handshakes by side, owner and reason (a stable code such as CERT_HAS_EXPIRED or ERR_TLS_CERT_ALTNAME_INVALID).',
    this.registry,
  );

  private readonly tlsReloads = new CounterFamily(
    'sidepool_tls_certificate_reloads_total',
    'Certificate files re-read after they changed, by side, owner and result: success, rejected (the old material stays).',
    this.registry,
  );

  readonly configReloads = new Counter({
    name: 'sidepool_config_reloads_total',
    help: 'Configuration reloads by result.',
    labelNames: ['result'] as const,
    registers: [this.registry],
    // With workers, the primary counts each reload once and every worker counts what it
    // applied: the largest is the number of reloads.
    aggregator: 'max',
  });

  private readonly draining = new Gauge({
    name: 'sidepool_draining',
    help: '1 while sidepool drains before it stops.',
    registers: [this.registry],
    aggregator: 'max',
    collect: () => {
      this.draining.set(this.source?.isDraining() ? 1 : 0);
    },
  });

  private readonly workersRunning = new Gauge({
    name: 'sidepool_workers',
    help: 'Worker processes running (with `workers` above 1; 0 otherwise).',
    registers: [this.registry],
    collect: () => {
      this.workersRunning.set(this.source?.workers?.().running ?? 0);
    },
  });

  private readonly workerRestarts = new Counter({
    name: 'sidepool_worker_restarts_total',
    help: 'Worker processes that exited unexpectedly and were started again.',
    registers: [this.registry],
    collect: () => {
      const restarts = this.source?.workers?.().restarts ?? 0;
      this.workerRestarts.reset();
      this.workerRestarts.inc(restarts);
    },
  });

  private readonly internalErrors = new Counter({
    name: 'sidepool_internal_errors_total',
    help: 'Faults that reached the process (bugs): unhandled_rejection (logged; sidepool keeps running), uncaught_exception (logged; the process exits with code 70 and is restarted).',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
    this.configReloads.inc({ result: 'success' }, 0);
    this.configReloads.inc({ result: 'failure' }, 0);
    for (const kind of FAULT_KINDS) this.internalErrors.inc({ kind }, 0);
  }

  /** Counts a fault that reached the process (faults.ts). */
  internalError(kind: FaultKind): void {
    this.internalErrors.inc({ kind });
  }

  attach(source: MetricsSource): void {
    this.source = source;
  }

  /** The Prometheus text exposition. */
  async render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** An observer for one pool, with its label children bound now. */
  poolObserver(pool: string): PoolObserver {
    const acquire = (result: string) => this.acquires.series({ pool, result });
    const acquired = {
      idle: acquire('idle'),
      dialed: acquire('dialed'),
      timeout: acquire('timeout'),
      overflow: acquire('overflow'),
      aborted: acquire('aborted'),
      failed: acquire('failed'),
    };
    const acquireSeconds = this.acquireSeconds.series({ pool });
    const connectSeconds = this.connectSeconds.series({ pool });
    const evict = (reason: string) => this.evictions.series({ pool, reason });
    const evicted = {
      idle: evict('idle'),
      lifetime: evict('lifetime'),
      remote_closed: evict('remote_closed'),
      error: evict('error'),
      unhealthy: evict('unhealthy'),
      endpoint_removed: evict('endpoint_removed'),
    };
    // Endpoints come and go (DNS): their series are made on their first dial, and go with
    // the endpoint (destinationObserver's gone).
    const connects = new Map<string, HotCounter>();
    this.endpointConnects.set(pool, connects);
    const family = this.upstreamConnects;
    return {
      acquired(result, waitedSeconds) {
        acquired[result].inc();
        acquireSeconds.observe(waitedSeconds);
      },
      dialed(result, endpoint, seconds) {
        const key = `${endpoint} ${result}`;
        let counter = connects.get(key);
        if (counter === undefined) {
          counter = family.series({ pool, endpoint, result });
          connects.set(key, counter);
        }
        counter.inc();
        if (result === 'success') connectSeconds.observe(seconds);
      },
      evicted(reason) {
        evicted[reason].inc();
      },
    };
  }

  /**
   * The TLS observer: series are made on first use (owners and reasons are bounded: the
   * configured routes and pools, and the codes of Node and OpenSSL), then found in a map.
   */
  tlsObserver(): TlsObserver {
    const cache = new Map<string, HotCounter>();
    const counter = (family: CounterFamily, labels: Record<string, string>): HotCounter => {
      const key = `${family.name} ${Object.values(labels).join(' ')}`;
      let c = cache.get(key);
      if (c === undefined) {
        c = family.series(labels);
        cache.set(key, c);
      }
      return c;
    };
    return {
      handshake: (side, owner, resumed) =>
        counter(this.tlsHandshakes, { side, owner, result: resumed ? 'resumed' : 'full' }).inc(),
      handshakeFailed: (side, owner, reason) => {
        counter(this.tlsHandshakes, { side, owner, result: 'failed' }).inc();
        counter(this.tlsFailures, { side, owner, reason }).inc();
      },
      reloaded: (side, owner, result) => counter(this.tlsReloads, { side, owner, result }).inc(),
    };
  }

  /** An observer of one destination's probes, ejections and departing endpoints. */
  destinationObserver(pool: string): DestinationObserver {
    const probes = this.healthProbes;
    const ejections = this.ejections;
    return {
      probed(endpoint, ok) {
        probes.inc({ pool, endpoint: endpoint.name, result: ok ? 'success' : 'failure' });
      },
      ejected(endpoint) {
        ejections.inc({ pool, endpoint: endpoint.name });
      },
      gone: (endpoint, pools) => this.dropEndpoint(pool, endpoint.name, pools),
    };
  }

  /**
   * An endpoint left and its links are gone: its series go too, so that DNS discovery of
   * pods does not keep a series for every address it ever saw.
   */
  private dropEndpoint(destination: string, endpoint: string, pools: readonly string[]): void {
    for (const result of ['success', 'failure']) {
      this.healthProbes.remove({ pool: destination, endpoint, result });
    }
    this.ejections.remove({ pool: destination, endpoint });
    for (const pool of new Set([destination, ...pools])) {
      this.upstreamConnects.remove({ pool, endpoint });
      const connects = this.endpointConnects.get(pool);
      for (const [key, counter] of connects ?? []) {
        if (counter.labels.endpoint === endpoint) connects?.delete(key);
      }
    }
  }

  /** An observer for one route, with its label children bound now. */
  routeObserver(route: string): RouteObserver {
    const accepted = this.downstreamConnections.series({ route });
    this.bytes.inc({ route, direction: 'upstream' }, 0);
    this.bytes.inc({ route, direction: 'downstream' }, 0);
    const duration = this.sessionSeconds.series({ route });
    return {
      opened() {
        accepted.inc();
      },
      closed(_outcome, seconds) {
        duration.observe(seconds);
      },
      refused() {},
    };
  }

  /** An observer for one http route and its pool, with its series made now. */
  httpObserver(route: string, pool: string): HttpObserver {
    const byClass = ['1xx', '2xx', '3xx', '4xx', '5xx'].map((code) =>
      this.httpRequests.series({ route, code }),
    );
    const seconds = this.httpRequestSeconds.series({ route });
    const retries = this.httpRetries.series({ route });
    const reuses = this.poolReuses.series({ pool });
    const failures = new Map(
      HTTP_FAILURES.map((reason) => [reason, this.httpErrors.series({ route, reason })]),
    );
    return {
      responded(status, elapsed) {
        byClass[Math.min(Math.max(Math.floor(status / 100), 1), 5) - 1]?.inc();
        seconds.observe(elapsed);
      },
      failed(reason) {
        failures.get(reason)?.inc();
      },
      retried() {
        retries.inc();
      },
      reused() {
        reuses.inc();
      },
    };
  }

  /** Bytes of ended and live sessions, added to the counter as deltas since the last scrape. */
  private flushBytes(): void {
    for (const route of this.routes()) this.flushRouteBytes(route);
  }

  private flushRouteBytes(route: Route): void {
    const now = route.bytesSoFar();
    const last = this.bytesReported.get(route) ?? { up: 0, down: 0 };
    if (now.up > last.up)
      this.bytes.inc({ route: route.name, direction: 'upstream' }, now.up - last.up);
    if (now.down > last.down)
      this.bytes.inc({ route: route.name, direction: 'downstream' }, now.down - last.down);
    this.bytesReported.set(route, now);
  }

  /** A route has ended its last session: its bytes are counted, and it is forgotten. */
  routeGone(route: Route): void {
    this.flushRouteBytes(route);
    this.bytesReported.delete(route);
  }

  private pools(): Iterable<Pool> {
    return this.source?.pools() ?? [];
  }

  private routes(): Iterable<Route> {
    return this.source?.routes() ?? [];
  }
}
