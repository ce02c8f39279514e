// PostgreSQL for the bench: a private PostgreSQL 15 cluster with scram-sha-256 and a pgbench
// database, PgBouncer and sidepool in front of it, and one pgbench run with the proxy's CPU
// and the backends it held. Workloads 8 and 8p share it.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  HOST,
  cpuSeconds,
  establishedTo,
  fmt,
  freePort,
  mdTable,
  median,
  peakSampler,
  runCommand,
  startChild,
  waitListening,
  which,
} from '../lib.mjs';
import { logSkip, startSidepoolProcess } from '../targets.mjs';

export const PG_BIN = '/usr/lib/postgresql/15/bin';
export const POOL = 10;
export const CLIENTS = 50;
export const USER = 'bench';
export const PASSWORD = 'bench-secret';
const asPostgres = (args, timeoutMs = 120_000) =>
  runCommand('postgres', 'runuser', ['-u', 'postgres', '--', ...args], { timeoutMs });

export async function startCluster(ctx) {
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

export async function startPgbouncer(ctx, cluster) {
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

export async function startSidepoolPg(ctx, cluster, mode) {
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
export async function pgbench(ctx, cluster, target, args, seconds, transactions) {
  // A proxy's backends are its connections to the server; direct, the server's own count.
  const sampler = peakSampler(() =>
    target.pid === undefined ? cluster.backends() : establishedTo(target.pid, cluster.port),
  );
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
  const maxBackends = await sampler.stop();
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

/** Whether PostgreSQL 15 and pgbench are missing; if so, the workload's skip is logged. */
export function skipWithoutPostgres(ctx, workload) {
  const missing = [path.join(PG_BIN, 'initdb'), which('pgbench'), which('psql')].some(
    (p) => !p || !fs.existsSync(p),
  );
  if (missing) {
    logSkip(
      ctx,
      workload,
      'PostgreSQL 15 or pgbench not found (apt-get install postgresql postgresql-client)',
    );
  }
  return missing;
}

/** A table of load × target: the median and max over runs of one figure. */
export function perTargetTable(table, names, labels, digits) {
  return mdTable(
    ['load', ...names.map((n) => labels[n] ?? n)],
    Object.entries(table).map(([metric, byTarget]) => [
      metric,
      ...names.map((n) => {
        const values = (byTarget[n] ?? []).filter((v) => typeof v === 'number');
        if (values.length === 0) return '–';
        const show = (v) => (digits === 0 ? String(Math.round(v)) : fmt(v));
        return `${show(median(values))} (max ${show(Math.max(...values))})`;
      }),
    ]),
  );
}
