import type { Link } from '../../pool/link.js';
import type { Pool } from '../../pool/pool.js';

/**
 * When an idle keep-alive link may still carry a request. An upstream closes an idle
 * connection after its keep-alive timeout; a request sent as it does so is lost. So a
 * link is not reused past `upstreamKeepAlive`, nor close to the timeout the upstream
 * announced (`Keep-Alive: timeout=N`).
 */

/** The reuse limit each link's upstream announced, in ms of idleness. */
const announced = new WeakMap<Link, number>();

/**
 * Records `Keep-Alive: timeout=N` from a response on `link`. The upstream's clock started
 * before ours (its last byte was still in flight), so we stop short: a second before, or a
 * quarter of the timeout when it is short.
 */
export function noteKeepAliveTimeout(link: Link, seconds: number): void {
  const ms = seconds * 1000;
  announced.set(link, ms - Math.min(1000, ms / 4));
}

/**
 * Whether an idle link may carry a request now. `staleBefore` (an idle turn, `Link.idleTurn`):
 * after a link died under a request, links that have been idle at least as long are
 * presumed dead too.
 */
export function fitForRequest(
  link: Link,
  upstreamKeepAliveMs: number,
  staleBefore: number,
  now: number,
): boolean {
  if (link.idleTurn <= staleBefore) return false;
  const idleMs = now - link.idleSince;
  if (upstreamKeepAliveMs > 0 && idleMs >= upstreamKeepAliveMs) return false;
  const limit = announced.get(link);
  return limit === undefined || idleMs < limit;
}

/**
 * An idle link fit for a request, or undefined. Unfit idle links are closed on the way:
 * they are past their keep-alive and would only fail a request later.
 */
export function takeIdleLink(
  pool: Pool,
  upstreamKeepAliveMs: number,
  staleBefore: number,
): Link | undefined {
  const now = Date.now();
  for (;;) {
    const link = pool.tryAcquire();
    if (link === undefined) return undefined;
    if (fitForRequest(link, upstreamKeepAliveMs, staleBefore, now)) return link;
    link.close('idle');
  }
}
