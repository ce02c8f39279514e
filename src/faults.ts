import type { Logger } from 'pino';
import { describe } from './errors.js';

/** A fault that reached the process itself: code that no caller handled (a bug). */
export type FaultKind = 'unhandled_rejection' | 'uncaught_exception';

export const FAULT_KINDS: readonly FaultKind[] = ['unhandled_rejection', 'uncaught_exception'];

/** sysexits.h EX_SOFTWARE: an internal error, told apart from 1 (runtime) and 2 (config). */
export const EXIT_INTERNAL_ERROR = 70;

/**
 * The process-wide policy for faults nobody handled, for the CLI's processes (the single
 * process, the primary, each worker):
 *
 * - An unhandled promise rejection is logged (error) and counted, and the process keeps
 *   running. A rejection is settled state: the promise that failed took nothing with it,
 *   and a proxy beside every pod must not drop every connection because one path forgot
 *   a `.catch()`. (Node's default since v15 is to exit.)
 * - An uncaught exception is logged (fatal) and counted, and the process exits with
 *   EXIT_INTERNAL_ERROR (70). It was thrown out of the middle of some handler, which may
 *   have left a pool, a splice or a listener half updated; Node documents that resuming
 *   after one is unsafe. The supervisor (Kubernetes, or the primary for a worker) starts a
 *   clean process, and the exit code says why.
 *
 * Returns a function that removes the handlers (for tests).
 */
export function handleProcessFaults(
  log: Logger,
  count: (kind: FaultKind) => void,
  exit: (code: number) => void = (code) => process.exit(code),
): () => void {
  const onRejection = (reason: unknown): void => {
    count('unhandled_rejection');
    log.error(
      { kind: 'unhandled_rejection', err: describe(reason), stack: stackOf(reason) },
      'unhandled promise rejection (a bug): sidepool keeps running',
    );
  };
  const onException = (err: Error, origin: string): void => {
    count('uncaught_exception');
    log.fatal(
      { kind: 'uncaught_exception', origin, err: describe(err), stack: stackOf(err) },
      `uncaught exception (a bug): exiting with code ${EXIT_INTERNAL_ERROR} for a restart`,
    );
    exit(EXIT_INTERNAL_ERROR);
  };
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  return () => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  };
}

function stackOf(value: unknown): string | undefined {
  return value instanceof Error ? value.stack : undefined;
}
