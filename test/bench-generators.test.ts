// Workload 9's `-k 0 ×2 gen` variant runs two redis-benchmark processes at once; its rate
// (bench/targets.mjs togetherRate) is what the README's figures for it rest on.
import t from 'tap';

interface BenchTargets {
  togetherRate: (n: number, rates: number[]) => number;
}
// bench/ is plain ESM JavaScript outside the typed build: name what the test uses.
const benchTargets: string = '../bench/targets.mjs';
const bench = (await import(benchTargets)) as BenchTargets;

void t.test('processes that kept the same pace add up', (t) => {
  t.equal(bench.togetherRate(10_000, [5000, 5000]), 10_000);
  t.end();
});

void t.test('the slowest process sets the time: the rate is not the sum', (t) => {
  // 1,000 requests each: one took 1 s, the other 2 s. 2,000 requests in 2 s.
  t.equal(bench.togetherRate(1000, [1000, 500]), 1000);
  t.end();
});

void t.test('one process is its own rate', (t) => {
  t.equal(bench.togetherRate(4000, [8000]), 8000);
  t.end();
});
