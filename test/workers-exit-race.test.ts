import t from 'tap';
import { processAlive, startSidepoolProcess } from './helpers/group.js';
import { metric, request } from './helpers/http.js';
import { startEcho, until } from './helpers/util.js';

void t.test(
  'a worker killed while the primary sends to it (scrapes in a loop): the primary stays up, every scrape answers, the worker is restarted',
  async (t) => {
    const upstream = await startEcho();
    t.teardown(() => upstream.close());
    const group = await startSidepoolProcess(t, upstream.address, { minIdle: 0 });
    const { cli, adminPort } = group;
    let primaryExited = false;
    void cli.exited.then(() => (primaryExited = true));
    const running = (): number[] => group.workerPids().filter(processAlive);

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
      await until(() => running().length === 2 || primaryExited, 15_000, 'two workers');
      const [victim] = running() as [number];
      process.kill(victim, 'SIGKILL');
      await until(() => !processAlive(victim) || primaryExited, 5000, 'the worker gone');
    }
    await until(() => running().length === 2 || primaryExited, 15_000, 'the last worker restarted');
    scraping = false;
    await Promise.all(scrapers);
    t.equal(primaryExited, false, `the primary stayed up; ${cli.stderr().slice(0, 2000)}`);
    t.same(
      [...statuses.keys()],
      ['200'],
      `every scrape answered 200: ${JSON.stringify([...statuses])}`,
    );
    const m = await group.metrics();
    t.equal(metric(m, 'sidepool_worker_restarts_total'), kills);
    t.equal(metric(m, 'sidepool_workers'), 2);
    cli.child.kill('SIGTERM');
    t.equal(await cli.exited, 0);
  },
);
