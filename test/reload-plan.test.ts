// The reload plan on its own: a pure function from (running config, new config) to the
// steps a reload takes. The app applies it (test/reload-atomic.test.ts); here, what it
// decides for each kind of change.
import t from 'tap';
import { parseConfig } from '../src/config/load.js';
import { changedPaths, planReload, type ReloadPlan } from '../src/config/reload-plan.js';
import type { Config } from '../src/config/schema.js';

const A = { name: 'a', listen: '127.0.0.1:7001', upstream: '10.0.0.1:6379' };
const B = { name: 'b', listen: '127.0.0.1:7002', upstream: '10.0.0.2:6379' };

function config(routes: unknown[], top: Record<string, unknown> = {}): Config {
  return parseConfig({ admin: { listen: '127.0.0.1:9901' }, ...top, routes });
}

function plan(before: unknown[], after: unknown[], top: Record<string, unknown> = {}): ReloadPlan {
  return planReload(config(before, top), config(after, top));
}

/** The plan of rebuilding route `name` on a new destination under the same key. */
function rebuiltOnReplacedDestination(name: string, key: string): ReloadPlan {
  return {
    refusals: [],
    prepare: [
      { kind: 'create-destination', key, route: name, replaces: true },
      { kind: 'build-route', route: name },
    ],
    commit: [
      { kind: 'attach', route: name, listener: { takeFrom: name } },
      { kind: 'retire-route', route: name, reason: 'rebuilt' },
      { kind: 'retire-destination', key },
      { kind: 'start-destination', key },
    ],
  };
}

void t.test('the same config: nothing to do', (t) => {
  t.same(plan([A, B], [A, B]), { refusals: [], prepare: [], commit: [] });
  t.end();
});

void t.test('a start is the plan from no routes', (t) => {
  const running = config([A]);
  t.same(planReload({ ...running, routes: [] }, running), {
    refusals: [],
    prepare: [
      { kind: 'create-destination', key: '10.0.0.1:6379', route: 'a', replaces: false },
      { kind: 'build-route', route: 'a' },
      { kind: 'bind', route: 'a', listen: '127.0.0.1:7001' },
    ],
    commit: [
      { kind: 'attach', route: 'a', listener: 'bound' },
      { kind: 'start-destination', key: '10.0.0.1:6379' },
    ],
  });
  t.end();
});

void t.test('pool sizes and timeouts apply to the running pool', (t) => {
  t.same(plan([A], [{ ...A, pool: { minIdle: 2, maxSize: 8, acquireTimeout: '1s' } }]), {
    refusals: [],
    prepare: [],
    commit: [
      {
        kind: 'resize-pool',
        key: '10.0.0.1:6379',
        route: 'a',
        changed: ['pool.minIdle', 'pool.maxSize', 'pool.acquireTimeout'],
      },
    ],
  });
  // Two routes share the pool: it is resized once.
  const shared = { ...B, upstream: A.upstream };
  const p = plan(
    [A, shared],
    [
      { ...A, pool: { maxSize: 9 } },
      { ...shared, pool: { maxSize: 9 } },
    ],
  );
  t.same(p.commit, [
    { kind: 'resize-pool', key: '10.0.0.1:6379', route: 'a', changed: ['pool.maxSize'] },
  ]);
  t.end();
});

void t.test('session timeouts and readyWhen apply to the running route', (t) => {
  t.same(plan([A], [{ ...A, idleTimeout: '5m', readyWhen: 'upstreamHealthy' }]), {
    refusals: [],
    prepare: [],
    commit: [{ kind: 'reconfigure-route', route: 'a', changed: ['idleTimeout', 'readyWhen'] }],
  });
  t.end();
});

void t.test('what a destination is made of rebuilds it, and the routes on it', (t) => {
  const changes: Array<[string, Record<string, unknown>]> = [
    ['health', { health: { probe: 'tcp' } }],
    ['outlier', { outlier: { consecutiveFailures: 2 } }],
    ['upstream.balance', { upstream: { address: A.upstream, balance: 'round-robin' } }],
    ['pool.connectTimeout', { pool: { connectTimeout: '1s' } }],
  ];
  for (const [what, change] of changes) {
    t.same(
      plan([A], [{ ...A, ...change }]),
      rebuiltOnReplacedDestination('a', '10.0.0.1:6379'),
      `${what}: rebuilt, never ignored`,
    );
  }
  const dns = { ...A, upstream: { dns: 'redis.test:6379' } };
  for (const [what, upstream] of [
    ['dnsRefresh', { dns: 'redis.test:6379', dnsRefresh: '5s' }],
    ['resolvers', { dns: 'redis.test:6379', resolvers: ['127.0.0.1:5353'] }],
  ] as const) {
    t.same(
      plan([dns], [{ ...dns, upstream }]),
      rebuiltOnReplacedDestination('a', 'dns:redis.test:6379'),
      `${what}: rebuilt`,
    );
  }
  t.end();
});

void t.test('a key the plan does not know rebuilds what it belongs to', (t) => {
  // A key a new mode adds (say mysql: { … }) is not in any in-place list.
  const before = config([A]);
  const after = config([A]);
  const withKey = {
    ...after,
    routes: [{ ...after.routes[0], mysql: { database: 'app' } }],
  } as unknown as Config;
  t.same(planReload(before, withKey), rebuiltOnReplacedDestination('a', '10.0.0.1:6379'));
  t.same(changedPaths(before.routes[0], withKey.routes[0]), ['mysql']);
  t.end();
});

void t.test(
  "a mode's settings (postgres, redis) rebuild the route, on the destination it had",
  (t) => {
    // The mode's pools are the route's: a new route makes new ones; endpoints, health and
    // outlier state stay.
    const routeOnly = (name: string): ReloadPlan => ({
      refusals: [],
      prepare: [{ kind: 'build-route', route: name }],
      commit: [
        { kind: 'attach', route: name, listener: { takeFrom: name } },
        { kind: 'retire-route', route: name, reason: 'rebuilt' },
      ],
    });
    const redis = { ...A, mode: 'redis', redis: { maxPending: 16 } };
    t.same(plan([redis], [{ ...redis, redis: { maxPending: 32 } }]), routeOnly('a'), 'redis');
    const postgres = { ...A, mode: 'postgres', postgres: { authType: 'trust' } };
    t.same(
      plan([postgres], [{ ...postgres, postgres: { authType: 'trust', poolMode: 'session' } }]),
      routeOnly('a'),
      'postgres',
    );
    t.end();
  },
);

void t.test('a new upstream: a new destination, the old one retired', (t) => {
  t.same(plan([A], [{ ...A, upstream: '10.0.0.9:6379' }]), {
    refusals: [],
    prepare: [
      { kind: 'create-destination', key: '10.0.0.9:6379', route: 'a', replaces: false },
      { kind: 'build-route', route: 'a' },
    ],
    commit: [
      { kind: 'attach', route: 'a', listener: { takeFrom: 'a' } },
      { kind: 'retire-route', route: 'a', reason: 'rebuilt' },
      { kind: 'retire-destination', key: '10.0.0.1:6379' },
      { kind: 'start-destination', key: '10.0.0.9:6379' },
    ],
  });
  t.end();
});

void t.test('route-only changes rebuild the route on the same destination', (t) => {
  const http = { ...A, mode: 'http' };
  for (const [what, change] of [
    ['an http setting', { responseTimeout: '5s' }],
    ['upstream.host', { upstream: { address: A.upstream, host: 'api.example' } }],
  ] as const) {
    t.same(
      plan([http], [{ ...http, ...change }]),
      {
        refusals: [],
        prepare: [{ kind: 'build-route', route: 'a' }],
        commit: [
          { kind: 'attach', route: 'a', listener: { takeFrom: 'a' } },
          { kind: 'retire-route', route: 'a', reason: 'rebuilt' },
        ],
      },
      what,
    );
  }
  t.end();
});

void t.test('listeners: a move binds, a swap and a rename take over, port 0 stays', (t) => {
  t.same(plan([A], [{ ...A, listen: '127.0.0.1:7009' }]), {
    refusals: [],
    prepare: [
      { kind: 'build-route', route: 'a' },
      { kind: 'bind', route: 'a', listen: '127.0.0.1:7009' },
    ],
    commit: [
      { kind: 'attach', route: 'a', listener: 'bound' },
      { kind: 'retire-route', route: 'a', reason: 'rebuilt' },
    ],
  });
  // Two routes swap addresses: each takes the other's listener, nothing is bound.
  const swapped = plan(
    [A, B],
    [
      { ...A, listen: B.listen },
      { ...B, listen: A.listen },
    ],
  );
  t.same(swapped.prepare, [
    { kind: 'build-route', route: 'a' },
    { kind: 'build-route', route: 'b' },
  ]);
  t.same(swapped.commit.slice(0, 2), [
    { kind: 'attach', route: 'a', listener: { takeFrom: 'b' } },
    { kind: 'attach', route: 'b', listener: { takeFrom: 'a' } },
  ]);
  // Renamed: the new route takes the old one's listener, the old one drains.
  t.same(plan([A], [{ ...A, name: 'a2' }]), {
    refusals: [],
    prepare: [{ kind: 'build-route', route: 'a2' }],
    commit: [
      { kind: 'attach', route: 'a2', listener: { takeFrom: 'a' } },
      { kind: 'retire-route', route: 'a', reason: 'removed' },
    ],
  });
  // Port 0: a rebuilt route keeps the port the kernel gave it.
  const zero = { ...A, listen: '127.0.0.1:0' };
  t.same(plan([zero], [{ ...zero, halfCloseTimeout: 0, mode: 'http' }]).commit[0], {
    kind: 'attach',
    route: 'a',
    listener: { takeFrom: 'a' },
  });
  t.end();
});

void t.test('added and removed routes', (t) => {
  t.same(plan([A], [A, B]), {
    refusals: [],
    prepare: [
      { kind: 'create-destination', key: '10.0.0.2:6379', route: 'b', replaces: false },
      { kind: 'build-route', route: 'b' },
      { kind: 'bind', route: 'b', listen: '127.0.0.1:7002' },
    ],
    commit: [
      { kind: 'attach', route: 'b', listener: 'bound' },
      { kind: 'start-destination', key: '10.0.0.2:6379' },
    ],
  });
  t.same(plan([A, B], [A]), {
    refusals: [],
    prepare: [],
    commit: [
      { kind: 'retire-route', route: 'b', reason: 'removed' },
      { kind: 'retire-destination', key: '10.0.0.2:6379' },
    ],
  });
  t.end();
});

void t.test('top level: log level in place, drain in force, the rest refused by name', (t) => {
  const running = config([A]);
  t.same(planReload(running, { ...running, log: { level: 'debug' } }).commit, [
    { kind: 'log-level', level: 'debug' },
  ]);
  t.same(planReload(running, { ...running, drain: { delay: 1, timeout: 2 } }), {
    refusals: [],
    prepare: [],
    commit: [],
  });
  const refused = planReload(running, {
    ...running,
    admin: { listen: '127.0.0.1:9902' },
    workers: 2,
  });
  t.match(refused.refusals, [
    { path: 'admin.listen', message: /changes on restart only \(running: "127\.0\.0\.1:9901"/ },
    { path: 'workers', message: /changes on restart only/ },
  ]);
  t.end();
});

void t.test('a route on port 0, named by the port it was given, is the same route', (t) => {
  const running = config([{ ...A, listen: '127.0.0.1:0' }]);
  const next = config([{ ...A, listen: '127.0.0.1:41234', pool: { maxSize: 8 } }]);
  t.same(planReload(running, next, new Map([['a', '127.0.0.1:41234']])), {
    refusals: [],
    prepare: [],
    commit: [{ kind: 'resize-pool', key: '10.0.0.1:6379', route: 'a', changed: ['pool.maxSize'] }],
  });
  // Bound elsewhere: another address, a route of its own.
  const elsewhere = planReload(running, next, new Map([['a', '127.0.0.1:50000']]));
  t.same(
    elsewhere.prepare.map((s) => s.kind),
    ['build-route', 'bind'],
  );
  t.end();
});
