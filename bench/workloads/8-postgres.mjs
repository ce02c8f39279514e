// Workload 8: PostgreSQL pooling. pgbench -S with scram-sha-256 auth against a private
// PostgreSQL 15 cluster: direct, PgBouncer (transaction mode), sidepool transaction mode and
// sidepool tcp mode; (a) 50 clients on persistent connections over a pool of 10, (b) -C (a
// new connection per transaction), 50 clients, (c) backends in pg_stat_activity during
// each; then sidepool's RSS with 1,000 idle clients.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  BENCH_DIR,
  HOST,
  comparisonTable,
  cpuSeconds,
  establishedTo,
  freePort,
  mdTable,
  fmt,
  procStats,
  record,
  rotate,
  runCommand,
  say,
  sleep,
  startChild,
  summarise,
  waitListening,
  which,
} from '../lib.mjs';
import { logSkip, startSidepoolProcess } from '../targets.mjs';

const PG_BIN = '/usr/lib/postgresql/15/bin';
const POOL = 10;
const CLIENTS = 50;
const USER = 'bench';
const PASSWORD = 'bench-secret';
/** Warm-up per client: (a) transactions on one connection, (b) connections. */
const WARM_UP_TRANSACTIONS = 200;
const WARM_UP_CONNECTIONS = 4;

const asPostgres = (args, timeoutMs = 120_000) =>
  runCommand('postgres', 'runuser', ['-u', 'postgres', '--', ...args], { timeoutMs });

async function startCluster(ctx) {
  // Its own temp dir: the postgres user must reach it (the bench's is private to root).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sidepool-bench-pg-'));
  const uid = Number((await runCommand('id', 'id', ['-u', 'postgres'])).stdout);
  const gid = Number((await runCommand('id', 'id', ['-g', 'postgres'])).stdout);
  fs.chownSync(dir, uid, gid);
  const data = path.join(dir, 'data');
  const init = await asPostgres([
    path.join(PG_BIN, 'initdb'),
    '-D',
    data,
    '-U',
    'postgres',
    '--auth-local=trust',
    '--auth-host=scram-sha-256',
    '--no-sync',
    '-E',
    'UTF8',
    '--locale=C',
  ]);
  if (init.code !== 0) throw new Error(`initdb failed: ${init.stderr}`);
  const port = await freePort();
  fs.appendFileSync(
    path.join(data, 'postgresql.conf'),
    [
      `port = ${port}`,
      `listen_addresses = '${HOST}'`,
      `unix_socket_directories = '${dir}'`,
      'fsync = off',
      'synchronous_commit = off',
      'max_connections = 300',
      'shared_buffers = 64MB',
      "password_encryption = 'scram-sha-256'",
      '',
    ].join('\n'),
  );
  const start = await asPostgres([
    path.join(PG_BIN, 'pg_ctl'),
    'start',
    '-w',
    '-D',
    data,
    '-l',
    path.join(dir, 'log'),
    '-s',
  ]);
  if (start.code !== 0) throw new Error(`pg_ctl start failed: ${start.stderr}`);
  const psql = (sql, db = 'postgres') =>
    runCommand(
      'psql',
      'psql',
      ['-h', dir, '-p', String(port), '-U', 'postgres', '-d', db, '-XAtqc', sql],
      { timeoutMs: 60_000 },
    );
  await psql(`CREATE ROLE ${USER} LOGIN PASSWORD '${PASSWORD}'`);
  await psql(`CREATE DATABASE ${USER} OWNER ${USER}`);
  const verifier = (
    await psql(`SELECT rolpassword FROM pg_authid WHERE rolname = '${USER}'`)
  ).stdout.trim();
  const initBench = await runCommand(
    'pgbench',
    'pgbench',
    ['-i', '-s', '1', '-q', '-h', HOST, '-p', String(port), '-U', USER, USER],
    {
      env: { PGPASSWORD: PASSWORD },
      timeoutMs: 120_000,
    },
  );
  if (initBench.code !== 0) throw new Error(`pgbench -i failed: ${initBench.stderr}`);
  const authFile = path.join(dir, 'userlist.txt');
  fs.writeFileSync(authFile, `"${USER}" "${verifier}"\n`);
  fs.chownSync(authFile, uid, gid);
  return {
    port,
    dir,
    authFile,
    uid,
    gid,
    backends: async () =>
      Number(
        (
          await psql(
            `SELECT count(*) FROM pg_stat_activity WHERE usename = '${USER}' AND backend_type = 'client backend'`,
          )
        ).stdout.trim(),
      ),
    stop: async () => {
      await asPostgres([path.join(PG_BIN, 'pg_ctl'), 'stop', '-m', 'fast', '-D', data, '-s']);
      if (!ctx.keepTmp) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function startPgbouncer(ctx, cluster) {
  const port = await freePort();
  const dir = path.join(cluster.dir, 'pgbouncer');
  fs.mkdirSync(dir, { recursive: true });
  fs.chownSync(dir, cluster.uid, cluster.gid);
  const ini = path.join(dir, 'pgbouncer.ini');
  const pidFile = path.join(dir, 'pgbouncer.pid');
  fs.writeFileSync(
    ini,
    [
      '[databases]',
      `${USER} = host=${HOST} port=${cluster.port} dbname=${USER}`,
      '[pgbouncer]',
      `listen_addr = ${HOST}`,
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = scram-sha-256',
      `auth_file = ${cluster.authFile}`,
      'pool_mode = transaction',
      `default_pool_size = ${POOL}`,
      'min_pool_size = 0',
      'max_client_conn = 5000',
      `logfile = ${path.join(dir, 'log')}`,
      `pidfile = ${pidFile}`,
      'ignore_startup_parameters = extra_float_digits',
      '',
    ].join('\n'),
  );
  fs.chownSync(ini, cluster.uid, cluster.gid);
  const child = startChild('pgbouncer', 'runuser', ['-u', 'postgres', '--', 'pgbouncer', ini], {
    logFile: path.join(dir, 'stdout.log'),
  });
  await waitListening(port, { child });
  const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
  return {
    port,
    pid,
    stop: async () => {
      try {
        process.kill(pid, 'SIGINT');
      } catch {
        // gone
      }
      await child.stop(5000);
    },
  };
}

async function startSidepoolPg(ctx, cluster, mode) {
  const port = await freePort();
  const route = {
    name: `pg-${mode}`,
    listen: `${HOST}:${port}`,
    mode: mode === 'tcp' ? 'tcp' : 'postgres',
    upstream: `${HOST}:${cluster.port}`,
    pool:
      mode === 'tcp'
        ? { minIdle: POOL, maxSize: 256, maxWaiters: 5000, acquireTimeout: '60s' }
        : { minIdle: POOL, maxSize: POOL, maxWaiters: 5000, acquireTimeout: '60s' },
  };
  if (mode !== 'tcp') {
    route.postgres = {
      poolMode: 'transaction',
      authFile: cluster.authFile,
      pools: [{ database: USER, user: USER }],
    };
  }
  const config = {
    admin: false,
    log: { level: 'warn' },
    drain: { timeout: '2s' },
    routes: [route],
  };
  const configFile = path.join(ctx.tmp, `sidepool-pg-${mode}.json`);
  fs.writeFileSync(configFile, JSON.stringify(config, null, 2));
  const child = startSidepoolProcess(
    ctx,
    configFile,
    path.join(ctx.tmp, `sidepool-pg-${mode}.log`),
  );
  await waitListening(port, { child });
  ctx.settings.sidepool ??= {};
  ctx.settings.sidepool[`pg-${mode}`] = {
    mode: route.mode,
    ...route.pool,
    ...(mode === 'tcp' ? {} : { poolMode: 'transaction', authType: 'scram-sha-256' }),
  };
  return { port, pid: child.pid, stop: () => child.stop(5000) };
}

/**
 * One pgbench run of `seconds` (or, with `transactions`, of that many per client, as a
 * warm-up does); samples backends meanwhile. Returns { tps, cpuUsPerTx, maxBackends, failed }.
 */
async function pgbench(ctx, cluster, target, args, seconds, transactions) {
  let maxBackends = 0;
  let sampling = true;
  // A proxy's backends are its connections to the server; direct, the server's own count.
  const count = async () =>
    target.pid === undefined ? cluster.backends() : establishedTo(target.pid, cluster.port);
  const sampler = (async () => {
    while (sampling) {
      maxBackends = Math.max(maxBackends, await count());
      await sleep(100);
    }
  })();
  const cpuBefore = target.pid === undefined ? null : await cpuSeconds(target.pid);
  const result = await runCommand(
    'pgbench',
    'pgbench',
    [
      '-n',
      '-S',
      '-c',
      String(CLIENTS),
      '-j',
      '2',
      ...(transactions === undefined ? ['-T', String(seconds)] : ['-t', String(transactions)]),
      '-h',
      HOST,
      '-p',
      String(target.port),
      '-U',
      USER,
      ...args,
      USER,
    ],
    { env: { PGPASSWORD: PASSWORD }, timeoutMs: (seconds + 120) * 1000 },
  );
  const cpuAfter = target.pid === undefined ? null : await cpuSeconds(target.pid);
  sampling = false;
  await sampler;
  fs.appendFileSync(
    path.join(ctx.tmp, `pgbench-${target.name}.log`),
    `\n## pgbench ${args.join(' ')} ${transactions === undefined ? `-T ${seconds}` : `-t ${transactions}`} (exit ${result.code})\n${result.stdout}${result.stderr}`,
  );
  const tps = Number(/tps = ([\d.]+)/.exec(result.stdout)?.[1] ?? NaN);
  const txs = Number(
    /number of transactions actually processed: (\d+)/.exec(result.stdout)?.[1] ?? NaN,
  );
  const failed = Number(/number of failed transactions: (\d+)/.exec(result.stdout)?.[1] ?? 0);
  if (!(tps > 0)) {
    ctx.note(
      `pgbench against ${target.name} ${args.join(' ')} failed (code ${result.code}): ${`${result.stdout}\n${result.stderr}`.trim().split('\n').slice(-4).join(' / ')}`,
    );
  }
  const cpuUsPerTx =
    cpuBefore !== null && cpuAfter !== null && txs > 0
      ? ((cpuAfter - cpuBefore) * 1e6) / txs
      : null;
  return { tps: tps > 0 ? tps : null, cpuUsPerTx, maxBackends, failed };
}

async function idleClientsRss(ctx, target, n) {
  const before = procStats(target.pid)?.rssKiB ?? null;
  const holder = startChild(
    'pg-hold',
    process.execPath,
    [
      path.join(BENCH_DIR, 'procs', 'pg-hold.mjs'),
      String(target.port),
      String(n),
      USER,
      PASSWORD,
      USER,
    ],
    {
      json: true,
      logFile: path.join(ctx.tmp, `pg-hold-${target.name}.log`),
    },
  );
  let ready;
  try {
    ready = await holder.waitEvent((e) => e.event === 'ready', 180_000);
    await sleep(1000);
    const loaded = procStats(target.pid)?.rssKiB ?? null;
    return { before, loaded, clients: ready.clients, failed: ready.failed };
  } finally {
    await holder.stop(2000);
  }
}

export default {
  id: '8',
  name: 'postgres',
  title: 'PostgreSQL pooling: pgbench -S, scram-sha-256',

  async run(ctx) {
    const missing = [path.join(PG_BIN, 'initdb'), which('pgbench'), which('psql')].some(
      (p) => !p || !fs.existsSync(p),
    );
    if (missing) {
      logSkip(
        ctx,
        'workload 8',
        'PostgreSQL 15 or pgbench not found (apt-get install postgresql postgresql-client)',
      );
      return { sections: [], skipped: true };
    }
    const havePgbouncer = which('pgbouncer') !== null;
    const seconds = ctx.quick ? 5 : 15;
    const cluster = await startCluster(ctx);
    const samples = {};
    const cpu = {};
    const backends = {};
    const failures = {};
    const targets = {};
    let rss;
    try {
      targets.direct = { name: 'direct', port: cluster.port, pid: undefined };
      if (havePgbouncer)
        targets.pgbouncer = { name: 'pgbouncer', ...(await startPgbouncer(ctx, cluster)) };
      targets.sidepool = {
        name: 'sidepool',
        ...(await startSidepoolPg(ctx, cluster, 'transaction')),
      };
      targets.sidepoolTcp = {
        name: 'sidepoolTcp',
        ...(await startSidepoolPg(ctx, cluster, 'tcp')),
      };
      const names = Object.keys(targets);
      const loads = [
        { metric: `(a) ${CLIENTS} clients, persistent`, args: [], warmUp: WARM_UP_TRANSACTIONS },
        { metric: `(b) ${CLIENTS} clients, -C`, args: ['-C'], warmUp: WARM_UP_CONNECTIONS },
      ];
      // Each target gets a warm-up of each load (not recorded), counted in transactions, not
      // seconds: pools filled (sidepool warms a SCRAM verifier's pool after its first
      // client), and V8's JIT past its first few thousand transactions. A warm-up of a few
      // seconds was spent on the 50 clients' SCRAM logins alone on a loaded machine, so the
      // first measured run was sidepool's unoptimised code (0.03x PgBouncer in one
      // --quick run, 1.4x once warm in the same conditions).
      for (const name of names) {
        for (const load of loads) {
          // Direct has nothing to warm, and a new backend per connection is slow to warm up.
          if (name === 'direct' && load.args.includes('-C')) continue;
          say(`  w8 warm-up: ${name} ${load.metric}`);
          await pgbench(ctx, cluster, targets[name], load.args, 0, load.warmUp);
        }
      }
      for (let run = 0; run < ctx.runs; run++) {
        for (const load of loads) {
          for (const name of rotate(names, run)) {
            say(`  w8 run ${run + 1}/${ctx.runs} ${load.metric}: ${name}`);
            const r = await pgbench(ctx, cluster, targets[name], load.args, seconds);
            record(samples, load.metric, name, run, r.tps);
            record(cpu, load.metric, name, run, r.cpuUsPerTx);
            record(backends, load.metric, name, run, r.maxBackends);
            record(failures, load.metric, name, run, r.failed);
          }
        }
      }
      rss = {
        sidepool: await idleClientsRss(ctx, targets.sidepool, ctx.quick ? 200 : 1000),
        pgbouncer: havePgbouncer
          ? await idleClientsRss(ctx, targets.pgbouncer, ctx.quick ? 200 : 1000)
          : undefined,
      };
    } finally {
      for (const t of Object.values(targets)) await t.stop?.();
      await cluster.stop();
    }
    const names = Object.keys(targets);
    const labels = {
      pgbouncer: 'PgBouncer 1.18 (transaction)',
      sidepool: 'sidepool transaction',
      sidepoolTcp: 'sidepool tcp',
    };
    const summary = summarise(samples, { pairs: [['sidepool', 'pgbouncer']] });
    const perTarget = (table, digits) =>
      mdTable(
        ['load', ...names.map((n) => labels[n] ?? n)],
        Object.entries(table).map(([metric, byTarget]) => [
          metric,
          ...names.map((n) => {
            const values = (byTarget[n] ?? []).filter((v) => typeof v === 'number');
            if (values.length === 0) return '–';
            const show = (v) => (digits === 0 ? String(Math.round(v)) : fmt(v));
            return `${show(values.sort((a, b) => a - b)[Math.floor(values.length / 2)])} (max ${show(Math.max(...values))})`;
          }),
        ]),
      );
    const ratioRows = Object.entries(summary).map(([metric, e]) => [
      metric,
      e.pair['sidepool/pgbouncer'] === undefined ? '–' : `${fmt(e.pair['sidepool/pgbouncer'])}×`,
    ]);
    return {
      sections: [
        {
          title: '8. PostgreSQL: pgbench -S, scram-sha-256 (transactions/s; higher is better)',
          text: `${comparisonTable(summary, { targets: names, labels })}\n\nsidepool transaction ÷ PgBouncer, median of per-run ratios:\n\n${mdTable(['load', 'ratio'], ratioRows)}`,
          notes: [
            `pgbench -n -S -c ${CLIENTS} -j 2 -T ${seconds}, pool of ${POOL} backends (PgBouncer default_pool_size, sidepool maxSize); sidepool tcp mode has one backend per client (maxSize 256)`,
            'the ratio columns use the tables sidepool ÷ haproxy slot for nothing: see the PgBouncer ratio table',
            `each target is warmed first with each load, counted in transactions (${WARM_UP_TRANSACTIONS} per client persistent, ${WARM_UP_CONNECTIONS} connections per client with -C; the proxies only), not recorded`,
            "tps is pgbench's, without its initial connection time (50 SCRAM logins per run)",
          ],
        },
        {
          title: '8b. Proxy CPU µs per transaction (median, max over runs)',
          text: perTarget(cpu, 1),
          notes: [
            'user + system CPU of the proxy over the whole pgbench run, its 50 client logins included, divided by the transactions',
          ],
        },
        {
          title: '8c. Backends in pg_stat_activity during each run (median, max over runs)',
          text: perTarget(backends, 0),
          notes: [`target: ≤ ${POOL} for the pooling targets`],
        },
        { title: '8d. Failed transactions', text: perTarget(failures, 0), notes: [] },
        {
          title: '8e. RSS with idle clients logged in (KiB)',
          text: mdTable(
            ['target', 'clients', 'RSS before', 'RSS with clients', 'KiB per client'],
            Object.entries(rss ?? {})
              .filter(([, v]) => v !== undefined)
              .map(([name, v]) => [
                labels[name] ?? name,
                `${v.clients} (${v.failed} failed)`,
                String(v.before),
                String(v.loaded),
                fmt((v.loaded - v.before) / Math.max(1, v.clients)),
              ]),
          ),
          notes: [],
        },
      ],
      raw: { samples, cpu, backends, failures, rss, summary },
    };
  },
};
