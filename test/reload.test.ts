import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { App } from '../src/app.js';
import { loadConfig } from '../src/config/load.js';
import { startCli } from './helpers/cli.js';
import { metric, parseMetrics, request } from './helpers/http.js';
import { freePort } from './helpers/redis.js';
import { connectAndWaitClose, roundTrip, startEcho, until, captureLogger } from './helpers/util.js';
import { tempDir } from './helpers/tmp.js';

interface RouteSpec {
  name: string;
  listen: string;
  upstream: string;
  pool?: Record<string, unknown>;
}

async function writeConfig(
  path: string,
  routes: RouteSpec[],
  extra: Record<string, unknown> = {},
): Promise<void> {
  await writeFile(path, YAML.stringify({ admin: { listen: '127.0.0.1:0' }, ...extra, routes }));
}

async function setup(t: { teardown(fn: () => unknown): void }, routes: RouteSpec[]) {
  const dir = tempDir('sidepool-reload-');
  const path = join(dir, 'sidepool.yaml');
  await writeConfig(path, routes);
  const { logger, lines } = captureLogger('info');
  const app = new App(await loadConfig(path), logger, { loadConfig: () => loadConfig(path) });
  await app.start();
  t.teardown(() => app.stop(100));
  return { app, path, lines };
}

/** A session that stays open and echoes: proves a route's sessions survive a reload. */
async function openSession(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  await new Promise((r) => socket.once('connect', r));
  return {
    socket,
    async echo(text: string): Promise<string> {
      const got = new Promise<string>((r) => socket.once('data', (c: Buffer) => r(c.toString())));
      socket.write(text);
      return got;
    },
  };
}

void t.test('reload adds, removes and resizes routes with traffic flowing', async (t) => {
  const upstreamA = await startEcho();
  const upstreamB = await startEcho();
  t.teardown(() => upstreamA.close());
  t.teardown(() => upstreamB.close());
  const [portA, portGone, portNew] = [await freePort(), await freePort(), await freePort()];
  const { app, path } = await setup(t, [
    {
      name: 'a',
      listen: `127.0.0.1:${portA}`,
      upstream: upstreamA.address,
      pool: { minIdle: 1, maxSize: 4 },
    },
    {
      name: 'gone',
      listen: `127.0.0.1:${portGone}`,
      upstream: upstreamB.address,
      pool: { minIdle: 1 },
    },
  ]);
  const onA = await openSession(portA);
  const onGone = await openSession(portGone);
  t.equal(await onA.echo('a1'), 'a1');
  t.equal(await onGone.echo('g1'), 'g1');

  await writeConfig(path, [
    {
      name: 'a',
      listen: `127.0.0.1:${portA}`,
      upstream: upstreamA.address,
      pool: { minIdle: 3, maxSize: 6 },
    },
    {
      name: 'new',
      listen: `127.0.0.1:${portNew}`,
      upstream: upstreamB.address,
      pool: { minIdle: 1 },
    },
  ]);
  const result = await app.reload();
  t.same(result, { ok: true });

  t.equal(await onA.echo('a2'), 'a2', 'the unchanged route kept its session');
  t.equal(await onGone.echo('g2'), 'g2', 'the removed route lets its session finish');
  t.equal(
    (await connectAndWaitClose(portGone)).error,
    'ECONNREFUSED',
    'the removed route accepts no more',
  );
  t.equal((await roundTrip(portNew, 'new!')).toString(), 'new!', 'the added route serves');
  const poolA = app.routes.get('a')?.pool;
  t.equal(poolA?.options.maxSize, 6);
  await until(() => poolA?.stats().idle === 3, 2000, 'pool a grew to minIdle 3');
  t.equal(app.routes.size, 2);

  const metrics = parseMetrics((await request(app.admin?.port as number, '/metrics')).body);
  t.equal(metric(metrics, 'sidepool_config_reloads_total', { result: 'success' }), 1);
  t.equal(metric(metrics, 'sidepool_pool_max_connections', { pool: upstreamA.address }), 6);
  onA.socket.destroy();
  onGone.socket.end();
});

void t.test(
  'a route whose upstream changes moves to a new pool; the old pool closes when idle',
  async (t) => {
    const upstreamA = await startEcho();
    const upstreamB = await startServer2();
    t.teardown(() => upstreamA.close());
    t.teardown(() => upstreamB.close());
    const port = await freePort();
    const { app, path } = await setup(t, [
      { name: 'r', listen: `127.0.0.1:${port}`, upstream: upstreamA.address },
    ]);
    t.equal((await roundTrip(port, 'x')).toString(), 'x');
    await writeConfig(path, [
      { name: 'r', listen: `127.0.0.1:${port}`, upstream: upstreamB.address },
    ]);
    t.same(await app.reload(), { ok: true });
    t.equal(
      (await roundTrip(port, 'x')).toString(),
      'B:x',
      'the same listen address now reaches the new upstream',
    );
    await until(() => !app.pools.has(upstreamA.address), 2000, 'old pool closed');
  },
);

void t.test('an invalid config is rejected and the running config kept', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const port = await freePort();
  const { app, path, lines } = await setup(t, [
    { name: 'r', listen: `127.0.0.1:${port}`, upstream: upstream.address },
  ]);
  await writeFile(
    path,
    'routes:\n  - listen: 127.0.0.1:1\n    upstream: { adress: nope }\n    bogus: 1\n',
  );
  const result = await app.reload();
  t.equal(result.ok, false);
  t.match(result.problems, [
    /adress: unknown key/,
    /expected "address", "addresses" or "dns"/,
    /bogus: unknown key/,
  ]);
  t.ok(
    lines.some(
      (l) =>
        l.msg === 'reload rejected: the running config is kept' && /bogus/.test(String(l.problem)),
    ),
  );
  t.equal((await roundTrip(port, 'still')).toString(), 'still');
  await writeFile(
    path,
    YAML.stringify({
      admin: { listen: '127.0.0.1:0' },
      routes: [{ listen: `127.0.0.1:${port}`, upstream: 'no-such-host.invalid:1' }],
    }),
  );
  t.match(await app.reload(), { ok: false, problems: [/cannot resolve/] });
  const metrics = parseMetrics((await request(app.admin?.port as number, '/metrics')).body);
  t.equal(metric(metrics, 'sidepool_config_reloads_total', { result: 'failure' }), 2);
  t.equal(metric(metrics, 'sidepool_config_reloads_total', { result: 'success' }), 0);
  t.equal((await roundTrip(port, 'still')).toString(), 'still');
});

void t.test('POST /reload answers with the outcome', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const port = await freePort();
  const { app, path } = await setup(t, [
    { name: 'r', listen: `127.0.0.1:${port}`, upstream: upstream.address },
  ]);
  const admin = app.admin?.port as number;
  const ok = await request(admin, '/reload', 'POST');
  t.equal(ok.status, 200);
  await writeFile(path, 'routes: 5\n');
  const bad = await request(admin, '/reload', 'POST');
  t.equal(bad.status, 400);
  t.match(JSON.parse(bad.body), { ok: false, problems: [/routes/] });
});

void t.test('SIGHUP reloads the running CLI', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const dir = tempDir('sidepool-hup-');
  const path = join(dir, 'sidepool.yaml');
  const [port1, port2] = [await freePort(), await freePort()];
  await writeConfig(
    path,
    [{ name: 'one', listen: `127.0.0.1:${port1}`, upstream: upstream.address }],
    { admin: false },
  );
  const cli = startCli(['run', '--config', path]);
  t.teardown(() => cli.child.kill('SIGKILL'));
  await cli.waitFor((l) => l.msg === 'route listening', 30_000);
  await writeConfig(
    path,
    [
      { name: 'one', listen: `127.0.0.1:${port1}`, upstream: upstream.address },
      { name: 'two', listen: `127.0.0.1:${port2}`, upstream: upstream.address },
    ],
    { admin: false },
  );
  cli.child.kill('SIGHUP');
  await cli.waitFor((l) => l.msg === 'config reloaded', 30_000);
  t.equal((await roundTrip(port2, 'two')).toString(), 'two');
  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0);
});

/** An upstream that prefixes its echo, to tell it from the other. */
async function startServer2() {
  const { startServer } = await import('./helpers/util.js');
  return startServer((socket) => {
    socket.on('data', (c: Buffer) => socket.write(`B:${c.toString()}`));
    socket.on('end', () => socket.end());
  });
}

void t.test('a reload whose new listener cannot bind fails and says why', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  t.teardown(() => blocker.close());
  const taken = (blocker.address() as net.AddressInfo).port;
  const port = await freePort();
  const { app, path } = await setup(t, [
    { name: 'r', listen: `127.0.0.1:${port}`, upstream: upstream.address },
  ]);
  await writeConfig(path, [
    { name: 'r', listen: `127.0.0.1:${taken}`, upstream: upstream.address },
  ]);
  const result = await app.reload();
  t.equal(result.ok, false);
  t.match(result.problems, [/EADDRINUSE/]);
  const metrics = parseMetrics((await request(app.admin?.port as number, '/metrics')).body);
  t.equal(metric(metrics, 'sidepool_config_reloads_total', { result: 'failure' }), 1);
  // Freed, the same config binds on the next reload.
  await new Promise<void>((r) => blocker.close(() => r()));
  t.same(await app.reload(), { ok: true });
  t.equal((await roundTrip(taken, 'moved')).toString(), 'moved');
});
