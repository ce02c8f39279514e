import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import YAML from 'yaml';
import yargs, { type Argv } from 'yargs';
import { App } from './app.js';
import { parseDuration } from './config/duration.js';
import { effectiveConfig } from './config/effective.js';
import { loadConfig, type ConfigFlags } from './config/load.js';
import { configSchema, type Config } from './config/schema.js';
import { ConfigError, SidepoolError, describe } from './errors.js';
import { handleProcessFaults } from './faults.js';
import { createLogger } from './log.js';
import { onSignal, type SignalName } from './signals.js';
import { WorkerGroup } from './workers/group.js';
import { isWorker, runWorker } from './workers/worker.js';

/**
 * Exit codes: 0 ok, 1 a runtime failure (port in use, unresolvable upstream), 2 bad config,
 * 3 a second signal cut open sessions, 70 an internal error (an uncaught exception: faults.ts).
 */
export const EXIT_RUNTIME = 1;
const EXIT_CONFIG = 2;
/** A second signal ended sessions before the drain had finished them. */
const EXIT_CUT = 3;

const { version } = JSON.parse(
  readFileSync(new URL('../package.json', import.meta.url), 'utf8'),
) as { version: string };

interface RunArgs {
  config?: string | undefined;
  listen?: string | undefined;
  upstream?: string | undefined;
  mode?: string | undefined;
  'min-idle'?: number | undefined;
  'max-size'?: number | undefined;
  admin?: string | undefined;
  'log-level'?: string | undefined;
  workers?: number | undefined;
}

function withConfigOption<T>(y: Argv<T>) {
  return y.option('config', {
    alias: 'c',
    type: 'string',
    requiresArg: true,
    describe: 'YAML or JSON config file',
    default: process.env.SIDEPOOL_CONFIG,
    defaultDescription: '$SIDEPOOL_CONFIG',
  });
}

/**
 * What the flags default to when neither they nor the file say: the schema's defaults for
 * a route the flags alone define, so that the help text and the config agree.
 */
function flagDefaults() {
  const config = configSchema.parse({
    routes: [{ listen: '127.0.0.1:1', upstream: '127.0.0.1:2' }],
  });
  const route = config.routes[0]!;
  return {
    mode: route.mode,
    minIdle: `${route.pool.minIdle}, or --max-size if smaller`,
    maxSize: String(route.pool.maxSize),
    admin: config.admin === false ? 'false' : config.admin.listen,
    logLevel: config.log.level,
    workers: String(config.workers),
  };
}

function withRouteOptions<T>(y: Argv<T>) {
  const defaults = flagDefaults();
  // requiresArg: `--max-size` with no value is an error naming the flag, not the default.
  const value = { requiresArg: true } as const;
  return y
    .option('listen', {
      ...value,
      type: 'string',
      describe: 'route listen address, host:port or unix path (with --upstream)',
    })
    .option('upstream', { ...value, type: 'string', describe: 'upstream host:port' })
    .option('mode', {
      ...value,
      type: 'string',
      describe: 'route mode: tcp, http, postgres or redis',
      defaultDescription: defaults.mode,
    })
    .option('min-idle', {
      ...value,
      type: 'number',
      describe: 'warm links kept ready',
      defaultDescription: defaults.minIdle,
    })
    .option('max-size', {
      ...value,
      type: 'number',
      describe: 'links per destination',
      defaultDescription: defaults.maxSize,
    })
    .option('admin', {
      ...value,
      type: 'string',
      describe:
        'admin listen address (probes, metrics; control on loopback), or "false": without it, and no admin in the file, one listens on the default',
      defaultDescription: defaults.admin,
    })
    .option('log-level', {
      ...value,
      type: 'string',
      describe: 'trace | debug | info | warn | error',
      defaultDescription: defaults.logLevel,
    })
    .option('workers', {
      ...value,
      type: 'number',
      describe: 'processes serving the routes',
      defaultDescription: defaults.workers,
    });
}

function flagsOf(args: RunArgs): ConfigFlags {
  return {
    listen: args.listen,
    upstream: args.upstream,
    mode: args.mode,
    minIdle: args['min-idle'],
    maxSize: args['max-size'],
    admin: args.admin,
    logLevel: args['log-level'],
    workers: args.workers,
  };
}

/** Prints a config failure the way `check` and `run` both report it, and returns 2. */
function reportConfigError(err: ConfigError): number {
  process.stderr.write(
    `sidepool: invalid configuration (${err.issues.length} problem${err.issues.length === 1 ? '' : 's'}):\n`,
  );
  for (const issue of err.issues) {
    process.stderr.write(`  ${issue.path ? `${issue.path}: ` : ''}${issue.message}\n`);
  }
  return EXIT_CONFIG;
}

async function load(args: RunArgs): Promise<Config | number> {
  try {
    return await loadConfig(args.config, flagsOf(args));
  } catch (err) {
    if (err instanceof ConfigError) return reportConfigError(err);
    throw err;
  }
}

async function check(args: RunArgs): Promise<number> {
  const config = await load(args);
  if (typeof config === 'number') return config;
  process.stdout.write(YAML.stringify(effectiveConfig(config)));
  return 0;
}

/** What `run` drives: one App, or the primary of a WorkerGroup. */
interface Proxy {
  start(): Promise<void>;
  stop(): Promise<void>;
  reload(): Promise<unknown>;
  /** Ends everything now; resolves to whether open sessions were cut. */
  exitNow(): Promise<boolean>;
}

type RunState = 'loading' | 'starting' | 'running' | 'stopping';

function makeProxy(
  config: Config,
  log: Logger,
  options: { loadConfig: () => Promise<Config>; onStopped: () => void },
): Proxy {
  if (config.workers > 1) {
    const group = new WorkerGroup(config, log, options);
    handleProcessFaults(log, (kind) => group.metrics.internalError(kind));
    return group;
  }
  const app = new App(config, log, options);
  handleProcessFaults(log, (kind) => app.metrics.internalError(kind));
  return {
    start: () => app.start(),
    stop: () => app.stop(app.config.drain.timeout, app.config.drain.delay),
    reload: () => app.reload(),
    exitNow: () => Promise.resolve(app.activeSessions > 0),
  };
}

/**
 * `sidepool run`. Signals are taken from the first moment (see cli.ts): SIGHUP reloads,
 * or, during start-up, reloads once started; the first SIGTERM or SIGINT drains (during
 * start-up: once started); a second one exits at once, with EXIT_CUT if that cut open
 * sessions.
 */
async function run(args: RunArgs): Promise<number> {
  // A worker forked by the primary gets its share of the config from the primary.
  if (isWorker()) return runWorker();
  let state: RunState = 'loading';
  let log: Logger | undefined;
  let proxy: Proxy | undefined;
  let stopSignal: SignalName | undefined;
  let reloadOnceStarted = false;
  let finish: (code: number) => void = () => undefined;
  const finished = new Promise<number>((resolve) => (finish = resolve));

  const stop = (signal: SignalName): void => {
    state = 'stopping';
    log?.info({ signal }, 'shutting down');
    proxy?.stop().then(
      () => finish(0),
      (err: unknown) => {
        log?.error({ err: describe(err) }, 'shutdown failed');
        finish(EXIT_RUNTIME);
      },
    );
  };
  onSignal((signal) => {
    if (signal === 'SIGHUP') {
      if (state === 'running') {
        log?.info('SIGHUP: reloading the config');
        void proxy?.reload();
      } else if (state !== 'stopping') {
        reloadOnceStarted = true;
        log?.info('SIGHUP during start-up: the config is reloaded once started');
      }
      return;
    }
    if (stopSignal !== undefined) {
      log?.warn({ signal }, 'second signal: exiting now');
      void (proxy?.exitNow() ?? Promise.resolve(false)).then((cut) => finish(cut ? EXIT_CUT : 0));
      return;
    }
    stopSignal = signal;
    if (state === 'running') stop(signal);
    else log?.info({ signal }, 'signal during start-up: stopping once started');
  });

  const starting = (async (): Promise<number> => {
    const config = await load(args);
    if (typeof config === 'number') return config;
    log = createLogger(config.log.level);
    if (stopSignal !== undefined) {
      log.info({ signal: stopSignal }, 'stopped before starting');
      return 0;
    }
    const reloadConfig = (): Promise<Config> => loadConfig(args.config, flagsOf(args));
    const onStopped = (): void => finish(0);
    const running = makeProxy(config, log, { loadConfig: reloadConfig, onStopped });
    proxy = running;
    state = 'starting';
    // Said before the start-up's waits (DNS, listeners): a slow start shows as started.
    log.info({ version, routes: config.routes.length }, 'starting');
    if (reloadOnceStarted) log.info('SIGHUP during start-up: the config is reloaded once started');
    try {
      await running.start();
    } catch (err) {
      log.error({ code: (err as SidepoolError).code, err: describe(err) }, 'cannot start');
      process.stderr.write(`sidepool: ${describe(err)}\n`);
      return EXIT_RUNTIME;
    }
    state = 'running';
    if (stopSignal !== undefined) stop(stopSignal);
    else if (reloadOnceStarted) {
      log.info('SIGHUP during start-up: reloading the config now');
      void running.reload();
    }
    return finished;
  })();
  return Promise.race([starting, finished]);
}

export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const parser = yargs(argv)
    .scriptName('sidepool')
    .version(version)
    .strict()
    .command(
      'run',
      'run the proxy',
      (y) => withRouteOptions(withConfigOption(y)),
      async (args) => {
        code = await run(args);
      },
    )
    .command(
      'check',
      'validate a config and print the effective config (defaults filled) as YAML',
      (y) => withRouteOptions(withConfigOption(y)),
      async (args) => {
        code = await check(args);
      },
    )
    .command(
      'demo',
      'start a TLS upstream behind a simulated round trip; show what warm links save',
      (y) =>
        y
          .option('rtt', {
            type: 'string',
            default: '20ms',
            describe: 'simulated round trip to the upstream',
          })
          .option('requests', {
            type: 'number',
            default: 100,
            describe: 'requests per run, a new connection each',
          })
          .option('concurrency', {
            type: 'number',
            default: 4,
            describe: 'requests in flight at once',
          })
          .option('admin', {
            type: 'string',
            default: '127.0.0.1:0',
            describe: 'admin listen address',
          })
          .option('keep', {
            type: 'boolean',
            default: false,
            describe: 'leave the proxy and upstream running',
          }),
      async (args) => {
        const rttMs = parseDuration(args.rtt);
        if (rttMs === undefined) {
          process.stderr.write(
            `sidepool demo: --rtt: expected a duration such as 20ms, got "${args.rtt}"\n`,
          );
          code = EXIT_CONFIG;
          return;
        }
        if (
          !Number.isInteger(args.requests) ||
          args.requests < 1 ||
          !Number.isInteger(args.concurrency) ||
          args.concurrency < 1
        ) {
          process.stderr.write(
            'sidepool demo: --requests and --concurrency must be whole numbers of at least 1\n',
          );
          code = EXIT_CONFIG;
          return;
        }
        // Loaded on demand: the demo's certificate library has no place in a running proxy.
        const { runDemo } = await import('./demo/demo.js');
        code = await runDemo({
          rttMs,
          requests: args.requests,
          concurrency: args.concurrency,
          keep: args.keep,
          admin: args.admin,
        });
      },
    )
    .demandCommand(1, 'give a command: run, check or demo')
    .fail((msg: string | undefined, err: Error | undefined) => {
      // yargs's own usage errors (a flag without its value) come as a YError.
      if (err && err.name !== 'YError') throw err;
      // yargs says "Not enough arguments following: max-size"; name the flag as typed.
      const text = (msg ?? err?.message ?? '').replace(
        /^Not enough arguments following: (\S+)$/,
        '--$1 needs a value',
      );
      process.stderr.write(`sidepool: ${text}\nrun "sidepool --help" for usage\n`);
      code = EXIT_CONFIG;
    })
    .help()
    .alias('h', 'help')
    .wrap(Math.min(100, process.stdout.columns ?? 100));
  await parser.parseAsync();
  return code;
}
