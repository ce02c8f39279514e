// scripts/provision-test-deps.mjs, which `npm test` runs first: it installs the Debian
// packages the suite drives, through sudo when not root, and where it cannot it fails at
// once printing the one command that would. apt-get and sudo are stand-ins here (shell
// scripts that record how they were called), so nothing is installed.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';

const ROOT = path.resolve(import.meta.dirname, '..');
const SCRIPT = path.join(ROOT, 'scripts', 'provision-test-deps.mjs');
/** By its path: some cases run with a PATH that finds nothing. */
const RUNUSER = ['/usr/sbin/runuser', '/sbin/runuser'].find((p) => existsSync(p)) ?? 'runuser';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the script as a user who is not root (nobody, when the suite runs as root). */
function provision(env: NodeJS.ProcessEnv, args: string[] = []): Promise<Run> {
  const asNobody = process.getuid?.() === 0;
  const [cmd, argv] = asNobody
    ? [RUNUSER, ['-u', 'nobody', '--', process.execPath, SCRIPT, ...args]]
    : [process.execPath, [SCRIPT, ...args]];
  return new Promise((resolve) => {
    // A bound, not a measurement: it must not wait for anything, so it ends in seconds.
    execFile(cmd, argv, { env, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : null;
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * A temp dir (writable by nobody) with a package list of one missing package whose probe
 * is `bin/sidepool-test-tool`, and stand-ins for apt-get and, when asked, sudo.
 */
async function scene(t: Test, sudo: 'none' | 'passwordless' | 'wants a password') {
  const dir = await mkdtemp(path.join(tmpdir(), 'sidepool-provision-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await chmod(dir, 0o777);
  const bin = path.join(dir, 'bin');
  const log = path.join(dir, 'calls.log');
  const list = path.join(dir, 'packages.txt');
  await writeFile(list, `# one missing\nsidepool-test-pkg  ${bin}/sidepool-test-tool\n`);
  await writeFile(log, '');
  await chmod(log, 0o666);
  await mkdir(bin);
  await chmod(bin, 0o777);
  // apt-get: records its arguments; `install` puts the package's tool in place.
  await writeFile(
    path.join(bin, 'apt-get'),
    `#!/bin/sh\necho "apt-get $* DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> ${log}\n` +
      `case "$1" in install) printf '#!/bin/sh\\n' > ${bin}/sidepool-test-tool; ` +
      `chmod +x ${bin}/sidepool-test-tool;; esac\n`,
    { mode: 0o755 },
  );
  if (sudo !== 'none') {
    const body =
      sudo === 'passwordless'
        ? `echo "sudo $*" >> ${log}\n[ "$1" = -n ] && shift\nexec "$@"\n`
        : `echo "sudo $*" >> ${log}\necho "sudo: a password is required" >&2\nexit 1\n`;
    await writeFile(path.join(bin, 'sudo'), `#!/bin/sh\n${body}`, { mode: 0o755 });
  }
  // env and sh come from /usr/bin and /bin; sudo and apt-get only from the scene.
  const env = {
    PATH: [bin, '/usr/bin', '/bin'].join(path.delimiter),
    SIDEPOOL_DEBIAN_PACKAGES: list,
  };
  return { env, calls: async () => (await readFile(log, 'utf8')).trim().split('\n') };
}

const COMMAND =
  'sudo apt-get update && sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y ' +
  '--no-install-recommends sidepool-test-pkg';

void t.test(
  'the list names what the suite and the benchmarks drive, all present here',
  async (t) => {
    const run = await provision({ PATH: process.env.PATH }, ['--list']);
    t.equal(run.code, 0);
    for (const pkg of [
      'redis-server',
      'redis-tools',
      'openssl',
      'dnsmasq-base',
      'nginx-light',
      'wrk',
      'haproxy',
      'postgresql',
      'postgresql-client',
      'pgbouncer',
      'nutcracker',
    ])
      t.ok(run.stdout.trim().split(' ').includes(pkg), pkg);
    const check = await provision({ PATH: process.env.PATH }, ['--check']);
    t.equal(check.code, 0, 'npm test provisioned them before the suite ran');
    t.match(check.stdout, /all \d+ Debian packages present/);
  },
);

void t.test('not root, no sudo: fails at once and prints the command that would', async (t) => {
  const { env, calls } = await scene(t, 'none');
  const run = await provision(env);
  t.equal(run.code, 1);
  t.match(run.stderr, 'missing sidepool-test-pkg');
  t.match(run.stderr, COMMAND);
  t.same(await calls(), [''], 'apt-get was not run');
});

void t.test('sudo wants a password and no terminal can ask: the same', async (t) => {
  const { env, calls } = await scene(t, 'wants a password');
  const run = await provision(env);
  t.equal(run.code, 1);
  t.match(run.stderr, COMMAND);
  t.same(await calls(), ['sudo -n true'], 'only asked sudo whether it needs a password');
});

void t.test('passwordless sudo: installs the missing package through it', async (t) => {
  const { env, calls } = await scene(t, 'passwordless');
  const run = await provision(env);
  t.equal(run.code, 0, run.stderr);
  t.match(run.stdout, 'installed sidepool-test-pkg');
  t.same(await calls(), [
    'sudo -n true',
    'sudo -n env DEBIAN_FRONTEND=noninteractive apt-get update -qq',
    'apt-get update -qq DEBIAN_FRONTEND=noninteractive',
    'sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sidepool-test-pkg',
    'apt-get install -y -qq --no-install-recommends sidepool-test-pkg DEBIAN_FRONTEND=noninteractive',
  ]);
  const again = await provision(env, ['--check']);
  t.equal(again.code, 0, 'then present');
});

void t.test('no apt-get (not Debian): fails at once, naming what is missing', async (t) => {
  const { env } = await scene(t, 'passwordless');
  const run = await provision({ ...env, PATH: '/nonexistent' });
  t.equal(run.code, 1);
  t.match(run.stderr, /no apt-get here/);
  t.match(run.stderr, COMMAND);
});
