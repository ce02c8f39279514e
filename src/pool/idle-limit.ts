/**
 * The idle age at which the upstream closes links, learned from the links it closes.
 * Servers with an idle or login timer (PostgreSQL's authentication_timeout, MySQL's
 * connect_timeout, a cloud load balancer's idle timeout) close every idle link at about
 * the same age; a pool that does not know it redials forever, and a session that takes a
 * link just before the kill loses it.
 */

/** This many idle links closed by the upstream at about the same age teach the limit. */
const SAMPLES = 3;
/** Ages within this share of the shortest (and at least the floor) are "the same". */
const TOLERANCE = 0.1;
const TOLERANCE_FLOOR_MS = 50;
/**
 * Closes sooner than this are not a timer worth learning: they are failed dials (the pool
 * backs off) or the upstream going away.
 */
const MIN_LIMIT_MS = 500;
/**
 * Links are recycled at this share of the learned age: what a session does first (a login
 * against a login timer) must fit in the rest, on a loaded machine too.
 */
const RECYCLE_SHARE = 0.5;

function tolerance(ms: number): number {
  return Math.max(ms * TOLERANCE, TOLERANCE_FLOOR_MS);
}

interface Sample {
  idleMs: number;
  at: number;
}

export class UpstreamIdleLimit {
  private recent: Sample[] = [];
  private limit: number | undefined;

  /** The idle age (ms) at which the upstream closes links, once learned. */
  get limitMs(): number | undefined {
    return this.limit;
  }

  /** Idle links are recycled past this age (ms); undefined until a limit is learned. */
  get recycleMs(): number | undefined {
    return this.limit === undefined ? undefined : Math.floor(this.limit * RECYCLE_SHARE);
  }

  /**
   * The upstream closed a link idle for `idleMs`. True when this teaches a limit (or a
   * lower one): the last few such closes happened at about the same age, and not all at
   * one moment (every link of a restarting upstream dies at once, at whatever age).
   */
  observe(idleMs: number, at = Date.now()): boolean {
    if (idleMs < MIN_LIMIT_MS) {
      this.recent = [];
      return false;
    }
    this.recent.push({ idleMs, at });
    if (this.recent.length > SAMPLES) this.recent.shift();
    if (this.recent.length < SAMPLES) return false;
    const ages = this.recent.map((s) => s.idleMs);
    const times = this.recent.map((s) => s.at);
    const shortest = Math.min(...ages);
    const sameAge = Math.max(...ages) - shortest <= tolerance(shortest);
    const apart = Math.max(...times) - Math.min(...times) >= shortest / 2;
    // Once learned, only a clearly lower age is news (kills can still come a little early).
    const lower = this.limit === undefined || shortest < this.limit - tolerance(this.limit);
    if (!sameAge || !apart || !lower) return false;
    this.limit = shortest;
    this.recent = [];
    return true;
  }
}
