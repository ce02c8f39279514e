import { App } from '../app.js';
import { Metrics } from '../admin/metrics.js';
import type { Config } from '../config/schema.js';
import { SidepoolError, describe } from '../errors.js';
import { handleProcessFaults } from '../faults.js';
import { createLogger } from '../log.js';
import { reusePortAvailable } from '../net/reuse-port.js';
import { onSignal } from '../signals.js';
import {
  WORKER_ENV,
  WORKER_EXIT_CUT,
  isMessage,
  type WorkerCall,
  type WorkerExit,
  type WorkerReply,
  type WorkerStart,
  type WorkerStarted,
} from './messages.js';

/** True in a process the primary forked to serve routes. */
export function isWorker(): boolean {
  return process.env[WORKER_ENV] !== undefined && typeof process.send === 'function';
}

/**
 * A worker: runs the routes of its share of the config, answers the primary's calls
 * (metrics, readiness, pools, reload, stop) and resolves with its exit code once stopped.
 * The primary owns the lifecycle: SIGINT and SIGHUP, which a terminal sends to the whole
 * process group, are left to it; a SIGTERM sent to this worker alone drains it.
 */
export function runWorker(): Promise<number> {
  const start = JSON.parse(process.env[WORKER_ENV] as string) as WorkerStart;
  const log = createLogger(start.config.log.level).child({ worker: start.index + 1 });
  const metrics = new Metrics();
  handleProcessFaults(log, (kind) => metrics.internalError(kind));
  let next: Config = start.config;
  const app = new App(start.config, log, {
    metrics,
    loadConfig: () => Promise.resolve(next),
    reusePort: start.config.workerSockets === 'own' && reusePortAvailable(),
  });
  const send = (message: WorkerReply | WorkerStarted): void => {
    // The channel is gone when the primary has died; the disconnect ends this process, so
    // a write that fails meanwhile is dropped (with a callback: it is not thrown).
    if (process.connected) process.send?.(message, undefined, undefined, dropSendError);
  };

  return new Promise<number>((resolve) => {
    const stop = (): void => {
      app.stop(app.config.drain.timeout, app.config.drain.delay).then(
        () => resolve(0),
        (err: unknown) => {
          log.error({ err: describe(err) }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    const answer = async (call: WorkerCall): Promise<unknown> => {
      switch (call.op) {
        case 'metrics':
          return metrics.registry.getMetricsAsJSON();
        case 'readiness':
          return app.readiness();
        case 'pools':
          return app.poolsView();
        case 'reload':
          next = call.config;
          return app.reload();
        case 'stop':
          stop();
          return true;
      }
    };
    const onMessage = (message: unknown): void => {
      if (isMessage<WorkerExit>(message, 'sidepool:exit')) {
        log.warn({ sessions: app.activeSessions }, 'told to exit now');
        resolve(app.activeSessions > 0 ? WORKER_EXIT_CUT : 0);
        return;
      }
      if (!isMessage<WorkerCall>(message, 'sidepool:call')) return;
      answer(message).then(
        (result) => send({ type: 'sidepool:reply', id: message.id, result }),
        (err: unknown) =>
          send({ type: 'sidepool:reply', id: message.id, result: { error: describe(err) } }),
      );
    };
    let started = false;
    let stopOnceStarted = false;
    // Listening before the start: the primary may ask for readiness (or stop) meanwhile.
    process.on('message', onMessage);
    onSignal((signal) => {
      if (signal !== 'SIGTERM') return;
      if (started) stop();
      else stopOnceStarted = true;
    });
    app.start().then(
      () => {
        started = true;
        send({ type: 'sidepool:started' });
        if (stopOnceStarted) stop();
      },
      (err: unknown) => {
        const code = err instanceof SidepoolError ? err.code : 'SIDEPOOL_WORKER_START';
        log.error({ code, err: describe(err) }, 'cannot start');
        send({ type: 'sidepool:failed', code, message: describe(err) });
        resolve(1);
      },
    );
  });
}

function dropSendError(): void {}
