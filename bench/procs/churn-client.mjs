// Churn client: `--sessions` short sessions, `--concurrency` at a time. Each connects,
// sends `--send`, reads until `--expect` arrives, and closes. Prints
// {"event":"progress",done,errors} every second and one {"event":"done", ...} at the end.
// Bounded: stops starting sessions after `--max-seconds`.
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { clearInterval, setInterval } from 'node:timers';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    sessions: { type: 'string', default: '10000' },
    concurrency: { type: 'string', default: '50' },
    send: { type: 'string', default: 'PING\r\n' },
    expect: { type: 'string', default: '+PONG\r\n' },
    timeout: { type: 'string', default: '10' },
    'max-seconds': { type: 'string', default: '600' },
  },
});
const port = Number(values.port);
const total = Number(values.sessions);
const concurrency = Number(values.concurrency);
const send = Buffer.from(values.send);
const expect = Buffer.from(values.expect);
const timeoutMs = Number(values.timeout) * 1000;
const started = performance.now();
const deadline = started + Number(values['max-seconds']) * 1000;

let startedCount = 0;
let done = 0;
let failed = 0;
let inflight = 0;
let timedOut = false;
const errors = {};

function launch() {
  while (inflight < concurrency && startedCount < total) {
    if (performance.now() >= deadline) {
      timedOut = true;
      break;
    }
    startedCount++;
    inflight++;
    one();
  }
  if (inflight === 0) finish();
}

function one() {
  const socket = net.connect({ host: values.host, port, noDelay: true });
  let got = Buffer.alloc(0);
  let settled = false;
  const end = (code) => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    socket.destroy();
    inflight--;
    if (code === undefined) done++;
    else {
      failed++;
      errors[code] = (errors[code] ?? 0) + 1;
    }
    launch();
  };
  const timer = setTimeout(() => end('timeout'), timeoutMs);
  socket.on('connect', () => socket.write(send));
  socket.on('data', (chunk) => {
    got = got.length ? Buffer.concat([got, chunk]) : chunk;
    if (got.length >= expect.length)
      end(got.subarray(0, expect.length).equals(expect) ? undefined : 'bad reply');
  });
  socket.on('error', (err) => end(err.code ?? err.message));
  socket.on('close', () => end('closed before the reply'));
}

const progress = setInterval(() => {
  process.stdout.write(`${JSON.stringify({ event: 'progress', done, failed })}\n`);
}, 200);

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  clearInterval(progress);
  const seconds = (performance.now() - started) / 1000;
  process.stdout.write(
    `${JSON.stringify({ event: 'done', done, failed, errors, seconds, perSec: done / seconds, timedOut })}\n`,
  );
  process.exit(0);
}
process.on('SIGTERM', finish);
launch();
