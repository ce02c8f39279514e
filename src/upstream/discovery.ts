import { Resolver } from 'node:dns/promises';
import type { Logger } from 'pino';
import { parseAddress, type Address } from '../config/address.js';
import { ResolveError, describe } from '../errors.js';

/**
 * Resolves a DNS name (A and AAAA) into endpoints, at start and every `refreshMs` — the
 * way a Kubernetes headless service publishes its pods. A failed refresh keeps the
 * endpoints we have.
 */
export class DnsDiscovery {
  private readonly resolver = new Resolver({ timeout: 2000, tries: 2 });
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private last = '';

  constructor(
    private readonly host: string,
    private readonly port: number,
    private readonly refreshMs: number,
    private readonly onAddresses: (addresses: Address[]) => void,
    private readonly log: Logger,
    servers?: readonly string[],
  ) {
    if (servers !== undefined) {
      this.resolver.setServers(
        servers.map((s) => {
          const a = parseAddress(s);
          return typeof a === 'object' && a.kind === 'tcp'
            ? a.host.includes(':')
              ? `[${a.host}]:${a.port}`
              : `${a.host}:${a.port}`
            : s;
        }),
      );
    }
  }

  /** One lookup; rejects with ResolveError when neither A nor AAAA gives an address. */
  async resolve(): Promise<Address[]> {
    const [v4, v6] = await Promise.allSettled([
      this.resolver.resolve4(this.host),
      this.resolver.resolve6(this.host),
    ]);
    const ips = [
      ...(v4.status === 'fulfilled' ? v4.value : []),
      ...(v6.status === 'fulfilled' ? v6.value : []),
    ];
    if (ips.length === 0) {
      const reason: unknown =
        v4.status === 'rejected'
          ? v4.reason
          : v6.status === 'rejected'
            ? v6.reason
            : 'no addresses';
      throw new ResolveError(this.host, reason);
    }
    return ips.sort().map((host) => ({ kind: 'tcp', host, port: this.port }));
  }

  /** Resolves now (rejecting if that fails), then refreshes in the background. */
  async start(): Promise<Address[]> {
    const addresses = await this.resolve();
    this.last = key(addresses);
    this.schedule();
    return addresses;
  }

  close(): void {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Refreshes now; used by the timer (and by tests, which do not wait for it). */
  async refresh(): Promise<void> {
    try {
      const addresses = await this.resolve();
      if (this.closed) return;
      const now = key(addresses);
      if (now !== this.last) {
        this.log.info(
          { dns: this.host, endpoints: addresses.map((a) => `${a.kind === 'tcp' ? a.host : ''}`) },
          'endpoints changed',
        );
        this.last = now;
        this.onAddresses(addresses);
      }
    } catch (err) {
      if (!this.closed)
        this.log.warn(
          { dns: this.host, err: describe(err) },
          'DNS refresh failed: keeping the endpoints we have',
        );
    }
  }

  private schedule(): void {
    if (this.closed || this.refreshMs <= 0) return;
    this.timer = setTimeout(() => {
      void this.refresh().finally(() => this.schedule());
    }, this.refreshMs);
    this.timer.unref();
  }
}

function key(addresses: Address[]): string {
  return addresses.map((a) => (a.kind === 'tcp' ? `${a.host}:${a.port}` : a.path)).join(',');
}
