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
