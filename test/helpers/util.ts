import { readFileSync } from 'node:fs';
import net from 'node:net';
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

/** A logger whose JSON lines the test can read back. */
export function captureLogger(level: 'trace' | 'debug' | 'info' | 'warn' = 'debug'): {
  logger: Logger;
  lines: Array<Record<string, unknown>>;
} {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      cb();
    },
  });
  return { logger: pino({ level }, sink), lines };
}

/**
 * No condition wait gives up sooner than this. A wait is a bound, never a measurement: on a
 * loaded machine (other test runs, a CPU hog on every core) a process can stall for seconds,
 * and a bound only costs time when the test fails anyway.
 */
export const MIN_WAIT_MS = 60_000;

/**
 * Resolves once `check()` is true (it may be async), polling; rejects after `timeoutMs`,
 * or MIN_WAIT_MS when that is longer.
 */
export async function until(
  check: () => boolean | Promise<boolean>,
  timeoutMs = MIN_WAIT_MS,
  what = 'condition',
): Promise<void> {
  const bound = Math.max(timeoutMs, MIN_WAIT_MS);
  const deadline = Date.now() + bound;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${bound} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A real loopback TCP server on port 0 that remembers its connections. */
export interface TestServer {
  server: net.Server;
  port: number;
  address: string;
  connections: net.Socket[];
  accepted: number;
  close(): Promise<void>;
}

export async function startServer(
  handler: (socket: net.Socket, index: number) => void,
  port = 0,
  host = '127.0.0.1',
): Promise<TestServer> {
  const connections: net.Socket[] = [];
  const state = { accepted: 0 };
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    connections.push(socket);
    handler(socket, state.accepted++);
  });
  await new Promise<void>((resolve) => server.listen(port, host, resolve));
  const bound = (server.address() as net.AddressInfo).port;
  return {
    server,
    port: bound,
    address: `${host}:${bound}`,
    connections,
    get accepted() {
      return state.accepted;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of connections) c.destroy();
        server.close(() => resolve());
      }),
  };
}

/** An echo server: every byte comes back; a FIN is answered with a FIN. */
export function startEcho(): Promise<TestServer> {
  return startServer((socket) => socket.pipe(socket));
}

/** Connects, sends `payload` and a FIN, and collects everything until the peer's FIN. */
export function roundTrip(port: number, payload: string | Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1', () => socket.end(payload));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => resolve(Buffer.concat(chunks)));
    socket.on('error', reject);
  });
}

/** Connects and waits until the peer closes; says how and when. */
export function connectAndWaitClose(
  port: number,
): Promise<{ error: string | undefined; ms: number; data: string }> {
  return new Promise((resolve) => {
    const started = Date.now();
    let error: string | undefined;
    let data = '';
    const socket = net.connect(port, '127.0.0.1');
    socket.on('data', (c: Buffer) => (data += c.toString()));
    socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code));
    socket.on('close', () => resolve({ error, ms: Date.now() - started, data }));
  });
}

/** A file's text (latin1), or '' while it does not exist yet (a log the server opens late). */
export function readIfThere(path: string): string {
  try {
    return readFileSync(path, 'latin1');
  } catch {
    return '';
  }
}
