// Every command in README.md's ```sh blocks is run here (or, for the ones that are CI
// itself, checked to be in .ci/run), so the README cannot drift from what works. A command
// with no case below fails the test: adding one to the README means adding it here.
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import net from 'node:net';
import { createClient } from 'redis';
import t, { type Test } from 'tap';
import { CLI, startCommand, type RunningCli } from './helpers/cli.js';
import { freePort, startRedis } from './helpers/redis.js';
import { tempDir } from './helpers/tmp.js';

const exec = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '..');
const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
const ciRun = await readFile(path.join(ROOT, '.ci', 'run'), 'utf8');

/** The commands of every ```sh block, comments and blank lines dropped. */
const commands = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) =>
  (m[1] as string)
    .split('\n')
    .map((line) => line.replace(/\s+#.*$/, '').trim())
    .filter((line) => line !== '' && !line.startsWith('#')),
);

/** The YAML block that starts with `# sidepool.yaml`: the file the quick start uses. */
const quickStartYaml = /```yaml\n(# sidepool\.yaml\n[\s\S]*?)```/.exec(readme)?.[1];

const npx = (args: string[], cwd = ROOT) => exec('npx', args, { cwd, timeout: 120_000 });

/** The README's ports mapped to free ones. */
function mapPorts(args: string[], ports: Record<string, number>): string[] {
  return args.map((a) =>
    a.replace(/127\.0\.0\.1:(\d+)/g, (all, p: string) => `127.0.0.1:${ports[p] ?? p}`),
  );
}

/**
 * Runs a README command that starts sidepool (`argv[0]` is executed as written, so the
 * README's own `./node_modules/.bin/sidepool` from the checkout), with its ports mapped to
 * free ones and redis behind it, and PINGs through it.
 */
async function runAndPing(
  t: Test,
  argv: string[],
  ports: Record<string, number>,
  cwd?: string,
  env?: NodeJS.ProcessEnv,
): Promise<RunningCli> {
  const cli = startCommand(mapPorts(argv, ports), env, cwd);
  t.teardown(() => cli.child.kill('SIGKILL'));
  await cli.waitFor((l) => l.msg === 'pool warm');
  const client = createClient({ socket: { host: '127.0.0.1', port: ports['6380'] as number } });
  client.on('error', () => {});
  await client.connect();
  t.equal(await client.ping(), 'PONG', `${argv.join(' ')}: PING through sidepool`);
  await client.quit();
  return cli;
}

/**
 * SIGTERM to the process the README command started, as a supervisor or `kill` sends it:
 * that process is sidepool itself, so it drains, exits 0, and nothing listens any more.
 */
async function stopsOnSigterm(t: Test, cli: RunningCli, ports: number[]): Promise<void> {
  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0, 'SIGTERM: sidepool drained and exited 0');
  for (const port of ports) {
    const refused = await new Promise<string | undefined>((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolve(undefined);
      });
      socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code));
    });
    t.equal(refused, 'ECONNREFUSED', `nothing listens on ${port} any more`);
  }
}

/** The README's CLI, as its commands spell it: the bin the checkout links for itself. */
const BIN = './node_modules/.bin/sidepool';

type Case = (t: Test, match: RegExpExecArray) => Promise<void> | void;

/** redis, free ports for the quick start's, and its sidepool.yaml with them, in a temp dir. */
async function quickStartSetup(t: Test): Promise<{ ports: Record<string, number>; dir: string }> {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  const ports: Record<string, number> = {
    '6379': redis.port,
    '6380': await freePort(),
    '9901': await freePort(),
  };
  const dir = tempDir('sidepool-readme-');
  const yaml = (quickStartYaml as string).replace(
    /127\.0\.0\.1:(\d+)/g,
    (all, p: string) => `127.0.0.1:${ports[p] ?? p}`,
  );
  await writeFile(path.join(dir, 'sidepool.yaml'), yaml);
  return { ports, dir };
}

const cases: Array<[RegExp, Case]> = [
  [
    /^npm ci && npx sidepool demo$/,
    async (t) => {
      t.match(ciRun, /\nnpm ci\b/, '.ci/run installs with npm ci');
      const { stdout } = await npx(['sidepool', 'demo']);
      t.match(
        stdout,
        /through sidepool\s+100\s+0\s/,
        'the demo ran 100 requests through sidepool, none failed',
      );
    },
  ],
  [/^npm ci$/, (t) => void t.match(ciRun, /\nnpm ci\b/, 'run by .ci/run')],
  [/^npm test$/, (t) => void t.match(ciRun, /npm test\b/, 'run by .ci/run')],
  [/^npm run lint$/, (t) => void t.match(ciRun, /npm run lint\b/, 'run by .ci/run')],
  [/^bash \.ci\/run$/, (t) => void t.pass('what CI runs')],
  [
    /^npm run bench$/,
    async (t) => {
      const { stdout } = await exec(
        'npm',
        ['run', 'bench', '--', '--quick', '--only', '4', '--out', 'readme-check'],
        {
          cwd: ROOT,
          timeout: 120_000,
        },
      );
      t.match(stdout, /connect \+ PING|latency/i, 'the bench runs (quick, workload 4)');
    },
  ],
  [
    /^\.\/node_modules\/\.bin\/sidepool run --listen 127\.0\.0\.1:6380 --upstream 127\.0\.0\.1:6379 /,
    async (t, match) => {
      const redis = await startRedis();
      t.teardown(() => redis.stop());
      const command = match.input;
      const ports = { '6379': redis.port, '6380': await freePort() };
      // From the checkout, exactly as written (the admin server off: its port is fixed).
      const cli = await runAndPing(t, [...command.split(/\s+/), '--admin', 'false'], ports, ROOT);
      await stopsOnSigterm(t, cli, [ports['6380']]);
    },
  ],
  [
    /^\.\/node_modules\/\.bin\/sidepool check --config sidepool\.yaml$/,
    async (t, match) => {
      t.ok(quickStartYaml, 'the README has the sidepool.yaml block');
      const dir = tempDir('sidepool-readme-');
      await writeFile(path.join(dir, 'sidepool.yaml'), quickStartYaml as string);
      // From the folder that holds sidepool.yaml: the bin by its path in the checkout.
      const [, ...args] = match.input.split(/\s+/);
      const { stdout } = await exec(path.join(ROOT, BIN), args, { cwd: dir });
      t.match(stdout, /maxSize: 64/);
    },
  ],
  [
    /^\.\/node_modules\/\.bin\/sidepool run --config sidepool\.yaml$/,
    async (t, match) => {
      const { ports, dir } = await quickStartSetup(t);
      const [, ...args] = match.input.split(/\s+/);
      const cli = await runAndPing(t, [path.join(ROOT, BIN), ...args], ports, dir);
      // The next README line, with the admin port mapped.
      const curl = (commands.find((c) => c.startsWith('curl ')) as string).replace(
        '9901',
        String(ports['9901']),
      );
      const { stdout } = await exec('bash', ['-c', curl], { timeout: 30_000 });
      t.match(stdout, /sidepool_pool_connections\{pool="127\.0\.0\.1:\d+",state="idle"\} 8/);
      await stopsOnSigterm(t, cli, [ports['6380'] as number, ports['9901'] as number]);
    },
  ],
  [
    // The bulk tuning in Benchmarks: glibc's trim threshold and a V8 flag, on the quick start.
    /^GLIBC_TUNABLES=(\S+) node (--\S+) dist\/cli\.js run --config sidepool\.yaml$/,
    async (t, match) => {
      const [, tunables, flag] = match;
      t.match(tunables, /^glibc\.malloc\.trim_threshold=\d+$/, 'one glibc malloc tunable');
      const { ports, dir } = await quickStartSetup(t);
      // Node refuses a flag V8 does not know before sidepool starts: PONG proves it took it.
      const cli = await runAndPing(
        t,
        [process.execPath, flag as string, CLI, 'run', '--config', 'sidepool.yaml'],
        ports,
        dir,
        { GLIBC_TUNABLES: tunables },
      );
      await stopsOnSigterm(t, cli, [ports['6380'] as number, ports['9901'] as number]);
    },
  ],
  [
    /^curl -s 127\.0\.0\.1:9901\/metrics \| grep sidepool_pool_connections$/,
    (t) => void t.pass('run with the line before it'),
  ],
  [
    /^helm install \S+ \S+( -f \S+)?$/,
    () => {
      // No cluster here: `helm template` renders exactly what `helm install` would send.
    },
  ],
  [/^helm dependency build \S+$/, () => {}],
];

void t.test('the README has commands to check', (t) => {
  t.ok(commands.length >= 8, `${commands.length} commands`);
  t.end();
});

for (const command of commands) {
  const match = cases.find(([re]) => re.test(command));
  void t.test(`README: ${command}`, async (t) => {
    if (match === undefined) {
      t.fail('this README command is run by no test: add a case to test/readme.test.ts');
      return;
    }
    const helm = /^helm (install|dependency build) (.*)$/.exec(command);
    if (helm !== null) {
      const words = (helm[2] as string).split(/\s+/);
      const args =
        // A cluster tells helm its version; `helm template` needs it given (the chart wants >= 1.23).
        helm[1] === 'install'
          ? ['template', ...words, '--kube-version', '1.30.0']
          : ['dependency', 'build', ...words];
      const { stdout } = await exec(path.join(ROOT, 'node_modules', '.bin', 'helm'), args, {
        cwd: ROOT,
        timeout: 120_000,
      });
      if (helm[1] === 'install')
        t.match(stdout, /kind: (Deployment|ConfigMap)/, `helm ${args.join(' ')} renders`);
      else t.pass('dependencies built');
      return;
    }
    await match[1](t, match[0].exec(command) as RegExpExecArray);
  });
}
