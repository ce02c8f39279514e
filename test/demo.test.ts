import net from 'node:net';
import t from 'tap';
import { conclusions, type Summary } from '../src/demo/demo.js';
import { runCli, startCli } from './helpers/cli.js';

void t.test('sidepool demo runs both workloads and prints the comparison', async (t) => {
  const result = await runCli(['demo', '--requests', '20', '--rtt', '10ms'], { timeoutMs: 60_000 });
  t.equal(result.code, 0, result.stderr);
  const out = result.stdout;
  const direct =
    /direct \(TLS per request\)\s+(\d+)\s+(\d+)\s+[\d.]+ ms\s+[\d.]+ ms\s+(\d+)\s+(\d+)\s+(\d+)/.exec(
      out,
    );
  const through =
    /through sidepool\s+(\d+)\s+(\d+)\s+[\d.]+ ms\s+[\d.]+ ms\s+(\d+)\s+(\d+)\s+(\d+)/.exec(out);
  t.ok(direct && through, out);
  t.equal(direct?.[1], '20', 'direct: 20 requests');
  t.equal(direct?.[2], '0', 'direct: none failed');
  t.equal(direct?.[4], '20', 'direct: a full TLS handshake per request');
  t.equal(through?.[1], '20');
  t.equal(through?.[2], '0', 'through sidepool: none failed');
  t.ok(Number(through?.[4]) < 20, 'through sidepool: fewer full handshakes (resumption)');
  t.match(out, /p50 through sidepool is [\d.]+x direct/);
  // Every upstream connection accounted for: warm-up plus one replacement per session, and
  // each of them through a full or a resumed handshake.
  const conns =
    /(\d+) through sidepool: (\d+) dialed before the run to warm the pool, (\d+) during it/.exec(
      out,
    );
  t.ok(conns, 'the connections are explained');
  t.equal(Number(conns?.[1]), Number(through?.[3]), 'the table and the sentence agree');
  t.equal(Number(conns?.[2]) + Number(conns?.[3]), Number(conns?.[1]));
  t.equal(Number(conns?.[3]), 20, 'one replacement per session (tcp mode)');
  t.equal(Number(through?.[4]) + Number(through?.[5]), Number(through?.[3]), 'full + resumed');
  t.match(out, /Admin: http:\/\/127\.0\.0\.1:\d+\/metrics/);
  t.match(out, /sidepool_pool_acquires_total\{pool="127\.0\.0\.1:\d+\+tls",result="idle"\} 20/);
  t.notMatch(out, /\r/, 'no progress redraws when stdout is not a terminal');
});

void t.test('sidepool demo --keep leaves the proxy up for the user', async (t) => {
  const cli = startCli(['demo', '--requests', '4', '--rtt', '5ms', '--keep']);
  t.teardown(() => cli.child.kill('SIGKILL'));
  let stdout = '';
  cli.child.stdout?.on('data', (c: Buffer) => (stdout += c.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(stdout + cli.stderr())), 30_000);
    const poll = setInterval(() => {
      const m = /curl -s http:\/\/127\.0\.0\.1:(\d+)\//.exec(stdout);
      if (m) {
        clearInterval(poll);
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    }, 20);
  });
  const reply = await new Promise<string>((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () =>
      s.write('GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
    );
    let got = '';
    s.on('data', (c: Buffer) => (got += c.toString()));
    s.on('close', () => resolve(got));
    s.on('error', reject);
  });
  t.match(reply, /^HTTP\/1\.1 200/);
  t.match(reply, /hello from the upstream/);
  cli.child.kill('SIGINT');
  t.equal(await cli.exited, 0);
});

void t.test('sidepool demo rejects bad options', async (t) => {
  const rtt = await runCli(['demo', '--rtt', 'soon']);
  t.equal(rtt.code, 2);
  t.match(rtt.stderr, /--rtt: expected a duration/);
  const requests = await runCli(['demo', '--requests', '0']);
  t.equal(requests.code, 2);
});

/** A demo run's measurements, as `conclusions` gets them. */
function summary(p50Direct: number, p50Through: number, rttMs = 20): Summary {
  const run = (p50: number, connections: number, full: number, resumed: number) => ({
    latencies: Array<number>(100).fill(p50),
    failures: 0,
    upstream: { connections, fullHandshakes: full, resumedHandshakes: resumed, requests: 100 },
  });
  return {
    rttMs,
    requests: 100,
    concurrency: 4,
    direct: run(p50Direct, 100, 100, 0),
    through: run(p50Through, 116, 1, 115),
    warmUpConnections: 16,
    acquiredIdle: 100,
    acquiredDialed: 0,
  };
}

void t.test('the demo concludes only what it measured', async (t) => {
  await t.test('sidepool faster: the handshakes were done before the request came', (t) => {
    const lines = conclusions(summary(69.4, 25.8)).join('\n');
    t.match(lines, 'p50 through sidepool is 0.37x direct (25.8 ms against 69.4 ms)');
    t.match(lines, /every request took a warm link \(100 of 100 from idle\)/);
    t.match(lines, /handshakes \(two round trips, 40ms here\) done before the request came/);
    t.end();
  });
  await t.test('sidepool not faster: says so, and does not claim the saving', (t) => {
    const lines = conclusions(summary(87, 94, 5)).join('\n');
    t.match(lines, 'p50 through sidepool is 1.08x direct (94.0 ms against 87.0 ms): not faster');
    t.notMatch(lines, /before the request came|were paid/);
    t.match(lines, /72\.0 ms of it was this machine's own time/);
    t.end();
  });
  await t.test('upstream connections: where each came from', (t) => {
    const lines = conclusions(summary(69.4, 25.8)).join('\n');
    t.match(
      lines,
      /116 through sidepool: 16 dialed before the run to warm the pool, 100 during it/,
    );
    t.match(lines, /a link carries one session and is then closed/);
    t.match(lines, /dials a replacement ahead/);
    t.match(lines, 'Full TLS handshakes at the upstream: 100 direct, 1 through sidepool; 115 more');
    t.end();
  });
  await t.test('requests that waited for a dial are not counted as warm', (t) => {
    const s = { ...summary(69.4, 25.8), acquiredIdle: 90, acquiredDialed: 10 };
    t.match(conclusions(s).join('\n'), '90 of 100 requests took a warm link, 10 waited for a dial');
    t.end();
  });
});
