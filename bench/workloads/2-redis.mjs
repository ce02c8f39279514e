// Workload 2: small request/response on 50 persistent connections, redis-benchmark against
// a real redis-server, without and with pipelining (-P 16).
import { comparisonTable, sleep, summarise } from '../lib.mjs';
import { logSkip, startRedis, startTargets, targetLabels } from '../targets.mjs';
import { cpuSection, redisLoad } from './redis-load.mjs';

export default {
  id: '2',
  name: 'redis',
  title: 'Request/response, 50 persistent clients',

  async run(ctx) {
    if (!ctx.tools['redis-server'] || !ctx.tools['redis-benchmark']) {
      logSkip(
        ctx,
        'workload 2',
        'redis-server or redis-benchmark not found (apt-get install redis-server redis-tools)',
      );
      return { sections: [], skipped: true };
    }
    const n = ctx.quick ? 10_000 : 100_000;
    const nPipelined = ctx.quick ? 50_000 : 500_000;
    const sidepool = { minIdle: 64, maxSize: 256 };
    const variants = [
      { label: 'P=1', args: ['-c', '50', '-n', String(n), '-t', 'ping,set,get'] },
      {
        label: 'P=16',
        args: ['-c', '50', '-n', String(nPipelined), '-P', '16', '-t', 'ping,set,get'],
      },
    ];
    const redis = await startRedis(ctx);
    const stack = await startTargets(ctx, {
      workers: true,
      upstreamPort: redis.port,
      sidepool,
      naive: true,
      floor: true,
      label: 'w2-redis',
    });
    let result;
    try {
      const before = stack.targets.sidepool.stats();
      result = await redisLoad(ctx, stack, variants);
      await sleep(500);
      ctx.checkSidepoolSettled(stack.targets.sidepool, before, 'w2-redis');
    } finally {
      await stack.stop();
      await redis.stop();
    }
    const summary = summarise(result.samples, { pairs: [['sidepool', 'haproxy']] });
    const cpu = cpuSection(
      ctx,
      stack,
      result.cpu,
      '2b. Proxy CPU per request, 50 persistent clients (µs; lower is better)',
    );
    return {
      sections: [
        {
          title:
            '2. Request/response, 50 persistent clients (redis-benchmark requests/s; higher is better)',
          text: comparisonTable(summary, {
            targets: stack.names,
            labels: targetLabels(ctx),
          }),
          notes: [
            `redis-benchmark -c 50 -n ${n} -t ping,set,get; and -c 50 -n ${nPipelined} -P 16 -t ping,set,get (more requests so the pipelined run lasts long enough to measure)`,
            'redis-benchmark and redis-server are single-threaded C; the proxy is a third busy process on 2 cores',
            'floor relay (bench/floor-relay.mjs): both sockets read through `onread` into one buffer, each chunk copied out and written on, nothing else: the work per chunk any Node relay does, against which what sidepool adds shows',
            ...result.problems.map((p) => `problem: ${p}`),
          ],
        },
        cpu.section,
      ],
      raw: { variants, summary, cpu: cpu.summary, runs: result.raw },
    };
  },
};
