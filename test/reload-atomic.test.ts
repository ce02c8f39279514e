// Reloads apply whole or not at all, with real listeners and upstreams: a failure on one
// route leaves every route as it was; a failed reload leaves nothing bound; changes to a
// kept route's destination take effect; retired routes drain by a deadline and their
// bytes are counted once.
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { App } from '../src/app.js';
import { loadConfig } from '../src/config/load.js';
import { startDns } from './helpers/dnsmasq.js';
import { metric, parseMetrics, request } from './helpers/http.js';
import { freePort } from './helpers/redis.js';
import {
  captureLogger,
  connectAndWaitClose,
  roundTrip,
  startEcho,
  startServer,
  until,
} from './helpers/util.js';
import { tempDir } from './helpers/tmp.js';

async function setup(
  t: { teardown(fn: () => unknown): void },
  config: Record<string, unknown>,
): Promise<{
  app: App;
  write: (c: Record<string, unknown>) => Promise<void>;
  lines: Array<Record<string, unknown>>;
}> {
  const dir = tempDir('sidepool-atomic-');
  const path = join(dir, 'sidepool.yaml');
  const write = (c: Record<string, unknown>): Promise<void> =>
    writeFile(path, YAML.stringify({ admin: { listen: '127.0.0.1:0' }, ...c }));
  await write(config);
  const { logger, lines } = captureLogger('info');
  const app = new App(await loadConfig(path), logger, { loadConfig: () => loadConfig(path) });
  await app.start();
  t.teardown(() => app.stop(100));
  return { app, write, lines };
}

/** An upstream that tags its echo, to tell it from another. */
function startTagged(tag: string) {
  return startServer((socket) => {
    socket.on('data', (c: Buffer) => socket.write(`${tag}:${c.toString()}`));
    socket.on('end', () => socket.end());
  });
}

async function blockPort(t: { teardown(fn: () => unknown): void }): Promise<number> {
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise((r) => blocker.close(r)));
  return (blocker.address() as net.AddressInfo).port;
}

void t.test('a reload that fails on one route changes no route', async (t) => {
  const one = await startTagged('one');
  const two = await startTagged('two');
  t.teardown(() => one.close());
  t.teardown(() => two.close());
  const [portMoved, portChanged] = [await freePort(), await freePort()];
  const busy = await blockPort(t);
  const routes = [
    { name: 'moved', listen: `127.0.0.1:${portMoved}`, upstream: one.address },
    { name: 'changed', listen: `127.0.0.1:${portChanged}`, upstream: one.address },
  ];
  const { app, write, lines } = await setup(t, { routes });
  const admin = app.admin?.port as number;

  await write({
    routes: [
      { ...routes[0], listen: `127.0.0.1:${busy}` },
      { ...routes[1], upstream: two.address },
    ],
  });
  const res = await request(admin, '/reload', 'POST');
  t.equal(res.status, 400);
  const body = JSON.parse(res.body) as { problems: string[] };
  t.match(body.problems, [new RegExp(`route moved: cannot listen on 127\\.0\\.0\\.1:${busy}`)]);

  t.equal((await roundTrip(portMoved, 'x')).toString(), 'one:x', 'moved still on its address');
  t.equal(
    (await roundTrip(portChanged, 'y')).toString(),
    'one:y',
    'changed still on its old upstream',
  );
  t.equal((await request(admin, '/readyz')).status, 200);
  const config = JSON.parse((await request(admin, '/config')).body) as {
    routes: Array<{ upstream: { addresses: string[] } }>;
  };
  t.same(config.routes[1]?.upstream.addresses, [one.address], '/config shows what runs');
  const pools = JSON.parse((await request(admin, '/pools')).body) as Array<{ routes: string[] }>;
  t.same(
    pools.map((p) => p.routes),
    [['moved', 'changed']],
  );
  t.notOk(
    lines.some((l) => l.msg === 'pool closed: no route uses it'),
    'the running pool was never closed',
  );
  t.equal(app.pools.size, 1, 'the pool made for the new upstream was not kept');
});

void t.test('a failed reload leaves nothing bound: the corrected one binds', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const dns = await startDns({});
  t.teardown(() => dns.stop());
  const [port, portNew] = [await freePort(), await freePort()];
  const base = { name: 'r', listen: `127.0.0.1:${port}`, upstream: upstream.address };
  const { app, write } = await setup(t, { routes: [base] });

  await write({
    routes: [
      base,
      {
        name: 'new',
        listen: `127.0.0.1:${portNew}`,
        upstream: { dns: `missing.test:${upstream.port}`, resolvers: [dns.address] },
      },
    ],
  });
  t.match(await app.reload(), { ok: false, problems: [/cannot resolve missing\.test/] });
  t.equal((await connectAndWaitClose(portNew)).error, 'ECONNREFUSED', 'nothing bound');

  await write({
    routes: [base, { name: 'new', listen: `127.0.0.1:${portNew}`, upstream: upstream.address }],
  });
  t.same(await app.reload(), { ok: true });
  t.equal((await roundTrip(portNew, 'now')).toString(), 'now');
});

void t.test('health added to a kept route takes effect; its sessions go on', async (t) => {
  let probes = 0;
  const upstream = await startServer((socket) => {
    socket.on('data', (c: Buffer) => {
      if (c.toString() === 'PROBE\r\n') {
        probes++;
        socket.end('+OK\r\n');
      } else socket.write(c);
    });
    socket.on('end', () => socket.end());
  });
  t.teardown(() => upstream.close());
  const port = await freePort();
  const route = { name: 'r', listen: `127.0.0.1:${port}`, upstream: upstream.address };
  const { app, write } = await setup(t, { routes: [route] });
  const open = net.connect(port, '127.0.0.1');
  open.on('error', () => {});
  const echoed = (text: string) =>
    new Promise<string>((r) => {
      open.once('data', (c: Buffer) => r(c.toString()));
      open.write(text);
    });
  t.equal(await echoed('before'), 'before');

  await write({
    routes: [
      {
        ...route,
        health: { interval: '50ms', probe: { send: 'PROBE\r\n', expect: '+OK' } },
        upstream: { address: upstream.address, balance: 'round-robin' },
      },
    ],
  });
  t.same(await app.reload(), { ok: true });
  await until(() => probes >= 2, 5000, 'probes from the new health settings');
  t.equal(await echoed('after'), 'after', 'the session on the old route goes on');
  t.equal((await roundTrip(port, 'new')).toString(), 'new', 'the address serves throughout');
  const destination = app.destinations.values().next().value;
  t.equal(destination?.hasProbes, true);
  open.destroy();
});

void t.test('retired routes drain within drain.timeout; their bytes count once', async (t) => {
  const one = await startTagged('one');
  const two = await startTagged('two');
  t.teardown(() => one.close());
  t.teardown(() => two.close());
  const [portGone, portKept] = [await freePort(), await freePort()];
  const routes = [
    { name: 'gone', listen: `127.0.0.1:${portGone}`, upstream: one.address },
    { name: 'kept', listen: `127.0.0.1:${portKept}`, upstream: one.address },
  ];
  const drain = { delay: 0, timeout: '300ms' };
  const { app, write } = await setup(t, { drain, routes });
  const admin = app.admin?.port as number;

  const onGone = net.connect(portGone, '127.0.0.1');
  const onKept = net.connect(portKept, '127.0.0.1');
  let closed = 0;
  for (const s of [onGone, onKept]) s.once('close', () => closed++);
  for (const s of [onGone, onKept]) s.on('error', () => {});
  let keptEcho = '';
  onKept.on('data', (c: Buffer) => (keptEcho += c.toString()));
  onKept.write('x'.repeat(3000));
  await until(() => keptEcho.length === 3004, 5000, 'the echo of 3000 bytes');

  // `kept` moves to another upstream (rebuilt under its name); `gone` is removed.
  await write({ drain, routes: [{ ...routes[1], upstream: two.address }] });
  t.same(await app.reload(), { ok: true });
  t.equal((await roundTrip(portKept, 'y')).toString(), 'two:y', 'new sessions: new upstream');

  const scrapes: Array<number | undefined> = [];
  for (let i = 0; i < 3; i++) {
    const m = parseMetrics((await request(admin, '/metrics')).body);
    scrapes.push(metric(m, 'sidepool_bytes_total', { route: 'kept', direction: 'upstream' }));
  }
  t.same(scrapes, [3001, 3001, 3001], 'the old route is not added again on each scrape');

  // drain.timeout is 300ms; without a deadline they would stay open for good.
  await until(() => closed === 2, 5000, 'the old sessions ended by the deadline');
  await until(() => app.pools.size === 1, 5000, 'the old pool closed');
  const m = parseMetrics((await request(admin, '/metrics')).body);
  t.equal(metric(m, 'sidepool_bytes_total', { route: 'kept', direction: 'upstream' }), 3001);
});

void t.test('readiness is computed from the config in force', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const { app } = await setup(t, {
    routes: [{ name: 'r', listen: '127.0.0.1:0', upstream: upstream.address }],
  });
  const admin = app.admin?.port as number;
  t.equal((await request(admin, '/readyz')).status, 200);
  app.routes.get('r')?.currentListener.close();
  const res = await request(admin, '/readyz');
  t.equal(res.status, 503);
  t.match(res.body, /route r is not listening/);
});
