import { Pool, type PoolSettings } from '../../src/pool/pool.js';
import { Backoff } from '../../src/pool/backoff.js';
import { FakeDialer } from './fake-dialer.js';
import { captureLogger } from './util.js';

export const SETTINGS: PoolSettings = {
  minIdle: 0,
  maxSize: 4,
  maxWaiters: 10,
  acquireTimeout: 1000,
  idleTimeout: 0,
  maxLifetime: 0,
};

/** A pool over a counting fake dialer, with its log lines readable. */
export function makePool(
  settings: Partial<PoolSettings> = {},
  opts: { keepIdleBytes?: boolean; backoff?: Backoff } = {},
) {
  const dialer = new FakeDialer();
  const { logger, lines } = captureLogger();
  const pool = new Pool({
    name: 'fake:1',
    ...SETTINGS,
    ...settings,
    connector: dialer,
    logger,
    ...opts,
  });
  return { pool, dialer, lines };
}
