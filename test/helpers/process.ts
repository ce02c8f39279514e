import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';

/**
 * A server process a test drives (redis-server, dnsmasq, nginx, postgres, …), started so
 * that every way it can fail ends the wait at once: a missing binary rejects with its name
 * and the Debian package that provides it, an exit before it is ready rejects with what it
 * printed, and a server never ready rejects after `timeoutMs`. No timer, poll or socket
 * outlives the wait, so a failed start never holds a test until tap's own timeout.
 */
export interface ServerProcess {
  process: ChildProcess;
  /** What it printed on stdout and stderr (the last 64 KiB). */
  output(): string;
  /** Signals it (SIGTERM by default) and resolves once it has exited. Idempotent. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export interface StartProcessOptions {
  command: string;
  args: string[];
  /** The Debian package that provides `command`, named when it is missing. */
  debianPackage: string;
  /** Ready when something accepts on this loopback port, or when the output matches. */
  ready: { port: number } | { output: RegExp };
  /** Generous: a loaded machine starts servers slowly. */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Runs it as this system user (`runuser -u USER --`), e.g. postgres, which refuses root. */
  user?: string;
}

/** Thrown when a server a test needs is not installed; `code` is stable. */
export class MissingToolError extends Error {
  readonly code = 'SIDEPOOL_TEST_TOOL_MISSING';

  constructor(
    readonly command: string,
    readonly debianPackage: string,
  ) {
    super(
      `${command} is not installed (Debian package ${debianPackage}): ` +
        `\`npm test\` installs what the tests need (scripts/provision-test-deps.mjs), ` +
        `or: sudo apt-get install ${debianPackage}`,
    );
  }
}

const OUTPUT_KEPT = 64 * 1024;
const DEFAULT_TIMEOUT_MS = 30_000;

export async function startProcess(options: StartProcessOptions): Promise<ServerProcess> {
  const [file, args] =
    options.user === undefined
      ? [options.command, options.args]
      : ['runuser', ['-u', options.user, '--', options.command, ...options.args]];
  const child = spawn(file, args, {
    cwd: options.cwd,
    env: options.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (chunk: Buffer): void => {
    output += chunk.toString();
    if (output.length > OUTPUT_KEPT) output = output.slice(-OUTPUT_KEPT);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const stop = (signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined)
      child.kill(signal);
    return exited;
  };

  await new Promise<void>((resolve, reject) => {
    const cleanups: Array<() => void> = [];
    let settled = false;
    const settle = (err?: Error): void => {
      if (settled) return;
      settled = true;
      for (const cleanup of cleanups) cleanup();
      if (err === undefined) resolve();
      else reject(err);
    };
    const onError = (err: NodeJS.ErrnoException): void =>
      settle(
        err.code === 'ENOENT'
          ? new MissingToolError(
              file === 'runuser' ? 'runuser' : options.command,
              options.debianPackage,
            )
          : new Error(`cannot start ${options.command}: ${err.message}`),
      );
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void =>
      settle(
        new Error(
          `${options.command} exited (${code ?? signal}) before it was ready: ${output.trim()}`,
        ),
      );
    child.once('error', onError);
    // 'close', not 'exit': its pipes are closed too, so a failed start leaves nothing open.
    child.once('close', onExit);
    cleanups.push(() => {
      child.off('error', onError);
      child.off('close', onExit);
    });
    const timer = setTimeout(() => {
      settle(
        new Error(
          `${options.command} was not ready within ${options.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms: ${output.trim()}`,
        ),
      );
      void stop('SIGKILL');
    }, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    cleanups.push(() => clearTimeout(timer));

    const ready = options.ready;
    if ('output' in ready) {
      const check = (): void => {
        if (ready.output.test(output)) settle();
      };
      child.stdout.on('data', check);
      child.stderr.on('data', check);
      cleanups.push(() => {
        child.stdout.off('data', check);
        child.stderr.off('data', check);
      });
    } else {
      cleanups.push(pollPort(ready.port, () => settle()));
    }
  });
  // Failures after the start (the server dies mid-test) show in the test's own assertions.
  child.on('error', () => {});
  return { process: child, output: () => output, stop };
}

/** Calls `onOpen` once something accepts on the port; returns a function that stops trying. */
function pollPort(port: number, onOpen: () => void): () => void {
  let stopped = false;
  let socket: net.Socket | undefined;
  let timer: NodeJS.Timeout | undefined;
  const attempt = (): void => {
    if (stopped) return;
    socket = net.connect(port, '127.0.0.1', () => {
      socket?.destroy();
      if (!stopped) onOpen();
    });
    socket.on('error', () => {
      if (!stopped) timer = setTimeout(attempt, 25);
    });
  };
  attempt();
  return () => {
    stopped = true;
    socket?.destroy();
    clearTimeout(timer);
  };
}
