import cluster, { type Worker } from 'node:cluster';
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { Logger } from 'pino';
import { openAdmin, type AdminServer } from '../admin/server.js';
import { Metrics } from '../admin/metrics.js';
import { effectiveConfig } from '../config/effective.js';
import { redact } from '../config/redact.js';
import type { Config } from '../config/schema.js';
import { planReload } from '../config/reload-plan.js';
import {
  ConfigError,
  WorkerCallError,
  WorkerStartError,
  codeOf,
  describe,
  reloadProblems,
} from '../errors.js';
import {
  WORKER_ENV,
  WORKER_EXIT_CUT,
  isMessage,
  type WorkerCall,
  type WorkerReply,
  type WorkerStart,
  type WorkerFailed,
  type WorkerReady,
} from './messages.js';
import { workerConfig } from './share.js';

type GroupState = 'new' | 'running' | 'draining' | 'stopped';

/** A worker slot: the process serving it now, if any. */
interface Slot {
  index: number;
  worker: Worker | undefined;
  startedAt: number;
  /** Exits in a row that came soon after a start: they space the restarts out. */
  quickExits: number;
  restartTimer: NodeJS.Timeout | undefined;
}

interface PendingCall {
  worker: Worker;
  op: WorkerCall['op'];
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

const CALL_TIMEOUT_MS = 2000;
/** A worker that ran at least this long before it died is restarted at once. */
const STABLE_MS = 5000;
const MAX_RESTART_DELAY_MS = 10_000;

export interface WorkerGroupOptions {
  /** Re-reads the configuration, for SIGHUP and `POST /reload`. */
  loadConfig?: () => Promise<Config>;
  /** Told when a drain that the admin endpoint started has finished. */
  onStopped?: () => void;
}

/**
 * The primary process with `workers` above 1. It forks the workers (node:cluster, with
 * the kernel rather than the primary handing out connections: every worker accepts on
 * the shared listeners), restarts one that dies, and serves the admin endpoint for the
 * whole group: metrics summed over the workers, readiness only when every worker is
 * ready, a reload checked here once and then applied by each worker, and a drain that
 * ends when every worker has finished its own.
 */
export class WorkerGroup {
  config: Config;
  readonly metrics = new Metrics();
  /** The admin server on admin.listen. */
  admin: AdminServer | undefined;
  /** The admin control server on admin.controlListen, when there is one. */
  adminControl: AdminServer | undefined;
  private readonly slots: Slot[];
  private state: GroupState = 'new';
  private restarts = 0;
  private stopping: Promise<void> | undefined;
  private reloading: Promise<unknown> = Promise.resolve();
  private nextCallId = 0;
  private readonly calls = new Map<number, PendingCall>();

  constructor(
    config: Config,
    private readonly log: Logger,
    private readonly options: WorkerGroupOptions = {},
  ) {
    this.config = config;
    this.slots = Array.from({ length: config.workers }, (_, index) => ({
      index,
      worker: undefined,
      startedAt: 0,
      quickExits: 0,
      restartTimer: undefined,
    }));
    this.metrics.attach({
      pools: () => [],
      routes: () => [],
      isDraining: () => this.state === 'draining' || this.state === 'stopped',
      workers: () => ({ running: this.running().length, restarts: this.restarts }),
    });
  }

  /** Forks every worker and waits until each listens; then the admin server starts. */
  async start(): Promise<void> {
    // Every worker accepts on the shared socket itself: handing each connection over
    // from the primary (SCHED_RR) would cost an IPC message per connection.
    cluster.schedulingPolicy = cluster.SCHED_NONE;
    cluster.setupPrimary({ exec: process.argv[1], args: process.argv.slice(2) });
    try {
      await Promise.all(this.slots.map((slot) => this.fork(slot)));
      if (this.config.admin !== false) {
        [this.admin, this.adminControl] = await openAdmin(
          this.config.admin,
          this.adminHandlers(),
          this.log,
        );
      }
    } catch (err) {
      this.state = 'stopped';
      for (const slot of this.slots) slot.worker?.kill('SIGKILL');
      throw err;
    }
    this.state = 'running';
    this.log.info({ workers: this.slots.length }, 'workers started');
  }

  /** Drains every worker, then closes the admin server. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.drain();
    return this.stopping;
  }

  /**
   * A second signal: every worker exits now, without finishing its sessions. Resolves,
   * once they have exited (or after a few seconds), to whether any of them cut sessions.
   */
  async exitNow(): Promise<boolean> {
    const exits = this.running().map(
      (worker) =>
        new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), 3000);
          worker.once('exit', (code: number | null) => {
            clearTimeout(timer);
            resolve(code === WORKER_EXIT_CUT);
          });
          if (worker.isConnected()) worker.send({ type: 'sidepool:exit' }, ignoreSendError);
          else worker.kill('SIGKILL');
        }),
    );
    return (await Promise.all(exits)).some(Boolean);
  }

  /** Re-reads the config, checks it once, and has every worker apply its share. */
  reload(): Promise<{ ok: boolean; problems?: string[] }> {
    const next = this.reloading.then(() => this.reloadNow());
    this.reloading = next.catch(() => undefined);
    return next;
  }

  async readiness(): Promise<{ ready: boolean; reasons: string[] }> {
    const reasons: string[] = [];
    if (this.state === 'draining' || this.state === 'stopped') reasons.push('draining');
    else if (this.state !== 'running') reasons.push('starting');
    const answers = await Promise.all(
      this.slots.map(async (slot) => {
        const worker = slot.worker;
        if (worker === undefined) return [`worker ${slot.index + 1} is not running`];
        try {
          const r = (await this.call(worker, { op: 'readiness' })) as { reasons: string[] };
          return r.reasons.map((reason) => `worker ${slot.index + 1}: ${reason}`);
        } catch (err) {
          return [`worker ${slot.index + 1}: ${describe(err)}`];
        }
      }),
    );
    for (const list of answers) reasons.push(...list);
    return { ready: reasons.length === 0, reasons };
  }

  /** Every worker's pools, each entry marked with its worker (1-based). */
  async poolsView(): Promise<unknown[]> {
    const views = await Promise.all(
      this.slots.map(async (slot) => {
        if (slot.worker === undefined) return [];
        const pools = (await this.call(slot.worker, { op: 'pools' })) as object[];
        return pools.map((pool) => ({ worker: slot.index + 1, ...pool }));
      }),
    );
    return views.flat();
  }

  /** The group's metrics: the primary's own and every worker's, summed by series. */
  async renderMetrics(): Promise<string> {
    const mine = await this.metrics.registry.getMetricsAsJSON();
    const theirs = await Promise.all(
      this.running().map((worker) =>
        this.call(worker, { op: 'metrics' }).then(
          (json) => json as MetricObjectWithValues<MetricValue<string>>[],
          (err: unknown) => {
            this.log.warn({ err: describe(err) }, 'a worker did not answer for metrics');
            return [];
          },
        ),
      ),
    );
    return AggregatorRegistry.aggregate([mine, ...theirs]).metrics();
  }

  private running(): Worker[] {
    const workers: Worker[] = [];
    for (const slot of this.slots) if (slot.worker !== undefined) workers.push(slot.worker);
    return workers;
  }

  /** Starts the worker for a slot; resolves once its routes listen. */
  private fork(slot: Slot): Promise<void> {
    const start: WorkerStart = {
      index: slot.index,
      count: this.slots.length,
      config: workerConfig(this.config, slot.index, this.slots.length),
    };
    const worker = cluster.fork({ [WORKER_ENV]: JSON.stringify(start) });
    slot.worker = worker;
    slot.startedAt = Date.now();
    worker.on('message', (message: unknown) => this.onMessage(message));
    // The IPC channel of a worker that dies (OOM-killed, say) fails the writes in flight:
    // every send here has a callback, and anything else the channel reports is logged
    // rather than thrown. The worker's 'exit' restarts it.
    worker.on('error', (err: Error) =>
      this.log.warn({ worker: slot.index + 1, err: describe(err) }, 'worker channel error'),
    );
    return new Promise<void>((resolve, reject) => {
      const onStarted = (message: unknown): void => {
        if (isMessage<WorkerReady>(message, 'sidepool:started')) {
          settle();
          resolve();
        } else if (isMessage<WorkerFailed>(message, 'sidepool:failed')) {
          settle();
          reject(new WorkerStartError(slot.index + 1, message.code, message.message));
        }
      };
      const onEarlyExit = (code: number | null, signal: string | null): void => {
        settle();
        reject(
          new WorkerStartError(slot.index + 1, 'SIDEPOOL_WORKER_EXIT', exitText(code, signal)),
        );
      };
      const settle = (): void => {
        worker.off('message', onStarted);
        worker.off('exit', onEarlyExit);
      };
      worker.on('message', onStarted);
      worker.once('exit', onEarlyExit);
      worker.once('exit', (code: number | null, signal: string | null) =>
        this.onExit(slot, worker, code, signal),
      );
    });
  }

  private onExit(slot: Slot, worker: Worker, code: number | null, signal: string | null): void {
    if (slot.worker === worker) slot.worker = undefined;
    for (const [id, call] of this.calls) {
      if (call.worker === worker) this.failCall(id, 'the worker exited');
    }
    if (this.state !== 'running') return;
    const lived = Date.now() - slot.startedAt;
    slot.quickExits = lived >= STABLE_MS ? 0 : slot.quickExits + 1;
    const delayMs =
      slot.quickExits === 0 ? 0 : Math.min(MAX_RESTART_DELAY_MS, 250 * 2 ** (slot.quickExits - 1));
    this.restarts++;
    this.log.error(
      { worker: slot.index + 1, exit: exitText(code, signal), restartInMs: delayMs },
      'worker exited: starting it again',
    );
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = undefined;
      if (this.state !== 'running') return;
      this.fork(slot).catch((err: unknown) => {
        // Its exit, which follows, schedules the next try.
        this.log.error(
          { worker: slot.index + 1, code: codeOf(err), err: describe(err) },
          'worker failed to start',
        );
      });
    }, delayMs);
  }

  private onMessage(message: unknown): void {
    if (!isMessage<WorkerReply>(message, 'sidepool:reply')) return;
    const call = this.calls.get(message.id);
    if (call === undefined) return;
    this.calls.delete(message.id);
    clearTimeout(call.timer);
    call.resolve(message.result);
  }

  private failCall(id: number, problem: string): void {
    const call = this.calls.get(id);
    if (call === undefined) return;
    this.calls.delete(id);
    clearTimeout(call.timer);
    call.reject(new WorkerCallError(call.op, problem));
  }

  /** One request to one worker, answered or failed within CALL_TIMEOUT_MS. */
  private call(
    worker: Worker,
    request: { op: 'metrics' | 'readiness' | 'pools' | 'stop' } | { op: 'reload'; config: Config },
    timeoutMs = CALL_TIMEOUT_MS,
  ): Promise<unknown> {
    const id = ++this.nextCallId;
    return new Promise<unknown>((resolve, reject) => {
      if (!worker.isConnected()) {
        reject(new WorkerCallError(request.op, 'the worker is not connected'));
        return;
      }
      const timer = setTimeout(
        () => this.failCall(id, `no answer within ${timeoutMs} ms`),
        timeoutMs,
      );
      this.calls.set(id, { worker, op: request.op, resolve, reject, timer });
      const call: WorkerCall = { type: 'sidepool:call', id, ...request };
      // A worker that died since isConnected() fails the write (EPIPE): that call fails.
      worker.send(call, (err: Error | null) => {
        if (err !== null) this.failCall(id, `the message was not delivered: ${describe(err)}`);
      });
    });
  }

  private async reloadNow(): Promise<{ ok: boolean; problems?: string[] }> {
    if (this.options.loadConfig === undefined || this.state !== 'running') {
      const problem = this.state !== 'running' ? 'not running' : 'no config file to reload from';
      this.log.warn({ problem }, 'reload refused');
      return { ok: false, problems: [problem] };
    }
    let next: Config;
    try {
      next = await this.options.loadConfig();
    } catch (err) {
      return this.rejected(reloadProblems(err), codeOf(err));
    }
    // admin and workers are the primary's: a change to them is refused, as in one process.
    const refusals = planReload(this.config, next).refusals;
    if (refusals.length > 0) return this.rejected(reloadProblems(new ConfigError(refusals)));
    const applied: Slot[] = [];
    const problems = (await this.applyOnWorkers(next, applied)).flat();
    if (problems.length > 0) {
      // Each worker applies whole or not at all; the group too: the workers that applied
      // it go back to the running config.
      const undone = await this.applyOnWorkers(this.config, [], applied);
      for (const problem of undone.flat()) {
        this.log.error({ problem }, 'reload: a worker could not go back to the running config');
      }
      return this.rejected(problems);
    }
    this.config = next;
    this.metrics.configReloads.inc({ result: 'success' });
    this.log.info('config reloaded by every worker');
    return { ok: true };
  }

  private rejected(problems: string[], code?: string): { ok: false; problems: string[] } {
    for (const problem of problems) {
      this.log.error({ code, problem }, 'reload rejected: the running config is kept');
    }
    this.metrics.configReloads.inc({ result: 'failure' });
    return { ok: false, problems };
  }

  /**
   * Has each worker (of `slots`, default all) apply its share of `config`; returns each
   * one's problems, and adds the slots that applied it to `applied`.
   */
  private applyOnWorkers(
    config: Config,
    applied: Slot[],
    slots: readonly Slot[] = this.slots,
  ): Promise<string[][]> {
    return Promise.all(
      slots.map(async (slot) => {
        if (slot.worker === undefined) return [`worker ${slot.index + 1} is not running`];
        try {
          const share = workerConfig(config, slot.index, this.slots.length);
          // A reload may bind new listeners and resolve new upstreams: allow it time.
          const r = (await this.call(slot.worker, { op: 'reload', config: share }, 30_000)) as {
            ok: boolean;
            problems?: string[];
          };
          if (r.ok) applied.push(slot);
          return r.ok ? [] : (r.problems ?? []).map((p) => `worker ${slot.index + 1}: ${p}`);
        } catch (err) {
          return [`worker ${slot.index + 1}: ${describe(err)}`];
        }
      }),
    );
  }

  private async drain(): Promise<void> {
    this.state = 'draining';
    this.log.info('draining: not ready any more; every worker drains');
    for (const slot of this.slots) {
      if (slot.restartTimer !== undefined) clearTimeout(slot.restartTimer);
    }
    const exited = this.running().map(
      (worker) => new Promise<void>((resolve) => worker.once('exit', () => resolve())),
    );
    for (const worker of this.running()) {
      this.call(worker, { op: 'stop' }).catch(() => worker.kill('SIGTERM'));
    }
    await Promise.all(exited);
    await Promise.all([this.admin?.close(), this.adminControl?.close()]);
    this.state = 'stopped';
    this.log.info('stopped');
  }

  private adminHandlers() {
    return {
      metrics: async () => ({
        contentType: this.metrics.contentType,
        body: await this.renderMetrics(),
      }),
      readiness: () => this.readiness(),
      pools: () => this.poolsView(),
      config: () => redact(effectiveConfig(this.config)),
      reload: () => this.reload(),
      drain: () => {
        void this.stop().then(() => this.options.onStopped?.());
      },
    };
  }
}

function ignoreSendError(): void {}

function exitText(code: number | null, signal: string | null): string {
  return signal !== null ? `killed by ${signal}` : `exit code ${String(code)}`;
}
