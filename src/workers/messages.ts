import type { Config } from '../config/schema.js';

/** The environment variable that tells a forked process it is a worker, and what to run. */
export const WORKER_ENV = 'SIDEPOOL_WORKER';

/** What a worker is started with (JSON in WORKER_ENV). */
export interface WorkerStart {
  /** 0-based; logs and /pools show it 1-based. */
  index: number;
  count: number;
  /** The worker's share of the config (see share.ts). */
  config: Config;
}

/** What the primary asks of a worker; every call gets one reply with the same id. */
export type WorkerCall =
  | { type: 'sidepool:call'; id: number; op: 'metrics' | 'readiness' | 'pools' }
  | { type: 'sidepool:call'; id: number; op: 'reload'; config: Config }
  | { type: 'sidepool:call'; id: number; op: 'stop' };

export interface WorkerReply {
  type: 'sidepool:reply';
  id: number;
  result: unknown;
}

/** Sent once by a worker: its routes listen, or it could not start. */
export interface WorkerReady {
  type: 'sidepool:started';
}
export interface WorkerFailed {
  type: 'sidepool:failed';
  code: string;
  message: string;
}
export type WorkerStarted = WorkerReady | WorkerFailed;

/** A worker's exit code when told to exit now while it had sessions open. */
export const WORKER_EXIT_CUT = 3;

/** Tells the worker to exit now (a second signal to the primary). */
export interface WorkerExit {
  type: 'sidepool:exit';
}

export function isMessage<T extends { type: string }>(value: unknown, type: T['type']): value is T {
  return typeof value === 'object' && value !== null && (value as { type?: unknown }).type === type;
}
