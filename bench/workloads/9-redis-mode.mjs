// Workload 9: sidepool's redis mode (commands of many connections multiplexed onto a few
// pipelined links) against a plain TCP proxy (HAProxy, sidepool tcp) and a Redis-aware one
// (twemproxy), with redis-benchmark: 50 persistent clients, the same pipelined (-P 16),
// and a new connection per request (-k 0).
import { establishedTo, fmt, fmtRatio, mdTable, peakSampler, summarise } from '../lib.mjs';
import {
  logSkip,
  redisBenchmark,
  startHaproxy,
  startNodeServer,
  startRedis,
  startSidepool,
  startTwemproxy,
} from '../targets.mjs';
import { redisLoad } from './redis-load.mjs';

const LABELS = {
  direct: 'direct',
  haproxy: 'HAProxy tcp',
  twemproxy: 'twemproxy',
  sidepool: 'sidepool tcp',
  redis: 'sidepool redis',
  redis2: 'sidepool redis ×N',
  floor: 'Node floor (answers itself)',
};

export default {
  id: '9',
  name: 'redis-mode',
  title: 'redis mode: multiplexed, pipelined links',

  async run(ctx) {
    if (!ctx.tools['redis-server'] || !ctx.tools['redis-benchmark']) {
      logSkip(
        ctx,
        'workload 8',
        'redis-server or redis-benchmark not found (apt-get install redis-server redis-tools)',
      );
      return { sections: [], skipped: true };
    }
    const n = ctx.quick ? 20_000 : 200_000;
    const nPipelined = ctx.quick ? 100_000 : 1_000_000;
    const nConnect = ctx.quick ? 4000 : 40_000;
    const variants = [
      { label: 'c=50', args: ['-c', '50', '-n', String(n), '-t', 'get,set'] },
      {
        label: 'c=50 P=16',
        args: ['-c', '50', '-n', String(nPipelined), '-P', '16', '-t', 'get,set'],
      },
      { label: 'k=0', args: ['-k', '0', '-c', '50', '-n', String(nConnect), '-t', 'get,set'] },
    ];
    const redisPool = { minIdle: 2, maxSize: 8 };
    const redisSettings = { maxBatchBytes: '64KiB', maxPending: 256 };
    const tcpPool = { minIdle: 64, maxSize: 256 };
    const redis = await startRedis(ctx);
    const targets = { direct: { kind: 'direct', port: redis.port } };
    const started = [];
    const stop = () => Promise.all(started.map((t) => t.stop()));
    let result;
    const peaks = {};
    try {
      const add = (name, target) => {
        targets[name] = target;
        started.push(target);
      };
      if (ctx.tools.haproxy) {
        add(
          'haproxy',
          await startHaproxy(ctx, {
            upstreamPort: redis.port,
            serverMaxconn: 256,
            maxconn: 4096,
            label: 'haproxy-w8',
          }),
        );
      }
      if (ctx.tools.nutcracker) {
        add(
          'twemproxy',
          await startTwemproxy(ctx, { upstreamPort: redis.port, label: 'twemproxy-w8' }),
        );
      }
      add(
        'sidepool',
        await startSidepool(ctx, { upstreamPort: redis.port, ...tcpPool, label: 'w8-tcp' }),
      );
      add(
        'redis',
        await startSidepool(ctx, {
          upstreamPort: redis.port,
          ...redisPool,
          mode: 'redis',
          redis: redisSettings,
          label: 'w8-redis',
        }),
      );
      if (ctx.workers > 1) {
        add(
          'redis2',
          await startSidepool(ctx, {
            upstreamPort: redis.port,
            ...redisPool,
            mode: 'redis',
            redis: redisSettings,
            workers: ctx.workers,
            label: `w8-redis-w${ctx.workers}`,
          }),
        );
      }
      // Not a proxy: what Node alone costs per request (bench/procs/redis-floor.mjs).
      add(
        'floor',
        await startNodeServer(ctx, 'procs/redis-floor.mjs', [], 'redis-floor', ctx.runtime.node),
      );
      const stack = { targets, names: Object.keys(targets), rewarm: async () => {} };
      result = await redisLoad(ctx, stack, variants);
      // Upstream connections of each redis-mode target, sampled under each load once more,
      // after the measured runs and not beside them. A sample is a kernel socket query
      // whose cost grows with the TIME_WAIT sockets a -k 0 load leaves (about 0.45 µs each,
      // 19 ms at 43,000 here, and the table holds up to 131,072), so a sampler beside the
      // measured runs took CPU from sidepool's runs only, on a machine the load saturates.
      for (const name of ['redis', 'redis2']) {
        if (targets[name] === undefined) continue;
        for (const variant of variants) {
          const sampler = peakSampler(() => establishedTo(targets[name].pid, redis.port));
          const res = await redisBenchmark(ctx, targets[name].port, variant.args);
          peaks[name] = Math.max(peaks[name] ?? 0, await sampler.stop());
          if (!res.ok)
            result.problems.push(`${name}, ${variant.label}, connection check: ${res.error}`);
        }
      }
    } finally {
      await stop();
      await redis.stop();
    }

    const names = Object.keys(targets);
    const pairs = [
      ['redis', 'haproxy'],
      ['redis', 'twemproxy'],
      ['redis2', 'haproxy'],
      ['redis2', 'twemproxy'],
      ['sidepool', 'haproxy'],
      ['floor', 'haproxy'],
    ];
    const summary = summarise(result.samples, { pairs });
    const cpu = summarise(result.cpu, {
      baseline: names.includes('haproxy') ? 'haproxy' : 'redis',
    });
    const shown = pairs.filter(([a, b]) => names.includes(a) && names.includes(b));
    const header = [
      'requests/s',
      ...names.map((name) => (name === 'direct' ? 'direct' : `${LABELS[name]} (×direct)`)),
      ...shown.map(([a, b]) => `${LABELS[a]} ÷ ${LABELS[b]}`),
    ];
    const rows = Object.entries(summary).map(([metric, entry]) => [
      metric.replace(/ rps$/, ''),
      ...names.map((name) =>
        name === 'direct'
          ? fmt(entry.median.direct)
          : `${fmt(entry.median[name])} (${fmtRatio(entry.ratio[name])})`,
      ),
      ...shown.map(([a, b]) => fmtRatio(entry.pair[`${a}/${b}`])),
    ]);
    const proxies = names.filter((name) => name !== 'direct');
    const cpuBase = names.includes('haproxy') ? 'haproxy' : 'redis';
    const cpuRows = Object.entries(cpu).map(([metric, entry]) => [
      metric.replace(/ CPU µs\/request$/, ''),
      ...proxies.map((name) =>
        name === cpuBase
          ? fmt(entry.median[name])
          : `${fmt(entry.median[name])} (${fmtRatio(entry.ratio[name])})`,
      ),
    ]);
    const targetsMet = targetCheck(summary, peaks, redisPool.maxSize);
    return {
      sections: [
        {
          title:
            '9. redis mode: 50 clients, pipelined, and a connection per request (redis-benchmark requests/s; higher is better)',
          text: mdTable(header, rows),
          notes: [
            ...variants.map((v) => `${v.label}: redis-benchmark ${v.args.join(' ')}`),
            'Node floor: bench/procs/redis-floor.mjs, a Node server that answers GET and SET itself (no upstream) and closes at the FIN: the least a Node proxy pays per request; `Node floor ÷ HAProxy tcp` bounds what sidepool can reach',
            `sidepool redis: pool minIdle ${redisPool.minIdle}, maxSize ${redisPool.maxSize}, redis.maxBatchBytes ${redisSettings.maxBatchBytes}, redis.maxPending ${redisSettings.maxPending}; sidepool tcp: minIdle ${tcpPool.minIdle}, maxSize ${tcpPool.maxSize}; HAProxy server maxconn 256; twemproxy server_connections 1`,
            `upstream connections of sidepool redis, most seen (sampled every 250 ms through one more, unmeasured run of each variant after the measured runs): ${Object.entries(
              peaks,
            )
              .map(([name, peak]) => `${LABELS[name]} ${peak}`)
              .join(', ')} (maxSize ${redisPool.maxSize})`,
            ...targetsMet,
            ...result.problems.map((p) => `problem: ${p}`),
          ],
        },
        {
          title: `9b. Proxy CPU per request (µs, user + system of all threads and workers; ratio to ${LABELS[cpuBase]}; lower is better)`,
          text: mdTable(['variant', ...proxies.map((name) => LABELS[name])], cpuRows),
          notes: [
            "each proxy's CPU over one whole redis-benchmark run, divided by the requests of all its tests; median of the runs, ratios per run",
          ],
        },
      ],
      raw: { variants, redisPool, redisSettings, tcpPool, peaks, summary, cpu, runs: result.raw },
    };
  },
};

/** The issue's targets, as met or missed in this run (ratios of medians of per-run ratios). */
function targetCheck(summary, peaks, maxSize) {
  const lines = [];
  const ratio = (metric, pair) => summary[metric]?.pair[pair];
  const check = (what, value, goal) =>
    lines.push(
      `target ${what} ≥ ${goal}: ${value === undefined || value === null ? 'not measured' : `${value.toFixed(2)} (${value >= goal ? 'met' : 'missed'})`}`,
    );
  for (const test of ['GET', 'SET']) {
    check(`c=50 ${test} redis ÷ HAProxy`, ratio(`c=50 ${test} rps`, 'redis/haproxy'), 1.2);
    check(`c=50 ${test} redis ÷ twemproxy`, ratio(`c=50 ${test} rps`, 'redis/twemproxy'), 0.9);
    check(`k=0 ${test} redis ÷ HAProxy`, ratio(`k=0 ${test} rps`, 'redis/haproxy'), 1.2);
    const direct = summary[`c=50 ${test} rps`]?.ratio.redis;
    check(
      `(moonshot) c=50 ${test} redis ÷ twemproxy`,
      ratio(`c=50 ${test} rps`, 'redis/twemproxy'),
      1.0,
    );
    check(`(moonshot) c=50 ${test} redis ÷ direct`, direct, 1.0);
  }
  const peak = Math.max(...Object.values(peaks), 0);
  lines.push(
    `target upstream connections ≤ maxSize (${maxSize}): ${peak} (${peak <= maxSize ? 'met' : 'missed'})`,
  );
  return lines;
}
