import { formatAddress, type Address } from '../config/address.js';

/** Why an endpoint stopped taking new dials. */
export type DownReason = 'unhealthy' | 'ejected' | 'removed';

export interface OutlierSettings {
  /** Consecutive dial failures, TLS failures or resets that eject an endpoint; 0 = never. */
  consecutiveFailures: number;
  /** The first ejection lasts this long; each further one longer (× times ejected). */
  baseEjectionTime: number;
  /** No ejection lasts longer than this. */
  maxEjectionTime: number;
  /** Never eject more than this share of the endpoints (so one bad deploy cannot take all). */
  maxEjectedPercent: number;
}

export type Balance = 'least-active' | 'round-robin';

/** One resolved address of a destination, with its own health. */
export class Endpoint {
  readonly name: string;
  /** Open links (idle and active) to this endpoint: what least-active balancing weighs. */
  links = 0;
  /** What active probes say; healthy until they say otherwise. */
  health: 'healthy' | 'unhealthy' = 'healthy';
  probeSuccesses = 0;
  probeFailures = 0;
  /** Passive outlier detection: failures in a row, times ejected, and until when. */
  consecutiveFailures = 0;
  ejections = 0;
  ejectedUntil = 0;
  /** The last dial to it failed (and none has succeeded since). */
  lastDialFailed = false;
  /** DNS no longer lists it: no new dials; its active links finish. */
  removed = false;

  constructor(readonly address: Address) {
    this.name = formatAddress(address);
  }

  isEjected(now = Date.now()): boolean {
    return now < this.ejectedUntil;
  }

  /** May take new dials: not removed, not unhealthy, not ejected. */
  isAvailable(now = Date.now()): boolean {
    return !this.removed && this.health === 'healthy' && !this.isEjected(now);
  }

  /**
   * Up, as the pool sees it: available, and its last dial did not fail. An endpoint whose
   * dials fail is down before outlier detection may eject it (it never ejects the only
   * one: 50% of 1 is 0); `/pools` and `sidepool_endpoint_up` say what this says.
   */
  isUp(now = Date.now()): boolean {
    return this.isAvailable(now) && !this.lastDialFailed;
  }
}

/** Whether `a` should take the next dial rather than `b` (scanned in rotating order). */
function better(a: Endpoint, b: Endpoint, balance: Balance): boolean {
  if (a.lastDialFailed !== b.lastDialFailed) return b.lastDialFailed;
  return balance === 'least-active' && a.links < b.links;
}

export interface EndpointEvents {
  /** The endpoint takes no new dials any more: its idle links should go. */
  down(endpoint: Endpoint, reason: DownReason): void;
  /** The endpoint takes dials again. */
  up(endpoint: Endpoint): void;
  ejected(endpoint: Endpoint, forMs: number): void;
  /** The endpoint left (DNS) and its last link closed: nothing more will be said of it. */
  gone(endpoint: Endpoint): void;
}

/**
 * The endpoints of one destination: which may take new dials (health, ejections,
 * discovery), and which one the next dial goes to.
 */
export class EndpointSet {
  private endpoints: Endpoint[];
  private next = 0;
  private readonly ejectionTimers = new Set<NodeJS.Timeout>();

  constructor(
    addresses: readonly Address[],
    private readonly balance: Balance,
    private readonly outlier: OutlierSettings,
    private readonly events: EndpointEvents,
  ) {
    this.endpoints = addresses.map((address) => new Endpoint(address));
  }

  get all(): readonly Endpoint[] {
    return this.endpoints;
  }

  find(name: string): Endpoint | undefined {
    return this.endpoints.find((e) => e.name === name);
  }

  /**
   * The endpoint for the next dial, or undefined when none may take one. Endpoints whose
   * last dial failed come last: they are tried only when no other is left.
   */
  pick(exclude?: ReadonlySet<Endpoint>): Endpoint | undefined {
    const now = Date.now();
    const count = this.endpoints.length;
    let best: Endpoint | undefined;
    for (let i = 0; i < count; i++) {
      const endpoint = this.endpoints[(this.next + i) % count] as Endpoint;
      if (!endpoint.isAvailable(now) || exclude?.has(endpoint)) continue;
      if (best === undefined || better(endpoint, best, this.balance)) best = endpoint;
    }
    // Rotating the start spreads ties (and round-robin) across endpoints.
    this.next = (this.next + 1) % Math.max(count, 1);
    return best;
  }

  /**
   * True when no endpoint can be expected to take a dial: each is removed, unhealthy,
   * ejected, or failed its last dial. Queued downstreams then fail fast.
   */
  get allDown(): boolean {
    const now = Date.now();
    return this.endpoints.every((e) => !e.isUp(now));
  }

  /** A link to `endpoint` opened. */
  linkOpened(endpoint: Endpoint): void {
    endpoint.links++;
  }

  /** A link to `endpoint` closed: the last one of an endpoint that left makes it gone. */
  linkClosed(endpoint: Endpoint): void {
    endpoint.links--;
    if (endpoint.removed && endpoint.links === 0) this.leave(endpoint);
  }

  dialSucceeded(endpoint: Endpoint): void {
    endpoint.lastDialFailed = false;
    endpoint.consecutiveFailures = 0;
  }

  /** A dial failed, a TLS handshake failed, or a link was reset: outlier detection. */
  failed(endpoint: Endpoint, dial: boolean): void {
    if (dial) endpoint.lastDialFailed = true;
    endpoint.consecutiveFailures++;
    const limit = this.outlier.consecutiveFailures;
    if (limit > 0 && endpoint.consecutiveFailures >= limit && !endpoint.isEjected())
      this.eject(endpoint);
  }

  /** An active probe's result; thresholds decide when health flips. */
  probed(
    endpoint: Endpoint,
    ok: boolean,
    healthyThreshold: number,
    unhealthyThreshold: number,
  ): void {
    if (ok) {
      endpoint.probeFailures = 0;
      endpoint.probeSuccesses++;
      if (endpoint.probeSuccesses < healthyThreshold) return;
      // Probes that pass lift a passive ejection too: they are the better evidence.
      const wasDown = endpoint.health === 'unhealthy' || endpoint.isEjected();
      if (!wasDown) return;
      endpoint.health = 'healthy';
      endpoint.ejectedUntil = 0;
      endpoint.lastDialFailed = false;
      if (endpoint.isAvailable()) this.events.up(endpoint);
    } else {
      endpoint.probeSuccesses = 0;
      endpoint.probeFailures++;
      if (endpoint.health === 'healthy' && endpoint.probeFailures >= unhealthyThreshold) {
        endpoint.health = 'unhealthy';
        this.events.down(endpoint, 'unhealthy');
      }
    }
  }

  /**
   * Replaces the address list (DNS discovery). New endpoints join; missing ones are
   * marked removed (no new dials, idle links closed) and dropped. Returns what changed.
   */
  update(addresses: readonly Address[]): { added: Endpoint[]; removed: Endpoint[] } {
    const wanted = new Map(addresses.map((a) => [new Endpoint(a).name, a]));
    const removed = this.endpoints.filter((e) => !wanted.has(e.name));
    const added: Endpoint[] = [];
    for (const [name, address] of wanted) {
      if (!this.endpoints.some((e) => e.name === name)) added.push(new Endpoint(address));
    }
    for (const endpoint of removed) {
      endpoint.removed = true;
      this.events.down(endpoint, 'removed');
    }
    this.endpoints = [...this.endpoints.filter((e) => !e.removed), ...added];
    for (const endpoint of added) this.events.up(endpoint);
    for (const endpoint of removed) if (endpoint.links === 0) this.leave(endpoint);
    return { added, removed };
  }

  /** Unless the name came back (DNS listed it again), the endpoint is gone. */
  private leave(endpoint: Endpoint): void {
    if (!this.endpoints.some((e) => e.name === endpoint.name)) this.events.gone(endpoint);
  }

  close(): void {
    for (const timer of this.ejectionTimers) clearTimeout(timer);
    this.ejectionTimers.clear();
  }

  private eject(endpoint: Endpoint): void {
    const now = Date.now();
    const ejected = this.endpoints.filter((e) => e.isEjected(now)).length;
    const allowed = Math.floor((this.endpoints.length * this.outlier.maxEjectedPercent) / 100);
    if (ejected + 1 > allowed) return;
    endpoint.ejections++;
    const forMs = Math.min(
      this.outlier.baseEjectionTime * endpoint.ejections,
      this.outlier.maxEjectionTime,
    );
    endpoint.ejectedUntil = now + forMs;
    endpoint.consecutiveFailures = 0;
    this.events.ejected(endpoint, forMs);
    this.events.down(endpoint, 'ejected');
    this.endEjectionAt(endpoint, endpoint.ejectedUntil);
  }

  /**
   * Says `up` once the ejection that lasts until `until` is over. A timer runs on the
   * event loop's clock, which is read once per loop turn and so lags Date.now by however
   * long the turn has run: it can fire while Date.now is still short of `until`. Then it
   * waits out the rest, or the endpoint would stay down for the pool (no `up`, no poke
   * for queued borrowers) until something else happened.
   */
  private endEjectionAt(endpoint: Endpoint, until: number): void {
    const timer = setTimeout(
      () => {
        this.ejectionTimers.delete(timer);
        // Lifted by probes (which said `up`) or ejected again (its own timer says it).
        if (endpoint.ejectedUntil !== until) return;
        if (endpoint.isEjected()) this.endEjectionAt(endpoint, until);
        else if (endpoint.isAvailable()) this.events.up(endpoint);
      },
      Math.max(1, until - Date.now()),
    );
    timer.unref();
    this.ejectionTimers.add(timer);
  }
}
