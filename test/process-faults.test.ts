import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { startSidepoolProcess } from './helpers/group.js';
import { metric, parseMetrics, request } from './helpers/http.js';
import { roundTrip, startEcho, until } from './helpers/util.js';
import { tempDir } from './helpers/tmp.js';

/**
 * A module preloaded into sidepool's processes (node --import) that plants a fault when
 * the process gets SIGUSR2: the kind of bug the policy is for, in a real process.
 */
const PLANTED = `
process.on('SIGUSR2', () => {
  if (process.env.PLANTED_FAULT === 'rejection') void Promise.reject(new Error('planted rejection'));
  else setImmediate(() => { throw new Error('planted exception'); });
});
`;

async function startSidepool(
  t: { teardown(fn: () => unknown): void },
  fault: 'rejection' | 'exception',
  workers = 1,
) {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const dir = tempDir('sidepool-faults-');
  const preload = join(dir, 'planted.mjs');
  await writeFile(preload, PLANTED);
  return startSidepoolProcess(
    t,
    upstream.address,
    {},
    { workers, env: { PLANTED_FAULT: fault }, nodeFlags: ['--import', preload] },
  );
}

void t.test(
  'an unhandled rejection is logged and counted, and sidepool keeps serving',
  async (t) => {
    const { cli, port, adminPort } = await startSidepool(t, 'rejection');
    cli.child.kill('SIGUSR2');
    const line = await cli.waitFor((l) => l.kind === 'unhandled_rejection');
    t.equal(line.level, 50, 'logged as an error');
    t.match(String(line.err), /planted rejection/);
    t.equal((await roundTrip(port, 'still here')).toString(), 'still here');
    const m = parseMetrics((await request(adminPort, '/metrics')).body);
    t.equal(metric(m, 'sidepool_internal_errors_total', { kind: 'unhandled_rejection' }), 1);
    t.equal(metric(m, 'sidepool_internal_errors_total', { kind: 'uncaught_exception' }), 0);
    cli.child.kill('SIGTERM');
    t.equal(await cli.exited, 0);
  },
);

void t.test('an uncaught exception is logged as fatal and the process exits with 70', async (t) => {
  const { cli } = await startSidepool(t, 'exception');
  cli.child.kill('SIGUSR2');
  t.equal(await cli.exited, 70);
  const line = cli.lines.find((l) => l.kind === 'uncaught_exception');
  t.equal(line?.level, 60, 'logged as fatal');
  t.match(String(line?.err), /planted exception/);
});

void t.test(
  'with workers: a rejection in a worker is counted in the group metrics; a worker that throws exits with 70 and is started again',
  async (t) => {
    const rejecting = await startSidepool(t, 'rejection', 2);
    const [one] = rejecting.workerPids() as [number];
    process.kill(one, 'SIGUSR2');
    await rejecting.cli.waitFor((l) => l.kind === 'unhandled_rejection' && l.pid === one);
    const m = parseMetrics((await request(rejecting.adminPort, '/metrics')).body);
    t.equal(metric(m, 'sidepool_internal_errors_total', { kind: 'unhandled_rejection' }), 1);
    t.equal(metric(m, 'sidepool_worker_restarts_total'), 0, 'the worker kept running');
    rejecting.cli.child.kill('SIGTERM');
    t.equal(await rejecting.cli.exited, 0);

    const throwing = await startSidepool(t, 'exception', 2);
    const [victim] = throwing.workerPids() as [number];
    process.kill(victim, 'SIGUSR2');
    const exited = await throwing.cli.waitFor((l) => l.msg === 'worker exited: starting it again');
    t.equal(exited.exit, 'exit code 70');
    await until(() => throwing.workerPids().length === 3, 15_000, 'a new worker listening');
    t.equal((await roundTrip(throwing.port, 'served')).toString(), 'served');
    throwing.cli.child.kill('SIGTERM');
    t.equal(await throwing.cli.exited, 0);
  },
);
