import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { startCli } from './helpers/cli.js';
import { metric, parseMetrics, request } from './helpers/http.js';
import { freePort } from './helpers/redis.js';
import { startEcho, until } from './helpers/util.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

void t.test(
  'a worker killed while the primary sends to it (scrapes in a loop): the primary stays up, every scrape answers, the worker is restarted',
  async (t) => {
    const upstream = await startEcho();
    t.teardown(() => upstream.close());
    const dir = await mkdtemp(join(tmpdir(), 'sidepool-workers-'));
    const path = join(dir, 'sidepool.yaml');
    const [port, adminPort] = [await freePort(), await freePort()];
    await writeFile(
      path,
      YAML.stringify({
        workers: 2,
        admin: { listen: `127.0.0.1:${adminPort}` },
        routes: [
          {
            name: 'echo',
            listen: `127.0.0.1:${port}`,
            upstream: upstream.address,
            pool: { minIdle: 0 },
          },
        ],
      }),
    );
    const cli = startCli(['run', '--config', path]);
    t.teardown(() => cli.child.kill('SIGKILL'));
    await cli.waitFor((l) => l.msg === 'workers started', 15_000);
    const workerPids = (): number[] => [
      ...new Set(cli.lines.filter((l) => l.msg === 'route listening').map((l) => l.pid as number)),
    ];
    let primaryExited = false;
    void cli.exited.then(() => (primaryExited = true));

    const statuses = new Map<string, number>();
    let scraping = true;
    // Scrapes in flight all the time: the primary sends a call to each worker per scrape.
    const scraper = async (): Promise<void> => {
      while (scraping && !primaryExited) {
        const outcome = await request(adminPort, '/metrics').then(
          (r) => String(r.status),
          (err: NodeJS.ErrnoException) => err.code ?? 'error',
        );
        statuses.set(outcome, (statuses.get(outcome) ?? 0) + 1);
      }
    };
    const scrapers = Array.from({ length: 16 }, scraper);
    const kills = 3;
    for (let i = 0; i < kills && !primaryExited; i++) {
      await until(
        () => workerPids().filter(alive).length === 2 || primaryExited,
        15_000,
        'two workers',
      );
      const [victim] = workerPids().filter(alive) as [number];
      process.kill(victim, 'SIGKILL');
      await until(() => !alive(victim) || primaryExited, 5000, 'the worker gone');
    }
    await until(
      () => workerPids().filter(alive).length === 2 || primaryExited,
      15_000,
      'the last worker restarted',
    );
    scraping = false;
    await Promise.all(scrapers);
    t.equal(primaryExited, false, `the primary stayed up; ${cli.stderr().slice(0, 2000)}`);
    t.same(
      [...statuses.keys()],
      ['200'],
      `every scrape answered 200: ${JSON.stringify([...statuses])}`,
    );
    const m = parseMetrics((await request(adminPort, '/metrics')).body);
    t.equal(metric(m, 'sidepool_worker_restarts_total'), kills);
    t.equal(metric(m, 'sidepool_workers'), 2);
    cli.child.kill('SIGTERM');
    t.equal(await cli.exited, 0);
  },
);
