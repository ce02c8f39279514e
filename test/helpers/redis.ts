import type { ChildProcess } from 'node:child_process';
import net from 'node:net';
import { startProcess } from './process.js';

/** A free loopback port: bound on port 0, then released. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface RedisServer {
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** A real redis-server on a free loopback port (or `port`), no persistence. */
export async function startRedis(extraArgs: string[] = [], at?: number): Promise<RedisServer> {
  const port = at ?? (await freePort());
  const server = await startProcess({
    command: 'redis-server',
    args: [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
    ].concat(extraArgs),
    debianPackage: 'redis-server',
    ready: { port },
  });
  return { port, process: server.process, stop: () => server.stop() };
}
