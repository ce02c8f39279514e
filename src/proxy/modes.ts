import type { OwnReads } from '../net/reads.js';
import type { ModeFactory } from './mode.js';
import { postgresMode } from './postgres/mode.js';
import { redisMode } from './redis/mode.js';

/**
 * The protocol modes that hold pools of their own, by `mode` name. tcp and http use the
 * destination's one pool and are wired in app.ts.
 */
export const MODES: Readonly<Record<string, ModeFactory | undefined>> = {
  postgres: postgresMode,
  redis: redisMode,
};

/** Modes whose protocol starts TLS itself (postgres: SSLRequest), so the dialer must not. */
export const NEGOTIATES_TLS: ReadonlySet<string> = new Set(['postgres']);

/**
 * How a mode's sockets read (net/reads.ts), given whether the side is TLS (Node's TLS layer
 * reads those). tcp splices and redis copies what it keeps, so they take views; postgres
 * sessions keep slices of what they read (a held message, a Parse), so they take copies.
 * http reads through Node's parser.
 */
export function ownReadsOf(mode: string, tls: boolean): OwnReads | undefined {
  if (tls) return undefined;
  if (mode === 'tcp' || mode === 'redis') return 'views';
  if (mode === 'postgres') return 'copies';
  return undefined;
}
