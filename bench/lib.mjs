// Shared helpers for the benchmark harness: child processes (started, tracked and ended by
// PID), ports, readiness, /proc sampling, statistics and markdown tables. Plain ESM, node
// builtins only.
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

export { sleep, performance };

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
export const ROOT_DIR = path.resolve(BENCH_DIR, '..');
export const HOST = '127.0.0.1';

/** Progress goes to stderr; stdout carries only the final table. */
export function say(...parts) {
  process.stderr.write(`${parts.join(' ')}\n`);
}

// ── child processes ─────────────────────────────────────────────────────────

/** Every child this process started and that has not exited yet, by PID. */
const children = new Map();

/**
 * A process we started. `exited` resolves once, with { code, signal, error }. With
 * `json: true` its stdout is read as JSON lines ("events"); other output goes to `logFile`.
 */
export class Child {
  constructor(name, proc, logFile) {
    this.name = name;
    this.proc = proc;
    this.pid = proc.pid;
    this.logFile = logFile;
    this.alive = proc.pid !== undefined;
    this.events = [];
    this.eventWaiters = [];
    this.exitInfo = undefined;
    this.exited = new Promise((resolve) => {
      const done = (info) => {
        if (this.exitInfo !== undefined) return;
        this.alive = false;
        this.exitInfo = info;
        children.delete(this.pid);
        for (const waiter of this.eventWaiters) waiter.fail(this.exitError());
        this.eventWaiters = [];
        resolve(info);
      };
      proc.once('exit', (code, signal) => done({ code, signal, error: undefined }));
      proc.once('error', (error) => done({ code: null, signal: null, error }));
    });
    if (this.alive) children.set(this.pid, this);
  }

  /** Called for each JSON line on stdout. */
  pushEvent(event) {
    this.events.push(event);
    this.eventWaiters = this.eventWaiters.filter((waiter) => {
      if (!waiter.match(event)) return true;
      waiter.resolve(event);
      return false;
    });
  }

  exitError() {
    const info = this.exitInfo ?? {};
    const how = info.error
      ? info.error.message
      : info.signal
        ? `killed by ${info.signal}`
        : `exit code ${info.code}`;
    const tail = this.tail(15);
    return new Error(`${this.name} (pid ${this.pid}) ended: ${how}${tail ? `\n${tail}` : ''}`);
  }

  /** Resolves with the first event (past or future) that matches; rejects on exit or timeout. */
  waitEvent(match, timeoutMs = 30_000) {
    const past = this.events.find(match);
    if (past !== undefined) return Promise.resolve(past);
    if (!this.alive) return Promise.reject(this.exitError());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.eventWaiters = this.eventWaiters.filter((w) => w !== waiter);
        reject(new Error(`${this.name}: no matching event within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = {
        match,
        resolve: (event) => {
          clearTimeout(timer);
          resolve(event);
        },
        fail: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this.eventWaiters.push(waiter);
    });
  }

  signal(sig) {
    // Only a child that has not exited: its PID cannot have been reused yet.
    if (!this.alive) return;
    try {
      process.kill(this.pid, sig);
    } catch {
      // Already gone.
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`. Resolves with { code, signal, forced }. */
  async stop(graceMs = 5000) {
    if (this.alive) {
      this.signal('SIGTERM');
      const timer = sleep(graceMs).then(() => 'timeout');
      if ((await Promise.race([this.exited, timer])) === 'timeout') {
        this.signal('SIGKILL');
        const info = await this.exited;
        return { ...info, forced: true };
      }
    }
    return { ...(await this.exited), forced: false };
  }

  /** The last `n` lines of the log file. */
  tail(n = 20) {
    if (!this.logFile) return '';
    try {
      const lines = fs.readFileSync(this.logFile, 'utf8').trimEnd().split('\n');
      return lines.slice(-n).join('\n');
    } catch {
      return '';
    }
  }
}

/**
 * Starts a process. stdout is parsed as JSON lines when `json` is set (non-JSON lines go
 * to the log file), otherwise stdout and stderr go straight to `logFile` (or are dropped).
 */
export function startChild(
  name,
  command,
  args,
  { logFile, json = false, cwd = ROOT_DIR, env } = {},
) {
  const logFd = logFile ? fs.openSync(logFile, 'a') : 'ignore';
  const proc = spawn(command, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', json ? 'pipe' : logFd, logFd],
  });
  if (typeof logFd === 'number') fs.closeSync(logFd);
  const child = new Child(name, proc, logFile);
  if (json && proc.stdout) {
    let buffered = '';
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (text) => {
      buffered += text;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        let event;
        try {
          event = JSON.parse(line);
        } catch {
          if (logFile) fs.appendFileSync(logFile, `${line}\n`);
          continue;
        }
        child.pushEvent(event);
      }
    });
  }
  return child;
}

/**
 * Runs a command to completion, bounded by `timeoutMs` (then SIGKILL). Resolves with
 * { code, signal, stdout, stderr, timedOut, ms, error }; never rejects.
 */
export function runCommand(name, command, args, { timeoutMs = 120_000, cwd = ROOT_DIR, env } = {}) {
  const started = performance.now();
  const proc = spawn(command, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const child = new Child(name, proc);
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8').on('data', (t) => (stdout += t));
  proc.stderr.setEncoding('utf8').on('data', (t) => (stderr += t));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.signal('SIGKILL');
  }, timeoutMs);
  return child.exited.then(async (info) => {
    clearTimeout(timer);
    // Let the pipes drain.
    await Promise.all(
      [proc.stdout, proc.stderr].map((s) =>
        s.readableEnded || s.destroyed ? undefined : new Promise((r) => s.once('close', r)),
      ),
    );
    return { ...info, stdout, stderr, timedOut, ms: performance.now() - started };
  });
}

/** Kills every child still running. Synchronous: safe in an 'exit' handler. */
export function killAllChildren() {
  for (const child of [...children.values()]) child.signal('SIGKILL');
}

export function liveChildren() {
  return [...children.values()];
}

let cleanupInstalled = false;

/** Ends our children whenever this process ends: normal exit, signal, or crash. */
export function installCleanup(onFatal) {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on('exit', killAllChildren);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      say(`\nbench: ${sig}: stopping ${children.size} child process(es) and exiting`);
      killAllChildren();
      process.exit(130);
    });
  }
  const fatal = (err) => {
    say(`bench: fatal: ${err?.stack ?? err}`);
    try {
      onFatal?.(err);
    } catch {
      // Nothing more to do.
    }
    killAllChildren();
    process.exit(1);
  };
  process.on('uncaughtException', fatal);
  process.on('unhandledRejection', fatal);
}

// ── ports and readiness ─────────────────────────────────────────────────────

const usedPorts = new Set();

function ephemeralRange() {
  try {
    const [lo, hi] = fs
      .readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number);
    return [lo, hi];
  } catch {
    return [32768, 60999];
  }
}

function canBind(port) {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen({ port, host: HOST, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/**
 * A free TCP port on 127.0.0.1, chosen below the ephemeral range so that the heavy
 * connection churn of a run can never take it between allocation and use.
 */
export async function freePort() {
  const [lo] = ephemeralRange();
  const top = Math.max(lo - 1, 12000);
  const bottom = Math.max(10000, top - 12000);
  for (let i = 0; i < 200; i++) {
    const port = bottom + Math.floor(Math.random() * (top - bottom));
    if (usedPorts.has(port)) continue;
    if (await canBind(port)) {
      usedPorts.add(port);
      return port;
    }
  }
  throw new Error('no free port found');
}

let ssPath;

/**
 * Lines of `ss -Htn <filter>` (iproute2): the kernel's socket diagnostics over netlink,
 * filtered by state and port in the kernel. Never /proc/net/tcp: that table lists every
 * socket as text, TIME_WAIT ones too, and after a `-k 0` load (tens of thousands of them)
 * one read of it took 55 ms of CPU here; the bench's sampler, reading it twice every
 * 100 ms, took a core from the very load it sat beside. `ss` with its filter took 11 ms
 * against the same table, and most of that was the kernel's.
 */
function ss(filter) {
  ssPath ??= which('ss');
  if (ssPath === null)
    throw new Error('the bench counts sockets with ss: apt-get install iproute2');
  const out = execFileSync(ssPath, ['-Htne', ...filter], {
    encoding: 'utf8',
    maxBuffer: 256 * 1024 * 1024,
  });
  return out.split('\n').filter((line) => line.trim() !== '');
}

/** Whether something listens on TCP `port` (any address). */
export function isListening(port) {
  return ss(['-l', 'sport', '=', `:${port}`]).length > 0;
}

/** Waits for a listener on `port`, failing early if `child` exits. No connection is made. */
// A bound, not a measurement: at a load average of 20 on 2 cores a sidepool with two
// workers took over 15 s to listen.
export async function waitListening(port, { child, timeoutMs = 120_000 } = {}) {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (child && !child.alive) throw child.exitError();
    if (isListening(port)) return;
    await sleep(25);
  }
  throw new Error(
    `${child?.name ?? 'process'} is not listening on ${HOST}:${port} after ${timeoutMs} ms${child ? `\n${child.tail(15)}` : ''}`,
  );
}

/** `pid` and its descendants (sidepool with workers is a primary and its worker processes). */
export function processTree(pid) {
  const pids = [pid];
  for (let i = 0; i < pids.length; i++) {
    try {
      for (const task of fs.readdirSync(`/proc/${pids[i]}/task`)) {
        const children = fs.readFileSync(`/proc/${pids[i]}/task/${task}/children`, 'utf8');
        for (const child of children.split(' ')) if (child.trim()) pids.push(Number(child));
      }
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

/** Socket inodes held by a process and its descendants. */
function socketInodes(rootPid) {
  const inodes = new Set();
  for (const pid of processTree(rootPid)) addSocketInodes(pid, inodes);
  return inodes;
}

function addSocketInodes(pid, inodes) {
  let entries = [];
  try {
    entries = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return inodes;
  }
  for (const fd of entries) {
    try {
      const target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m) inodes.add(m[1]);
    } catch {
      // Closed meanwhile.
    }
  }
  return inodes;
}

/** The established TCP connections to `remotePort`, as `ss` lines (see `ss`). */
export function establishedLines(remotePort) {
  return ss(['state', 'established', 'dport', '=', `:${remotePort}`]);
}

/** Established TCP connections of `pid` (and its workers) to `remotePort`. */
export function establishedTo(pid, remotePort) {
  return countEstablished(establishedLines(remotePort), socketInodes(pid));
}

/**
 * Samples `count()` (sync or async) every `intervalMs` until `stop()`, which resolves to the
 * most it saw. Beside a measured load a sample must be cheap; a count through `ss` is not
 * beside many TIME_WAIT sockets, so such a sampler gets an unmeasured load of its own.
 */
export function peakSampler(count, intervalMs = 250) {
  let sampling = true;
  let peak = 0;
  const loop = (async () => {
    while (sampling) {
      peak = Math.max(peak, await count());
      await sleep(intervalMs);
    }
  })();
  return {
    stop: async () => {
      sampling = false;
      await loop;
      return peak;
    },
  };
}

/**
 * Of the `ss` lines (`Recv-Q Send-Q local peer … ino:N …`), the connections whose socket
 * inode is in `inodes`, each once however often it is listed: a netlink dump taken while
 * connections come and go resumes by position and can list one twice, as /proc/net/tcp
 * did (2 of 171 reads there repeated up to 51 lines beside a `redis-benchmark -k 0` load).
 */
export function countEstablished(lines, inodes) {
  const seen = new Set();
  for (const line of lines) {
    const cols = line.trim().split(/\s+/);
    const inode = /\bino:(\d+)/.exec(line)?.[1];
    if (cols.length > 3 && inode !== undefined && inodes.has(inode)) seen.add(connectionKey(cols));
  }
  return seen.size;
}

/** A connection's local and peer address: the same however often a dump repeats it. */
function connectionKey(cols) {
  return `${cols[2]} ${cols[3]}`;
}

/** Counts TCP sockets in TIME_WAIT (to `remotePort`, if given): churn leaves them behind. */
export function timeWaitCount(remotePort) {
  const seen = new Set();
  const filter = remotePort === undefined ? [] : ['dport', '=', `:${remotePort}`];
  for (const line of ss(['state', 'time-wait', ...filter]))
    seen.add(connectionKey(line.trim().split(/\s+/)));
  return seen.size;
}

/** Waits until `pid` holds at least `n` established connections to `remotePort`. */
export async function waitConnections(pid, remotePort, n, timeoutMs = 15_000) {
  const deadline = performance.now() + timeoutMs;
  let have = 0;
  while (performance.now() < deadline) {
    have = establishedTo(pid, remotePort);
    if (have >= n) return have;
    await sleep(50);
  }
  return have;
}

// ── /proc sampling ──────────────────────────────────────────────────────────

/** { rssKiB, fds } of a live process and its descendants (workers), or null. */
export function procStats(rootPid) {
  let total = null;
  for (const pid of processTree(rootPid)) {
    try {
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
      const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
      const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
      total ??= { rssKiB: 0, fds: 0 };
      total.rssKiB += m ? Number(m[1]) : NaN;
      total.fds += fds;
    } catch {
      if (pid === rootPid) return null;
    }
  }
  return total;
}

let clockTicks;
/**
 * CPU seconds (user + system) that a process and its descendants (workers) have used so
 * far, all threads included; null when the process is gone.
 */
export async function cpuSeconds(rootPid) {
  clockTicks ??=
    Number((await runCommand('getconf', 'getconf', ['CLK_TCK'], { timeoutMs: 5000 })).stdout) ||
    100;
  let ticks = null;
  for (const pid of processTree(rootPid)) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks = (ticks ?? 0) + Number(fields[11]) + Number(fields[12]);
    } catch {
      if (pid === rootPid) return null;
    }
  }
  return ticks === null ? null : ticks / clockTicks;
}

/** The newest modification time (ms) of any file under `dir`: how new a build or a tree is. */
export function newestMtime(dir) {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const file = path.join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(file));
    else newest = Math.max(newest, fs.statSync(file).mtimeMs);
  }
  return newest;
}

/** { soft, hard } open-file limit of this process (children inherit it). */
export function fdLimit() {
  try {
    const text = fs.readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
    const num = (v) => (v === 'unlimited' ? Infinity : Number(v));
    return { soft: num(m[1]), hard: num(m[2]) };
  } catch {
    return { soft: NaN, hard: NaN };
  }
}

// ── tools ───────────────────────────────────────────────────────────────────

/** Absolute path of an executable on PATH (or the sbin directories), or null. */
export function which(name) {
  const dirs = [
    ...(process.env.PATH ?? '').split(':'),
    '/usr/local/sbin',
    '/usr/sbin',
    '/sbin',
  ].filter(Boolean);
  for (const dir of dirs) {
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // Not here.
    }
  }
  return null;
}

// ── statistics and formatting ───────────────────────────────────────────────

export function median(values) {
  const xs = values
    .filter((v) => typeof v === 'number' && Number.isFinite(v))
    .sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const mid = xs.length >> 1;
  return xs.length % 2 ? xs[mid] : (xs[mid - 1] + xs[mid]) / 2;
}

/** Linear-interpolated percentile, p in [0, 100]. */
export function percentile(values, p) {
  const xs = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (xs.length === 0) return null;
  const rank = (p / 100) * (xs.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo);
}

/** A readable number: 3 significant digits under 100, thousands separators above. */
export function fmt(value, digits = 3) {
  if (value === null || value === undefined || !Number.isFinite(value)) return '–';
  const abs = Math.abs(value);
  if (abs >= 100) return Math.round(value).toLocaleString('en-US');
  return Number(value.toPrecision(digits)).toString();
}

export function fmtRatio(value) {
  return value === null || value === undefined || !Number.isFinite(value)
    ? '–'
    : `${value.toFixed(2)}×`;
}

/** A markdown table with padded columns. */
export function mdTable(header, rows) {
  const all = [header, ...rows].map((row) => row.map((cell) => String(cell ?? '')));
  const widths = header.map((_, i) => Math.max(3, ...all.map((row) => row[i]?.length ?? 0)));
  const line = (row) => `| ${row.map((cell, i) => cell.padEnd(widths[i])).join(' | ')} |`;
  return [
    line(all[0]),
    `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`,
    ...all.slice(1).map(line),
  ].join('\n');
}

/** Round-robin rotation: run r starts at item r, so no target always goes first. */
export function rotate(items, r) {
  const k = items.length ? r % items.length : 0;
  return [...items.slice(k), ...items.slice(0, k)];
}

/**
 * Per-metric samples by target and run → medians and ratios.
 *
 * `samples` is { [metric]: { [target]: number|null per run index } }. A ratio is taken per
 * run (target ÷ baseline measured in that same run) and its median reported; the same for
 * each `pairs` entry [a, b] (a ÷ b).
 */
export function summarise(samples, { baseline = 'direct', pairs: given = [] } = {}) {
  const out = {};
  for (const [metric, byTarget] of Object.entries(samples)) {
    // sidepool with workers is compared with HAProxy wherever sidepool is.
    const pairs = [...given];
    for (const [a, b] of given) {
      if (a === 'sidepool' && byTarget.sidepool2) pairs.push(['sidepool2', b]);
    }
    const base = byTarget[baseline] ?? [];
    const entry = { median: {}, ratio: {}, pair: {}, runs: byTarget };
    for (const [target, values] of Object.entries(byTarget)) {
      entry.median[target] = median(values);
      if (target !== baseline) {
        entry.ratio[target] = median(values.map((v, i) => ratioOf(v, base[i])));
      }
    }
    for (const [a, b] of pairs) {
      const va = byTarget[a];
      const vb = byTarget[b];
      if (va && vb) entry.pair[`${a}/${b}`] = median(va.map((v, i) => ratioOf(v, vb[i])));
    }
    out[metric] = entry;
  }
  return out;
}

function ratioOf(a, b) {
  return typeof a === 'number' && typeof b === 'number' && b > 0 ? a / b : null;
}

/** Records one value into samples[metric][target][run]. */
export function record(samples, metric, target, run, value) {
  samples[metric] ??= {};
  samples[metric][target] ??= [];
  samples[metric][target][run] = value;
}

/**
 * The standard comparison table: one row per metric, one column per target with its
 * median and its ratio to the baseline, plus the sidepool ÷ haproxy column when present.
 */
export function comparisonTable(
  summary,
  { targets, baseline = 'direct', labels = {}, metricLabel = 'metric' },
) {
  const others = targets.filter((t) => t !== baseline);
  const paired =
    baseline !== 'haproxy' && targets.includes('haproxy')
      ? targets.filter((t) => t.startsWith('sidepool'))
      : [];
  const header = [
    metricLabel,
    labels[baseline] ?? baseline,
    ...others.map((t) => `${labels[t] ?? t} (×${baseline})`),
    ...paired.map((t) => `${labels[t] ?? t} ÷ haproxy`),
  ];
  const rows = Object.entries(summary).map(([metric, entry]) => [
    metric,
    fmt(entry.median[baseline]),
    ...others.map((t) =>
      entry.median[t] === undefined
        ? 'skipped'
        : `${fmt(entry.median[t])} (${fmtRatio(entry.ratio[t])})`,
    ),
    ...paired.map((t) => fmtRatio(entry.pair[`${t}/haproxy`])),
  ]);
  return mdTable(header, rows);
}
