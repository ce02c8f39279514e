import type { Logger } from 'pino';
import { parseAddress, type Address } from '../config/address.js';
import type { RouteConfig } from '../config/schema.js';
import { Prober, type ProbeObserver } from '../health/prober.js';
import type { Pool } from '../pool/pool.js';
import type { OwnReads } from '../net/reads.js';
import { Dialer } from './dialer.js';
import { DnsDiscovery } from './discovery.js';
import { EndpointSet, type Endpoint } from './endpoints.js';
import { TlsOrigination } from './tls.js';
import { NO_TLS_OBSERVER, type TlsObserver } from '../tls/observer.js';

/** Told of endpoint events, for metrics. */
export interface DestinationObserver {
  probed: ProbeObserver;
  ejected(endpoint: Endpoint): void;
  /**
   * The endpoint left and its last link closed: its series (in the destination's name and
   * in each of `pools`) go.
   */
  gone(endpoint: Endpoint, pools: readonly string[]): void;
}

const NO_OBSERVER: DestinationObserver = { probed() {}, ejected() {}, gone() {} };

/**
 * Where a pool's links go: the endpoints (static, or discovered by DNS), their health
 * (active probes, passive outlier detection) and the dialer that picks among them. When
 * an endpoint goes down its idle links leave the pool; when one comes back the pool
 * reconciles at once.
 */
export class Destination {
  readonly name: string;
  readonly endpoints: EndpointSet;
  readonly dialer: Dialer;
  /** TLS origination, when the upstream is TLS: its material, session cache, refusals. */
  readonly tls: TlsOrigination | undefined;
  private readonly discovery: DnsDiscovery | undefined;
  private readonly prober: Prober | undefined;
  /** The pools whose links go here: one per destination, or several for a mode's keys. */
  private readonly pools = new Set<Pool>();

  constructor(
    name: string,
    route: RouteConfig,
    private readonly log: Logger,
    observer: DestinationObserver = NO_OBSERVER,
    tlsObserver: TlsObserver = NO_TLS_OBSERVER,
    /** The mode starts TLS inside its protocol (postgres): the dialer makes plain TCP. */
    tlsByMode = false,
    /** How links read (net/reads.ts); undefined: Node's own reads. */
    ownReads?: OwnReads,
  ) {
    this.name = name;
    const { upstream } = route;
    const addresses = upstream.addresses.map((text) => parseAddress(text) as Address);
    this.endpoints = new EndpointSet(addresses, upstream.balance, route.outlier, {
      down: (endpoint, reason) => {
        this.log.warn({ endpoint: endpoint.name, reason }, 'endpoint takes no new dials');
        for (const pool of this.pools) {
          pool.evictIdle(endpoint.name, reason === 'removed' ? 'endpoint_removed' : 'unhealthy');
        }
      },
      up: (endpoint) => {
        this.log.info({ endpoint: endpoint.name }, 'endpoint takes dials');
        for (const pool of this.pools) pool.poke();
      },
      ejected: (endpoint, forMs) => {
        this.log.warn(
          { endpoint: endpoint.name, forMs, times: endpoint.ejections },
          'endpoint ejected',
        );
        observer.ejected(endpoint);
      },
      gone: (endpoint) => {
        this.log.info({ endpoint: endpoint.name }, 'endpoint gone: its last link closed');
        observer.gone(
          endpoint,
          [...this.pools].map((pool) => pool.name),
        );
      },
    });
    this.tls =
      upstream.tls === undefined
        ? undefined
        : new TlsOrigination({
            pool: name,
            settings: upstream.tls,
            // Endpoints found by DNS are addresses; the certificate names the DNS name.
            defaultServername:
              upstream.dns === undefined
                ? undefined
                : (parseAddress(upstream.dns) as Address & { kind: 'tcp' }).host,
            logger: log,
            observer: tlsObserver,
          });
    this.dialer = new Dialer({
      name,
      endpoints: this.endpoints,
      connectTimeout: route.pool.connectTimeout,
      tls: tlsByMode ? undefined : this.tls,
      ownReads,
    });
    if (upstream.dns !== undefined) {
      const dns = parseAddress(upstream.dns) as Address & { kind: 'tcp' };
      this.discovery = new DnsDiscovery(
        dns.host,
        dns.port,
        upstream.dnsRefresh,
        (found) => this.endpoints.update(found),
        log,
        upstream.resolvers,
      );
    }
    if (route.health !== undefined) {
      this.prober = new Prober(
        this.endpoints,
        (address, timeoutMs) => this.dialer.connect(address, timeoutMs),
        route.health,
        log,
        observer.probed,
      );
    }
  }

  /** A pool whose idle links this destination evicts when an endpoint goes down. */
  attach(pool: Pool): void {
    this.pools.add(pool);
  }

  detach(pool: Pool): void {
    this.pools.delete(pool);
  }

  /** Resolves DNS (rejecting with ResolveError when it fails), then starts probing. */
  async resolve(): Promise<void> {
    if (this.discovery !== undefined) this.endpoints.update(await this.discovery.start());
  }

  /** Starts probing, and watching the TLS certificate files for changes. */
  startProbes(): void {
    this.prober?.start();
    this.tls?.material.watch();
  }

  get hasProbes(): boolean {
    return this.prober !== undefined;
  }

  isDown(): boolean {
    return this.endpoints.allDown;
  }

  /** A JSON-ready picture of the endpoints, for `/pools`. */
  view(): unknown[] {
    const now = Date.now();
    return this.endpoints.all.map((e) => ({
      endpoint: e.name,
      up: e.isUp(now),
      health: e.health,
      ejected: e.isEjected(now),
      lastDialFailed: e.lastDialFailed,
      ejections: e.ejections,
      links: e.links,
    }));
  }

  close(): void {
    this.dialer.close();
    this.tls?.close();
    this.discovery?.close();
    this.prober?.close();
    this.endpoints.close();
  }
}
