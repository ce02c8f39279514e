// Workload 1: bulk throughput. 1 and 64 connections each stream to a Node sink process
// (which discards and counts, and confirms the count at the end), bounded by bytes and time.
import { comparisonTable, record, rotate, say, sleep, summarise } from '../lib.mjs';
import { startNodeClient, startNodeServer, startTargets, targetLabels } from '../targets.mjs';

export default {
  id: '1',
  name: 'bulk',
  title: 'Bulk throughput',

  async run(ctx) {
    const seconds = ctx.quick ? 1 : 3;
    const maxMiB = 256;
    const concurrencies = [1, 64];
    const sidepool = { minIdle: 64, maxSize: 256 };
    const sink = await startNodeServer(ctx, 'procs/sink.mjs', []);
    const stack = await startTargets(ctx, {
      workers: true,
      upstreamPort: sink.port,
      sidepool,
      naive: true,
      label: 'w1-bulk',
    });
    const samples = {};
    const problems = [];
    try {
      const before = stack.targets.sidepool.stats();
      for (let run = 0; run < ctx.runs; run++) {
        for (const conns of concurrencies) {
          const metric = `${conns} conn${conns > 1 ? 's' : ''}, MB/s`;
          for (const name of rotate(stack.names, run)) {
            await stack.rewarm();
            const client = startNodeClient(ctx, 'procs/bulk-client.mjs', [
              '--port',
              String(stack.targets[name].port),
              '--conns',
              String(conns),
              '--seconds',
              String(seconds),
              '--max-bytes',
              String(maxMiB * 1024 * 1024),
            ]);
            let result;
            try {
              result = await client.waitEvent((e) => e.event === 'result', (seconds + 40) * 1000);
            } catch (err) {
              problems.push(
                `${name}, ${conns} conns, run ${run + 1}: ${err.message.split('\n')[0]}`,
              );
              await client.stop();
              record(samples, metric, name, run, null);
              continue;
            }
            await client.exited;
            const bad = Object.keys(result.errors).length > 0 || result.mismatches > 0;
            if (bad) {
              problems.push(
                `${name}, ${conns} conns, run ${run + 1}: errors ${JSON.stringify(result.errors)}, ${result.mismatches} byte-count mismatches`,
              );
            }
            record(samples, metric, name, run, result.mbPerSec);
            say(`  run ${run + 1} ${conns} conns ${name}: ${result.mbPerSec.toFixed(0)} MB/s`);
            await sleep(200);
          }
        }
      }
      await sleep(500);
      ctx.checkSidepoolSettled(stack.targets.sidepool, before, 'w1-bulk');
    } finally {
      await stack.stop();
      await sink.stop();
    }
    const summary = summarise(samples, { pairs: [['sidepool', 'haproxy']] });
    return {
      sections: [
        {
          title: '1. Bulk throughput (MB/s = 10^6 bytes/s confirmed by the sink; higher is better)',
          text: comparisonTable(summary, {
            targets: stack.names,
            labels: targetLabels(ctx),
          }),
          notes: [
            `each connection streams 64 KiB writes until ${maxMiB} MiB or ${seconds} s, then half-closes and waits for the sink's byte count`,
            'client, proxy and sink are three Node/HAProxy processes on 2 cores: a proxy also competes with the load for CPU',
            ...problems.map((p) => `problem: ${p}`),
          ],
        },
      ],
      raw: { seconds, maxMiB, concurrencies, summary },
    };
  },
};
