// Workload 4: connect + first request latency to an upstream 20 ms (round trip) away.
// bench/delay-relay.mjs sits in front of redis (or the echo server) and simulates the
// distance; the client connects, sends PING, reads the reply, closes: N times in sequence.
// Direct pays the connect round trip and the request round trip; sidepool's warm links
// have paid the first already, so 0.5× direct is the physical floor.
import net from 'node:net';
import {
  HOST,
  comparisonTable,
  percentile,
  performance,
  record,
  rotate,
  say,
  sleep,
  summarise,
} from '../lib.mjs';
import { startNodeServer, startRedis, startTargets } from '../targets.mjs';

function once(port, payload, expect, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const socket = net.connect({ host: HOST, port, noDelay: true });
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no reply within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('connect', () => socket.write(payload));
    socket.on('data', (chunk) => {
      got = Buffer.concat([got, chunk]);
      if (got.length < expect.length) return;
      const ms = performance.now() - t0;
      clearTimeout(timer);
      socket.destroy();
      if (got.subarray(0, expect.length).equals(expect)) resolve(ms);
      else reject(new Error(`unexpected reply ${JSON.stringify(got.toString())}`));
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export default {
  id: '4',
  name: 'latency',
  title: 'Connect + first request over a 20 ms round trip',

  async run(ctx) {
    const n = ctx.quick ? 10 : 50;
    const warmup = 3;
    const oneWay = 10;
    const sidepool = { minIdle: 8, maxSize: 64 };
    const useRedis = Boolean(ctx.tools['redis-server']);
    const upstream = useRedis
      ? await startRedis(ctx)
      : await startNodeServer(ctx, 'procs/echo-server.mjs', []);
    const payload = Buffer.from('PING\r\n');
    const expect = Buffer.from(useRedis ? '+PONG\r\n' : 'PING\r\n');
    const samples = {};
    const problems = [];
    let relay;
    let stack;
    try {
      relay = await startNodeServer(ctx, 'delay-relay.mjs', [
        '--upstream',
        `${HOST}:${upstream.port}`,
        '--one-way',
        String(oneWay),
      ]);
      stack = await startTargets(ctx, { upstreamPort: relay.port, sidepool, label: 'w4-latency' });
      for (let run = 0; run < ctx.runs; run++) {
        for (const name of rotate(stack.names, run)) {
          await stack.rewarm();
          const port = stack.targets[name].port;
          const times = [];
          let failures = 0;
          for (let i = 0; i < warmup + n; i++) {
            try {
              const ms = await once(port, payload, expect);
              if (i >= warmup) times.push(ms);
            } catch (err) {
              failures++;
              if (failures <= 3) problems.push(`${name}, run ${run + 1}: ${err.message}`);
            }
            await sleep(5);
          }
          const p50 = percentile(times, 50);
          record(samples, 'p50 ms', name, run, p50);
          record(samples, 'p90 ms', name, run, percentile(times, 90));
          if (failures > 0)
            problems.push(`${name}, run ${run + 1}: ${failures} of ${warmup + n} requests failed`);
          say(
            `  run ${run + 1} ${name}: p50 ${p50?.toFixed(1)} ms (${times.length} ok, ${failures} failed)`,
          );
        }
      }
    } finally {
      await stack?.stop();
      await relay?.stop();
      await upstream.stop();
    }
    const summary = summarise(samples, { pairs: [['sidepool', 'haproxy']] });
    const ratio = summary['p50 ms']?.ratio.sidepool;
    const verdict =
      ratio === null || ratio === undefined
        ? 'no sidepool result'
        : ratio <= 0.55
          ? `meets the target (≤ 0.55× direct; 0.5× is the floor): ${ratio.toFixed(2)}×`
          : `MISSES the target of ≤ 0.55× direct: ${ratio.toFixed(2)}×`;
    return {
      sections: [
        {
          title: '4. Connect + first request, upstream 20 ms round trip away (ms; lower is better)',
          text: comparisonTable(summary, { targets: stack.names }),
          notes: [
            `bench/delay-relay.mjs: ${oneWay} ms one way per chunk, one round trip before a new connection is usable; upstream ${useRedis ? 'redis-server' : 'echo server (redis-server not installed)'}`,
            `client: connect, send PING, read reply, close; ${n} times in sequence after ${warmup} warm-up requests; each target's p50/p90 per run, median over runs`,
            `sidepool: upstream is the relay, minIdle ${sidepool.minIdle} (warm links), maxSize ${sidepool.maxSize}; HAProxy dials the relay per connection`,
            `sidepool p50 ${verdict}`,
            ...problems.map((p) => `problem: ${p}`),
          ],
        },
      ],
      raw: { n, warmup, oneWay, sidepool, summary },
    };
  },
};
