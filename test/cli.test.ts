import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import YAML from 'yaml';
import { runCli, startCli } from './helpers/cli.js';
import { freePort } from './helpers/redis.js';
import { startEcho } from './helpers/util.js';
import { tempDir } from './helpers/tmp.js';

async function configFile(text: string): Promise<string> {
  const dir = tempDir('sidepool-cli-');
  const path = join(dir, 'sidepool.yaml');
  await writeFile(path, text);
  return path;
}

void t.test('--version and --help', async (t) => {
  const version = await runCli(['--version']);
  t.equal(version.code, 0);
  t.match(version.stdout, /^\d+\.\d+\.\d+/);
  for (const command of [[], ['run'], ['check']]) {
    const help = await runCli([...command, '--help']);
    t.equal(help.code, 0, `${command.join(' ') || 'top'} --help exits 0`);
    t.match(help.stdout, /--help/);
  }
  const run = await runCli(['run', '--help']);
  t.match(
    run.stdout,
    /--listen[\s\S]*--upstream[\s\S]*--min-idle[\s\S]*--max-size[\s\S]*--admin[\s\S]*--log-level/,
  );
});

void t.test("--help shows each flag's default, within 100 columns, no word cut", async (t) => {
  const top = await runCli(['--help']);
  // Not a terminal here: the width is 100, and a command's description is never cut.
  for (const line of top.stdout.split('\n')) t.ok(line.length <= 100, `fits: ${line}`);
  t.match(top.stdout, /sidepool demo +start a TLS upstream .* show what warm links save\n/);
  const run = await runCli(['run', '--help']);
  for (const line of run.stdout.split('\n')) t.ok(line.length <= 100, `fits: ${line}`);
  const text = run.stdout.replace(/\s+/g, ' ');
  t.match(text, /--mode .*?\[default: tcp\]/, '--mode');
  t.match(text, /--min-idle .*?\[default: 4, or --max-size if smaller\]/, '--min-idle');
  t.match(text, /--max-size .*?\[default: 64\]/, '--max-size');
  t.match(text, /--admin .*?\[default: 127\.0\.0\.1:9901\]/, '--admin says it opens one');
  t.match(text, /--log-level .*?\[default: info\]/, '--log-level');
  t.match(text, /--workers .*?\[default: 1\]/, '--workers');
});

void t.test('a flag error names the flag', async (t) => {
  const route = ['--listen', '127.0.0.1:1', '--upstream', '127.0.0.1:2'];
  const cases: Array<[string[], RegExp]> = [
    [['--listen', '127.0.0.1:1'], /^ {2}--upstream: is required with --listen/m],
    [['--upstream', '127.0.0.1:1'], /^ {2}--listen: is required with --upstream/m],
    [[...route, '--max-size'], /--max-size needs a value/],
    [[...route, '--max-size', 'abc'], /^ {2}--max-size: expected a whole number/m],
    [[...route, '--max-size', '1e300'], /^ {2}--max-size: must be at most 65535/m],
    [[...route, '--min-idle', '-1'], /^ {2}--min-idle: must be at least 0/m],
    [[...route, '--mode', 'mysql'], /^ {2}--mode: expected one of/m],
    [[...route, '--admin', 'nope'], /^ {2}--admin: expected host:port/m],
    [[...route, '--log-level', 'loud'], /^ {2}--log-level: expected one of/m],
    [[...route, '--workers', '0'], /^ {2}--workers: must be at least 1/m],
    [['--listen', 'nope', '--upstream', '127.0.0.1:2'], /^ {2}--listen: expected host:port/m],
  ];
  for (const [args, error] of cases) {
    const result = await runCli(['check', ...args]);
    t.equal(result.code, 2, `${args.join(' ')}: exit 2`);
    t.match(result.stderr, error, `${args.join(' ')}: names the flag`);
  }
});

void t.test('check prints the effective config and exits 0', async (t) => {
  const path = await configFile(
    'routes:\n  - listen: 127.0.0.1:6380\n    upstream: redis.internal:6379\n',
  );
  const result = await runCli(['check', '--config', path]);
  t.equal(result.code, 0, result.stderr);
  const effective = YAML.parse(result.stdout) as {
    routes: Array<{ pool: { maxSize: number } }>;
    admin: unknown;
  };
  t.equal(effective.routes[0]?.pool.maxSize, 64, 'defaults filled');
  t.same(effective.admin, { listen: '127.0.0.1:9901' });
});

void t.test('SIDEPOOL_CONFIG names the default config file', async (t) => {
  const path = await configFile(
    'routes:\n  - listen: 127.0.0.1:6380\n    upstream: a:1\n    pool: { maxSize: 7 }\n',
  );
  const result = await runCli(['check'], { env: { SIDEPOOL_CONFIG: path } });
  t.equal(result.code, 0, result.stderr);
  t.match(result.stdout, /maxSize: 7/);
});

void t.test('check lists every problem with its path and exits 2', async (t) => {
  const path = await configFile(
    'admin: { listen: nope }\nroutes:\n  - listen: 127.0.0.1:6380\n    upstream: { adress: x }\n    pool: { acquireTimeout: 5q }\n',
  );
  const result = await runCli(['check', '--config', path]);
  t.equal(result.code, 2);
  t.match(result.stderr, /invalid configuration \(4 problems\)/);
  t.match(result.stderr, /admin\.listen: expected host:port/);
  t.match(result.stderr, /routes\[0\]\.upstream\.adress: unknown key/);
  t.match(result.stderr, /routes\[0\]\.pool\.acquireTimeout: expected a duration/);
  t.equal(result.stdout, '', 'nothing on stdout');
});

void t.test('a config that does not parse, and a missing file, exit 2', async (t) => {
  const bad = await runCli(['check', '--config', await configFile('routes: [\n')]);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /sidepool\.yaml/);
  const missing = await runCli(['check', '--config', '/nonexistent/sidepool.yaml']);
  t.equal(missing.code, 2);
  t.match(missing.stderr, /cannot read \/nonexistent\/sidepool\.yaml/);
  const none = await runCli(['run']);
  t.equal(none.code, 2);
  t.match(none.stderr, /no configuration/);
});

void t.test('unknown flags and commands exit 2', async (t) => {
  const flag = await runCli(['run', '--lisen', ':1']);
  t.equal(flag.code, 2);
  t.match(flag.stderr, /Unknown argument/);
  const cmd = await runCli(['frobnicate']);
  t.equal(cmd.code, 2);
});

void t.test('run: a port in use is one clear line and exit 1', async (t) => {
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  t.teardown(() => blocker.close());
  const port = (blocker.address() as net.AddressInfo).port;
  const result = await runCli([
    'run',
    '--listen',
    `127.0.0.1:${port}`,
    '--upstream',
    '127.0.0.1:1',
    '--admin',
    'false',
  ]);
  t.equal(result.code, 1);
  t.match(result.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${port}: EADDRINUSE`));
});

void t.test('run: an unresolvable upstream is one clear line and exit 1', async (t) => {
  const result = await runCli([
    'run',
    '--listen',
    '127.0.0.1:0',
    '--upstream',
    'no-such-host.invalid:6379',
    '--admin',
    'false',
  ]);
  t.equal(result.code, 1);
  t.match(result.stderr, /cannot resolve no-such-host\.invalid/);
});

void t.test('run serves, and SIGTERM lets the active session finish, then exits 0', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const port = await freePort();
  const cli = startCli([
    'run',
    '--listen',
    `127.0.0.1:${port}`,
    '--upstream',
    upstream.address,
    '--admin',
    'false',
    '--min-idle',
    '2',
  ]);
  t.teardown(() => cli.child.kill('SIGKILL'));
  await cli.waitFor((l) => l.msg === 'route listening');
  await cli.waitFor((l) => l.msg === 'pool warm');
  const client = net.connect(port, '127.0.0.1');
  client.on('error', () => {});
  await new Promise((r) => client.once('connect', r));
  const first = new Promise<string>((r) => client.once('data', (c: Buffer) => r(c.toString())));
  client.write('one');
  t.equal(await first, 'one');
  cli.child.kill('SIGTERM');
  await cli.waitFor((l) => l.msg === 'draining: listeners closed');
  const second = new Promise<string>((r) => client.once('data', (c: Buffer) => r(c.toString())));
  client.write('two');
  t.equal(await second, 'two', 'the active session still works while draining');
  client.end();
  t.equal(await cli.exited, 0);
  t.ok(cli.lines.some((l) => l.msg === 'stopped'));
});

void t.test('a second signal exits at once', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const port = await freePort();
  const cli = startCli([
    'run',
    '--listen',
    `127.0.0.1:${port}`,
    '--upstream',
    upstream.address,
    '--admin',
    'false',
  ]);
  t.teardown(() => cli.child.kill('SIGKILL'));
  await cli.waitFor((l) => l.msg === 'route listening');
  const client = net.connect(port, '127.0.0.1');
  client.on('error', () => {});
  await new Promise((r) => client.once('connect', r));
  cli.child.kill('SIGTERM');
  await cli.waitFor((l) => l.msg === 'draining: listeners closed');
  cli.child.kill('SIGINT');
  t.equal(await cli.exited, 3, 'exit 3: the open session was cut');
  t.ok(cli.lines.some((l) => l.msg === 'second signal: exiting now'));
  client.destroy();
});

void t.test('the built CLI is executable, so npx sidepool runs it', async (t) => {
  const { statSync } = await import('node:fs');
  const { CLI } = await import('./helpers/cli.js');
  t.ok((statSync(CLI).mode & 0o111) !== 0, `${CLI} has execute bits`);
});
