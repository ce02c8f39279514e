// After two stale links in a row, an http request's last try presumes every link idle at
// that moment stale (src/proxy/http/exchange.ts). Which links those are was decided by
// Date.now milliseconds: a link given back, or handed on to the waiting try, within the
// millisecond the presumption was taken in counted as idle before it, was closed and a
// new link dialed. The order is now by idle turn, which a clock standing still (loopback:
// often) cannot blur.
import t from 'tap';
import { lastIdleTurn, type Link } from '../src/pool/link.js';
import { fitForRequest } from '../src/proxy/http/links.js';
import { makePool } from './helpers/pool.js';
import { until } from './helpers/util.js';

/** Runs `body` with Date.now standing still, as it does within one millisecond. */
function withClockStill<T>(body: () => T): T {
  const realNow = Date.now;
  const frozen = realNow();
  Date.now = () => frozen;
  try {
    return body();
  } finally {
    Date.now = realNow;
  }
}

void t.test('a link given back after the last try presumed links stale is fit', async (t) => {
  const { pool } = makePool({ minIdle: 2, maxSize: 2 });
  t.teardown(() => pool.destroy());
  pool.start();
  await until(() => pool.isWarm);
  const a = pool.tryAcquire() as Link;
  const b = pool.tryAcquire() as Link;
  const handed: Link[] = [];
  withClockStill(() => {
    pool.release(b, true); // idle before the presumption
    const staleBefore = lastIdleTurn(); // the last try: every link idle now is suspect
    t.notOk(fitForRequest(b, 0, staleBefore, Date.now()), 'b idled before: presumed stale');
    t.equal(pool.tryAcquire(), b, 'b taken again (closed, in the proxy)');
    pool.wait((err, link) => {
      if (link !== undefined) handed.push(link);
      else t.fail(`no link: ${String(err)}`);
    });
    pool.release(a, true); // handed on to the waiting try, in the same millisecond
    t.equal(a.idleSince, b.idleSince, 'the same millisecond');
    t.ok(fitForRequest(a, 0, staleBefore, Date.now()), 'a was given back after: fit');
  });
  await until(() => handed.length === 1);
  t.equal(handed[0], a, 'the waiting try got a');
});

void t.test('a link dialed for the last try is fit', async (t) => {
  const { pool } = makePool({ minIdle: 0, maxSize: 1 });
  t.teardown(() => pool.destroy());
  pool.start();
  const staleBefore = lastIdleTurn();
  const link = await new Promise<Link>((resolve, reject) => {
    pool.wait((err, got) =>
      got === undefined ? reject(err ?? new Error('no link')) : resolve(got),
    );
  });
  t.ok(fitForRequest(link, 0, staleBefore, Date.now()));
});
