import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { parseAddress } from '../src/config/address.js';
import { formatDuration, parseDuration } from '../src/config/duration.js';
import { applyFlags, loadConfig, parseConfig } from '../src/config/load.js';
import type { ConfigError } from '../src/errors.js';
import { tempDir } from './helpers/tmp.js';

const minimal = { routes: [{ listen: '127.0.0.1:6380', upstream: '10.0.0.5:6379' }] };

function issuesOf(raw: unknown): Array<{ path: string; message: string }> {
  try {
    parseConfig(raw);
  } catch (err) {
    t.equal((err as ConfigError).code, 'SIDEPOOL_CONFIG_INVALID');
    return [...(err as ConfigError).issues];
  }
  throw new Error('expected a config error');
}

void t.test('durations', (t) => {
  t.equal(parseDuration('250ms'), 250);
  t.equal(parseDuration('5s'), 5000);
  t.equal(parseDuration('1.5s'), 1500);
  t.equal(parseDuration('5m'), 300_000);
  t.equal(parseDuration('1h'), 3_600_000);
  t.equal(parseDuration('42'), 42);
  t.equal(parseDuration(42), 42);
  t.equal(parseDuration('5 days'), undefined);
  t.equal(parseDuration('-1s'), undefined);
  t.equal(parseDuration(-5), undefined);
  t.equal(parseDuration(Number.NaN), undefined);
  t.same([0, 250, 5000, 300_000, 3_600_000, 1500].map(formatDuration), [
    '0ms',
    '250ms',
    '5s',
    '5m',
    '1h',
    '1500ms',
  ]);
  t.end();
});

void t.test('addresses', (t) => {
  t.same(parseAddress('127.0.0.1:6380'), { kind: 'tcp', host: '127.0.0.1', port: 6380 });
  t.same(parseAddress('[::1]:6380'), { kind: 'tcp', host: '::1', port: 6380 });
  t.same(parseAddress('db.internal:5432'), { kind: 'tcp', host: 'db.internal', port: 5432 });
  t.same(parseAddress('/run/sidepool.sock'), { kind: 'unix', path: '/run/sidepool.sock' });
  t.same(parseAddress('unix:./s.sock'), { kind: 'unix', path: './s.sock' });
  t.same(parseAddress(':8080', { allowAnyHost: true }), {
    kind: 'tcp',
    host: '0.0.0.0',
    port: 8080,
  });
  t.match(parseAddress(':8080'), /host is missing/);
  t.match(parseAddress('localhost'), /expected host:port/);
  t.match(parseAddress('::1:80'), /brackets/);
  t.match(parseAddress('host:http'), /port number/);
  t.match(parseAddress('host:0'), /1-65535/);
  t.same(parseAddress('host:0', { allowPortZero: true }), { kind: 'tcp', host: 'host', port: 0 });
  t.match(parseAddress('host:70000'), /1-65535/);
  t.match(parseAddress('unix:'), /empty/);
  t.end();
});

void t.test('defaults are filled and the result is frozen', (t) => {
  const config = parseConfig(minimal);
  t.same(config.admin, { listen: '127.0.0.1:9901' });
  t.same(config.log, { level: 'info' });
  t.same(config.drain, { delay: 0, timeout: 30_000 });
  const route = config.routes[0];
  t.match(route, {
    name: '127.0.0.1:6380',
    mode: 'tcp',
    upstream: { addresses: ['10.0.0.5:6379'] },
    idleTimeout: 0,
    halfCloseTimeout: 30_000,
    pool: {
      minIdle: 4,
      maxSize: 64,
      maxWaiters: 1024,
      acquireTimeout: 5000,
      connectTimeout: 3000,
      idleTimeout: 300_000,
      maxLifetime: 3_600_000,
    },
  });
  t.ok(Object.isFrozen(config) && Object.isFrozen(route?.pool), 'deeply frozen');
  t.end();
});

void t.test('the upstream forms', (t) => {
  const one = parseConfig({ routes: [{ listen: ':1', upstream: { address: 'a:1' } }] });
  t.same(one.routes[0]?.upstream, {
    addresses: ['a:1'],
    dnsRefresh: 30_000,
    balance: 'least-active',
  });
  const many = parseConfig({
    routes: [{ listen: ':1', upstream: { addresses: ['a:1', 'b:2'], balance: 'round-robin' } }],
  });
  t.same(many.routes[0]?.upstream, {
    addresses: ['a:1', 'b:2'],
    dnsRefresh: 30_000,
    balance: 'round-robin',
  });
  const dns = parseConfig({
    routes: [
      {
        listen: ':1',
        upstream: { dns: 'redis.ns.svc:6379', dnsRefresh: '5s', resolvers: ['127.0.0.1:53'] },
      },
    ],
  });
  t.same(dns.routes[0]?.upstream, {
    addresses: [],
    dns: 'redis.ns.svc:6379',
    dnsRefresh: 5000,
    resolvers: ['127.0.0.1:53'],
    balance: 'least-active',
  });
  t.end();
});

void t.test('admin: false parses', (t) => {
  t.equal(parseConfig({ ...minimal, admin: false }).admin, false);
  t.end();
});

void t.test('every error names its path', (t) => {
  t.same(issuesOf({}), [{ path: 'routes', message: 'is required (expected array)' }]);
  t.same(issuesOf({ routes: [] }), [{ path: 'routes', message: 'expected at least one route' }]);
  t.same(issuesOf({ ...minimal, bogus: 1 }), [{ path: 'bogus', message: 'unknown key' }]);
  t.same(issuesOf({ routes: [{ ...minimal.routes[0], pool: { maxsize: 3 } }] }), [
    { path: 'routes[0].pool.maxsize', message: 'unknown key' },
  ]);
  t.match(issuesOf({ routes: [{ ...minimal.routes[0], pool: { acquireTimeout: '5 sec' } }] }), [
    { path: 'routes[0].pool.acquireTimeout', message: /expected a duration.*"5 sec"/ },
  ]);
  t.match(issuesOf({ routes: [{ ...minimal.routes[0], pool: { maxSize: 0 } }] }), [
    { path: 'routes[0].pool.maxSize', message: 'must be at least 1' },
  ]);
  t.match(issuesOf({ routes: [{ ...minimal.routes[0], pool: { minIdle: 2.5 } }] }), [
    { path: 'routes[0].pool.minIdle', message: 'expected a whole number' },
  ]);
  t.match(issuesOf({ routes: [{ ...minimal.routes[0], pool: { minIdle: 'four' } }] }), [
    { path: 'routes[0].pool.minIdle', message: 'expected a whole number' },
  ]);
  t.match(issuesOf({ routes: [{ ...minimal.routes[0], mode: 'udp' }] }), [
    { path: 'routes[0].mode', message: 'expected one of "tcp"' },
  ]);
  t.match(issuesOf({ routes: [{ listen: 'nowhere', upstream: 'a:1' }] }), [
    { path: 'routes[0].listen', message: /expected host:port/ },
  ]);
  t.match(issuesOf({ routes: [{ listen: ':1', upstream: { adress: 'a:1' } }] }), [
    { path: 'routes[0].upstream.adress', message: 'unknown key' },
    { path: 'routes[0].upstream', message: 'expected "address", "addresses" or "dns"' },
  ]);
  t.match(
    issuesOf({ routes: [{ listen: ':1', upstream: { address: 'a:1', addresses: ['b:1'] } }] }),
    [{ path: 'routes[0].upstream', message: /give one of/ }],
  );
  t.match(issuesOf({ routes: [{ listen: ':1', upstream: { addresses: [] } }] }), [
    { path: 'routes[0].upstream.addresses', message: /at least one/ },
  ]);
  t.match(issuesOf({ ...minimal, log: { level: 'loud' } }), [
    { path: 'log.level', message: /one of "trace"/ },
  ]);
  t.match(issuesOf({ ...minimal, admin: { listen: 'x' } }), [
    { path: 'admin.listen', message: /host:port/ },
  ]);
  t.match(issuesOf({ ...minimal, admin: true }), [{ path: 'admin' }]);
  t.end();
});

void t.test('health, outlier and readiness settings', (t) => {
  const route = parseConfig({
    routes: [
      { listen: ':1', upstream: 'a:1', health: { probe: 'redis' }, readyWhen: 'upstreamHealthy' },
    ],
  }).routes[0];
  t.same(route?.health, {
    interval: 10_000,
    timeout: 2000,
    healthyThreshold: 2,
    unhealthyThreshold: 3,
    probe: 'redis',
  });
  t.same(route?.outlier, {
    consecutiveFailures: 5,
    baseEjectionTime: 30_000,
    maxEjectionTime: 300_000,
    maxEjectedPercent: 50,
  });
  t.equal(route?.readyWhen, 'upstreamHealthy');
  const probes = [
    'tcp',
    { send: 'PING\r\n', expect: '+PONG' },
    { send: 'x', expect: '/^ok/' },
    { http: { path: '/healthz', expectStatus: 204 } },
  ];
  for (const probe of probes)
    parseConfig({ routes: [{ listen: ':1', upstream: 'a:1', health: { probe } }] });
  t.match(issuesOf({ routes: [{ listen: ':1', upstream: 'a:1', health: { probe: 'udp' } }] }), [
    { path: 'routes[0].health.probe', message: /expected tcp, redis/ },
  ]);
  t.match(
    issuesOf({ routes: [{ listen: ':1', upstream: 'a:1', outlier: { maxEjectedPercent: 150 } }] }),
    [{ path: 'routes[0].outlier.maxEjectedPercent' }],
  );
  t.match(
    issuesOf({
      routes: [
        { name: 'a', listen: ':1', upstream: 'x:1', health: { probe: 'tcp' } },
        { name: 'b', listen: ':2', upstream: 'x:1' },
      ],
    }),
    [{ path: 'routes[1].health', message: /same upstream/ }],
  );
  t.end();
});

void t.test('rules across fields', (t) => {
  t.match(issuesOf({ routes: [{ ...minimal.routes[0], pool: { minIdle: 10, maxSize: 5 } }] }), [
    { path: 'routes[0].pool.minIdle', message: /must not exceed maxSize/ },
  ]);
  t.match(
    issuesOf({
      routes: [
        { name: 'a', listen: ':1', upstream: 'x:1' },
        { name: 'a', listen: ':1', upstream: 'x:1', pool: { maxSize: 3 } },
      ],
    }),
    [
      { path: 'routes[1].name', message: /already the name/ },
      { path: 'routes[1].listen', message: /already the listen address/ },
      { path: 'routes[1].pool', message: /same upstream/ },
    ],
  );
  t.equal(
    parseConfig({ routes: [{ listen: ':1', upstream: 'x:1', pool: { maxSize: 2 } }] }).routes[0]
      ?.pool.minIdle,
    2,
    'the default minIdle never exceeds maxSize',
  );
  // upstream.host rewrites one route's requests; it does not split the pool.
  parseConfig({
    routes: [
      { name: 'a', listen: ':1', mode: 'http', upstream: { address: 'x:1', host: 'a.example' } },
      { name: 'b', listen: ':2', mode: 'http', upstream: { address: 'x:1', host: 'b.example' } },
    ],
  });
  // Same upstream, same pool settings: one shared pool, no error.
  parseConfig({
    routes: [
      { name: 'a', listen: ':1', upstream: 'x:1' },
      { name: 'b', listen: ':2', upstream: { address: 'x:1' } },
    ],
  });
  t.end();
});

void t.test('flags override the file', (t) => {
  const file = {
    admin: { listen: '127.0.0.1:1' },
    routes: [{ listen: ':1', upstream: 'a:1', pool: { minIdle: 1 } }],
  };
  const merged = parseConfig(
    applyFlags(file, {
      listen: ':2',
      upstream: 'b:2',
      minIdle: 3,
      maxSize: 9,
      admin: 'false',
      logLevel: 'debug',
      mode: 'tcp',
    }),
  );
  t.equal(merged.admin, false);
  t.equal(merged.log.level, 'debug');
  t.match(merged.routes[0], {
    listen: ':2',
    upstream: { addresses: ['b:2'] },
    pool: { minIdle: 3, maxSize: 9 },
  });
  t.same((file.routes[0] as { listen: string }).listen, ':1', 'the file data is not mutated');
  t.throws(
    () => applyFlags({ routes: [{}, {}] }, { listen: ':3' }),
    { code: 'SIDEPOOL_CONFIG_INVALID' },
    '--listen with a multi-route file is an error',
  );
  const all = parseConfig(
    applyFlags(
      {
        routes: [
          { listen: ':1', upstream: 'a:1' },
          { listen: ':2', upstream: 'b:1' },
        ],
      },
      { maxSize: 7 },
    ),
  );
  t.same(
    all.routes.map((r) => r.pool.maxSize),
    [7, 7],
    '--max-size applies to every route',
  );
  t.end();
});

void t.test('files: YAML, JSON, syntax errors, missing files', async (t) => {
  const dir = tempDir('sidepool-config-');
  const yamlPath = join(dir, 'a.yaml');
  await writeFile(
    yamlPath,
    'routes:\n  - listen: 127.0.0.1:1\n    upstream: a:1\n    pool: { acquireTimeout: 250ms }\n',
  );
  t.equal((await loadConfig(yamlPath)).routes[0]?.pool.acquireTimeout, 250);
  const jsonPath = join(dir, 'a.json');
  await writeFile(jsonPath, JSON.stringify(minimal));
  t.equal((await loadConfig(jsonPath)).routes[0]?.listen, '127.0.0.1:6380');
  const badPath = join(dir, 'bad.yaml');
  await writeFile(badPath, 'routes: [\n');
  await t.rejects(loadConfig(badPath), { code: 'SIDEPOOL_CONFIG_INVALID', message: /bad\.yaml/ });
  const dupPath = join(dir, 'dup.yaml');
  await writeFile(dupPath, 'log: {}\nlog: {}\nroutes: []\n');
  await t.rejects(loadConfig(dupPath), {
    code: 'SIDEPOOL_CONFIG_INVALID',
    message: /unique|duplicate/i,
  });
  await t.rejects(loadConfig(join(dir, 'missing.yaml')), {
    code: 'SIDEPOOL_CONFIG_INVALID',
    message: /cannot read/,
  });
  await t.rejects(loadConfig(undefined), {
    code: 'SIDEPOOL_CONFIG_INVALID',
    message: /no configuration/,
  });
  const emptyPath = join(dir, 'empty.yaml');
  await writeFile(emptyPath, '');
  const flagsOnly = await loadConfig(emptyPath, { listen: ':5', upstream: 'a:1' });
  t.equal(flagsOnly.routes.length, 1, 'an empty file plus flags is a config');
});

void t.test('postgres prepared statement settings: defaults and bad values named', (t) => {
  const pgRoute = (postgres: Record<string, unknown>) => ({
    routes: [{ listen: ':1', upstream: 'db:5432', mode: 'postgres', postgres }],
  });
  const settings = parseConfig(pgRoute({ authType: 'trust' })).routes[0]?.postgres;
  t.equal(settings?.maxPreparedStatements, 200);
  t.equal(settings?.maxPreparedStatementBytes, 64 * 1024 * 1024);
  t.equal(settings?.maxClientPreparedStatementBytes, 8 * 1024 * 1024);
  t.equal(
    parseConfig(pgRoute({ authType: 'trust', maxPreparedStatements: 0 })).routes[0]?.postgres
      ?.maxPreparedStatements,
    0,
    '0 turns pooling of statements off',
  );
  t.match(issuesOf(pgRoute({ authType: 'trust', maxPreparedStatements: -1 })), [
    { path: 'routes[0].postgres.maxPreparedStatements' },
  ]);
  t.match(issuesOf(pgRoute({ authType: 'trust', maxPreparedStatementBytes: 10 })), [
    { path: 'routes[0].postgres.maxPreparedStatementBytes' },
  ]);
  t.match(issuesOf(pgRoute({ authType: 'trust', maxClientPreparedStatementBytes: 'lots' })), [
    { path: 'routes[0].postgres.maxClientPreparedStatementBytes' },
  ]);
  t.end();
});
