#!/usr/bin/env node
// sidepool benchmark harness: `npm run bench -- [options]`. See bench/README.md.
//
// Loads every bench/workloads/<id>-<name>.mjs (each exports { id, name, title, run(ctx) }),
// runs the chosen ones, and writes a markdown table to stdout and bench/results/<out>.md,
// with the raw numbers in bench/results/<out>.json. Progress goes to stderr.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  BENCH_DIR,
  ROOT_DIR,
  establishedTo,
  fdLimit,
  installCleanup,
  liveChildren,
  newestMtime,
  performance,
  runCommand,
  say,
  startChild,
  which,
} from './lib.mjs';
import { imageNodeMajor, nodeBinary, versionOf } from '../scripts/node-runtime.mjs';

const HELP = `usage: npm run bench -- [options]

  --only LIST        workloads to run, by number or name: e.g. 1,3 or bulk,latency
                     (1 bulk, 2 redis, 3 connect, 4 latency, 5 rss, 5s soak; "5" runs 5 and 5s)
  --runs N           runs per figure, figures are medians (default 3; 1 with --quick)
  --quick            a fast smoke run: short loads, 1 run, soak 10,000; writes results/quick.*
  --soak N           sessions in the churn soak (default 1,000,000)
  --soak-max-seconds S   time bound of the soak (default 600)
  --conns N          concurrent connections for the RSS workload (default 10,000)
  --workers N        also measure sidepool with \`workers: N\` in workloads 1, 2, 3 and 6h
                     (default 2; 1 leaves that target out)
  --worker-sockets shared|own   that target's \`workerSockets\` (default shared, sidepool's
                     default: all accept on the primary's socket; own: a socket per worker
                     with SO_REUSEPORT where sidepool's Node.js has it)
  --node SPEC        the Node.js that runs sidepool and the Node relays (naive, floor): a
                     major (installed from the npm registry when it is not this node's),
                     "current" (the node running the bench) or a path; default: the major
                     the container image ships (deploy/Dockerfile). Load generators and
                     servers run on the bench's own node either way.
  --sidepool-env LIST         environment for the sidepool processes only, e.g.
                              GLIBC_TUNABLES=glibc.malloc.trim_threshold=67108864 (comma-separated)
  --sidepool-node-flags=LIST  node flags for the sidepool processes only (comma-separated;
                              the = is needed), e.g. --sidepool-node-flags=--no-incremental-marking
  --cpu-load N       N processes that busy-loop on the CPU beside every workload (default 0):
                     a declared, repeatable load in place of whatever else the machine runs
  --tw-buckets N     run in a network namespace of the bench's own (loopback only, needs
                     root and unshare) whose kernel keeps at most N TIME_WAIT sockets
                     (net.ipv4.tcp_max_tw_buckets): a connection-per-request load then
                     measures the proxies, not the client's connect() beside tens of
                     thousands of TIME_WAIT sockets (default: the machine's own network)
  --build            run \`npm run build\` first (done anyway when dist/cli.js is missing)
  --out NAME         results file name in bench/results/, no directory (default latest,
                     or quick with --quick)
  --without LIST     pretend tools are absent, e.g. haproxy,redis-benchmark (to test skips)
  --keep-tmp         keep the temp dir with configs and process logs
  -h, --help         this text
`;

const SOAK_DEFAULT = 1_000_000;

/**
 * `n` processes that keep a CPU busy, each bounded in time (it ends by itself after two
 * hours) and stopped by the caller: the load other work on a shared machine puts on the
 * proxies, made the same for every target and every run.
 */
function startCpuLoad(n) {
  const spin = 'const end = Date.now() + 2 * 3600e3; while (Date.now() < end);';
  return Array.from({ length: n }, (_, i) =>
    startChild(`cpu-load-${i + 1}`, process.execPath, ['-e', spin]),
  );
}

function parseCli() {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      runs: { type: 'string' },
      quick: { type: 'boolean', default: false },
      soak: { type: 'string' },
      'soak-max-seconds': { type: 'string' },
      conns: { type: 'string' },
      workers: { type: 'string' },
      'worker-sockets': { type: 'string', default: 'shared' },
      node: { type: 'string' },
      'sidepool-env': { type: 'string', default: '' },
      'sidepool-node-flags': { type: 'string', default: '' },
      'cpu-load': { type: 'string' },
      'tw-buckets': { type: 'string' },
      build: { type: 'boolean', default: false },
      out: { type: 'string' },
      without: { type: 'string' },
      'keep-tmp': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const int = (name, fallback, min = 1) => {
    if (values[name] === undefined) return fallback;
    const n = Number(String(values[name]).replace(/[_,]/g, ''));
    if (!Number.isInteger(n) || n < min) {
      say(`bench: --${name} expects a whole number ≥ ${min}, got ${values[name]}`);
      process.exit(2);
    }
    return n;
  };
  const list = (name) =>
    values[name]
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  const sidepoolEnv = {};
  for (const pair of list('sidepool-env')) {
    const eq = pair.indexOf('=');
    if (eq < 1) {
      say(`bench: --sidepool-env expects NAME=VALUE pairs, got ${pair}`);
      process.exit(2);
    }
    sidepoolEnv[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const nodeFlags = list('sidepool-node-flags');
  const badFlag = nodeFlags.find((f) => !f.startsWith('--'));
  if (badFlag !== undefined) {
    say(`bench: --sidepool-node-flags expects --flags, got ${badFlag}`);
    process.exit(2);
  }
  // A name, not a path: the files go to bench/results/. Checked now rather than when they
  // are written, minutes of measurement later.
  if (values.out !== undefined && !/^[\w.-]+$/.test(values.out)) {
    say(`bench: --out expects a file name (letters, digits, . _ -), got ${values.out}`);
    process.exit(2);
  }
  if (!['own', 'shared'].includes(values['worker-sockets'])) {
    say(`bench: --worker-sockets expects own or shared, got ${values['worker-sockets']}`);
    process.exit(2);
  }
  return {
    help: values.help,
    node: values.node ?? String(imageNodeMajor()),
    runtime: { env: sidepoolEnv, nodeFlags },
    quick: values.quick,
    runs: int('runs', values.quick ? 1 : 3),
    soak: int('soak', values.quick ? 10_000 : SOAK_DEFAULT),
    soakMaxSeconds: int('soak-max-seconds', values.quick ? 60 : 600),
    conns: int('conns', 10_000),
    workers: int('workers', 2),
    cpuLoad: int('cpu-load', 0, 0),
    twBuckets: int('tw-buckets', 0, 0),
    workerSockets: values['worker-sockets'],
    only: values.only
      ? values.only
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : undefined,
    build: values.build,
    out: values.out ?? (values.quick ? 'quick' : 'latest'),
    without: new Set(
      (values.without ?? '')
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean),
    ),
    keepTmp: values['keep-tmp'],
  };
}

// ── environment ─────────────────────────────────────────────────────────────

const TOOLS = {
  'redis-server': 'apt-get install redis-server',
  'redis-benchmark': 'apt-get install redis-tools',
  haproxy: 'apt-get install haproxy',
  wrk: 'apt-get install wrk',
  nginx: 'apt-get install nginx-light',
  nutcracker: 'apt-get install nutcracker',
};

async function detectTools(without) {
  const tools = {};
  const missing = [];
  for (const [name, install] of Object.entries(TOOLS)) {
    const found =
      without.has(name) || (name.startsWith('redis') && without.has('redis')) ? null : which(name);
    tools[name] = found;
    if (!found) missing.push({ name, install });
  }
  const versions = {};
  if (tools.haproxy) {
    const v = await runCommand('haproxy', tools.haproxy, ['-v'], { timeoutMs: 10_000 });
    versions.haproxy = v.stdout.split('\n')[0]?.trim() || 'unknown';
  }
  if (tools['redis-server']) {
    const v = await runCommand('redis-server', tools['redis-server'], ['--version'], {
      timeoutMs: 10_000,
    });
    versions.redis = v.stdout.trim();
  }
  return { tools, missing, versions };
}

async function gitInfo() {
  const head = await runCommand('git', 'git', ['rev-parse', '--short', 'HEAD'], {
    timeoutMs: 10_000,
  });
  const dirty = await runCommand('git', 'git', ['status', '--porcelain', '--', 'src'], {
    timeoutMs: 10_000,
  });
  return {
    commit: head.code === 0 ? head.stdout.trim() : 'unknown',
    srcDirty: dirty.code === 0 && dirty.stdout.trim() !== '',
  };
}

/** Builds dist/ when missing (or asked); warns when src/ changed after the last build. */
async function ensureBuilt(force, notes) {
  const cli = path.join(ROOT_DIR, 'dist', 'cli.js');
  if (force || !fs.existsSync(cli)) {
    say(
      force
        ? 'bench: building (npm run build)'
        : 'bench: dist/cli.js is missing: building it (npm run build)',
    );
    const res = await runCommand('npm', 'npm', ['run', 'build'], { timeoutMs: 300_000 });
    if (res.code !== 0 && fs.existsSync(cli)) {
      const errors = (res.stdout + res.stderr).split('\n').filter((l) => /error TS/.test(l));
      const line = `npm run build exited ${res.code}${errors.length ? ` with ${errors.length} type error(s), e.g. ${errors[0].trim()}` : ''}; tsc emitted dist/ anyway and the bench measures it`;
      say(`bench: warning: ${line}`);
      notes.push(line);
    } else if (res.code !== 0 || !fs.existsSync(cli)) {
      say(
        `bench: npm run build failed (exit ${res.code ?? res.signal}); cannot benchmark without dist/.`,
      );
      say((res.stdout + res.stderr).trim().split('\n').slice(-30).join('\n'));
      process.exit(1);
    }
    return { builtNow: true, at: new Date().toISOString() };
  }
  // tsc leaves a file it would write unchanged as it was (and skips sources whose content
  // did not change, however new their time), so `npm run build` writes dist/.built each
  // time: the build is as new as dist/'s newest file.
  const built = newestMtime(path.join(ROOT_DIR, 'dist'));
  const srcDir = path.join(ROOT_DIR, 'src');
  if (fs.existsSync(srcDir) && newestMtime(srcDir) > built) {
    const line =
      'dist/ is older than src/: the bench measures the last build; pass --build (or run npm run build) to measure the current source';
    say(`bench: warning: ${line}`);
    notes.push(line);
  }
  return { builtNow: false, at: new Date(built).toISOString() };
}

// ── workloads ───────────────────────────────────────────────────────────────

async function loadWorkloads() {
  const dir = path.join(BENCH_DIR, 'workloads');
  const files = fs.readdirSync(dir).filter((f) => /^\d+[a-z]*-[\w-]+\.mjs$/.test(f));
  const mods = [];
  for (const file of files) {
    const mod = (await import(path.join(dir, file))).default;
    if (!mod || typeof mod.run !== 'function' || !mod.id) {
      say(`bench: ${file} does not export { id, name, run }: ignored`);
      continue;
    }
    mods.push(mod);
  }
  const key = (id) => [parseInt(id, 10), id.replace(/^\d+/, '')];
  return mods.sort((a, b) => {
    const [na, sa] = key(a.id);
    const [nb, sb] = key(b.id);
    return na - nb || sa.localeCompare(sb);
  });
}

function selected(mod, only) {
  if (!only) return true;
  return only.some(
    (tok) =>
      tok === mod.id ||
      tok === mod.name ||
      (/^\d+$/.test(tok) && mod.id.replace(/[a-z]+$/, '') === tok),
  );
}

// ── the run ─────────────────────────────────────────────────────────────────

async function main() {
  const opts = parseCli();
  if (opts.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (opts.twBuckets > 0 && process.env.SIDEPOOL_BENCH_NETNS !== '1') return inOwnNetns(opts);
  const startedAt = new Date();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sidepool-bench-'));
  installCleanup();
  process.on('exit', () => {
    if (!opts.keepTmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  const notes = [];
  let node;
  try {
    node = nodeBinary(opts.node, say);
  } catch (err) {
    say(`bench: --node ${opts.node}: ${err.message}`);
    return 2;
  }
  opts.runtime.node = node;
  opts.runtime.nodeVersion = versionOf(node);
  const build = await ensureBuilt(opts.build, notes);
  const { tools, missing, versions } = await detectTools(opts.without);
  for (const { name, install } of missing) {
    const line =
      name === 'haproxy'
        ? 'haproxy not found: the HAProxy comparison is skipped in every workload (apt-get install haproxy)'
        : name.startsWith('redis')
          ? `${name} not found: the redis workloads (2, 3) are skipped, and 4 and the soak use the Node echo server instead (${install})`
          : name === 'nutcracker'
            ? `nutcracker not found: the twemproxy comparison of workload 9 is skipped (${install})`
            : `${name} not found (${install}); no current workload needs it`;
    say(`bench: ${line}`);
    notes.push(line);
  }

  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT_DIR, 'package.json'), 'utf8'));
  const git = await gitInfo();
  const cpus = os.cpus();
  const env = {
    date: startedAt.toISOString(),
    sidepool: pkg.version,
    git,
    distBuiltAt: build.at,
    node: process.version,
    sidepoolNode: opts.runtime.nodeVersion,
    loadAverage: os.loadavg(),
    cpuLoad: opts.cpuLoad,
    sidepoolRuntime: opts.runtime,
    cpus: cpus.length,
    cpuModel: cpus[0]?.model ?? 'unknown',
    kernel: `${os.type()} ${os.release()}`,
    haproxy: versions.haproxy ?? null,
    redis: versions.redis ?? null,
    fdLimit: fdLimit(),
    tcpTwReuse: readSys('/proc/sys/net/ipv4/tcp_tw_reuse'),
    tcpMaxTwBuckets: readSys('/proc/sys/net/ipv4/tcp_max_tw_buckets'),
    ownNetns: process.env.SIDEPOOL_BENCH_NETNS === '1',
    ephemeralPorts: readSys('/proc/sys/net/ipv4/ip_local_port_range'),
  };

  const sidepoolLog = new Map();
  const sidepoolHealth = [];
  let current = '';
  const ctx = {
    quick: opts.quick,
    runs: opts.runs,
    soak: opts.soak,
    soakMaxSeconds: opts.soakMaxSeconds,
    conns: opts.conns,
    workers: opts.workers,
    workerSockets: opts.workerSockets,
    runtime: env.sidepoolRuntime,
    tools,
    tmp,
    cpus: cpus.length,
    fdLimit: env.fdLimit,
    settings: {},
    note: (line) => notes.push(line),
    collectSidepoolLog(target, stopped) {
      let text = '';
      try {
        text = fs.readFileSync(target.logFile, 'utf8');
      } catch {
        // No log.
      }
      for (const line of text.split('\n')) {
        if (!line.trim()) continue;
        let level;
        let msg;
        try {
          const entry = JSON.parse(line);
          if (typeof entry.level !== 'number' || entry.level < 40) continue;
          level = entry.level >= 50 ? 'error' : 'warn';
          msg = entry.msg;
        } catch {
          level = 'output';
          msg = line.slice(0, 200);
        }
        const key = `${current}\u0000${level}\u0000${msg}`;
        const seen = sidepoolLog.get(key);
        if (seen) seen.count++;
        else
          sidepoolLog.set(key, {
            workload: current,
            instance: target.label,
            level,
            msg,
            count: 1,
            sample: line.slice(0, 500),
          });
      }
      if (!stopped.wasAlive) {
        notes.push(
          `${current}: sidepool (${target.label}) had exited before the harness stopped it (${describeExit(stopped)})`,
        );
      } else if (stopped.forced) {
        notes.push(
          `${current}: sidepool (${target.label}) did not exit within 5 s of SIGTERM and was killed`,
        );
      } else if (stopped.code !== 0) {
        notes.push(
          `${current}: sidepool (${target.label}) exited with ${describeExit(stopped)} after SIGTERM`,
        );
      }
    },
    checkSidepoolSettled(target, before, label) {
      const after = target.stats();
      const links = establishedTo(target.pid, target.upstreamPort);
      sidepoolHealth.push({
        workload: label,
        fdsBefore: before?.fds,
        fdsAfter: after?.fds,
        rssBeforeKiB: before?.rssKiB,
        rssAfterKiB: after?.rssKiB,
        linksAfter: links,
        minIdle: target.pool.minIdle,
      });
      if (before && after && after.fds - before.fds > 8) {
        notes.push(
          `${label}: sidepool held ${after.fds} fds after the load settled, ${before.fds} before it (+${after.fds - before.fds}): sessions or links left open`,
        );
      }
    },
  };

  const workloads = (await loadWorkloads()).filter((w) => selected(w, opts.only));
  if (workloads.length === 0) {
    say(`bench: no workload matches --only ${opts.only?.join(',')}`);
    return 2;
  }
  say(
    `bench: ${workloads.map((w) => `${w.id} ${w.name}`).join(', ')}; runs ${opts.runs}${opts.quick ? ' (quick)' : ''}; sidepool on node ${opts.runtime.nodeVersion} (the bench on ${process.version}), ${cpus.length} CPUs, load average ${os
      .loadavg()
      .map((l) => l.toFixed(1))
      .join(' ')}`,
  );

  const results = [];
  for (const workload of workloads) {
    current = `workload ${workload.id} (${workload.name})`;
    say(`\n== ${workload.id}. ${workload.title}`);
    const t0 = performance.now();
    const harnessCpu0 = process.cpuUsage();
    const hogs = startCpuLoad(opts.cpuLoad);
    let result;
    try {
      result = await workload.run(ctx);
    } catch (err) {
      say(`  FAILED: ${err?.stack ?? err}`);
      notes.push(`${current} failed: ${String(err?.message ?? err).split('\n')[0]}`);
      result = {
        sections: [
          {
            title: `${workload.id}. ${workload.title}: FAILED`,
            text: '```\n' + String(err?.message ?? err).slice(0, 2000) + '\n```',
            notes: [],
          },
        ],
        failed: true,
      };
    }
    for (const hog of hogs) await hog.stop(2000);
    // Whatever a workload left running is ended here.
    for (const child of liveChildren()) {
      notes.push(`${current} left ${child.name} (pid ${child.pid}) running: stopped`);
      await child.stop(2000);
    }
    const seconds = (performance.now() - t0) / 1000;
    const harnessUsage = process.cpuUsage(harnessCpu0);
    const harnessCpuSeconds = (harnessUsage.user + harnessUsage.system) / 1e6;
    say(
      `  (${seconds.toFixed(0)} s; the harness itself used ${harnessCpuSeconds.toFixed(1)} s of CPU)`,
    );
    results.push({
      id: workload.id,
      name: workload.name,
      title: workload.title,
      seconds,
      harnessCpuSeconds,
      ...result,
    });
  }

  const totalSeconds = (Date.now() - startedAt.getTime()) / 1000;
  const markdown = render({
    opts,
    env,
    results,
    notes,
    settings: ctx.settings,
    sidepoolLog: [...sidepoolLog.values()],
    sidepoolHealth,
    totalSeconds,
    missing,
  });
  const outDir = path.join(BENCH_DIR, 'results');
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, `${opts.out}.md`), markdown);
  fs.writeFileSync(
    path.join(outDir, `${opts.out}.json`),
    `${JSON.stringify(
      {
        env,
        options: { ...opts, without: [...opts.without] },
        totalSeconds,
        settings: ctx.settings,
        notes,
        sidepoolLog: [...sidepoolLog.values()],
        sidepoolHealth,
        workloads: results.map(({ sections, ...rest }) => ({
          ...rest,
          tables: sections?.map((s) => s.title),
        })),
      },
      null,
      2,
    )}\n`,
  );
  process.stdout.write(markdown);
  say(
    `\nbench: wrote bench/results/${opts.out}.md and .json (${(totalSeconds / 60).toFixed(1)} min)`,
  );
  if (opts.keepTmp) say(`bench: process logs and configs kept in ${tmp}`);
  return results.some((r) => r.failed) ? 1 : 0;
}

function readSys(file) {
  try {
    return fs.readFileSync(file, 'utf8').trim().replace(/\s+/g, ' ');
  } catch {
    return null;
  }
}

function describeExit(info) {
  if (info.error) return info.error.message;
  return info.signal ? `signal ${info.signal}` : `exit code ${info.code}`;
}

function describeRuntime({ env, nodeFlags, nodeVersion }) {
  const settings = [
    ...Object.entries(env).map(([k, v]) => `\`${k}=${v}\``),
    ...nodeFlags.map((f) => `\`${f}\``),
  ];
  const command = `\`node dist/cli.js\` on Node.js ${nodeVersion}`;
  return settings.length
    ? `${command} with ${settings.join(', ')}`
    : `${command}, no extra environment or node flags`;
}

function render({
  opts,
  env,
  results,
  notes,
  settings,
  sidepoolLog,
  sidepoolHealth,
  totalSeconds,
  missing,
}) {
  const out = [];
  const args = process.argv.slice(2).join(' ');
  out.push('# sidepool benchmark results', '');
  out.push(
    `Generated by \`npm run bench${args ? ` -- ${args}` : ''}\` on ${env.date}, in ${(totalSeconds / 60).toFixed(1)} min.`,
  );
  if (opts.quick)
    out.push(
      '',
      '**Quick smoke run: short loads and one run per figure. Not a measurement; use the full run.**',
    );
  out.push('');
  out.push('| | |', '| --- | --- |');
  out.push(
    `| sidepool | ${env.sidepool}, git ${env.git.commit}${env.git.srcDirty ? ' (src/ had uncommitted changes)' : ''}, dist built ${env.distBuiltAt} |`,
  );
  out.push(
    `| node | sidepool and the Node relays: ${env.sidepoolNode}; the harness, load generators and Node servers: ${env.node} |`,
  );
  out.push(
    `| load | load average ${env.loadAverage.map((l) => l.toFixed(1)).join(', ')} (1, 5, 15 min) at the start: other work on the machine shows here |`,
  );
  if (env.cpuLoad > 0)
    out.push(
      `| declared load | ${env.cpuLoad} process${env.cpuLoad === 1 ? '' : 'es'} busy-looping on the CPU beside every workload (\`--cpu-load ${env.cpuLoad}\`), started after the load average above was read |`,
    );
  out.push(`| sidepool runtime | ${describeRuntime(env.sidepoolRuntime)} |`);
  if (opts.workers > 1)
    out.push(
      `| ×${opts.workers} workers | \`workerSockets: ${opts.workerSockets}\`${opts.workerSockets === 'own' ? " (a socket per worker with SO_REUSEPORT where sidepool's Node.js has it, 22.12 and later; else shared)" : " (every worker accepts on the primary's socket)"} |`,
    );
  out.push(`| CPUs | ${env.cpus} × ${env.cpuModel} |`);
  out.push(
    `| kernel | ${env.kernel}; tcp_tw_reuse ${env.tcpTwReuse}; ephemeral ports ${env.ephemeralPorts}; tcp_max_tw_buckets ${env.tcpMaxTwBuckets}${env.ownNetns ? " (a network namespace of the bench's own, `--tw-buckets`: past that many the kernel drops TIME_WAIT sockets)" : ''} |`,
  );
  out.push(
    `| haproxy | ${env.haproxy ?? 'not installed: comparison skipped (apt-get install haproxy)'}${env.haproxy ? `; mode tcp, nbthread left at its default (${env.cpus} threads here)` : ''} |`,
  );
  out.push(
    `| redis | ${env.redis ?? 'not installed (apt-get install redis-server redis-tools)'} |`,
  );
  out.push(`| open files | soft ${env.fdLimit.soft}, hard ${env.fdLimit.hard} |`);
  out.push(
    `| harness CPU | CPU of the harness's own Node process beside the load, per workload (not the load generators, nor the \`ss\` its samplers run: at most one every 250 ms): ${results
      .filter((r) => r.harnessCpuSeconds !== undefined)
      .map(
        (r) =>
          `${r.id}: ${r.harnessCpuSeconds.toFixed(1)} s in ${r.seconds.toFixed(0)} s (${((100 * r.harnessCpuSeconds) / r.seconds).toFixed(1)}% of a core)`,
      )
      .join('; ')} |`,
  );
  out.push(
    `| runs | ${opts.runs}: each figure is the median over runs; each ratio (×direct, sidepool ÷ haproxy) is the median of per-run ratios, both sides measured in the same run, targets in rotating order |`,
  );
  out.push('');
  out.push(
    'Targets: **direct** (client → server), **sidepool** (dist/cli.js, tcp mode), **haproxy** (mode tcp), **naive relay** (bench/naive-relay.mjs, `net` + `pipe`), **floor relay** (workload 2: bench/floor-relay.mjs, `onread` + copy + write, nothing else). All traffic is on 127.0.0.1.',
    '',
  );

  for (const result of results) {
    for (const section of result.sections ?? []) {
      out.push(`## ${section.title}`, '');
      out.push(section.text, '');
      for (const note of section.notes ?? []) out.push(`- ${note}`);
      if ((section.notes ?? []).length) out.push('');
    }
  }
  if (results.some((r) => r.skipped)) {
    out.push(
      `Skipped workloads: ${results
        .filter((r) => r.skipped)
        .map((r) => `${r.id} (${r.name})`)
        .join(', ')}.`,
      '',
    );
  }

  out.push('## Settings', '');
  for (const [kind, byLabel] of Object.entries(settings)) {
    for (const [label, value] of Object.entries(byLabel)) {
      out.push(
        `- ${kind} \`${label}\`: ${Object.entries(value)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}`,
      );
    }
  }
  out.push(
    `- soak: ${opts.soak.toLocaleString('en-US')} sessions requested (\`--soak\`), bounded at ${opts.soakMaxSeconds} s`,
  );
  out.push('');

  out.push('## sidepool log lines at warn/error', '');
  if (sidepoolLog.length === 0) out.push('None.');
  else {
    for (const e of sidepoolLog)
      out.push(
        `- ${e.workload}, ${e.level} ×${e.count}: ${e.msg} — \`${e.sample.replace(/`/g, "'")}\``,
      );
  }
  out.push('');
  if (sidepoolHealth.length) {
    out.push('## sidepool after each load (settled)', '');
    out.push(
      '| load | fds before | fds after | upstream links after (minIdle) | RSS before → after MiB |',
      '| --- | --- | --- | --- | --- |',
    );
    for (const h of sidepoolHealth) {
      out.push(
        `| ${h.workload} | ${h.fdsBefore} | ${h.fdsAfter} | ${h.linksAfter} (${h.minIdle}) | ${(h.rssBeforeKiB / 1024).toFixed(0)} → ${(h.rssAfterKiB / 1024).toFixed(0)} |`,
      );
    }
    out.push('');
  }
  out.push('## Notes', '');
  if (notes.length === 0 && missing.length === 0) out.push('None.');
  for (const note of notes) out.push(`- ${note}`);
  out.push('');
  return out.join('\n');
}

/**
 * The bench again, in a network namespace of its own (every process it starts inherits
 * it): loopback up, at most `--tw-buckets` TIME_WAIT sockets. A connection per request
 * leaves one TIME_WAIT socket per connection for 60 s, and the client's connect() slows
 * with them: here direct Redis made 17,600 `-k 0` GETs/s with none and 13,500 beside
 * 15,000, the cap of every target alike. Nothing of the machine's own network changes.
 */
function inOwnNetns(opts) {
  const script =
    'ip link set lo up && sysctl -q -w net.ipv4.tcp_max_tw_buckets="$1" && shift && exec "$@"';
  const res = spawnSync(
    'unshare',
    [
      '-n',
      '--',
      'sh',
      '-c',
      script,
      'sh',
      String(opts.twBuckets),
      process.execPath,
      ...process.argv.slice(1),
    ],
    { stdio: 'inherit', env: { ...process.env, SIDEPOOL_BENCH_NETNS: '1' } },
  );
  if (res.error !== undefined) {
    say(`bench: --tw-buckets needs unshare (util-linux) and root: ${res.error.message}`);
    return 2;
  }
  return res.status ?? 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    say(`bench: ${err?.stack ?? err}`);
    process.exit(1);
  },
);
