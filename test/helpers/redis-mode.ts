import { execFile } from 'node:child_process';
import net from 'node:net';
import { REPLY_BAD, REPLY_MORE, ReplyFramer } from '../../src/proxy/redis/resp.js';
import { App } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';
import type { RedisServer } from './redis.js';
import { captureLogger } from './util.js';

/** sidepool in-process with one redis-mode route to `redis`. */
export async function startRedisProxy(
  redis: RedisServer | number,
  pool: Record<string, unknown> = {},
  settings: Record<string, unknown> = {},
  top: Record<string, unknown> = { admin: false },
  /** More keys of the route (`tls`, …). */
  routeExtra: Record<string, unknown> = {},
) {
  const port = typeof redis === 'number' ? redis : redis.port;
  const config = parseConfig({
    ...top,
    routes: [
      {
        name: 'test',
        listen: '127.0.0.1:0',
        upstream: `127.0.0.1:${port}`,
        mode: 'redis',
        pool: { minIdle: 1, maxSize: 4, ...pool },
        redis: settings,
        ...routeExtra,
      },
    ],
  });
  const { logger, lines } = captureLogger('debug');
  const app = new App(config, logger);
  await app.start();
  const route = app.firstRoute;
  const mode = route.mode;
  if (mode === undefined) throw new Error('not a mode route');
  return {
    app,
    route,
    port: route.port,
    lines,
    mode,
    /** The route's pool for a database (made on first use). */
    pool(db = 0) {
      const found = [...mode.pools()].find((p) => p.name.endsWith(`/db${db}`));
      if (found === undefined) throw new Error(`no pool for db ${db}`);
      return found;
    },
  };
}

/**
 * A raw RESP connection: `send` writes bytes and resolves with the next `count` replies,
 * each as its exact bytes (latin1), so that byte-for-byte comparisons are possible.
 */
export class RawClient {
  readonly socket: net.Socket;
  private readonly framer = new ReplyFramer();
  private partial: Buffer[] = [];
  private readonly replies: string[] = [];
  private waiters: Array<() => void> = [];
  closed = false;
  error: string | undefined;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('close', () => {
      this.closed = true;
      this.wakeAll();
    });
    socket.on('error', () => {});
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  private onData(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length) {
      const end = this.framer.next(chunk, pos);
      if (end === REPLY_BAD) {
        this.error = this.framer.error;
        this.socket.destroy();
        return;
      }
      if (end === REPLY_MORE) {
        this.partial.push(chunk.subarray(pos));
        break;
      }
      this.partial.push(chunk.subarray(pos, end));
      this.replies.push(Buffer.concat(this.partial).toString('latin1'));
      this.partial = [];
      pos = end;
    }
    this.wakeAll();
  }

  private wakeAll(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves with `count` replies (fewer if the connection closes first). */
  async read(count: number, timeoutMs = 10_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.replies.length < count && !this.closed) {
      if (Date.now() > deadline)
        throw new Error(`timed out: ${this.replies.length}/${count} replies`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.replies.splice(0, count);
  }

  /** Resolves with every reply up to and including the first that `last` accepts. */
  async readUntil(last: (reply: string) => boolean, timeoutMs = 10_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.replies.findIndex(last);
      if (i >= 0) return this.replies.splice(0, i + 1);
      if (this.closed) return this.replies.splice(0, this.replies.length);
      if (Date.now() > deadline) throw new Error(`timed out after ${this.replies.length} replies`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  async send(bytes: string | Buffer, count: number): Promise<string[]> {
    this.socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
    return this.read(count);
  }

  /** Resolves once the connection has closed. */
  async whenClosed(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('the connection did not close');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Connections Redis has now, from CLIENT LIST, not counting the one asking. */
export async function upstreamConnections(redisPort: number): Promise<number> {
  const client = await RawClient.connect(redisPort);
  try {
    const [list] = await client.send('CLIENT LIST\r\n', 1);
    const body = (list ?? '').split('\r\n').slice(1).join('\n');
    return body.split('\n').filter((line) => line.startsWith('id=')).length - 1;
  } finally {
    client.close();
  }
}

/** A command in RESP multibulk form. */
export function command(...args: Array<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = typeof arg === 'string' ? Buffer.from(arg) : arg;
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** Runs redis-cli against `port`; resolves with its output, trimmed. */
export function redisCli(port: number, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', ['-p', String(port), ...args], (err, out) => {
      if (err) reject(new Error(`redis-cli ${args.join(' ')}: ${err.message}`));
      else resolve(out.trim());
    });
  });
}
