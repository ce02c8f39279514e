// Workload 8: PostgreSQL pooling. pgbench -S with scram-sha-256 auth against a private
// PostgreSQL 15 cluster: direct, PgBouncer (transaction mode), sidepool transaction mode and
// sidepool tcp mode; (a) 50 clients on persistent connections over a pool of 10, (b) -C (a
// new connection per transaction), 50 clients, (c) backends in pg_stat_activity during
// each; then sidepool's RSS with 1,000 idle clients.
import path from 'node:path';
import {
  BENCH_DIR,
  comparisonTable,
  mdTable,
  fmt,
  procStats,
  record,
  rotate,
  say,
  sleep,
  startChild,
  summarise,
  which,
} from '../lib.mjs';
import {
  CLIENTS,
  PASSWORD,
  POOL,
  USER,
  pgbench,
  startCluster,
  startPgbouncer,
  perTargetTable,
  skipWithoutPostgres,
  startSidepoolPg,
} from './pg-cluster.mjs';

/** Warm-up per client: (a) transactions on one connection, (b) connections. */
const WARM_UP_TRANSACTIONS = 200;
const WARM_UP_CONNECTIONS = 4;

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
    if (skipWithoutPostgres(ctx, 'workload 8')) return { sections: [], skipped: true };
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
    const perTarget = (table, digits) => perTargetTable(table, names, labels, digits);
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
