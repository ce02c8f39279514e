// Workload 3: a new connection per request at 50 clients (redis-benchmark -k 0): here the
// per-connection cost of the proxy shows. sidepool runs with a large warm pool.
import { comparisonTable, sleep, summarise, timeWaitCount } from '../lib.mjs';
import { logSkip, startRedis, startTargets, targetLabels } from '../targets.mjs';
import { cpuSection, redisLoad } from './redis-load.mjs';

export default {
  id: '3',
  name: 'connect',
  title: 'New connection per request, 50 clients',

  async run(ctx) {
    if (!ctx.tools['redis-server'] || !ctx.tools['redis-benchmark']) {
      logSkip(
        ctx,
        'workload 3',
        'redis-server or redis-benchmark not found (apt-get install redis-server redis-tools)',
      );
      return { sections: [], skipped: true };
    }
    const n = ctx.quick ? 2000 : 20_000;
    const sidepool = { minIdle: 64, maxSize: 256 };
    const variants = [
      { label: 'k=0', args: ['-k', '0', '-c', '50', '-n', String(n), '-t', 'ping'] },
    ];
    const redis = await startRedis(ctx);
    const stack = await startTargets(ctx, {
      workers: true,
      upstreamPort: redis.port,
      sidepool,
      naive: true,
      label: 'w3-connect',
    });
    let result;
    const timeWait = { before: timeWaitCount() };
    try {
      const before = stack.targets.sidepool.stats();
      result = await redisLoad(ctx, stack, variants);
      timeWait.after = timeWaitCount();
      await sleep(1000);
      ctx.checkSidepoolSettled(stack.targets.sidepool, before, 'w3-connect');
    } finally {
      await stack.stop();
      await redis.stop();
    }
    const summary = summarise(result.samples, { pairs: [['sidepool', 'haproxy']] });
    const cpu = cpuSection(
      ctx,
      stack,
      result.cpu,
      '3b. Proxy CPU per request, new connection per request (µs; lower is better)',
    );
    return {
      sections: [
        {
          title:
            '3. New connection per request, 50 clients (redis-benchmark -k 0 requests/s; higher is better)',
          text: comparisonTable(summary, {
            targets: stack.names,
            labels: targetLabels(ctx),
          }),
          notes: [
            `redis-benchmark -k 0 -c 50 -n ${n} -t ping (PING_INLINE and PING_MBULK are two passes of the same test)`,
            `sidepool warm pool: minIdle ${sidepool.minIdle}, maxSize ${sidepool.maxSize}; HAProxy server maxconn ${sidepool.maxSize}`,
            `TIME_WAIT sockets on the host: ${timeWait.before} before, ${timeWait.after} after the last run (net.ipv4.tcp_tw_reuse lets loopback connects reuse them)`,
            ...result.problems.map((p) => `problem: ${p}`),
          ],
        },
        cpu.section,
      ],
      raw: { variants, sidepool, timeWait, summary, cpu: cpu.summary, runs: result.raw },
    };
  },
};
