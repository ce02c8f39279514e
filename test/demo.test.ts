import net from 'node:net';
import t from 'tap';
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
