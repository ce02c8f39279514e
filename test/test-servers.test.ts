// The helpers that start real servers for the other tests: a server that is missing, dies
// or never gets ready fails the test at once with its name, and leaves nothing running that
// would hold the test file open until tap's timeout.
import tap from 'tap';
import { TestPki } from './helpers/certs.js';
import { startDns } from './helpers/dnsmasq.js';
import { MissingToolError, startProcess } from './helpers/process.js';
import { freePort, startRedis } from './helpers/redis.js';

/** What a failed start could leave behind to hold the test open. */
const HOLDING = new Set([
  'Timeout',
  'TCPSocketWrap',
  'TCPServerWrap',
  'UDPWrap',
  'PipeWrap',
  'ProcessWrap',
]);

/** Timers, sockets and child processes this process holds now, by kind. */
function handles(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const kind of process.getActiveResourcesInfo())
    if (HOLDING.has(kind)) counts.set(kind, (counts.get(kind) ?? 0) + 1);
  return counts;
}

/**
 * What a failed start left behind: kinds more numerous than before it, once the handles it
 * closed have had the event-loop turns closing takes (a timer or poll left running stays).
 */
async function leftOver(before: Map<string, number>): Promise<string[]> {
  const extra = (): string[] =>
    [...handles()]
      .filter(([kind, n]) => n > (before.get(kind) ?? 0))
      .map(([kind, n]) => `${kind} ×${n - (before.get(kind) ?? 0)}`);
  for (const end = Date.now() + 5000; extra().length > 0 && Date.now() < end;)
    await new Promise((r) => setTimeout(r, 20));
  return extra();
}

/** Runs `start` with a PATH on which no server can be found. */
async function withoutPath<T>(start: () => Promise<T>): Promise<T> {
  const saved = process.env.PATH;
  process.env.PATH = '/nonexistent';
  try {
    return await start();
  } finally {
    process.env.PATH = saved;
  }
}

const missing: Array<[string, string, string, () => Promise<unknown>]> = [
  ['dnsmasq', 'dnsmasq', 'dnsmasq-base', () => startDns({ 'a.test': ['127.0.0.2'] })],
  ['redis-server', 'redis-server', 'redis-server', () => startRedis()],
  ['openssl', 'openssl', 'openssl', () => TestPki.create().then((pki) => pki.ca('ca'))],
];

// One at a time: each step counts what the process holds before and after it.
void tap.test('starting the servers the tests drive', async (t) => {
  for (const [helper, command, debianPackage, start] of missing) {
    await t.test(
      `${helper} missing: the start fails at once, naming it and its package`,
      async (t) => {
        const before = handles();
        const err = await withoutPath(start).then(
          () => undefined,
          (e: unknown) => e,
        );
        t.type(err, MissingToolError);
        t.match(err, { code: 'SIDEPOOL_TEST_TOOL_MISSING', command, debianPackage });
        t.match((err as Error).message, `apt-get install ${debianPackage}`);
        t.same(await leftOver(before), [], 'no timer, socket or process is left running');
      },
    );
  }

  await t.test(
    'a server that exits before it is ready: rejected at once with its output',
    async (t) => {
      const before = handles();
      const err = await startProcess({
        command: process.execPath,
        args: ['-e', 'console.error("bad config line 3"); process.exit(3)'],
        debianPackage: 'nodejs',
        ready: { port: await freePort() },
        timeoutMs: 600_000,
      }).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      t.match(err?.message, /exited \(3\) before it was ready: bad config line 3/);
      t.same(await leftOver(before), []);
    },
  );

  await t.test('a server never ready: rejected after the timeout, and killed', async (t) => {
    const before = handles();
    const err = await startProcess({
      command: process.execPath,
      args: ['-e', 'setInterval(() => {}, 1000)'],
      debianPackage: 'nodejs',
      ready: { output: /never printed/ },
      timeoutMs: 300,
    }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    t.match(err?.message, /was not ready within 300 ms/);
    t.same(await leftOver(before), [], 'the process was killed');
  });

  await t.test('a server that starts: ready on its port, stopped by stop()', async (t) => {
    const redis = await startRedis();
    t.equal(redis.process.exitCode, null, 'running');
    await redis.stop();
    await redis.stop();
    t.ok(redis.process.exitCode !== null || redis.process.signalCode !== null, 'stopped');
  });
});
