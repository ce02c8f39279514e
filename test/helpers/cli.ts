import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { MIN_WAIT_MS } from './util.js';

export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the built CLI to completion (bounded by `timeoutMs`, generous: it is not a measurement). */
export function runCli(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(
      () => {
        child.kill('SIGKILL');
        reject(new Error(`sidepool ${args.join(' ')} did not exit: ${stdout}${stderr}`));
      },
      Math.max(opts.timeoutMs ?? 0, MIN_WAIT_MS),
    );
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A running `sidepool run`, with its JSON log lines as they come. */
export interface RunningCli {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  stderr: () => string;
  waitFor(
    predicate: (line: Record<string, unknown>) => boolean,
    timeoutMs?: number,
  ): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
}

export function startCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  cwd?: string,
  nodeFlags: string[] = [],
): RunningCli {
  return startCommand([process.execPath, ...nodeFlags, CLI, ...args], env, cwd);
}

/** Any command that runs sidepool (the bin, node with flags, …): `argv[0]` is executed. */
export function startCommand(
  argv: string[],
  env: NodeJS.ProcessEnv = {},
  cwd?: string,
): RunningCli {
  const [file, ...args] = argv as [string, ...string[]];
  const child = spawn(file, args, {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return watch(child);
}

/**
 * `sidepool run` as it runs in a container: without the test runner's hooks, which tap
 * puts in NODE_OPTIONS of every process a test spawns (whatever env it is given) and
 * which take signals of their own (signal-exit). `env -u` drops them before node starts.
 */
export function startPlainCli(args: string[]): RunningCli {
  const child = spawn('env', ['-u', 'NODE_OPTIONS', process.execPath, CLI, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return watch(child);
}

function watch(child: ChildProcess): RunningCli {
  let stderr = '';
  // A command that cannot start shows as an exit (null) with the error on stderr.
  child.on('error', (err) => {
    stderr += `${err.message}\n`;
  });
  const lines: Array<Record<string, unknown>> = [];
  const watchers = new Set<() => void>();
  let buffered = '';
  child.stdout?.on('data', (c: Buffer) => {
    buffered += c.toString();
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        lines.push({ raw: line });
      }
    }
    for (const w of watchers) w();
  });
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  let closed: { code: number | null } | undefined;
  const exited = new Promise<number | null>((resolve) =>
    child.on('close', (code) => {
      closed = { code };
      resolve(code);
    }),
  );
  return {
    child,
    lines,
    stderr: () => stderr,
    exited,
    // Generous: on a loaded machine node alone can take seconds to start. A process that
    // exits first ends the wait at once.
    waitFor(predicate, timeoutMs = MIN_WAIT_MS) {
      const bound = Math.max(timeoutMs, MIN_WAIT_MS);
      return new Promise((resolve, reject) => {
        const stop = (): void => {
          watchers.delete(check);
          clearTimeout(timer);
          child.off('close', onClose);
        };
        const check = (): void => {
          const found = lines.find(predicate);
          if (found) {
            stop();
            resolve(found);
          }
        };
        const onClose = (code: number | null): void => {
          check();
          if (!watchers.has(check)) return;
          stop();
          reject(
            new Error(`exited (${code}) before the log line: ${JSON.stringify(lines)} ${stderr}`),
          );
        };
        const timer = setTimeout(() => {
          stop();
          reject(
            new Error(`log line not seen in ${bound} ms; got: ${JSON.stringify(lines)} ${stderr}`),
          );
        }, bound);
        watchers.add(check);
        child.on('close', onClose);
        if (closed !== undefined) onClose(closed.code);
        else check();
      });
    },
  };
}
