// Starting what the workloads measure and talk to: sidepool, HAProxy, the naive relay,
// redis-server and the small Node helper processes in bench/procs. Every process is
// started through lib.startChild, so it is tracked by PID and ended on exit.
import fs from 'node:fs';
import path from 'node:path';
import {
  BENCH_DIR,
  HOST,
  ROOT_DIR,
  freePort,
  procStats,
  runCommand,
  say,
  startChild,
  waitConnections,
  waitListening,
} from './lib.mjs';

const NODE = process.execPath;
const SIDEPOOL_CLI = path.join(ROOT_DIR, 'dist', 'cli.js');

let serial = 0;
const logPath = (ctx, name) =>
  path.join(ctx.tmp, `${String(++serial).padStart(3, '0')}-${name}.log`);

/** A running thing with a port; `stop()` ends it and, for sidepool, collects its log. */
class Target {
  constructor(kind, child, port, extra = {}) {
    this.kind = kind;
    this.child = child;
    this.port = port;
    Object.assign(this, extra);
  }

  get pid() {
    return this.child.pid;
  }

  stats() {
    return procStats(this.child.pid);
  }

  async stop() {
    const wasAlive = this.child.alive;
    const result = { ...(await this.child.stop(5000)), wasAlive };
    this.onStopped?.(result);
    return result;
  }
}

/**
 * A Node helper from bench/ that prints {"event":"ready","port":N} once listening; on the
 * bench's own node unless `node` names another (the relays run on sidepool's).
 */
export async function startNodeServer(
  ctx,
  script,
  args,
  name = path.basename(script, '.mjs'),
  node = NODE,
) {
  const child = startChild(name, node, [path.join(BENCH_DIR, script), ...args], {
    json: true,
    logFile: logPath(ctx, name),
  });
  const ready = await child.waitEvent((e) => e.event === 'ready', 120_000);
  return new Target(name, child, ready.port);
}

/** A Node helper client; resolves with the child (read its events). */
export function startNodeClient(ctx, script, args, name = path.basename(script, '.mjs')) {
  return startChild(name, NODE, [path.join(BENCH_DIR, script), ...args], {
    json: true,
    logFile: logPath(ctx, name),
  });
}

/** redis-server on a free port, no persistence. */
export async function startRedis(ctx, { maxClients = 10_000 } = {}) {
  const port = await freePort();
  const child = startChild(
    'redis-server',
    ctx.tools['redis-server'],
    [
      '--port',
      String(port),
      '--bind',
      HOST,
      '--save',
      '',
      '--appendonly',
      'no',
      '--protected-mode',
      'no',
      '--daemonize',
      'no',
      '--maxclients',
      String(maxClients),
      '--loglevel',
      'warning',
    ],
    { logFile: logPath(ctx, 'redis') },
  );
  await waitListening(port, { child });
  return new Target('redis', child, port);
}

/**
 * The sidepool process for a config file, on the node `--node` chose, with the environment
 * and node flags that `--sidepool-env` and `--sidepool-node-flags` gave (`ctx.runtime`).
 * Every workload starts sidepool through this.
 */
export function startSidepoolProcess(ctx, configFile, logFile) {
  const { env, nodeFlags, node = NODE } = ctx.runtime;
  return startChild('sidepool', node, [...nodeFlags, SIDEPOOL_CLI, 'run', '--config', configFile], {
    logFile,
    env,
  });
}

/**
 * sidepool from dist/, tcp mode, with a config file written to the temp dir (so that every
 * pool setting used is on record). Waits until listening and, unless `warm: false`, until
 * `minIdle` links are established.
 */
export async function startSidepool(
  ctx,
  {
    upstreamPort,
    minIdle = 4,
    maxSize = 64,
    maxWaiters = 1024,
    acquireTimeout = '5s',
    connectTimeout = '3s',
    idleTimeout = '5m',
    warm = true,
    label = 'sidepool',
    workers = 1,
    mode = 'tcp',
    redis,
  },
) {
  const port = await freePort();
  const pool = { minIdle, maxSize, maxWaiters, acquireTimeout, connectTimeout, idleTimeout };
  const config = {
    workers,
    ...(workers > 1 ? { workerSockets: ctx.workerSockets } : {}),
    admin: false,
    log: { level: 'warn' },
    drain: { delay: 0, timeout: '2s' },
    routes: [
      {
        name: label,
        listen: `${HOST}:${port}`,
        mode,
        upstream: `${HOST}:${upstreamPort}`,
        pool,
        ...(redis === undefined ? {} : { redis }),
      },
    ],
  };
  const configFile = path.join(ctx.tmp, `sidepool-${port}.json`);
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
  const logFile = logPath(ctx, `sidepool-${label}`);
  const child = startSidepoolProcess(ctx, configFile, logFile);
  await waitListening(port, { child });
  let links = 0;
  if (warm && minIdle > 0) {
    links = await waitConnections(child.pid, upstreamPort, minIdle, 15_000);
    if (links < minIdle) {
      ctx.note(
        `sidepool (${label}) had only ${links} of minIdle ${minIdle} links established after 15 s`,
      );
    }
  }
  const target = new Target('sidepool', child, port, {
    pool,
    configFile,
    logFile,
    label,
    upstreamPort,
  });
  target.onStopped = (result) => ctx.collectSidepoolLog(target, result);
  ctx.settings.sidepool ??= {};
  ctx.settings.sidepool[label] = {
    mode,
    workers,
    ...(workers > 1 ? { workerSockets: ctx.workerSockets } : {}),
    ...pool,
    ...Object.fromEntries(Object.entries(redis ?? {}).map(([k, v]) => [`redis.${k}`, v])),
    log: 'warn',
    admin: false,
  };
  return target;
}

/** Waits until a sidepool target has its warm links back (after a load consumed them). */
export async function rewarm(target, timeoutMs = 10_000) {
  if (target.kind !== 'sidepool' || !target.pool?.minIdle) return;
  await waitConnections(target.pid, target.upstreamPort, target.pool.minIdle, timeoutMs);
}

/**
 * HAProxy in mode tcp in front of `upstreamPort`, with a config written to the temp dir.
 * Threads are HAProxy's default (nbthread = CPUs available). `serverMaxconn` matches
 * sidepool's maxSize so both cap upstream connections at the same scale.
 */
export async function startHaproxy(
  ctx,
  { upstreamPort, serverMaxconn, maxconn, label = 'haproxy' },
) {
  const port = await freePort();
  const cfg = [
    'global',
    `    maxconn ${maxconn}`,
    '    # nbthread left at its default: one thread per available CPU',
    'defaults',
    '    mode tcp',
    '    timeout connect 5s',
    '    timeout client 60s',
    '    timeout server 60s',
    '    timeout queue 5s',
    'frontend fe',
    `    bind ${HOST}:${port}`,
    `    maxconn ${maxconn}`,
    '    default_backend be',
    'backend be',
    `    server s1 ${HOST}:${upstreamPort} maxconn ${serverMaxconn}`,
    '',
  ].join('\n');
  const cfgFile = path.join(ctx.tmp, `haproxy-${port}.cfg`);
  fs.writeFileSync(cfgFile, cfg);
  const child = startChild('haproxy', ctx.tools.haproxy, ['-db', '-f', cfgFile], {
    logFile: logPath(ctx, label),
  });
  await waitListening(port, { child });
  ctx.settings.haproxy ??= {};
  ctx.settings.haproxy[label] = {
    mode: 'tcp',
    nbthread: `default (${ctx.cpus} CPUs here)`,
    globalMaxconn: maxconn,
    serverMaxconn,
    timeouts: 'connect 5s, client 60s, server 60s, queue 5s',
  };
  return new Target('haproxy', child, port, { cfgFile });
}

/**
 * twemproxy (nutcracker) in front of one Redis, redis: true, with a config written to the
 * temp dir. `serverConnections` is its server_connections (upstream connections per
 * server; its default is 1).
 */
export async function startTwemproxy(
  ctx,
  { upstreamPort, serverConnections = 1, label = 'twemproxy' },
) {
  const port = await freePort();
  const statsPort = await freePort();
  const cfg = [
    'bench:',
    `  listen: ${HOST}:${port}`,
    '  hash: fnv1a_64',
    '  distribution: ketama',
    '  redis: true',
    `  server_connections: ${serverConnections}`,
    '  auto_eject_hosts: false',
    '  timeout: 5000',
    '  servers:',
    `   - ${HOST}:${upstreamPort}:1`,
    '',
  ].join('\n');
  const cfgFile = path.join(ctx.tmp, `twemproxy-${port}.yml`);
  fs.writeFileSync(cfgFile, cfg);
  const logFile = logPath(ctx, label);
  const child = startChild(
    'twemproxy',
    ctx.tools.nutcracker,
    ['-c', cfgFile, '-s', String(statsPort), '-a', HOST, '-o', logFile],
    { logFile: `${logFile}.out` },
  );
  await waitListening(port, { child });
  ctx.settings.twemproxy ??= {};
  ctx.settings.twemproxy[label] = {
    serverConnections,
    hash: 'fnv1a_64, ketama',
    timeout: '5s',
  };
  return new Target('twemproxy', child, port, { cfgFile });
}

/** Column names of the comparison tables. */
export function targetLabels(ctx) {
  return {
    naive: 'naive relay',
    floor: 'floor relay',
    sidepool2: `sidepool ×${ctx.workers} workers`,
  };
}

/** The 20-line `net` + `pipe` relay, for context. */
export async function startNaive(ctx, { upstreamPort }) {
  return startNodeServer(
    ctx,
    'naive-relay.mjs',
    ['--upstream', `${HOST}:${upstreamPort}`],
    'naive-relay',
    ctx.runtime.node,
  );
}

/** The floor relay: only Node's own read-and-write per chunk, for context. */
export async function startFloor(ctx, { upstreamPort }) {
  return startNodeServer(
    ctx,
    'floor-relay.mjs',
    ['--upstream', `${HOST}:${upstreamPort}`],
    'floor-relay',
    ctx.runtime.node,
  );
}

/**
 * The set of targets in front of one upstream: direct, sidepool, haproxy (when installed),
 * naive and floor (when asked). Returns { targets: {name: Target|{port}}, names, stop() }.
 */
export async function startTargets(
  ctx,
  { upstreamPort, sidepool, haproxy = true, naive = false, floor = false, workers = false, label },
) {
  const targets = { direct: { kind: 'direct', port: upstreamPort } };
  const started = [];
  try {
    targets.sidepool = await startSidepool(ctx, { upstreamPort, label, ...sidepool });
    started.push(targets.sidepool);
    if (workers && ctx.workers > 1) {
      targets.sidepool2 = await startSidepool(ctx, {
        upstreamPort,
        ...sidepool,
        label: `${label}-w${ctx.workers}`,
        workers: ctx.workers,
      });
      started.push(targets.sidepool2);
    }
    if (haproxy && ctx.tools.haproxy) {
      const maxSize = sidepool.maxSize ?? 64;
      const maxWaiters = sidepool.maxWaiters ?? 1024;
      targets.haproxy = await startHaproxy(ctx, {
        upstreamPort,
        serverMaxconn: maxSize,
        maxconn: Math.max(4096, maxSize + maxWaiters),
        label: `haproxy-${label}`,
      });
      started.push(targets.haproxy);
    }
    if (naive) {
      targets.naive = await startNaive(ctx, { upstreamPort });
      started.push(targets.naive);
    }
    if (floor) {
      targets.floor = await startFloor(ctx, { upstreamPort });
      started.push(targets.floor);
    }
  } catch (err) {
    await Promise.all(started.map((t) => t.stop()));
    throw err;
  }
  return {
    targets,
    names: Object.keys(targets),
    rewarm: () => (targets.sidepool ? rewarm(targets.sidepool) : undefined),
    stop: () => Promise.all(started.map((t) => t.stop())),
  };
}

export function logSkip(ctx, what, why) {
  const line = `${what} skipped: ${why}`;
  say(`  ${line}`);
  ctx.note(line);
}

/**
 * Runs redis-benchmark against `port` with `--csv` and returns
 * { rps: {TEST: n}, p50: {TEST: ms}, ok, error, ms }. Bounded by `timeoutMs`.
 */
export async function redisBenchmark(ctx, port, args, timeoutMs = 180_000) {
  const res = await runCommand(
    'redis-benchmark',
    ctx.tools['redis-benchmark'],
    ['-h', HOST, '-p', String(port), ...args, '--csv'],
    { timeoutMs },
  );
  const rps = {};
  const p50 = {};
  let header;
  for (const line of res.stdout.split(/\r?\n/)) {
    const cols = line.split(',').map((c) => c.replace(/^"|"$/g, ''));
    if (cols[0] === 'test') {
      header = cols;
      continue;
    }
    if (cols.length < 2 || !Number.isFinite(Number(cols[1]))) continue;
    rps[cols[0]] = Number(cols[1]);
    const i = header ? header.indexOf('p50_latency_ms') : -1;
    if (i > 0) p50[cols[0]] = Number(cols[i]);
  }
  // redis-benchmark's own warnings: no keep-alive (-k 0), and a proxy that has no CONFIG.
  const noise = /keepalive disabled|tcp_tw_reuse|could not fetch server config/i;
  const stderr = res.stderr
    .split('\n')
    .filter((l) => l.trim() && !noise.test(l))
    .join(' | ');
  const ok = res.code === 0 && !res.timedOut && Object.keys(rps).length > 0;
  const error = ok
    ? undefined
    : `${res.timedOut ? `timed out after ${timeoutMs} ms` : `exit ${res.code ?? res.signal}`}${stderr ? `: ${stderr.slice(0, 300)}` : ''}${Object.keys(rps).length === 0 ? ' (no results)' : ''}`;
  return { rps, p50, ok, error, stderr, ms: res.ms };
}
