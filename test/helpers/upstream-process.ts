import { spawn, type ChildProcess } from 'node:child_process';

/**
 * An echo server in a process of its own, so that what it does (close connections, open
 * clients) happens while sidepool's event loop is busy or blocked, as in production:
 * - with `idleKill`, it closes connections on which nothing has arrived after a time, as
 *   servers with a login or idle timer do (PostgreSQL's authentication_timeout, MySQL's
 *   connect_timeout, a cloud load balancer);
 * - `race()` opens app connections to a proxy and then drops every idle upstream
 *   connection, so that the proxy reads the new connections and the links' FINs (or
 *   resets) in the same batch of I/O events.
 */
export interface IdleKill {
  /** Each connection's timer is drawn uniformly from [minMs, maxMs]; equal for a fixed age. */
  minMs: number;
  maxMs: number;
  /** The share of kills that reset (RST) rather than close (FIN). */
  resetShare?: number;
}

export interface UpstreamStats {
  accepted: number;
  /** Connections closed by the idle timer or a race before any byte arrived. */
  killed: number;
  /** Connections that got bytes (and echoed them). */
  served: number;
  /** Ages (ms from accept) at which connections were killed by the idle timer. */
  killAges: number[];
}

export interface UpstreamProcess {
  port: number;
  address: string;
  process: ChildProcess;
  stats(): Promise<UpstreamStats>;
  /** Sets (or with undefined, stops) the idle timer of connections accepted from now on. */
  idleKill(options: IdleKill | undefined): Promise<void>;
  /**
   * Arms a race: once `go()` has run, opens `sessions` connections to `proxyPort`, each
   * sending its payload and a FIN; when all are connected (in the proxy's backlog), drops
   * every idle upstream connection (FIN, or RST with `reset`), then touches `doneFile`.
   * Resolves once armed, with each session's outcome to come: 'ok' when its echo came back
   * whole.
   */
  race(options: {
    proxyPort: number;
    sessions: number;
    reset: boolean;
    goFile: string;
    doneFile: string;
  }): Promise<{ outcomes: Promise<string[]> }>;
  stop(): Promise<void>;
}

const SERVER = `
const fs = require('node:fs');
const net = require('node:net');
let kill = JSON.parse(process.env.UPSTREAM_IDLE_KILL || 'null');
const stats = { accepted: 0, killed: 0, served: 0, killAges: [] };
const idle = new Set();
const server = net.createServer({ allowHalfOpen: true }, (socket) => {
  stats.accepted++;
  idle.add(socket);
  const acceptedAt = Date.now();
  let timer;
  if (kill) {
    const age = kill.minMs + Math.random() * (kill.maxMs - kill.minMs);
    timer = setTimeout(() => {
      if (!idle.has(socket)) return;
      idle.delete(socket);
      stats.killed++;
      stats.killAges.push(Date.now() - acceptedAt);
      if (Math.random() < (kill.resetShare || 0)) socket.resetAndDestroy();
      else socket.destroy();
    }, age);
  }
  socket.on('data', (chunk) => {
    if (idle.delete(socket)) {
      stats.served++;
      clearTimeout(timer);
    }
    socket.write(chunk);
  });
  socket.on('end', () => socket.end());
  socket.on('error', () => {});
  socket.on('close', () => {
    idle.delete(socket);
    clearTimeout(timer);
  });
});

async function race({ proxyPort, sessions, reset, goFile, doneFile }) {
  while (!fs.existsSync(goFile)) await new Promise((r) => setTimeout(r, 1));
  const outcomes = [];
  await Promise.all(
    Array.from({ length: sessions }, (_, i) => new Promise((connected) => {
      const payload = 'session ' + i;
      let reply = '';
      const client = net.connect(proxyPort, '127.0.0.1', () => {
        client.end(payload);
        connected();
      });
      client.setEncoding('utf8');
      client.on('data', (c) => (reply += c));
      outcomes.push(new Promise((done) => {
        client.on('error', (e) => done(e.code || 'error'));
        client.on('close', () => done(reply === payload ? 'ok' : 'got ' + JSON.stringify(reply)));
      }));
    })),
  );
  for (const socket of idle) {
    stats.killed++;
    if (reset) socket.resetAndDestroy();
    else socket.destroy();
  }
  idle.clear();
  fs.writeFileSync(doneFile, 'done');
  process.send({ raced: await Promise.all(outcomes) });
}

server.listen(0, '127.0.0.1', () => process.send({ port: server.address().port }));
process.on('message', (m) => {
  if (m.type === 'stats') process.send({ stats });
  else if (m.type === 'idleKill') { kill = m.options; process.send({ configured: true }); }
  else if (m.type === 'race') { process.send({ armed: true }); race(m.options); }
});
process.on('disconnect', () => process.exit(0));
`;

export async function startUpstreamProcess(idleKill?: IdleKill): Promise<UpstreamProcess> {
  const child = spawn(process.execPath, ['-e', SERVER], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    env: { ...process.env, UPSTREAM_IDLE_KILL: JSON.stringify(idleKill ?? null) },
  });
  const reply = <T>(key: string): Promise<T> =>
    new Promise((resolve, reject) => {
      const onMessage = (m: Record<string, unknown>): void => {
        if (!(key in m)) return;
        child.off('message', onMessage);
        child.off('exit', onExit);
        resolve(m[key] as T);
      };
      const onExit = (): void => reject(new Error('the upstream process exited'));
      child.on('message', onMessage);
      child.once('exit', onExit);
    });
  const port = await reply<number>('port');
  return {
    port,
    address: `127.0.0.1:${port}`,
    process: child,
    stats: () => {
      const stats = reply<UpstreamStats>('stats');
      child.send({ type: 'stats' });
      return stats;
    },
    idleKill: async (options) => {
      const configured = reply<boolean>('configured');
      child.send({ type: 'idleKill', options: options ?? null });
      await configured;
    },
    race: async (options) => {
      const armed = reply<boolean>('armed');
      const outcomes = reply<string[]>('raced');
      child.send({ type: 'race', options });
      await armed;
      return { outcomes };
    },
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGKILL');
      }),
  };
}
