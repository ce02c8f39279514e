// Shared by workloads 2 and 3: run redis-benchmark variants against each target, runs
// interleaved, and collect requests/s per test. (Not a workload module: no leading number.)
import { record, rotate, say, sleep } from '../lib.mjs';
import { redisBenchmark } from '../targets.mjs';

/**
 * `variants` is [{ label, args }]; each metric is "<label> <TEST> rps". Returns
 * { samples, problems, raw }.
 */
export async function redisLoad(ctx, stack, variants) {
  const samples = {};
  const problems = [];
  const raw = [];
  for (let run = 0; run < ctx.runs; run++) {
    for (const variant of variants) {
      for (const name of rotate(stack.names, run)) {
        await stack.rewarm();
        const res = await redisBenchmark(ctx, stack.targets[name].port, variant.args);
        raw.push({
          run,
          variant: variant.label,
          target: name,
          rps: res.rps,
          p50: res.p50,
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
  for (const byTarget of Object.values(samples)) {
    for (const name of stack.names) {
      byTarget[name] ??= [];
      for (let i = 0; i < ctx.runs; i++) byTarget[name][i] ??= null;
    }
  }
  return { samples, problems, raw };
}
