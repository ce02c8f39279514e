import t from 'tap';
import { UpstreamIdleLimit } from '../src/pool/idle-limit.js';

void t.test('links closed at about the same age, at different moments, teach the limit', (t) => {
  const limit = new UpstreamIdleLimit();
  t.equal(limit.observe(1004, 10_000), false);
  t.equal(limit.observe(1009, 10_001), false, 'two of one moment are not enough');
  t.equal(limit.observe(1002, 13_000), true, 'a third, later, at the same age');
  t.equal(limit.limitMs, 1002, 'the shortest age seen');
  t.equal(limit.recycleMs, 501, 'links are recycled at half of it');
  t.equal(limit.observe(1003, 20_000), false);
  t.equal(limit.observe(1001, 20_000), false);
  t.equal(limit.observe(1000, 25_000), false, 'the same limit again is no news');
  t.end();
});

void t.test('a restart, scattered ages or quick closes teach nothing', (t) => {
  const restart = new UpstreamIdleLimit();
  for (const age of [60_000, 60_003, 60_001, 60_002]) restart.observe(age, 100_000);
  t.equal(restart.limitMs, undefined, 'every link at once, whatever their age');

  const scattered = new UpstreamIdleLimit();
  for (const [age, at] of [
    [1_000, 0],
    [5_000, 10_000],
    [30_000, 50_000],
    [2_000, 90_000],
  ] as const)
    scattered.observe(age, at);
  t.equal(scattered.limitMs, undefined, 'ages that differ');

  const quick = new UpstreamIdleLimit();
  for (const at of [0, 1_000, 2_000, 3_000]) quick.observe(100, at);
  t.equal(quick.limitMs, undefined, 'under half a second: failed dials, not a timer');
  t.end();
});

void t.test('a lower limit replaces a learned one', (t) => {
  const limit = new UpstreamIdleLimit();
  for (const at of [0, 2_000, 4_000]) limit.observe(2_000, at);
  t.equal(limit.limitMs, 2_000);
  for (const at of [10_000, 11_000, 12_000]) limit.observe(1_000, at);
  t.equal(limit.limitMs, 1_000);
  t.end();
});
