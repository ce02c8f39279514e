import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import pg from 'pg';
import postgres from 'postgres';
import { chown, mkdtemp, readFile, rm, writeFile, appendFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { App, type AppOptions } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';
import { freePort } from './redis.js';
import { captureLogger } from './util.js';

const run = promisify(execFile);
export const PG_BIN = '/usr/lib/postgresql/15/bin';

/**
 * A private PostgreSQL 15 cluster for one test file: initdb in a temp dir (as the
 * `postgres` system user, since initdb refuses root), a free loopback port, unix sockets in
 * the temp dir, fsync off. The superuser `postgres` is trusted on loopback, so tests can
 * set up users and look at pg_stat_activity; other users authenticate as pg_hba says.
 */
export interface PgCluster {
  port: number;
  dir: string;
  /** Runs SQL as the superuser with psql; returns the unaligned, tuples-only output. */
  sql(query: string, database?: string): Promise<string>;
  /** Appends pg_hba lines (before the catch-all) and reloads. */
  hba(lines: string[]): Promise<void>;
  /** Backends of `user` (client backends only) in pg_stat_activity. */
  backends(user: string): Promise<number>;
  restart(mode?: 'fast' | 'smart' | 'immediate'): Promise<void>;
  /** `pg_ctl stop -m <mode> -w`; resolves with how long it took, in ms. Rejects when it fails. */
  stopServer(mode?: 'fast' | 'immediate', waitSeconds?: number): Promise<number>;
  /** `pg_ctl start -w` on the same port and data directory. */
  startServer(): Promise<void>;
  stop(): Promise<void>;
  pid(): Promise<number>;
}

export interface PgClusterOptions {
  /** Extra postgresql.conf lines. */
  conf?: string[];
  /** Certificate and key for ssl = on (copied into the data directory). */
  ssl?: { cert: string; key: string };
}

const UID_USER = 'postgres';

async function asPostgres(args: string[], cwd?: string, timeoutMs = 60_000): Promise<string> {
  const { stdout } = await run('runuser', ['-u', UID_USER, '--', ...args], {
    cwd,
    timeout: timeoutMs,
  });
  return stdout;
}

/** Runs SQL with psql against `port` (a cluster, or sidepool in front of one). */
export async function psql(
  port: number,
  query: string,
  database = 'postgres',
  user = 'postgres',
): Promise<string> {
  const { stdout } = await run(
    'psql',
    [
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '-U',
      user,
      '-d',
      database,
      '-XAtq',
      '-v',
      'ON_ERROR_STOP=1',
      '-c',
      query,
    ],
    { timeout: 30_000 },
  );
  return stdout.trim();
}

export async function startPostgres(options: PgClusterOptions = {}): Promise<PgCluster> {
  if (!existsSync(path.join(PG_BIN, 'initdb'))) {
    throw new Error(
      `PostgreSQL 15 binaries are missing in ${PG_BIN}: install the Debian packages postgresql and postgresql-client`,
    );
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'sidepool-pg-'));
  const { stdout: ids } = await run('id', ['-u', UID_USER]);
  const { stdout: gids } = await run('id', ['-g', UID_USER]);
  const uid = Number(ids.trim());
  const gid = Number(gids.trim());
  await chown(dir, uid, gid);
  const data = path.join(dir, 'data');
  await asPostgres(
    [
      path.join(PG_BIN, 'initdb'),
      '-D',
      data,
      '-U',
      'postgres',
      '--auth-local=trust',
      '--auth-host=scram-sha-256',
      '--no-sync',
      '--no-instructions',
      '-E',
      'UTF8',
      '--locale=C',
    ],
    dir,
  );
  const port = await freePort();
  const conf = [
    `port = ${port}`,
    `listen_addresses = '127.0.0.1'`,
    `unix_socket_directories = '${dir}'`,
    'fsync = off',
    'synchronous_commit = off',
    'full_page_writes = off',
    'max_connections = 120',
    'shared_buffers = 16MB',
    "password_encryption = 'scram-sha-256'",
    "log_min_messages = 'warning'",
    ...(options.conf ?? []),
  ];
  if (options.ssl !== undefined) {
    const cert = path.join(data, 'server.crt');
    const key = path.join(data, 'server.key');
    await writeFile(cert, await readFile(options.ssl.cert));
    await writeFile(key, await readFile(options.ssl.key), { mode: 0o600 });
    await chown(cert, uid, gid);
    await chown(key, uid, gid);
    conf.push('ssl = on', "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'");
  }
  await appendFile(path.join(data, 'postgresql.conf'), `\n${conf.join('\n')}\n`);
  const hbaFile = path.join(data, 'pg_hba.conf');
  const baseHba = [
    'local all all trust',
    'host all postgres 127.0.0.1/32 trust',
    'hostssl all all 127.0.0.1/32 scram-sha-256',
    'host all all 127.0.0.1/32 scram-sha-256',
  ];
  let extraHba: string[] = [];
  const writeHba = () => writeFile(hbaFile, [...extraHba, ...baseHba].join('\n') + '\n');
  await writeHba();
  const pgCtl = path.join(PG_BIN, 'pg_ctl');
  const log = path.join(dir, 'postgres.log');
  const startServer = async (): Promise<void> => {
    await asPostgres([pgCtl, 'start', '-w', '-t', '60', '-D', data, '-l', log, '-s']);
  };
  await startServer();

  const sql = (query: string, database = 'postgres'): Promise<string> =>
    psql(port, query, database);
  const cluster: PgCluster = {
    port,
    dir,
    sql,
    hba: async (lines) => {
      extraHba = [...extraHba, ...lines];
      await writeHba();
      await sql('SELECT pg_reload_conf()');
    },
    backends: async (user) =>
      Number(
        await sql(
          `SELECT count(*) FROM pg_stat_activity WHERE usename = '${user}' AND backend_type = 'client backend'`,
        ),
      ),
    restart: async (mode = 'fast') => {
      await asPostgres([
        pgCtl,
        'restart',
        '-w',
        '-t',
        '60',
        '-m',
        mode,
        '-D',
        data,
        '-l',
        log,
        '-s',
      ]);
    },
    stopServer: async (mode = 'fast', waitSeconds = 60) => {
      const started = performance.now();
      await asPostgres(
        [pgCtl, 'stop', '-w', '-t', String(waitSeconds), '-m', mode, '-D', data, '-s'],
        undefined,
        (waitSeconds + 30) * 1000,
      );
      return performance.now() - started;
    },
    startServer,
    pid: async () =>
      Number((await readFile(path.join(data, 'postmaster.pid'), 'utf8')).split('\n')[0]),
    stop: async () => {
      try {
        const pid = await cluster.pid();
        process.kill(pid, 'SIGINT');
        const deadline = Date.now() + 30_000;
        while (Date.now() < deadline) {
          try {
            process.kill(pid, 0);
          } catch {
            break;
          }
          await new Promise((r) => setTimeout(r, 50));
        }
      } catch {
        // Not running.
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
  return cluster;
}

/** sidepool in-process with one postgres route in front of `cluster`. */
export async function startPgProxy(
  cluster: Pick<PgCluster, 'port'>,
  postgres: Record<string, unknown>,
  pool: Record<string, unknown> = {},
  route: Record<string, unknown> = {},
  top: Record<string, unknown> = { admin: false },
  options: AppOptions = {},
) {
  const config = parseConfig({
    ...top,
    routes: [
      {
        name: 'pg',
        listen: '127.0.0.1:0',
        mode: 'postgres',
        upstream: `127.0.0.1:${cluster.port}`,
        pool: { minIdle: 0, ...pool },
        postgres,
        ...route,
      },
    ],
  });
  const { logger, lines } = captureLogger('debug');
  const app = new App(config, logger, options);
  await app.start();
  const r = app.firstRoute;
  return { app, route: r, port: r.port, lines };
}

/**
 * A test file's `proxyFor(t, settings, pool, top)`: sidepool in front of `cluster` with
 * `base` postgres settings under them, stopped when the test ends. `pool` is a maxSize or
 * pool settings (maxSize `defaultMaxSize` unless they say); `top`, top-level config keys.
 */
export function proxyMaker(
  cluster: Pick<PgCluster, 'port'>,
  base: Record<string, unknown>,
  defaultMaxSize: number,
) {
  return async (
    t: { teardown(fn: () => unknown): void },
    settings: Record<string, unknown> = {},
    pool: number | Record<string, unknown> = defaultMaxSize,
    top?: Record<string, unknown>,
  ): Promise<Awaited<ReturnType<typeof startPgProxy>>> => {
    const poolSettings =
      typeof pool === 'number' ? { maxSize: pool } : { maxSize: defaultMaxSize, ...pool };
    const proxy = await startPgProxy(cluster, { ...base, ...settings }, poolSettings, {}, top);
    t.teardown(() => proxy.app.stop(2000));
    return proxy;
  };
}

/**
 * A cluster (stopped in teardown) where role `app`, password `secret`, owns database
 * `appdb`: what the postgres mode's test files log in as.
 */
export async function startAppCluster(
  t: { teardown(fn: () => unknown): void },
  options: PgClusterOptions = {},
): Promise<PgCluster> {
  const cluster = await startPostgres(options);
  t.teardown(() => cluster.stop());
  await cluster.sql(`CREATE ROLE app LOGIN PASSWORD 'secret'`);
  await cluster.sql(`CREATE DATABASE appdb OWNER app`);
  return cluster;
}

/** An auth file in the cluster's directory: user → secret lines, PgBouncer's format. */
export async function writeAuthFile(
  dir: string,
  users: Record<string, string>,
  name = 'userlist.txt',
): Promise<string> {
  const file = path.join(dir, name);
  const text = Object.entries(users)
    .map(([user, secret]) => `"${user.replace(/"/g, '""')}" "${secret.replace(/"/g, '""')}"`)
    .join('\n');
  await writeFile(file, `${text}\n`);
  return file;
}

/** A message read by RawClient: its type and body. */
export interface RawMessage {
  code: string;
  body: Buffer;
}

/**
 * A bare protocol client for what drivers do not let a test do (pipelines, bad bytes): it
 * writes bytes and reads typed messages.
 */
export class RawClient {
  readonly socket: net.Socket;
  private buffer = Buffer.alloc(0);
  private readonly messages: RawMessage[] = [];
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      while (this.buffer.length >= 5) {
        const length = this.buffer.readInt32BE(1);
        if (this.buffer.length < length + 1) break;
        this.messages.push({
          code: String.fromCharCode(this.buffer[0] as number),
          body: this.buffer.subarray(5, length + 1),
        });
        this.buffer = this.buffer.subarray(length + 1);
      }
      this.wake();
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  /** Over a socket already connected (a TLS one, for direct TLS). */
  static over(socket: net.Socket): RawClient {
    return new RawClient(socket);
  }

  static async connect(port: number): Promise<RawClient> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new RawClient(socket);
  }

  /** Connects and logs in with a trust route: startup, then messages up to ReadyForQuery. */
  static async login(port: number, user: string, database: string): Promise<RawClient> {
    const client = await RawClient.connect(port);
    client.write(startup({ user, database }));
    const got = await client.readUntil('Z');
    const error = got.find((m) => m.code === 'E');
    if (error !== undefined) throw new Error(`login failed: ${errorText(error)}`);
    return client;
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Messages up to and including the n-th of type `code`. */
  async readUntil(code: string, n = 1, timeoutMs = 10_000): Promise<RawMessage[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let seen = 0;
      const index = this.messages.findIndex((m) => m.code === code && ++seen === n);
      if (index >= 0) return this.messages.splice(0, index + 1);
      if (this.closed)
        throw new Error(`closed before ${code}: got ${this.messages.map((m) => m.code).join('')}`);
      if (Date.now() > deadline)
        throw new Error(
          `no ${code} within ${timeoutMs}ms: got ${this.messages.map((m) => m.code).join('')}`,
        );
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Everything until the server closes the connection. */
  async readToClose(timeoutMs = 10_000): Promise<RawMessage[]> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('the server did not close');
      await new Promise((r) => setTimeout(r, 20));
    }
    return this.messages.splice(0);
  }

  close(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

/** A startup packet with these parameters (protocol 3.0 unless given). */
export function startup(params: Record<string, string>, version = 196608): Buffer {
  const parts: Buffer[] = [Buffer.alloc(4)];
  parts[0]?.writeInt32BE(version);
  for (const [k, v] of Object.entries(params)) parts.push(Buffer.from(`${k}\0${v}\0`));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  const len = Buffer.alloc(4);
  len.writeInt32BE(body.length + 4);
  return Buffer.concat([len, body]);
}

/** A typed frontend message. */
export function frontend(code: string, body: Buffer | string = ''): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body) : body;
  const out = Buffer.alloc(5 + b.length);
  out.write(code, 0, 'latin1');
  out.writeInt32BE(4 + b.length, 1);
  b.copy(out, 5);
  return out;
}

export const pgQuery = (sql: string): Buffer => frontend('Q', `${sql}\0`);

/** Parse, Bind, Execute of an unnamed statement without parameters, then Sync. */
export function pgExtended(sql: string, sync = true): Buffer {
  const parts = [
    frontend('P', Buffer.concat([Buffer.from(`\0${sql}\0`), Buffer.from([0, 0])])),
    frontend('B', Buffer.from([0, 0, 0, 0, 0, 0, 0, 0])),
    frontend('E', Buffer.from([0, 0, 0, 0, 0])),
  ];
  if (sync) parts.push(frontend('S'));
  return Buffer.concat(parts);
}

/** The SQLSTATE and message of an ErrorResponse. */
export function errorText(m: RawMessage): string {
  const fields = new Map<string, string>();
  let at = 0;
  while (at < m.body.length && m.body[at] !== 0) {
    const type = String.fromCharCode(m.body[at] as number);
    const end = m.body.indexOf(0, at + 1);
    fields.set(type, m.body.toString('utf8', at + 1, end));
    at = end + 1;
  }
  return `${fields.get('C')} ${fields.get('M')}`;
}

/** The first column of each DataRow, as text. */
export function firstColumns(messages: RawMessage[]): string[] {
  return messages
    .filter((m) => m.code === 'D')
    .map((m) => {
      const length = m.body.readInt32BE(2);
      return m.body.toString('utf8', 6, 6 + length);
    });
}

/** A `pg` client as user app (password secret) on appdb, errors swallowed (tests await them). */
export function pgClient(port: number, extra: Partial<pg.ClientConfig> = {}): pg.Client {
  const c = new pg.Client({
    host: '127.0.0.1',
    port,
    user: 'app',
    password: 'secret',
    database: 'appdb',
    ...extra,
  });
  c.on('error', () => {});
  return c;
}

/** pgClient, connected. */
export async function connectPg(
  port: number,
  extra: Partial<pg.ClientConfig> = {},
): Promise<pg.Client> {
  const c = pgClient(port, extra);
  await c.connect();
  return c;
}

/** A `postgres` (postgres.js) client as user app on appdb, one connection, named statements on. */
export function postgresClient(port: number, extra: postgres.Options<Record<string, never>> = {}) {
  return postgres({
    host: '127.0.0.1',
    port,
    user: 'app',
    password: 'secret',
    database: 'appdb',
    max: 1,
    onnotice: () => {},
    ...extra,
  });
}
