import t from 'tap';
import type { Address } from '../src/config/address.js';
import { EndpointSet, type Endpoint, type OutlierSettings } from '../src/upstream/endpoints.js';
import { until } from './helpers/util.js';

const addr = (port: number): Address => ({ kind: 'tcp', host: '127.0.0.1', port });
const OUTLIER: OutlierSettings = {
  consecutiveFailures: 3,
  baseEjectionTime: 1000,
  maxEjectionTime: 2500,
  maxEjectedPercent: 50,
};

function makeSet(
  ports: number[],
  balance: 'least-active' | 'round-robin' = 'least-active',
  outlier = OUTLIER,
) {
  const events: string[] = [];
  const set = new EndpointSet(ports.map(addr), balance, outlier, {
    down: (e, reason) =>
      events.push(`down ${e.address.kind === 'tcp' ? e.address.port : ''} ${reason}`),
    up: (e) => events.push(`up ${e.address.kind === 'tcp' ? e.address.port : ''}`),
    ejected: (e, ms) =>
      events.push(`ejected ${e.address.kind === 'tcp' ? e.address.port : ''} ${ms}`),
    gone: (e) => events.push(`gone ${e.address.kind === 'tcp' ? e.address.port : ''}`),
  });
  t.teardown(() => set.close());
  return { set, events };
}

const port = (e: Endpoint | undefined): number | undefined =>
  e?.address.kind === 'tcp' ? e.address.port : undefined;

void t.test('least-active picks the endpoint with the fewest links', (t) => {
  const { set } = makeSet([1, 2, 3]);
  const [a, b, c] = set.all as Endpoint[];
  (a as Endpoint).links = 5;
  (b as Endpoint).links = 1;
  (c as Endpoint).links = 3;
  t.equal(port(set.pick()), 2);
  (b as Endpoint).links = 9;
  t.equal(port(set.pick()), 3);
  t.end();
});

void t.test('round-robin rotates', (t) => {
  const { set } = makeSet([1, 2, 3], 'round-robin');
  t.same(
    [1, 2, 3, 4, 5, 6].map(() => port(set.pick())),
    [1, 2, 3, 1, 2, 3],
  );
  t.end();
});

void t.test('an endpoint whose last dial failed is picked last', (t) => {
  const { set } = makeSet([1, 2]);
  set.failed(set.all[0] as Endpoint, true);
  t.same(
    [1, 2, 3, 4].map(() => port(set.pick())),
    [2, 2, 2, 2],
  );
  t.equal(
    port(set.pick(new Set([set.all[1] as Endpoint]))),
    1,
    'still tried when nothing else is left',
  );
  t.equal(set.allDown, false);
  set.failed(set.all[1] as Endpoint, true);
  t.equal(set.allDown, true, 'every endpoint failed its last dial');
  set.dialSucceeded(set.all[1] as Endpoint);
  t.equal(set.allDown, false);
  t.end();
});

void t.test(
  'consecutive failures eject, for longer each time, capped, never above the share',
  (t) => {
    const { set, events } = makeSet([1, 2, 3, 4]);
    const [a, b, c] = set.all as Endpoint[];
    for (let i = 0; i < 3; i++) set.failed(a as Endpoint, false);
    t.equal((a as Endpoint).isEjected(), true);
    t.same(events, ['ejected 1 1000', 'down 1 ejected']);
    t.not(port(set.pick()), 1, 'an ejected endpoint takes no dials');
    for (let i = 0; i < 3; i++) set.failed(b as Endpoint, false);
    t.equal((b as Endpoint).isEjected(), true, 'two of four is 50%');
    for (let i = 0; i < 3; i++) set.failed(c as Endpoint, false);
    t.equal((c as Endpoint).isEjected(), false, 'a third would pass maxEjectedPercent');
    // Ejected again later: longer, up to the cap.
    (a as Endpoint).ejectedUntil = 0;
    for (let i = 0; i < 3; i++) set.failed(a as Endpoint, false);
    t.match(events.at(-2), /ejected 1 2000/);
    (a as Endpoint).ejectedUntil = 0;
    for (let i = 0; i < 3; i++) set.failed(a as Endpoint, false);
    t.match(events.at(-2), /ejected 1 2500/, 'capped at maxEjectionTime');
    t.end();
  },
);

void t.test('an ejected endpoint comes back when its time is up', async (t) => {
  const { set, events } = makeSet([1, 2], 'least-active', { ...OUTLIER, baseEjectionTime: 30 });
  for (let i = 0; i < 3; i++) set.failed(set.all[0] as Endpoint, false);
  t.equal((set.all[0] as Endpoint).isAvailable(), false);
  await until(() => events.at(-1) === 'up 1', 0, 'up 1');
  t.equal((set.all[0] as Endpoint).isAvailable(), true);
});

void t.test(
  'an ejection timer that fires before Date.now reaches its end still says up',
  async (t) => {
    // The event loop's clock lags Date.now by the length of the turn that set the timer; a
    // loaded machine makes that lag long. Here Date.now reads 20 ms behind from the ejection on.
    const realNow = Date.now.bind(Date);
    t.teardown(() => {
      Date.now = realNow;
    });
    const { set, events } = makeSet([1, 2], 'least-active', { ...OUTLIER, baseEjectionTime: 30 });
    for (let i = 0; i < 3; i++) set.failed(set.all[0] as Endpoint, false);
    const ejectedAt = realNow();
    Date.now = () => realNow() - 20;
    await until(() => events.at(-1) === 'up 1', 0, 'up 1');
    t.ok(realNow() - ejectedAt >= 30, 'not before its time either');
    t.equal((set.all[0] as Endpoint).isAvailable(), true);
  },
);

void t.test('a dial success resets the failure count', (t) => {
  const { set } = makeSet([1, 2]);
  const a = set.all[0] as Endpoint;
  set.failed(a, true);
  set.failed(a, true);
  set.dialSucceeded(a);
  set.failed(a, true);
  t.equal(a.isEjected(), false);
  t.end();
});

void t.test('probe thresholds flip health both ways', (t) => {
  const { set, events } = makeSet([1, 2]);
  const a = set.all[0] as Endpoint;
  set.probed(a, false, 2, 3);
  set.probed(a, false, 2, 3);
  t.equal(a.health, 'healthy', 'not before unhealthyThreshold');
  set.probed(a, false, 2, 3);
  t.equal(a.health, 'unhealthy');
  t.equal(events.at(-1), 'down 1 unhealthy');
  t.equal(port(set.pick()), 2);
  set.probed(a, true, 2, 3);
  t.equal(a.health, 'unhealthy', 'not before healthyThreshold');
  set.probed(a, true, 2, 3);
  t.equal(a.health, 'healthy');
  t.equal(events.at(-1), 'up 1');
  t.end();
});

void t.test('update() adds and removes endpoints', (t) => {
  const { set, events } = makeSet([1, 2]);
  const two = set.all[1] as Endpoint;
  const { added, removed } = set.update([addr(1), addr(3)]);
  t.same(added.map(port), [3]);
  t.same(removed.map(port), [2]);
  t.equal(two.removed, true);
  t.same(set.all.map(port), [1, 3]);
  t.same(events, ['down 2 removed', 'up 3', 'gone 2'], 'no links: gone at once');
  t.end();
});

void t.test('an endpoint that left is gone when its last link closes, unless it came back', (t) => {
  const { set, events } = makeSet([1, 2]);
  const two = set.all[1] as Endpoint;
  set.linkOpened(two);
  set.linkOpened(two);
  set.update([addr(1)]);
  t.same(events, ['down 2 removed'], 'its links are still open');
  set.linkClosed(two);
  t.same(events, ['down 2 removed']);
  set.linkClosed(two);
  t.same(events, ['down 2 removed', 'gone 2']);

  const one = set.all[0] as Endpoint;
  set.linkOpened(one);
  set.update([addr(2)]);
  set.update([addr(1), addr(2)]);
  set.linkClosed(one);
  t.same(
    events.slice(2),
    ['down 1 removed', 'up 2', 'up 1'],
    'listed again before its last link closed: not gone',
  );
  t.end();
});
