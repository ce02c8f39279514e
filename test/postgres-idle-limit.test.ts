import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { promisify } from 'node:util';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { startPostgres } from './helpers/postgres.js';
import { until } from './helpers/util.js';

const run = promisify(execFile);

/** A SCRAM-SHA-256 verifier for `password` (RFC 7677) in PostgreSQL's stored form. */
function scramVerifier(password: string, iterations: number): string {
  const salt = crypto.randomBytes(16);
  const salted = crypto.pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const hmac = (key: Buffer, text: string) =>
    crypto.createHmac('sha256', key).update(text).digest();
  const storedKey = crypto.createHash('sha256').update(hmac(salted, 'Client Key')).digest();
  const serverKey = hmac(salted, 'Server Key');
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}
const MOVED = 'upstream closed the link before answering: the session moves to another';
const LEARNED =
  'the upstream closes idle links at about the same age: warm links are recycled before it';

void t.test(
  'PostgreSQL authentication_timeout = 2s: learned, and no psql login fails',
  async (t) => {
    const pg = await startPostgres({ conf: ['authentication_timeout = 2s'] });
    t.teardown(() => pg.stop());
    // A password login as apps do it (SCRAM: the server's challenge, then the client's proof
    // after key stretching). PostgreSQL's timer can fire in the middle of it, after its
    // first answer, when the session can no longer move to another link. The stored
    // verifier asks for 20,000 iterations (4,096 by default) so that the client's part
    // takes a noticeable time, as a slow or busy client's does.
    await pg.sql(`CREATE ROLE app LOGIN PASSWORD '${scramVerifier('secret', 20_000)}'`);
    const proxy = await startProxy(`127.0.0.1:${pg.port}`, { minIdle: 4 });
    t.teardown(() => proxy.app.stop(100));
    /** Links PostgreSQL closed: idle ones, and ones a session had just taken. */
    const closedByServer = (lines: typeof proxy.lines): number =>
      lines.filter((l) => l.msg === MOVED || l.msg === 'idle link lost').length;

    // PostgreSQL closes each warm link 2s after its accept (no startup packet came). Wait
    // until sidepool has learned that, or until it has lost 12 links (three bursts of
    // minIdle) without learning it, as it did before: then it redials forever.
    const started = Date.now();
    await until(
      () => proxy.pool.upstreamIdleLimitMs !== undefined || closedByServer(proxy.lines) >= 12,
      60_000,
      'the limit learned, or 12 links closed by PostgreSQL',
    );
    const learnedAt = Date.now();
    const closedBefore = closedByServer(proxy.lines);
    const linesBefore = proxy.lines.length;
    const limit = proxy.pool.upstreamIdleLimitMs;
    t.ok(
      limit !== undefined && limit >= 1900 && limit <= 2600,
      `learned ${limit}ms for authentication_timeout = 2s (after ${closedBefore} links lost)`,
    );

    /**
     * psql connections, four loops at a time, spread over time so that they meet links of
     * every age. The loops run in shells of their own: spawning each psql from this
     * process would stall the loop sidepool runs on (a fork waits for the exec).
     */
    const COUNT = 40;
    const LOOPS = 4;
    const connections = async (port: number): Promise<number> => {
      const loop = (from: number): Promise<string> =>
        run(
          'bash',
          [
            '-c',
            `for i in $(seq ${from} ${LOOPS} ${COUNT - 1}); do
               out=$(PGPASSWORD=secret psql -h 127.0.0.1 -p ${port} -U app -d postgres -XAtqc "SELECT $i" 2>&1)
               [ "$out" = "$i" ] && echo ok || echo "failed $i: $(echo $out | tr '\\n' ' ')"
               sleep 0.$((RANDOM % 10))
             done`,
          ],
          { timeout: 120_000 },
        ).then((r) => r.stdout);
      const outputs = await Promise.all(Array.from({ length: LOOPS }, (_, i) => loop(i)));
      const results = outputs.join('').trim().split('\n');
      t.equal(results.length, COUNT, `${COUNT} psql runs on port ${port}`);
      const failures = results.filter((line) => line !== 'ok');
      if (failures.length > 0) t.comment(failures.join('\n'));
      return failures.length;
    };
    const [direct, through] = [await connections(pg.port), await connections(proxy.port)];
    t.equal(
      through,
      direct,
      `failed psql connections: ${through} of ${COUNT} through sidepool, ${direct} direct`,
    );
    t.equal(through, 0);
    // Once learned, links are recycled long before PostgreSQL's timer. On a quiet machine
    // it closes none; here a loop starved of CPU for half a second may still lose one.
    const closedAfter = closedByServer(proxy.lines.slice(linesBefore));
    const perSecondBefore = closedBefore / ((learnedAt - started) / 1000);
    const perSecondAfter = closedAfter / ((Date.now() - learnedAt) / 1000);
    t.ok(
      perSecondAfter < perSecondBefore / 10,
      `links closed by PostgreSQL: ${closedBefore} in ${learnedAt - started}ms before, ` +
        `${closedAfter} in ${Date.now() - learnedAt}ms after`,
    );
    t.equal(proxy.lines.filter((l) => l.msg === LEARNED).length, 1, 'logged once');
  },
);
