import net from 'node:net';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { startDns } from './helpers/dnsmasq.js';
import { request } from './helpers/http.js';
import { freePort } from './helpers/redis.js';
import { roundTrip, sleep, startServer, until, type TestServer } from './helpers/util.js';

/** Echo servers on several loopback addresses, one port: the pods behind a headless service. */
async function pods(port: number, hosts: string[]): Promise<Map<string, TestServer>> {
  const servers = new Map<string, TestServer>();
  for (const host of hosts) {
    servers.set(
      host,
      await startServer(
        (socket) => {
          socket.on('data', (c: Buffer) => socket.write(`${host}|${c.toString()}`));
          socket.on('end', () => socket.end());
        },
        port,
        host,
      ),
    );
  }
  return servers;
}

/** A session through the proxy that landed on `host` (sessions to others are closed). */
async function sessionOn(port: number, host: string): Promise<net.Socket | undefined> {
  for (let i = 0; i < 10; i++) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    const first = await new Promise<string>((r) => {
      s.once('data', (c: Buffer) => r(c.toString()));
      s.write('who');
    });
    if (first.startsWith(host)) return s;
    s.destroy();
  }
  return undefined;
}

void t.test('DNS discovery: endpoints join, leave (draining) and are balanced', async (t) => {
  const port = await freePort();
  const servers = await pods(port, ['127.0.0.2', '127.0.0.3', '127.0.0.4']);
  t.teardown(() => Promise.all([...servers.values()].map((s) => s.close())));
  const dns = await startDns({ 'redis.pods.test': ['127.0.0.2', '127.0.0.3'] });
  t.teardown(() => dns.stop());

  const proxy = await startProxy(
    { dns: `redis.pods.test:${port}`, dnsRefresh: '100ms', resolvers: [dns.address] } as never,
    { minIdle: 4 },
  );
  t.teardown(() => proxy.app.stop(100));
  await until(() => proxy.pool.isWarm);
  const names = (): string[] =>
    (proxy.app.destinations.values().next().value?.endpoints.all ?? []).map((e) => e.name);
  t.same(names(), [`127.0.0.2:${port}`, `127.0.0.3:${port}`]);
  t.equal(proxy.pool.name, `dns:redis.pods.test:${port}`);

  // Least-active spreads new links over both.
  const seen = new Set<string>();
  for (let i = 0; i < 8; i++)
    seen.add((await roundTrip(proxy.port, 'x')).toString().split('|')[0] as string);
  t.same([...seen].sort(), ['127.0.0.2', '127.0.0.3']);

  // A long session on .3 survives .3 leaving DNS.
  const onThree = await sessionOn(proxy.port, '127.0.0.3');
  t.ok(onThree, 'a session on 127.0.0.3');

  await dns.setRecords({ 'redis.pods.test': ['127.0.0.2', '127.0.0.4'] });
  await until(
    () => names().join() === `127.0.0.2:${port},127.0.0.4:${port}`,
    3000,
    'endpoints updated',
  );
  t.ok(proxy.lines.some((l) => l.msg === 'endpoints changed'));
  const three = servers.get('127.0.0.3') as TestServer;
  await until(
    () => three.connections.filter((c) => !c.destroyed).length <= 1,
    3000,
    'idle links to .3 closed',
  );

  const still = await new Promise<string>((r) => {
    onThree?.once('data', (c: Buffer) => r(c.toString()));
    onThree?.write('still');
  });
  t.equal(
    still,
    '127.0.0.3|still',
    'the active session on the removed endpoint finishes undisturbed',
  );
  onThree?.end();

  await until(() => proxy.pool.stats().idle === 4);
  const after = new Set<string>();
  for (let i = 0; i < 8; i++)
    after.add((await roundTrip(proxy.port, 'x')).toString().split('|')[0] as string);
  t.same(
    [...after].sort(),
    ['127.0.0.2', '127.0.0.4'],
    'new sessions go to the current endpoints only',
  );
});

void t.test(
  'a failed DNS refresh keeps the endpoints; a name that does not resolve at start is an error',
  async (t) => {
    const port = await freePort();
    const servers = await pods(port, ['127.0.0.2']);
    t.teardown(() => Promise.all([...servers.values()].map((s) => s.close())));
    const dns = await startDns({ 'svc.test': ['127.0.0.2'] });
    const proxy = await startProxy(
      { dns: `svc.test:${port}`, dnsRefresh: '50ms', resolvers: [dns.address] } as never,
      { minIdle: 1 },
    );
    t.teardown(() => proxy.app.stop(100));
    await dns.stop();
    await until(
      () => proxy.lines.some((l) => l.msg === 'DNS refresh failed: keeping the endpoints we have'),
      5000,
    );
    t.equal((await roundTrip(proxy.port, 'x')).toString(), '127.0.0.2|x');

    const dns2 = await startDns({ 'other.test': ['127.0.0.2'] });
    t.teardown(() => dns2.stop());
    await t.rejects(
      startProxy({ dns: `missing.test:${port}`, resolvers: [dns2.address] } as never),
      { code: 'SIDEPOOL_RESOLVE_FAILED' },
    );
  },
);

void t.test(
  'an endpoint that leaves DNS loses its metric series once its links are gone',
  async (t) => {
    const port = await freePort();
    const servers = await pods(port, ['127.0.0.2', '127.0.0.3', '127.0.0.4']);
    t.teardown(() => Promise.all([...servers.values()].map((s) => s.close())));
    const dns = await startDns({ 'pods.test': ['127.0.0.2', '127.0.0.3'] });
    t.teardown(() => dns.stop());
    const proxy = await startProxy(
      { dns: `pods.test:${port}`, dnsRefresh: '100ms', resolvers: [dns.address] } as never,
      { minIdle: 4 },
      { health: { interval: 100, healthyThreshold: 1 } },
      { admin: { listen: '127.0.0.1:0' } },
    );
    t.teardown(() => proxy.app.stop(100));
    const admin = proxy.app.admin?.port as number;
    const series = async (host: string): Promise<string[]> =>
      (await request(admin, '/metrics')).body
        .split('\n')
        .filter((line) => !line.startsWith('#') && line.includes(`"${host}:${port}"`))
        .map((line) => line.replace(/ [^ ]+$/, ''));
    await until(() => proxy.pool.isWarm);
    let three: string[] = [];
    for (let i = 0; i < 100; i++) {
      three = await series('127.0.0.3');
      if (three.some((s) => s.startsWith('sidepool_health_probes_total'))) break;
      await sleep(50);
    }
    t.match(
      three.join('\n'),
      /sidepool_upstream_connects_total[^\n]*result="success"[\s\S]*sidepool_endpoint_up[\s\S]*sidepool_health_probes_total/,
      '.3 has its dial, up and probe series',
    );

    // A session holds a link to .3 while .3 leaves DNS.
    const onThree = await sessionOn(proxy.port, '127.0.0.3');
    t.ok(onThree, 'a session on 127.0.0.3');
    await dns.setRecords({ 'pods.test': ['127.0.0.2', '127.0.0.4'] });
    await until(() => proxy.lines.some((l) => l.msg === 'endpoints changed'), 3000);
    const leaving = await series('127.0.0.3');
    t.ok(
      leaving.some((s) => s.startsWith('sidepool_upstream_connects_total')),
      'kept while a link to it is open',
    );
    t.notOk(
      leaving.some((s) => s.startsWith('sidepool_endpoint_up')),
      'endpoint_up is for listed endpoints only',
    );

    onThree?.destroy();
    const threeServer = servers.get('127.0.0.3') as TestServer;
    await until(
      () => threeServer.connections.every((c) => c.destroyed),
      5000,
      'no link to .3 left',
    );
    let left = await series('127.0.0.3');
    for (let i = 0; i < 100 && left.length > 0; i++) {
      await sleep(50);
      left = await series('127.0.0.3');
    }
    t.same(left, [], 'every series of .3 is gone');
    await until(() => proxy.pool.isWarm && proxy.pool.stats().idle === 4);
    t.ok(
      (await series('127.0.0.4')).some((s) => s.startsWith('sidepool_upstream_connects_total')),
      '.4 has its own',
    );
    t.ok((await series('127.0.0.2')).length > 0, '.2 keeps its own');
  },
);
