// Workload 8p: named prepared statements in transaction pooling. pgbench -S -M prepared
// against -M extended (the same queries, parsed anew each time), 50 clients on persistent
// connections over a pool of 10 backends: direct, PgBouncer (transaction mode, -M extended
// only: the Debian package is 1.18, and protocol-level prepared statements in transaction
// pooling came in 1.21) and sidepool transaction mode. The figure the issue asks for is
// sidepool's -M prepared over its own -M extended: the reason drivers prepare.
import {
  comparisonTable,
  fmt,
  mdTable,
  median,
  record,
  rotate,
  say,
  summarise,
  which,
} from '../lib.mjs';
import {
  CLIENTS,
  POOL,
  pgbench,
  startCluster,
  startPgbouncer,
  perTargetTable,
  skipWithoutPostgres,
  startSidepoolPg,
} from './pg-cluster.mjs';

/** Warm-up per client and load, in transactions (not recorded). */
const WARM_UP_TRANSACTIONS = 200;

const EXTENDED = `-M extended, ${CLIENTS} clients`;
const PREPARED = `-M prepared, ${CLIENTS} clients`;
const LOADS = [
  { metric: EXTENDED, args: ['-M', 'extended'] },
  { metric: PREPARED, args: ['-M', 'prepared'] },
];

/** PgBouncer 1.18 answers a named Parse on one backend and a Bind on another with an error. */
const runs = (name, load) => !(name === 'pgbouncer' && load.metric === PREPARED);

/** The median over runs of a ÷ b, both measured in the same run. */
function perRunRatio(samples, [metricA, targetA], [metricB, targetB]) {
  const a = samples[metricA]?.[targetA] ?? [];
  const b = samples[metricB]?.[targetB] ?? [];
  return median(
    a.map((v, i) =>
      typeof v === 'number' && typeof b[i] === 'number' && b[i] > 0 ? v / b[i] : null,
    ),
  );
}

export default {
  id: '8p',
  name: 'postgres-prepared',
  title: 'PostgreSQL prepared statements: pgbench -S -M prepared against -M extended',

  async run(ctx) {
    if (skipWithoutPostgres(ctx, 'workload 8p')) return { sections: [], skipped: true };
    const havePgbouncer = which('pgbouncer') !== null;
    const seconds = ctx.quick ? 5 : 15;
    const cluster = await startCluster(ctx);
    const samples = {};
    const cpu = {};
    const backends = {};
    const failures = {};
    const targets = {};
    try {
      targets.direct = { name: 'direct', port: cluster.port, pid: undefined };
      if (havePgbouncer)
        targets.pgbouncer = { name: 'pgbouncer', ...(await startPgbouncer(ctx, cluster)) };
      targets.sidepool = {
        name: 'sidepool',
        ...(await startSidepoolPg(ctx, cluster, 'transaction')),
      };
      const names = Object.keys(targets);
      for (const name of names) {
        for (const load of LOADS.filter((l) => runs(name, l))) {
          say(`  w8p warm-up: ${name} ${load.metric}`);
          await pgbench(ctx, cluster, targets[name], load.args, 0, WARM_UP_TRANSACTIONS);
        }
      }
      for (let run = 0; run < ctx.runs; run++) {
        // Both loads of a target back to back, targets in rotating order: the ratio of a
        // target's two loads compares runs a few seconds apart.
        for (const name of rotate(names, run)) {
          for (const load of LOADS.filter((l) => runs(name, l))) {
            say(`  w8p run ${run + 1}/${ctx.runs} ${load.metric}: ${name}`);
            const r = await pgbench(ctx, cluster, targets[name], load.args, seconds);
            record(samples, load.metric, name, run, r.tps);
            record(cpu, load.metric, name, run, r.cpuUsPerTx);
            record(backends, load.metric, name, run, r.maxBackends);
            record(failures, load.metric, name, run, r.failed);
          }
        }
      }
    } finally {
      for (const t of Object.values(targets)) await t.stop?.();
      await cluster.stop();
    }
    const names = Object.keys(targets);
    const labels = {
      pgbouncer: 'PgBouncer 1.18 (transaction)',
      sidepool: 'sidepool transaction',
    };
    const summary = summarise(samples);
    const ratio = (a, b) => {
      const r = perRunRatio(samples, a, b);
      return r === null ? '–' : `${fmt(r)}×`;
    };
    const ratioRows = [
      [
        'sidepool -M prepared ÷ sidepool -M extended (target ≥ 1.2×)',
        ratio([PREPARED, 'sidepool'], [EXTENDED, 'sidepool']),
      ],
      [
        'direct -M prepared ÷ direct -M extended',
        ratio([PREPARED, 'direct'], [EXTENDED, 'direct']),
      ],
      [
        'sidepool -M prepared ÷ PgBouncer -M extended',
        ratio([PREPARED, 'sidepool'], [EXTENDED, 'pgbouncer']),
      ],
      [
        'sidepool -M extended ÷ PgBouncer -M extended',
        ratio([EXTENDED, 'sidepool'], [EXTENDED, 'pgbouncer']),
      ],
    ];
    const perTarget = (table, digits) => perTargetTable(table, names, labels, digits);
    return {
      sections: [
        {
          title:
            '8p. PostgreSQL prepared statements: pgbench -S, transaction pooling (transactions/s; higher is better)',
          text: `${comparisonTable(summary, { targets: names, labels })}\n\nMedians of per-run ratios:\n\n${mdTable(['ratio', 'value'], ratioRows)}`,
          notes: [
            `pgbench -n -S -c ${CLIENTS} -j 2 -T ${seconds}, pool of ${POOL} backends (PgBouncer default_pool_size, sidepool maxSize; sidepool's postgres.maxPreparedStatements at its default, 200)`,
            'PgBouncer runs -M extended only: the Debian package is 1.18, and protocol-level prepared statements in transaction pooling came in PgBouncer 1.21 (max_prepared_statements)',
            `each target is warmed first with each load (${WARM_UP_TRANSACTIONS} transactions per client), not recorded`,
          ],
        },
        {
          title: '8p-b. Proxy CPU µs per transaction (median, max over runs)',
          text: perTarget(cpu, 1),
          notes: [
            'user + system CPU of the proxy over the whole pgbench run, its client logins included, divided by the transactions',
          ],
        },
        {
          title: '8p-c. Backends during each run (median, max over runs)',
          text: perTarget(backends, 0),
          notes: [`target: ≤ ${POOL} for the pooling targets`],
        },
        {
          title: '8p-d. Failed transactions (target: 0)',
          text: perTarget(failures, 0),
          notes: [],
        },
      ],
      raw: { samples, cpu, backends, failures, summary },
    };
  },
};
