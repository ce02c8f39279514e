import net from 'node:net';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { startDns } from './helpers/dnsmasq.js';
import { freePort } from './helpers/redis.js';
import { roundTrip, startServer, until, type TestServer } from './helpers/util.js';

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
  let onThree: net.Socket | undefined;
  for (let i = 0; i < 10 && onThree === undefined; i++) {
    const s = net.connect(proxy.port, '127.0.0.1');
    s.on('error', () => {});
    const first = await new Promise<string>((r) => {
      s.once('data', (c: Buffer) => r(c.toString()));
      s.write('who');
    });
    if (first.startsWith('127.0.0.3')) onThree = s;
    else s.destroy();
  }
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
