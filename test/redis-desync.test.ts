import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { startRedis } from './helpers/redis.js';

/**
 * redis answers a desynchronised client with `-ERR Protocol error` and closes with the
 * client's input unread, so a reset follows the reply while the client is still sending.
 * The reply must reach the client through sidepool as it does direct.
 */

const run = promisify(execFile);
const DESYNC = fileURLToPath(new URL('./helpers/redis-desync.tcl', import.meta.url));

interface Tally {
  got: number;
  lost: number;
  sample: string;
}

/** redis's own "Protocol desync regression test", `rounds` × its three sequences. */
async function redisDesync(port: number, rounds: number): Promise<Tally> {
  const { stdout } = await run('tclsh', [DESYNC, '127.0.0.1', String(port), String(rounds)], {
    timeout: 100_000,
  });
  return JSON.parse(stdout) as Tally;
}

void t.test(
  "redis's protocol desync test: 201 exchanges direct and through sidepool, no reply lost",
  async (t) => {
    const redis = await startRedis();
    t.teardown(() => redis.stop());
    const proxy = await startProxy(`127.0.0.1:${redis.port}`, { minIdle: 4 });
    t.teardown(() => proxy.app.stop(100));
    const direct = await redisDesync(redis.port, 67);
    t.same(direct, { got: 201, lost: 0, sample: '' }, 'direct: every -ERR Protocol error arrives');
    const through = await redisDesync(proxy.port, 67);
    t.same(through, { got: 201, lost: 0, sample: '' }, 'through sidepool: the same');
  },
);
