import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import pino from 'pino';
import { App } from '../app.js';
import { formatDuration } from '../config/duration.js';
import { parseConfig } from '../config/load.js';
import { describe } from '../errors.js';
import { DelayRelay } from './delay-relay.js';
import { selfSignedCertificate } from './certificate.js';
import { DemoUpstream, type UpstreamCounts } from './upstream.js';

export interface DemoOptions {
  /** Simulated network round trip to the upstream. */
  rttMs: number;
  /** Requests per run, each on a new connection. */
  requests: number;
  /** Requests in flight at once. */
  concurrency: number;
  /** Leave everything running for the user's own client. */
  keep: boolean;
  /** Where the admin server listens. */
  admin: string;
}

const REQUEST = 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n';

/**
 * `sidepool demo`: a TLS upstream behind a simulated round trip, and a sidepool route to
 * it with a warm pool; the same workload (a new connection per request) runs directly and
 * through sidepool, and the difference is printed. Everything runs in this process.
 */
export async function runDemo(
  options: DemoOptions,
  out: NodeJS.WriteStream = process.stdout,
): Promise<number> {
  const say = (line = ''): boolean => out.write(`${line}\n`);
  const dir = await mkdtemp(join(tmpdir(), 'sidepool-demo-'));
  const cleanups: Array<() => Promise<void> | void> = [
    () => rm(dir, { recursive: true, force: true }),
  ];
  const cleanup = async (): Promise<void> => {
    for (const fn of cleanups.reverse()) await fn();
  };
  try {
    say(
      `sidepool demo: a TLS upstream ${formatDuration(options.rttMs)} away (simulated), and a warm sidepool in front of it.`,
    );
    const certificate = selfSignedCertificate({
      commonName: 'sidepool demo upstream',
      altNames: ['localhost', '127.0.0.1'],
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 24 * 3_600_000),
    });
    const caPath = join(dir, 'upstream-ca.pem');
    await writeFile(caPath, certificate.cert);

    const upstream = new DemoUpstream(certificate);
    const upstreamPort = await upstream.listen();
    cleanups.push(() => upstream.close());
    const relay = new DelayRelay({ host: '127.0.0.1', port: upstreamPort }, options.rttMs);
    const relayPort = await relay.listen();
    cleanups.push(() => relay.close());

    // 1. Direct: TCP and TLS handshakes on every request's path.
    const direct = await measure('direct', options, out, upstream, () =>
      tls.connect({
        host: '127.0.0.1',
        port: relayPort,
        ca: certificate.cert,
        servername: 'localhost',
      }),
    );

    // 2. Through sidepool: plain text to localhost, a warm TLS link to the upstream.
    const base = { ...upstream.counts };
    const config = parseConfig({
      admin: { listen: options.admin },
      log: { level: 'warn' },
      routes: [
        {
          name: 'demo',
          listen: '127.0.0.1:0',
          upstream: {
            address: `127.0.0.1:${relayPort}`,
            tls: { ca: caPath, servername: 'localhost' },
          },
          pool: { minIdle: Math.min(16, options.requests), maxSize: 64, acquireTimeout: '10s' },
        },
      ],
    });
    const app = new App(config, pino({ level: 'warn' }, pino.destination(2)));
    await app.start();
    cleanups.push(() => app.stop(1000));
    const route = app.firstRoute;
    const settleMs = 10_000 + options.rttMs * 10;
    await waitUntil(() => route.pool.isWarm, settleMs, 'the pool did not warm up');
    // Counted at the upstream once their handshakes are done there too (if they never
    // are, what is there is counted).
    const settle = (): Promise<void> =>
      waitUntil(() => settled(upstream.counts, base, route.pool.stats()), settleMs, '').catch(
        () => undefined,
      );
    await settle();
    const warm = { ...upstream.counts };
    const through = await measure('sidepool', options, out, upstream, () =>
      net.connect(route.port, '127.0.0.1'),
    );
    // The replacements dialed during the run finish in the background: wait for them, so
    // that connections and handshakes add up.
    await settle();
    const acquires = acquireCounts(await app.metrics.render());
    const summary: Summary = {
      rttMs: options.rttMs,
      requests: options.requests,
      concurrency: options.concurrency,
      direct,
      through: {
        ...through,
        // The links dialed to warm the pool count too: they are what this run cost upstream.
        upstream: difference(upstream.counts, direct.upstream),
      },
      warmUpConnections: warm.connections - direct.upstream.connections,
      acquiredIdle: acquires.idle,
      acquiredDialed: acquires.dialed,
    };

    say();
    printTable(say, summary);
    const adminPort = app.admin?.port;
    if (adminPort !== undefined) {
      say();
      say(`Admin: http://127.0.0.1:${adminPort}/metrics  /pools  /healthz  /readyz`);
      for (const line of await metricLines(adminPort)) say(`  ${line}`);
    }

    if (!options.keep) {
      await cleanup();
      return direct.failures + through.failures === 0 ? 0 : 1;
    }
    say();
    say('Still running (--keep). Try it with your own client:');
    say(
      `  curl -s http://127.0.0.1:${route.port}/          # plain HTTP to sidepool; sidepool adds TLS`,
    );
    say(`  printf '${REQUEST.replace(/\r\n/g, '\\r\\n')}' | nc 127.0.0.1 ${route.port}`);
    say(
      `  curl -sk https://127.0.0.1:${relayPort}/         # the upstream itself, ${formatDuration(options.rttMs)} away`,
    );
    say('Press Ctrl-C to stop.');
    await new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    await cleanup();
    return 0;
  } catch (err) {
    await cleanup();
    process.stderr.write(`sidepool demo: ${describe(err)}\n`);
    return 1;
  }
}

/** Runs the workload: `requests` fresh connections, `concurrency` at a time. */
async function measure(
  label: string,
  options: DemoOptions,
  out: NodeJS.WriteStream,
  upstream: DemoUpstream,
  connect: () => net.Socket,
): Promise<RunResult> {
  const start = { ...upstream.counts };
  const latencies: number[] = [];
  let failures = 0;
  let firstFailure: string | undefined;
  let next = 0;
  const progress = new Progress(out, label, options.requests);
  const worker = async (): Promise<void> => {
    while (next < options.requests) {
      next++;
      try {
        latencies.push(await oneRequest(connect));
      } catch (err) {
        failures++;
        firstFailure ??= describe(err);
      }
      progress.tick();
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, options.concurrency) }, worker));
  progress.done(failures, firstFailure);
  return {
    latencies,
    failures,
    firstFailure,
    upstream: {
      connections: upstream.counts.connections - start.connections,
      fullHandshakes: upstream.counts.fullHandshakes - start.fullHandshakes,
      resumedHandshakes: upstream.counts.resumedHandshakes - start.resumedHandshakes,
      requests: upstream.counts.requests - start.requests,
    },
  };
}

/** Connect, send one request, read the whole response; resolves with the milliseconds taken. */
function oneRequest(connect: () => net.Socket): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const socket = connect();
    let response = '';
    const timer = setTimeout(() => socket.destroy(new Error('no response within 10s')), 10_000);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (response += chunk));
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      if (response.startsWith('HTTP/1.1 200')) resolve(performance.now() - started);
      else reject(new Error(`unexpected response: ${JSON.stringify(response.slice(0, 40))}`));
    });
    socket.write(REQUEST);
  });
}

/** What a demo run measured, for the table and the conclusions drawn from it. */
export interface Summary {
  rttMs: number;
  requests: number;
  concurrency: number;
  direct: RunResult;
  through: RunResult;
  /** Upstream connections sidepool made before the run, to warm its pool. */
  warmUpConnections: number;
  /** Requests through sidepool that took an idle (warm) link, and that waited for a dial. */
  acquiredIdle: number;
  acquiredDialed: number;
}

export interface RunResult {
  latencies: number[];
  failures: number;
  /** Why the first failed request failed. */
  firstFailure?: string;
  upstream: UpstreamCounts;
}

function printTable(say: (line?: string) => void, summary: Summary): void {
  const rows = [
    ['', 'requests', 'failed', 'p50', 'p99', 'upstream conns', 'full TLS handshakes', 'resumed'],
    row('direct (TLS per request)', summary.direct),
    row('through sidepool', summary.through),
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows)
    say(
      r
        .map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
        .join('  '),
    );
  say();
  for (const line of conclusions(summary)) say(line);
}

/**
 * What the run shows, in sentences that claim only what was measured: the latency ratio
 * (and why, only when sidepool was faster), where each upstream connection came from, and
 * how many handshakes were full.
 */
export function conclusions(s: Summary): string[] {
  const lines: string[] = [];
  const p50Direct = percentile(s.direct.latencies, 50);
  const p50Through = percentile(s.through.latencies, 50);
  const served = s.acquiredIdle + s.acquiredDialed;
  const warmLinks =
    s.acquiredDialed === 0
      ? `every request took a warm link (${s.acquiredIdle} of ${served} from idle)`
      : `${s.acquiredIdle} of ${served} requests took a warm link, ${s.acquiredDialed} waited for a dial`;
  const twoTrips = formatDuration(s.rttMs * 2);
  if (p50Direct > 0 && p50Through > 0) {
    const ratio = `p50 through sidepool is ${(p50Through / p50Direct).toFixed(2)}x direct (${ms(p50Through)} against ${ms(p50Direct)})`;
    if (p50Through < p50Direct) {
      lines.push(
        `${ratio}: ${warmLinks}, its TCP and TLS handshakes (two round trips, ${twoTrips} here) ` +
          'done before the request came.',
      );
    } else {
      // Direct costs three round trips (TCP, TLS, request); what it took beyond them is
      // this machine's own time: TLS CPU, a busy scheduler.
      const own = p50Direct - s.rttMs * 3;
      lines.push(
        `${ratio}: not faster in this run, though ${warmLinks}. A warm link saves two round ` +
          `trips, ${twoTrips} here; direct took ${ms(p50Direct)} for three round trips of ` +
          `${formatDuration(s.rttMs * 3)}` +
          (own > 0
            ? `, so ${ms(own)} of it was this machine's own time (a loaded CPU shows as latency)`
            : '') +
          '. A longer --rtt, or a quieter machine, shows the difference.',
      );
    }
  }
  const conns = s.through.upstream.connections;
  const replacements = conns - s.warmUpConnections;
  lines.push(
    `Upstream connections: ${s.direct.upstream.connections} direct, one per request; ` +
      `${conns} through sidepool: ${s.warmUpConnections} dialed before the run to warm the pool, ` +
      `${replacements} during it. In tcp mode a link carries one session and is then closed (its ` +
      'bytes belong to that session); the pool dials a replacement ahead, in the background, ' +
      "so the next request finds one warm: sidepool saves the requests' waiting, not connections.",
  );
  const full = s.through.upstream.fullHandshakes;
  const resumed = s.through.upstream.resumedHandshakes;
  const pending = conns - full - resumed;
  lines.push(
    `Full TLS handshakes at the upstream: ${s.direct.upstream.fullHandshakes} direct, ${full} through sidepool` +
      (resumed > 0 ? `; ${resumed} more resumed a TLS session (cheaper for the upstream)` : '') +
      (pending > 0 ? `; ${pending} still handshaking when counted` : '') +
      '.',
  );
  lines.push(
    `Each run: ${s.requests} requests, a new connection each, ${s.concurrency} at a time.`,
  );
  return lines;
}

function ms(value: number): string {
  return `${value.toFixed(1)} ms`;
}

/** No dial is open, and the upstream saw every connection since `base` through its handshake. */
function settled(now: UpstreamCounts, base: UpstreamCounts, pool: { connecting: number }): boolean {
  const since = difference(now, base);
  return (
    pool.connecting === 0 && since.fullHandshakes + since.resumedHandshakes === since.connections
  );
}

function difference(now: UpstreamCounts, before: UpstreamCounts): UpstreamCounts {
  return {
    connections: now.connections - before.connections,
    fullHandshakes: now.fullHandshakes - before.fullHandshakes,
    resumedHandshakes: now.resumedHandshakes - before.resumedHandshakes,
    requests: now.requests - before.requests,
  };
}

/** sidepool_pool_acquires_total by result, from the metrics text. */
function acquireCounts(text: string): { idle: number; dialed: number } {
  const count = (result: string): number =>
    Number(
      new RegExp(
        `^sidepool_pool_acquires_total\\{[^}]*result="${result}"[^}]*\\} (\\d+)`,
        'm',
      ).exec(text)?.[1] ?? 0,
    );
  return { idle: count('idle'), dialed: count('dialed') };
}

function row(label: string, result: RunResult): string[] {
  return [
    label,
    String(result.latencies.length + result.failures),
    String(result.failures),
    `${percentile(result.latencies, 50).toFixed(1)} ms`,
    `${percentile(result.latencies, 99).toFixed(1)} ms`,
    String(result.upstream.connections),
    String(result.upstream.fullHandshakes),
    String(result.upstream.resumedHandshakes),
  ];
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0;
}

async function waitUntil(done: () => boolean, timeoutMs: number, failure: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(failure);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function metricLines(port: number): Promise<string[]> {
  const text = await new Promise<string>((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () =>
      socket.end('GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
    );
    let body = '';
    socket.setEncoding('utf8');
    socket.on('data', (c: string) => (body += c));
    socket.on('end', () => resolve(body));
    socket.on('error', reject);
  });
  const wanted = [
    /^sidepool_pool_connections\{/,
    /^sidepool_pool_acquires_total\{.*result="(idle|dialed)"/,
    /^sidepool_upstream_connects_total\{/,
    /^sidepool_downstream_connections_total\{/,
  ];
  return text.split('\n').filter((line) => wanted.some((re) => re.test(line)));
}

/** A progress line that redraws itself on a terminal and prints once otherwise. */
class Progress {
  private count = 0;
  private readonly tty: boolean;

  constructor(
    private readonly out: NodeJS.WriteStream,
    private readonly label: string,
    private readonly total: number,
  ) {
    this.tty = out.isTTY === true;
    if (!this.tty) out.write(`${label}: ${total} requests...\n`);
  }

  tick(): void {
    this.count++;
    if (this.tty) this.out.write(`\r${this.label}: ${this.count}/${this.total}`);
  }

  done(failures: number, firstFailure?: string): void {
    const failed = failures > 0 ? `, ${failures} failed (the first: ${firstFailure})` : '';
    const text = `${this.label}: ${this.count} requests done${failed}`;
    this.out.write(this.tty ? `\r${text}\x1b[K\n` : `${text}\n`);
  }
}
