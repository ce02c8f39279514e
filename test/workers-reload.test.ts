// Reloads with workers: the primary refuses what changes on restart only, and a reload a
// worker cannot apply leaves the whole group on the running config.
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { startCli } from './helpers/cli.js';
import { request } from './helpers/http.js';
import { freePort } from './helpers/redis.js';
import { roundTrip, startEcho } from './helpers/util.js';
import { tempDir } from './helpers/tmp.js';

void t.test('a group reload is whole or refused', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise((r) => blocker.close(r)));
  const busy = (blocker.address() as net.AddressInfo).port;
  const dir = tempDir('sidepool-workers-reload-');
  const path = join(dir, 'sidepool.yaml');
  const [port, portNew, adminPort] = [await freePort(), await freePort(), await freePort()];
  const route = { name: 'echo', listen: `127.0.0.1:${port}`, upstream: upstream.address };
  const write = (config: Record<string, unknown>) =>
    writeFile(
      path,
      YAML.stringify({ workers: 2, admin: { listen: `127.0.0.1:${adminPort}` }, ...config }),
    );
  await write({ routes: [route] });
  const cli = startCli(['run', '--config', path]);
  t.teardown(() => cli.child.kill('SIGKILL'));
  await cli.waitFor((l) => l.msg === 'workers started', 60_000);

  // workers changes on restart only: refused by name, nothing applied.
  await write({
    workers: 3,
    routes: [route, { ...route, name: 'new', listen: `127.0.0.1:${portNew}` }],
  });
  const refused = await request(adminPort, '/reload', 'POST');
  t.equal(refused.status, 400);
  t.match(JSON.parse(refused.body), { problems: [/^workers: changes on restart only/] });
  t.equal(
    await new Promise((r) => {
      const s = net.connect(portNew, '127.0.0.1');
      s.on('error', (e: NodeJS.ErrnoException) => r(e.code));
      s.on('connect', () => {
        s.destroy();
        r('connected');
      });
    }),
    'ECONNREFUSED',
    'the route beside the refused change did not start',
  );

  // A route moved to a busy port: every worker fails it, every route stays as it was.
  await write({ routes: [{ ...route, listen: `127.0.0.1:${busy}` }] });
  const failed = await request(adminPort, '/reload', 'POST');
  t.equal(failed.status, 400);
  t.match(failed.body, /EADDRINUSE/);
  t.equal((await roundTrip(port, 'still')).toString(), 'still');
  t.equal((await request(adminPort, '/readyz')).status, 200);
  const config = JSON.parse((await request(adminPort, '/config')).body) as {
    routes: Array<{ listen: string }>;
  };
  t.equal(config.routes[0]?.listen, route.listen, '/config shows the running config');

  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0);
});
