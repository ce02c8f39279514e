import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, chown, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './redis.js';

const run = promisify(execFile);
export const PG_BIN = '/usr/lib/postgresql/15/bin';

/**
 * A private PostgreSQL 15 cluster for one test file: initdb in a temp dir (as the
 * `postgres` system user: initdb refuses root), a free loopback port, fsync off, the
 * superuser trusted on loopback. Debian package: postgresql.
 */
export interface PgCluster {
  port: number;
  dir: string;
  /** Runs SQL as the superuser with psql against `port` (the cluster's unless given). */
  sql(query: string, port?: number): Promise<string>;
  /** `pg_ctl stop -m <mode> -w`; resolves with how long it took, in ms. Rejects when it fails. */
  stopServer(mode?: 'fast' | 'immediate', waitSeconds?: number): Promise<number>;
  /** `pg_ctl start -w` on the same port and data directory. */
  startServer(): Promise<void>;
  /** Stops the server if it runs and removes the directory. */
  stop(): Promise<void>;
}

export interface PgClusterOptions {
  /** Extra postgresql.conf lines. */
  conf?: string[];
}

async function asPostgres(args: string[], timeoutMs = 120_000): Promise<string> {
  const { stdout } = await run('runuser', ['-u', 'postgres', '--', ...args], {
    timeout: timeoutMs,
  });
  return stdout;
}

export async function startPostgres(options: PgClusterOptions = {}): Promise<PgCluster> {
  if (!existsSync(path.join(PG_BIN, 'initdb'))) {
    throw new Error(
      `PostgreSQL 15 binaries are missing in ${PG_BIN}: install the Debian package postgresql`,
    );
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'sidepool-pg-'));
  const uid = Number((await run('id', ['-u', 'postgres'])).stdout.trim());
  const gid = Number((await run('id', ['-g', 'postgres'])).stdout.trim());
  await chown(dir, uid, gid);
  const data = path.join(dir, 'data');
  const log = path.join(dir, 'postgres.log');
  await asPostgres([
    path.join(PG_BIN, 'initdb'),
    '-D',
    data,
    '-U',
    'postgres',
    '--auth=trust',
    '--no-sync',
    '--no-instructions',
    '-E',
    'UTF8',
    '--locale=C',
  ]);
  const port = await freePort();
  const conf = [
    `port = ${port}`,
    `listen_addresses = '127.0.0.1'`,
    `unix_socket_directories = '${dir}'`,
    'fsync = off',
    'synchronous_commit = off',
    'full_page_writes = off',
    'shared_buffers = 16MB',
    "log_min_messages = 'warning'",
    ...(options.conf ?? []),
  ];
  await appendFile(path.join(data, 'postgresql.conf'), `\n${conf.join('\n')}\n`);
  await writeFile(
    path.join(data, 'pg_hba.conf'),
    'local all all trust\nhost all all 127.0.0.1/32 trust\n',
  );
  const pgCtl = path.join(PG_BIN, 'pg_ctl');
  const startServer = async (): Promise<void> => {
    await asPostgres([pgCtl, 'start', '-w', '-t', '60', '-D', data, '-l', log, '-s']);
  };
  await startServer();
  const running = async (): Promise<boolean> => {
    try {
      const pid = Number(
        (await readFile(path.join(data, 'postmaster.pid'), 'utf8')).split('\n')[0],
      );
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  return {
    port,
    dir,
    sql: async (query, through = port) => {
      const { stdout } = await run(
        'psql',
        [
          '-h',
          '127.0.0.1',
          '-p',
          String(through),
          '-U',
          'postgres',
          '-d',
          'postgres',
          '-XAtq',
          '-v',
          'ON_ERROR_STOP=1',
          '-c',
          query,
        ],
        { timeout: 30_000 },
      );
      return stdout.trim();
    },
    stopServer: async (mode = 'fast', waitSeconds = 60) => {
      const started = performance.now();
      await asPostgres(
        [pgCtl, 'stop', '-w', '-t', String(waitSeconds), '-m', mode, '-D', data, '-s'],
        (waitSeconds + 30) * 1000,
      );
      return performance.now() - started;
    },
    startServer,
    stop: async () => {
      if (await running()) {
        await asPostgres([
          pgCtl,
          'stop',
          '-w',
          '-t',
          '60',
          '-m',
          'immediate',
          '-D',
          data,
          '-s',
        ]).catch(() => undefined);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
