import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import t from 'tap';
import { startCli } from './helpers/cli.js';
import { freePort, startRedis } from './helpers/redis.js';
import { upstreamConnections } from './helpers/redis-mode.js';

void t.test(
  'with workers: 2, each worker multiplexes onto its share: Redis sees at most maxSize',
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const dir = mkdtempSync(path.join(tmpdir(), 'sidepool-redis-workers-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const [port, adminPort] = [await freePort(), await freePort()];
    const file = path.join(dir, 'sidepool.json');
    writeFileSync(
      file,
      JSON.stringify({
        workers: 2,
        admin: { listen: `127.0.0.1:${adminPort}` },
        drain: { timeout: '2s' },
        log: { level: 'info' },
        routes: [
          {
            name: 'cache',
            listen: `127.0.0.1:${port}`,
            mode: 'redis',
            upstream: `127.0.0.1:${redis.port}`,
            pool: { minIdle: 2, maxSize: 4 },
          },
        ],
      }),
    );
    const cli = startCli(['run', '--config', file]);
    t.teardown(() => cli.child.kill('SIGKILL'));
    await cli.waitFor((l) => l.msg === 'workers started', 20_000);

    const clients = Array.from(
      { length: 30 },
      () => new Redis({ host: '127.0.0.1', port, lazyConnect: true, enableAutoPipelining: true }),
    );
    t.teardown(() => clients.forEach((c) => c.disconnect()));
    await Promise.all(clients.map((c) => c.connect()));
    let peak = 0;
    let running = true;
    const sampler = (async () => {
      while (running) {
        peak = Math.max(peak, await upstreamConnections(redis.port));
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    const results = await Promise.all(
      clients.map(async (client, c) => {
        for (let round = 0; round < 20; round++) {
          await Promise.all(
            Array.from({ length: 10 }, (_, i) => client.set(`w:${c}:${i}`, `${round}`)),
          );
          const values = await Promise.all(
            Array.from({ length: 10 }, (_, i) => client.get(`w:${c}:${i}`)),
          );
          if (!values.every((v) => v === `${round}`)) return false;
        }
        return true;
      }),
    );
    running = false;
    await sampler;
    t.ok(results.every(Boolean), 'every client read its own writes');
    t.ok(peak <= 4, `Redis saw at most maxSize connections over both workers (peak ${peak})`);
    const metrics = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
    const ok = /sidepool_redis_commands_total\{route="cache",result="ok"\} (\d+)/.exec(metrics);
    t.ok(Number(ok?.[1]) >= 30 * 20 * 20, 'the group counts the commands of both workers');
    t.match(metrics, /sidepool_pool_max_connections\{pool="cache\/db0"\} 4/);
  },
);
