// Signals to `sidepool run` at every stage: during start-up (held, then acted on), while
// draining (a second one cuts sessions, and says so in the exit code), and a config file
// that is an alias bomb (refused, naming the file).
import dgram from 'node:dgram';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import t from 'tap';
import YAML from 'yaml';
import { runCli, startPlainCli, type RunningCli } from './helpers/cli.js';
import { configFile } from './helpers/config-file.js';
import { startDns, type DnsServer } from './helpers/dnsmasq.js';
import { freePort } from './helpers/redis.js';
import { roundTrip, startEcho } from './helpers/util.js';

/**
 * A DNS server that holds its answers: each query waits until `release()`, then goes to
 * dnsmasq and its answer back (later queries, such as the resolver's retries, go at once).
 * A route to a `dns:` upstream through it keeps `sidepool run` in its start-up
 * (resolving) until the test has sent its signal: the window is a condition, not a delay.
 * The resolver gives up after about 6 s (2 s, then 4 s), far longer than a test takes
 * from the first log line to its signal.
 */
async function heldDns(
  real: DnsServer,
): Promise<{ address: string; release(): void; close(): void }> {
  const front = dgram.createSocket('udp4');
  let held: { query: Buffer; port: number; address: string }[] | undefined = [];
  const answer = (query: Buffer, port: number, address: string) => {
    const back = dgram.createSocket('udp4');
    back.on('message', (reply) => {
      front.send(reply, port, address);
      back.close();
    });
    back.send(query, real.port, '127.0.0.1');
  };
  front.on('message', (query, client) => {
    if (held !== undefined) held.push({ query, port: client.port, address: client.address });
    else answer(query, client.port, client.address);
  });
  await new Promise<void>((r) => front.bind(0, '127.0.0.1', r));
  return {
    address: `127.0.0.1:${front.address().port}`,
    release: () => {
      const queries = held ?? [];
      held = undefined;
      for (const q of queries) answer(q.query, q.port, q.address);
    },
    close: () => front.close(),
  };
}

async function heldStart(t: { teardown(fn: () => unknown): void }) {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  const dns = await startDns({ 'upstream.test': ['127.0.0.1'] });
  t.teardown(() => dns.stop());
  const held = await heldDns(dns);
  t.teardown(() => held.close());
  const port = await freePort();
  const path = await configFile(
    YAML.stringify({
      admin: false,
      routes: [
        {
          name: 'r',
          listen: `127.0.0.1:${port}`,
          upstream: { dns: `upstream.test:${upstream.port}`, resolvers: [held.address] },
          pool: { minIdle: 0 },
        },
      ],
    }),
  );
  return { port, path, release: () => held.release() };
}

/** Resolves once the process is in its start-up: its 'starting' line, said before it resolves. */
async function started(cli: RunningCli): Promise<void> {
  await cli.waitFor((l) => l.msg === 'starting', 30_000);
}

void t.test(
  'SIGHUP during start-up does not kill: the config is reloaded once started',
  async (t) => {
    const { port, path, release } = await heldStart(t);
    const cli = startPlainCli(['run', '--config', path]);
    t.teardown(() => cli.child.kill('SIGKILL'));
    await started(cli);
    t.notOk(
      cli.lines.some((l) => l.msg === 'route listening'),
      'still starting',
    );
    cli.child.kill('SIGHUP');
    await cli.waitFor((l) => String(l.msg).startsWith('SIGHUP during start-up'), 30_000);
    release();
    await cli.waitFor((l) => l.msg === 'config reloaded', 30_000);
    t.equal(cli.child.exitCode, null, 'alive');
    t.equal((await roundTrip(port, 'hup')).toString(), 'hup');
    cli.child.kill('SIGTERM');
    t.equal(await cli.exited, 0);
  },
);

/** The signals a process catches, from /proc (Linux): the SigCgt mask. */
async function caught(pid: number): Promise<Set<number>> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const mask = BigInt(`0x${/^SigCgt:\s*([0-9a-f]+)$/m.exec(status)?.[1] ?? '0'}`);
  const out = new Set<number>();
  for (let n = 1; n <= 64; n++) if ((mask >> BigInt(n - 1)) & 1n) out.add(n);
  return out;
}

void t.test('the signals are taken before the program loads', async (t) => {
  const { port, path, release } = await heldStart(t);
  const cli = startPlainCli(['run', '--config', path]);
  t.teardown(() => cli.child.kill('SIGKILL'));
  const pid = cli.child.pid as number;
  const [SIGHUP, SIGINT, SIGTERM] = [1, 2, 15];
  let handled = new Set<number>();
  // Poll until it catches SIGHUP; no log line may come first (they come once loaded).
  const deadline = Date.now() + 30_000;
  while (!handled.has(SIGHUP) && Date.now() < deadline) {
    handled = await caught(pid);
    if (!handled.has(SIGHUP)) await new Promise((r) => setTimeout(r, 5));
  }
  const linesBefore = cli.lines.length;
  t.ok(handled.has(SIGHUP) && handled.has(SIGINT) && handled.has(SIGTERM), 'caught');
  t.equal(linesBefore, 0, 'before the first log line: before the config is even read');
  cli.child.kill('SIGHUP');
  // Held before the logger exists, so no line says so; the start-up goes on once released.
  release();
  await cli.waitFor((l) => l.msg === 'route listening', 30_000);
  t.equal(cli.child.signalCode, null, 'not killed');
  t.equal((await roundTrip(port, 'early')).toString(), 'early');
  cli.child.kill('SIGTERM');
  t.equal(await cli.exited, 0);
});

void t.test('SIGTERM during start-up stops cleanly, exit 0', async (t) => {
  const { path, release } = await heldStart(t);
  const cli = startPlainCli(['run', '--config', path]);
  t.teardown(() => cli.child.kill('SIGKILL'));
  await started(cli);
  cli.child.kill('SIGTERM');
  await cli.waitFor((l) => l.msg === 'signal during start-up: stopping once started', 30_000);
  release();
  t.equal(await cli.exited, 0);
  t.equal(cli.child.signalCode, null, 'not killed by the signal');
  t.ok(
    cli.lines.some((l) => l.msg === 'stopped'),
    'drained and stopped',
  );
});

void t.test('a second signal that cuts sessions exits 3; with none open, 0', async (t) => {
  const upstream = await startEcho();
  t.teardown(() => upstream.close());
  for (const withSession of [true, false]) {
    const port = await freePort();
    const cli = startPlainCli([
      'run',
      '--listen',
      `127.0.0.1:${port}`,
      '--upstream',
      upstream.address,
      '--admin',
      'false',
      '--log-level',
      'debug',
    ]);
    t.teardown(() => cli.child.kill('SIGKILL'));
    await cli.waitFor((l) => l.msg === 'route listening', 30_000);
    const client = net.connect(port, '127.0.0.1');
    client.on('error', () => {});
    await new Promise((r) => client.once('connect', r));
    await cli.waitFor((l) => l.msg === 'session open', 30_000);
    if (!withSession) {
      client.destroy();
      await cli.waitFor((l) => l.msg === 'session closed', 30_000);
    }
    cli.child.kill('SIGTERM');
    if (withSession) await cli.waitFor((l) => l.msg === 'draining: listeners closed', 30_000);
    cli.child.kill('SIGINT');
    const code = await cli.exited;
    if (withSession) t.equal(code, 3, 'sessions cut: exit 3');
    else t.ok(code === 0, `nothing to cut: exit 0 (got ${code})`);
    client.destroy();
  }
});

void t.test('a YAML alias bomb is refused naming the file, exit 2', async (t) => {
  const lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
  for (let i = 1; i < 9; i++) {
    const name = String.fromCharCode(97 + i);
    const prev = String.fromCharCode(96 + i);
    lines.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(',')}]`);
  }
  lines.push('routes: *i');
  const path = await configFile(`${lines.join('\n')}\n`, 'bomb.yaml');
  const result = await runCli(['check', '--config', path], { timeoutMs: 60_000 });
  t.equal(result.code, 2);
  t.match(result.stderr, /bomb\.yaml: .*alias/i);
});
