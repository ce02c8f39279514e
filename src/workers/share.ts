import type { Config } from '../config/schema.js';

/**
 * Worker `index`'s part of `total` split over `count` workers: the parts differ by at
 * most one and add up to `total`, so the group never holds more than the configured
 * number of links or waiters.
 */
export function shareOf(total: number, index: number, count: number): number {
  return Math.floor(total / count) + (index < total % count ? 1 : 0);
}

/**
 * The config one worker runs: every pool's minIdle, maxSize and maxWaiters cut to the
 * worker's share, no admin server (the primary serves it for the group) and one worker.
 * The config check makes maxSize at least the worker count, so every share is ≥ 1.
 */
export function workerConfig(config: Config, index: number, count: number): Config {
  return {
    ...config,
    admin: false,
    workers: 1,
    routes: config.routes.map((route) => ({
      ...route,
      pool: {
        ...route.pool,
        minIdle: shareOf(route.pool.minIdle, index, count),
        maxSize: shareOf(route.pool.maxSize, index, count),
        maxWaiters: shareOf(route.pool.maxWaiters, index, count),
      },
    })),
  };
}
