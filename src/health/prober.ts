import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Address } from '../config/address.js';
import { ProbeError, codeOf, describe } from '../errors.js';
import { neverThrowErrors } from '../net/guard.js';
import type { Endpoint, EndpointSet } from '../upstream/endpoints.js';
import { runProbe, type ProbeConfig } from './probes.js';

export interface ProberSettings {
  interval: number;
  timeout: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
  probe: ProbeConfig;
}

/** Told of each probe, for metrics. */
export type ProbeObserver = (endpoint: Endpoint, ok: boolean) => void;

/**
 * Active health checks for one destination: every `interval`, each endpoint is probed
 * on a connection of its own (never a pool link: in tcp mode a link's bytes belong to
 * the app). Results go to the endpoint set, whose thresholds flip health.
 */
export class Prober {
  private timer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Map<Endpoint, Duplex | undefined>();
  private closed = false;

  constructor(
    private readonly endpoints: EndpointSet,
    private readonly connect: (address: Address, timeoutMs: number) => Promise<Duplex>,
    private readonly settings: ProberSettings,
    private readonly log: Logger,
    private readonly observe: ProbeObserver = () => {},
  ) {}

  start(): void {
    if (this.closed || this.timer !== undefined) return;
    this.round();
    this.timer = setInterval(() => this.round(), this.settings.interval);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    for (const socket of this.inFlight.values()) socket?.destroy();
    this.inFlight.clear();
  }

  /** Probes every endpoint not already being probed. */
  round(): void {
    for (const endpoint of this.endpoints.all) {
      if (!this.inFlight.has(endpoint)) void this.probe(endpoint);
    }
  }

  private async probe(endpoint: Endpoint): Promise<void> {
    this.inFlight.set(endpoint, undefined);
    const { timeout } = this.settings;
    const started = Date.now();
    let socket: Duplex | undefined;
    let timer: NodeJS.Timeout | undefined;
    let error: unknown;
    try {
      socket = await this.connect(endpoint.address, timeout);
      if (this.closed) return;
      this.inFlight.set(endpoint, socket);
      neverThrowErrors(socket);
      const left = Math.max(1, timeout - (Date.now() - started));
      await Promise.race([
        runProbe(this.settings.probe, socket, endpoint.name),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new ProbeError(endpoint.name, `no answer within ${timeout}ms`)),
            left,
          );
        }),
      ]);
    } catch (err) {
      error = err;
    } finally {
      if (timer !== undefined) clearTimeout(timer);
      socket?.destroy();
      this.inFlight.delete(endpoint);
    }
    if (this.closed) return;
    const ok = error === undefined;
    const wasHealthy = endpoint.health === 'healthy';
    this.endpoints.probed(
      endpoint,
      ok,
      this.settings.healthyThreshold,
      this.settings.unhealthyThreshold,
    );
    this.observe(endpoint, ok);
    if (wasHealthy && endpoint.health === 'unhealthy') {
      this.log.warn(
        { endpoint: endpoint.name, code: codeOf(error), err: describe(error) },
        'endpoint unhealthy',
      );
    } else if (!wasHealthy && endpoint.health === 'healthy') {
      this.log.info({ endpoint: endpoint.name }, 'endpoint healthy again');
    } else if (!ok && this.log.isLevelEnabled('debug')) {
      this.log.debug({ endpoint: endpoint.name, err: describe(error) }, 'probe failed');
    }
  }
}
