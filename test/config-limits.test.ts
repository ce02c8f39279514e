// Limits on durations and counts: what `check` accepts must behave as written when `run`
// starts. Node's timers hold at most 2^31−1 ms; a longer one fires after 1 ms.
import t from 'tap';
import { parseConfig } from '../src/config/load.js';
import type { ConfigError } from '../src/errors.js';
import { runCli } from './helpers/cli.js';
import { configFile } from './helpers/config-file.js';

const route = { listen: '127.0.0.1:6380', upstream: '10.0.0.5:6379' };

function issuesOf(raw: unknown): Array<{ path: string; message: string }> {
  try {
    parseConfig(raw);
  } catch (err) {
    return [...(err as ConfigError).issues];
  }
  return [];
}

void t.test('durations longer than a Node timer holds are refused, naming the field', (t) => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ pool: { idleTimeout: '1000h' } }, 'routes[0].pool.idleTimeout'],
    [{ pool: { acquireTimeout: '1000h' } }, 'routes[0].pool.acquireTimeout'],
    [{ pool: { connectTimeout: 2 ** 31 } }, 'routes[0].pool.connectTimeout'],
    [{ idleTimeout: '900h' }, 'routes[0].idleTimeout'],
    [{ halfCloseTimeout: '900h' }, 'routes[0].halfCloseTimeout'],
    [{ health: { interval: '900h' } }, 'routes[0].health.interval'],
    [{ outlier: { maxEjectionTime: '900h' } }, 'routes[0].outlier.maxEjectionTime'],
    [{ upstream: { dns: 'a:1', dnsRefresh: '900h' } }, 'routes[0].upstream.dnsRefresh'],
    [{ mode: 'http', responseTimeout: '900h' }, 'routes[0].responseTimeout'],
  ];
  for (const [extra, path] of cases) {
    t.match(
      issuesOf({ routes: [{ ...route, ...extra }] }),
      [{ path, message: /at most 596h/ }],
      `${path} = ${JSON.stringify(extra)}`,
    );
  }
  t.match(issuesOf({ drain: { timeout: '1000h' }, routes: [route] }), [
    { path: 'drain.timeout', message: /at most 596h/ },
  ]);
  // maxLifetime gets ±10% jitter: its own limit keeps the jittered timer in range.
  t.match(issuesOf({ routes: [{ ...route, pool: { maxLifetime: '700h' } }] }), [
    { path: 'routes[0].pool.maxLifetime', message: /at most 540h/ },
  ]);
  t.match(issuesOf({ routes: [{ ...route, pool: { maxLifetime: '550h' } }] }), [
    { path: 'routes[0].pool.maxLifetime', message: /at most 540h/ },
  ]);
  t.same(issuesOf({ routes: [{ ...route, pool: { maxLifetime: '540h' } }] }), []);
  t.same(issuesOf({ drain: { timeout: '596h' }, routes: [route] }), [], '596h is accepted');
  t.end();
});

void t.test('zero is refused where it makes no sense', (t) => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ health: { interval: 0 } }, 'routes[0].health.interval'],
    [{ health: { timeout: '0s' } }, 'routes[0].health.timeout'],
    [{ outlier: { baseEjectionTime: 0 } }, 'routes[0].outlier.baseEjectionTime'],
    [{ outlier: { maxEjectionTime: 0 } }, 'routes[0].outlier.maxEjectionTime'],
  ];
  for (const [extra, path] of cases) {
    t.match(
      issuesOf({ routes: [{ ...route, ...extra }] }),
      [{ path, message: /more than 0/ }],
      path,
    );
  }
  // Where 0 is allowed, it has a meaning (README: "0 = …").
  t.same(
    issuesOf({
      drain: { delay: 0, timeout: 0 },
      routes: [
        {
          ...route,
          idleTimeout: 0,
          halfCloseTimeout: 0,
          pool: { acquireTimeout: 0, connectTimeout: 0, idleTimeout: 0, maxLifetime: 0 },
        },
      ],
    }),
    [],
  );
  t.end();
});

void t.test('counts have upper bounds, named with "at most"', (t) => {
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ pool: { minIdle: 99999, maxSize: 99999 } }, 'routes[0].pool.minIdle', /at most 65535/],
    [{ pool: { maxSize: 1e300 } }, 'routes[0].pool.maxSize', /at most 65535/],
    [{ pool: { maxWaiters: 1e9 } }, 'routes[0].pool.maxWaiters', /at most 1000000/],
    [{ health: { healthyThreshold: 1e6 } }, 'routes[0].health.healthyThreshold', /at most 1000/],
    [{ health: { unhealthyThreshold: 1e6 } }, 'routes[0].health.unhealthyThreshold', /at most/],
    [{ outlier: { consecutiveFailures: 1e9 } }, 'routes[0].outlier.consecutiveFailures', /at most/],
  ];
  for (const [extra, path, message] of cases) {
    const issues = issuesOf({ routes: [{ ...route, ...extra }] });
    t.ok(
      issues.some((i) => i.path === path && message.test(i.message)),
      `${path}: ${JSON.stringify(issues)}`,
    );
  }
  t.end();
});

void t.test('check refuses an over-long duration and exits 2 naming the field', async (t) => {
  const path = await configFile(
    'routes:\n  - listen: 127.0.0.1:6380\n    upstream: 127.0.0.1:6379\n    pool: { maxLifetime: 700h }\n',
  );
  const result = await runCli(['check', '--config', path]);
  t.equal(result.code, 2);
  t.match(result.stderr, /routes\[0\]\.pool\.maxLifetime: .*at most 540h/);
});
