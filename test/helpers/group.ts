import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import YAML from 'yaml';
import { startCli, type RunningCli } from './cli.js';
import { parseMetrics, request } from './http.js';
import { freePort } from './redis.js';
import { tempDir } from './tmp.js';

/** A `sidepool run` process (with `workers`, a primary and its workers) with one route. */
export interface SidepoolProcess {
  cli: RunningCli;
  path: string;
  adminPort: number;
  port: number;
  /** Rewrites the config file with new pool settings (for a reload). */
  write(pool: Record<string, unknown>): Promise<void>;
  metrics(): Promise<Map<string, number>>;
  /** The pids of the processes whose route listens: the workers (or the single process). */
  workerPids(): number[];
}

export interface SidepoolProcessOptions {
  workers?: number;
  env?: NodeJS.ProcessEnv;
  nodeFlags?: string[];
  /** More top-level config keys (workerSockets, …). */
  top?: Record<string, unknown>;
}

/**
 * Writes a config with one route `echo` to `upstream` and an admin listener (free ports),
 * starts `sidepool run` on it and waits until it serves. Killed in teardown.
 */
export async function startSidepoolProcess(
  t: { teardown(fn: () => unknown): void },
  upstream: string,
  pool: Record<string, unknown>,
  options: SidepoolProcessOptions = {},
): Promise<SidepoolProcess> {
  const workers = options.workers ?? 2;
  const dir = tempDir('sidepool-process-');
  const path = join(dir, 'sidepool.yaml');
  const [port, adminPort] = [await freePort(), await freePort()];
  const write = (p: Record<string, unknown>) =>
    writeFile(
      path,
      YAML.stringify({
        workers,
        admin: { listen: `127.0.0.1:${adminPort}` },
        drain: { timeout: '2s' },
        ...options.top,
        routes: [{ name: 'echo', listen: `127.0.0.1:${port}`, upstream, pool: p }],
      }),
    );
  await write(pool);
  const cli = startCli(['run', '--config', path], options.env, undefined, options.nodeFlags);
  t.teardown(() => cli.child.kill('SIGKILL'));
  // Generous: node processes start slowly on a loaded machine.
  await cli.waitFor((l) => l.msg === (workers > 1 ? 'workers started' : 'admin listening'), 30_000);
  return {
    cli,
    path,
    adminPort,
    port,
    write,
    metrics: async () => parseMetrics((await request(adminPort, '/metrics')).body),
    workerPids: () => [
      ...new Set(cli.lines.filter((l) => l.msg === 'route listening').map((l) => l.pid as number)),
    ],
  };
}

/** Whether a process with this pid is alive. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
