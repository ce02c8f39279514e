// Shared by workloads 2 and 3: run redis-benchmark variants against each target, runs
// interleaved, and collect requests/s per test and each proxy's CPU per request. (Not a
// workload module: no leading number.)
import { comparisonTable, cpuSeconds, record, rotate, say, sleep, summarise } from '../lib.mjs';
import { redisBenchmark, targetLabels } from '../targets.mjs';

/**
 * `variants` is [{ label, args }] (args include `-n`); each metric is "<label> <TEST> rps".
 * `cpu` holds, per variant, the CPU µs (user + system, all threads and workers) each proxy
 * used per request over the whole redis-benchmark run, i.e. over all of its tests. Returns
 * { samples, cpu, problems, raw }.
 */
export async function redisLoad(ctx, stack, variants) {
  const samples = {};
  const cpu = {};
  const problems = [];
  const raw = [];
  for (let run = 0; run < ctx.runs; run++) {
    for (const variant of variants) {
      for (const name of rotate(stack.names, run)) {
        await stack.rewarm();
        const pid = stack.targets[name].pid;
        const cpuBefore = pid === undefined ? null : await cpuSeconds(pid);
        const res = await redisBenchmark(ctx, stack.targets[name].port, variant.args);
        const cpuAfter = pid === undefined ? null : await cpuSeconds(pid);
        const requests = requestsPerTest(variant.args) * Object.keys(res.rps).length;
        const cpuPerRequest =
          res.ok && cpuBefore !== null && cpuAfter !== null && requests > 0
            ? ((cpuAfter - cpuBefore) * 1e6) / requests
            : null;
        if (pid !== undefined)
          record(cpu, `${variant.label} CPU µs/request`, name, run, cpuPerRequest);
        raw.push({
          run,
          variant: variant.label,
          target: name,
          rps: res.rps,
          p50: res.p50,
          cpuPerRequest,
          error: res.error,
        });
        if (!res.ok) problems.push(`${name}, ${variant.label}, run ${run + 1}: ${res.error}`);
        else if (res.stderr)
          problems.push(
            `${name}, ${variant.label}, run ${run + 1}: stderr: ${res.stderr.slice(0, 300)}`,
          );
        for (const [test, value] of Object.entries(res.rps)) {
          record(samples, `${variant.label} ${test} rps`, name, run, value);
        }
        const shown = Object.entries(res.rps)
          .map(([t, v]) => `${t} ${Math.round(v)}`)
          .join(', ');
        say(`  run ${run + 1} ${variant.label} ${name}: ${res.ok ? shown : `FAILED ${res.error}`}`);
        await sleep(300);
      }
    }
  }
  // A failed run leaves holes; make every target's list as long as the runs.
  fillRuns(samples, stack.names, ctx.runs);
  fillRuns(
    cpu,
    stack.names.filter((name) => stack.targets[name].pid !== undefined),
    ctx.runs,
  );
  return { samples, cpu, problems, raw };
}

function fillRuns(samples, names, runs) {
  for (const byTarget of Object.values(samples)) {
    for (const name of names) {
      byTarget[name] ??= [];
      for (let i = 0; i < runs; i++) byTarget[name][i] ??= null;
    }
  }
}

/** redis-benchmark's `-n`: requests per test. */
function requestsPerTest(args) {
  const i = args.indexOf('-n');
  return i < 0 ? 0 : Number(args[i + 1]);
}

/**
 * The table of each proxy's CPU per request, as a ratio to HAProxy's (to sidepool's when
 * HAProxy is not installed): what a sidecar costs its pod, and on 2 shared cores the
 * throughput it leaves to the client and the server.
 */
export function cpuSection(ctx, stack, cpu, title) {
  const proxies = stack.names.filter((name) => stack.targets[name].pid !== undefined);
  const baseline = proxies.includes('haproxy') ? 'haproxy' : 'sidepool';
  const summary = summarise(cpu, { baseline });
  return {
    section: {
      title,
      text: comparisonTable(summary, {
        targets: [baseline, ...proxies.filter((name) => name !== baseline)],
        baseline,
        labels: targetLabels(ctx),
      }),
      notes: [
        'user + system CPU of the proxy process (all threads; with workers, the primary and its workers) over one whole redis-benchmark run, divided by the requests of all its tests; median of the runs, ratios per run',
      ],
    },
    summary,
  };
}
