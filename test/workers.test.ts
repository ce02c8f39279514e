import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { parseConfig } from '../src/config/load.js';
import { reusePortAvailable } from '../src/net/reuse-port.js';
import { shareOf, workerConfig } from '../src/workers/share.js';
import { runCli } from './helpers/cli.js';
import { metric, request } from './helpers/http.js';
import { processAlive, startSidepoolProcess, type SidepoolProcess } from './helpers/group.js';
import { roundTrip, startEcho, until } from './helpers/util.js';
import { tempDir } from './helpers/tmp.js';

void t.test('shares add up to the total and differ by at most one', (t) => {
  for (const [total, count] of [
    [64, 2],
    [5, 2],
    [7, 3],
    [2, 2],
    [0, 4],
    [1024, 3],
  ] as const) {
    const shares = Array.from({ length: count }, (_, i) => shareOf(total, i, count));
    t.equal(
      shares.reduce((a, b) => a + b, 0),
      total,
      `${total} over ${count}`,
    );
    t.ok(Math.max(...shares) - Math.min(...shares) <= 1, `${total} over ${count}: even`);
  }
  const config = parseConfig({
    workers: 2,
    routes: [{ listen: '127.0.0.1:1', upstream: '127.0.0.1:2', pool: { minIdle: 3, maxSize: 5 } }],
  });
  const [one, two] = [workerConfig(config, 0, 2), workerConfig(config, 1, 2)];
  t.same(
    [one.routes[0]?.pool.minIdle, one.routes[0]?.pool.maxSize, one.routes[0]?.pool.maxWaiters],
    [2, 3, 512],
  );
  t.same(
    [two.routes[0]?.pool.minIdle, two.routes[0]?.pool.maxSize, two.routes[0]?.pool.maxWaiters],
    [1, 2, 512],
  );
  t.equal(one.admin, false, 'the primary serves the admin endpoint, not the workers');
  t.equal(one.workers, 1);
  t.end();
});

void t.test(
  'config: workers must be a whole number from 1 and at most every maxSize',
  async (t) => {
    const dir = tempDir('sidepool-workers-');
    const path = join(dir, 'bad.yaml');
    await writeFile(
      path,
      YAML.stringify({
        workers: 3,
        routes: [{ listen: '127.0.0.1:7000', upstream: '127.0.0.1:7001', pool: { maxSize: 2 } }],
      }),
    );
    const tooMany = await runCli(['check', '--config', path]);
    t.equal(tooMany.code, 2);
    t.match(
      tooMany.stderr,
      /routes\[0\]\.pool\.maxSize: maxSize \(2\) must be at least workers \(3\)/,
    );
    const zero = await runCli(['check', '--config', path, '--workers', '0']);
    t.equal(zero.code, 2);
    t.match(zero.stderr, /workers: /);
    const fromFlag = await runCli(['check', '--config', path, '--workers', '2']);
    t.equal(fromFlag.code, 0, fromFlag.stderr);
    t.match(fromFlag.stdout, /^workers: 2$/m);
  },
);

/** Two workers on one route `echo` to `upstream`; `top` adds top-level config keys. */
function startGroup(
  t: { teardown(fn: () => unknown): void },
  upstream: string,
  pool: Record<string, unknown>,
  top: Record<string, unknown> = {},
): Promise<SidepoolProcess> {
  return startSidepoolProcess(t, upstream, pool, { workers: 2, top });
}

/** A bound on the sessions opened until each worker holds its share of links. */
const MOST_HELD = 200;

/** A session that is connected and sends nothing, so it holds its link (or waits for one). */
function holdSession(port: number): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  return new Promise((resolve) => socket.once('connect', () => resolve(socket)));
}

void t.test('two workers share the listener, the pool cap and one admin endpoint', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  let open = 0;
  let mostOpen = 0;
  upstream.server.on('connection', (socket: net.Socket) => {
    open++;
    mostOpen = Math.max(mostOpen, open);
    socket.on('close', () => open--);
  });
  const group = await startGroup(t, upstream.address, {
    minIdle: 4,
    maxSize: 6,
    acquireTimeout: 0,
  });
  // Ready means both workers listen; a worker's pool may log `pool warm` after that.
  const warmLines = () => group.cli.lines.filter((l) => l.msg === 'pool warm');
  await until(() => warmLines().length >= 2, 10_000, 'a pool warm line from each worker');
  const warm = warmLines();
  t.same(
    warm.map((l) => [l.worker, l.links]).sort(),
    [
      [1, 2],
      [2, 2],
    ],
    'each worker warms its share of minIdle',
  );
  await until(() => open === 4, 5000);
  t.equal(group.workerPids().length, 2, 'two worker processes listen');

  for (let i = 0; i < 40; i++) {
    t.equal((await roundTrip(group.port, `ping ${i}`)).toString(), `ping ${i}`);
  }
  // Sessions held open at once: the workers' shares (3 + 3) cap the upstream at 6. Both
  // workers accept on one shared socket, and whichever the kernel wakes first takes what is
  // queued: on a loaded machine one worker took all of 24 sessions opened at once, and the
  // other none. So sessions are opened a few at a time until each worker holds its share.
  // They wait for a link without limit (acquireTimeout 0), so none leaves before the test
  // closes it.
  const held: net.Socket[] = [];
  const activePerWorker = async (): Promise<number[]> =>
    (JSON.parse((await request(group.adminPort, '/pools')).body) as Array<{ active: number }>).map(
      (p) => p.active,
    );
  while (!(await activePerWorker()).every((active) => active === 3)) {
    if (held.length >= MOST_HELD) {
      t.fail(
        `each worker holds 3 links after ${held.length} sessions (${(await activePerWorker()).join(' + ')})`,
      );
      break;
    }
    held.push(...(await Promise.all(Array.from({ length: 4 }, () => holdSession(group.port)))));
    await until(
      async () =>
        metric(await group.metrics(), 'sidepool_downstream_active', { route: 'echo' }) ===
        held.length,
      30_000,
      'every held session accepted',
    );
  }
  await until(() => open === 6, 5000, 'six links upstream');
  t.pass(`each of ${held.length} held sessions is accepted, spliced or waiting`);
  t.ok(mostOpen <= 6, `at most maxSize links upstream (saw ${mostOpen})`);
  for (const socket of held) socket.destroy();

  const m = await group.metrics();
  t.equal(metric(m, 'sidepool_downstream_connections_total', { route: 'echo' }), 40 + held.length);
  t.equal(metric(m, 'sidepool_pool_max_connections', { pool: upstream.address }), 6);
  t.equal(metric(m, 'sidepool_workers'), 2);
  t.equal(metric(m, 'sidepool_worker_restarts_total'), 0);
  t.equal((await request(group.adminPort, '/readyz')).status, 200);
  const pools = JSON.parse((await request(group.adminPort, '/pools')).body) as Array<{
    worker: number;
    maxSize: number;
    totals: { acquired: number };
  }>;
  t.same(
    pools.map((p) => [p.worker, p.maxSize]),
    [
      [1, 3],
      [2, 3],
    ],
  );
  // Each session's acquisition ends once, in one worker: with a link (idle, dialed) or,
  // for a held session still queued when its app left, aborted (as its close is read).
  const ended = async (): Promise<number> => {
    const now = await group.metrics();
    return ['idle', 'dialed', 'timeout', 'overflow', 'aborted', 'failed']
      .map((result) =>
        metric(now, 'sidepool_pool_acquires_total', { pool: upstream.address, result }),
      )
      .reduce((a: number, b) => a + (b ?? 0), 0);
  };
  await until(async () => (await ended()) === 40 + held.length, 60_000, 'every acquisition ended');
  t.equal(await ended(), 40 + held.length, 'every session took one acquisition, in one worker');
  t.ok(
    pools.reduce((n, p) => n + p.totals.acquired, 0) <= 40 + held.length,
    'no session took two links',
  );

  // A reload is checked once by the primary and applied by each worker.
  await group.write({ minIdle: 4, maxSize: 8 });
  group.cli.child.kill('SIGHUP');
  await group.cli.waitFor((l) => l.msg === 'config reloaded by every worker');
  const reloaded = await group.metrics();
  t.equal(metric(reloaded, 'sidepool_pool_max_connections', { pool: upstream.address }), 8);
  t.equal(metric(reloaded, 'sidepool_config_reloads_total', { result: 'success' }), 1);
  await group.write({ minIdle: 4, maxSize: 1 });
  const rejected = await request(group.adminPort, '/reload', 'POST');
  t.equal(rejected.status, 400);
  t.match(rejected.body, /maxSize \(1\) must be at least workers \(2\)/);
  const afterBad = await group.metrics();
  t.equal(metric(afterBad, 'sidepool_config_reloads_total', { result: 'failure' }), 1);
  t.equal(metric(afterBad, 'sidepool_pool_max_connections', { pool: upstream.address }), 8);

  // A worker that dies is started again; the route keeps working meanwhile.
  const [victim] = group.workerPids() as [number];
  process.kill(victim, 'SIGKILL');
  await group.cli.waitFor((l) => l.msg === 'worker exited: starting it again');
  await until(() => group.workerPids().filter(processAlive).length === 2, 10_000);
  t.equal((await roundTrip(group.port, 'after')).toString(), 'after');
  const restarted = await group.metrics();
  t.equal(metric(restarted, 'sidepool_worker_restarts_total'), 1);
  t.equal(metric(restarted, 'sidepool_workers'), 2);
  t.equal(
    metric(restarted, 'sidepool_pool_max_connections', { pool: upstream.address }),
    8,
    'the new worker starts with the reloaded config',
  );

  const pids = group.workerPids().filter(processAlive);
  group.cli.child.kill('SIGTERM');
  t.equal(await group.cli.exited, 0);
  t.same(pids.filter(processAlive), [], 'no worker outlives the primary');
});

void t.test('a drain through the admin endpoint stops every worker', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const group = await startGroup(t, upstream.address, { minIdle: 0, maxSize: 2 });
  const session = net.connect(group.port, '127.0.0.1');
  session.on('error', () => {});
  await new Promise((r) => session.once('connect', r));
  const drained = await request(group.adminPort, '/drain', 'POST');
  t.equal(drained.status, 202);
  t.equal((await request(group.adminPort, '/readyz')).status, 503, 'not ready at once');
  session.end();
  t.equal(await group.cli.exited, 0);
});

void t.test('a worker that cannot listen stops the start with the reason', async (t) => {
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise((r) => taken.close(r)));
  const port = (taken.address() as net.AddressInfo).port;
  const result = await runCli(
    [
      'run',
      '--workers',
      '2',
      '--listen',
      `127.0.0.1:${port}`,
      '--upstream',
      '127.0.0.1:9',
      '--admin',
      'false',
    ],
    { timeoutMs: 15_000 },
  );
  t.equal(result.code, 1);
  t.match(result.stderr, /worker \d could not start: .*127\.0\.0\.1:\d+.*(in use|EADDRINUSE)/);
});

/**
 * Sockets listening on 127.0.0.1:`port`, from /proc/net/tcp (one per bind, however shared),
 * counted by inode: a read of the table while other tests' connections come and go can
 * repeat lines.
 */
async function listeningSockets(port: number): Promise<number> {
  const table = await readFile('/proc/net/tcp', 'utf8');
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const inodes = table
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter((cols) => cols[1] === local && cols[3] === '0A')
    .map((cols) => cols[9]);
  return new Set(inodes).size;
}

void t.test('reusePort is feature-checked: Node.js 22.12 and later on Linux', (t) => {
  t.equal(reusePortAvailable('20.20.2', 'linux'), false);
  t.equal(reusePortAvailable('22.11.0', 'linux'), false);
  t.equal(reusePortAvailable('22.12.0', 'linux'), true);
  t.equal(reusePortAvailable('23.0.0', 'linux'), false);
  t.equal(reusePortAvailable('23.1.0', 'linux'), true);
  t.equal(reusePortAvailable('24.0.0', 'linux'), true);
  t.equal(reusePortAvailable('24.0.0', 'darwin'), false);
  t.end();
});

// undefined: the default, shared (it measured faster: README, Workers).
for (const workerSockets of ['own', 'shared', undefined] as const) {
  const named = workerSockets ?? 'the default';
  void t.test(`workerSockets: ${named}, on Node.js ${process.version}`, async (t) => {
    const upstream = await startEcho();
    t.teardown(() => upstream.close());
    const group = await startGroup(
      t,
      upstream.address,
      { minIdle: 2, maxSize: 64 },
      workerSockets === undefined ? {} : { workerSockets },
    );
    const own = workerSockets === 'own' && reusePortAvailable();
    const listening = group.cli.lines.filter((l) => l.msg === 'route listening');
    t.same(
      listening.map((l) => l.reusePort),
      [own, own],
      own ? 'each worker bound its own socket' : "both accept on the primary's socket",
    );
    t.equal(await listeningSockets(group.port), own ? 2 : 1, 'listening sockets on the port');
    for (let i = 0; i < 40; i++)
      t.equal((await roundTrip(group.port, `ping ${i}`)).toString(), `ping ${i}`);
    const pools = JSON.parse((await request(group.adminPort, '/pools')).body) as Array<{
      worker: number;
      totals: { acquired: number };
    }>;
    const served = pools.map((p) => p.totals.acquired);
    t.equal(
      served.reduce((a, b) => a + b, 0),
      40,
      `sessions per worker: ${served.join(', ')}`,
    );
    // The kernel hashes each new connection to one of the sockets: 40 connections from
    // 40 source ports all landing on one socket would be a 1 in 2^39 chance.
    if (own)
      t.ok(
        served.every((n) => n > 0),
        'both workers served sessions',
      );
    group.cli.child.kill('SIGTERM');
    t.equal(await group.cli.exited, 0);
    t.equal(await listeningSockets(group.port), 0, 'nothing listens after the drain');
  });
}
