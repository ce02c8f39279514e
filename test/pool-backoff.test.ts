import t from 'tap';
import { Backoff } from '../src/pool/backoff.js';
import { makePool } from './helpers/pool.js';
import { until } from './helpers/util.js';

void t.test('backoff grows exponentially, is jittered, and is capped', (t) => {
  const low = new Backoff(100, 1000, () => 0);
  t.same(
    [low.fail(), low.fail(), low.fail(), low.fail(), low.fail(), low.fail()],
    [50, 100, 200, 400, 500, 500],
  );
  const high = new Backoff(100, 1000, () => 0.999);
  t.same([high.fail(), high.fail(), high.fail()], [100, 200, 400]);
  high.succeed();
  t.equal(high.failures, 0);
  t.equal(high.fail(), 100, 'starts over after a success');
  t.end();
});

void t.test(
  'failed dials back off, one at a time, and a waiter gets the first success',
  async (t) => {
    const { pool, dialer, lines } = makePool(
      { minIdle: 3, maxSize: 5, acquireTimeout: 5000 },
      { backoff: new Backoff(20, 80, () => 0.999) },
    );
    t.teardown(() => pool.destroy());
    dialer.failing = true;
    const started = Date.now();
    pool.start();
    await until(() => dialer.dials >= 6, 30_000, 'retries');
    const attempts = dialer.dials;
    const elapsed = Date.now() - started;
    // 3 at start, then single retries at least 20, 40, 80, 80 ms apart (timers never fire
    // early; a loaded machine only spaces them more): far fewer than a hot loop.
    t.ok(
      attempts <= 3 + Math.ceil(elapsed / 20),
      `retries are spaced out (${attempts} dials in ${elapsed} ms)`,
    );
    const gaps = dialer.dialTimes
      .slice(3)
      .map((time, i) => time - (dialer.dialTimes[i + 2] ?? time));
    t.ok(
      gaps.every((g) => g >= 15),
      `every retry waited (${gaps.join(',')})`,
    );
    const failLines = lines.filter((l) => l.msg === 'dial failed');
    t.ok(failLines.length >= 3);
    t.match(failLines[0], { code: 'ECONNREFUSED', retryInMs: Number });
    const waiting = pool.acquire();
    dialer.failing = false;
    const link = await waiting;
    t.equal(link.state, 'active', 'the queued caller got the first link that succeeded');
    await until(() => pool.isWarm, 2000, 'warm after recovery');
  },
);
