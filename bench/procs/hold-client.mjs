// Hold client: opens `--count` connections (at most `--parallel` connecting at once); each
// sends one byte and waits for its echo, so every connection is spliced end to end. Then
// prints {"event":"established", ...} and holds them until SIGTERM or `--max-seconds`, and
// reports connections the far side dropped meanwhile.
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    count: { type: 'string', default: '1000' },
    parallel: { type: 'string', default: '200' },
    timeout: { type: 'string', default: '30' },
    'max-seconds': { type: 'string', default: '180' },
  },
});
const port = Number(values.port);
const count = Number(values.count);
const parallel = Number(values.parallel);
const timeoutMs = Number(values.timeout) * 1000;

const held = [];
const errors = {};
let ok = 0;
let failed = 0;
let dropped = 0;
let next = 0;
let inflight = 0;
let reported = false;
const started = performance.now();

function open() {
  while (inflight < parallel && next < count) {
    next++;
    inflight++;
    one();
  }
}

function one() {
  const socket = net.connect({ host: values.host, port, noDelay: true });
  let settled = false;
  const finish = (success, code) => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    inflight--;
    if (success) {
      ok++;
      held.push(socket);
      socket.on('close', () => {
        if (!stopping) dropped++;
      });
    } else {
      failed++;
      errors[code] = (errors[code] ?? 0) + 1;
      socket.destroy();
    }
    if (ok + failed === count) report();
    else open();
  };
  const timer = setTimeout(() => finish(false, 'timeout'), timeoutMs);
  socket.on('connect', () => socket.write('x'));
  socket.once('data', () => finish(true));
  socket.on('error', (err) => finish(false, err.code ?? err.message));
  socket.on('close', () => finish(false, 'closed'));
}

function report() {
  if (reported) return;
  reported = true;
  process.stdout.write(
    `${JSON.stringify({ event: 'established', ok, failed, errors, ms: performance.now() - started })}\n`,
  );
}

let stopping = false;
function stop() {
  stopping = true;
  process.stdout.write(`${JSON.stringify({ event: 'closing', held: held.length, dropped })}\n`);
  for (const socket of held) socket.destroy();
  setTimeout(() => process.exit(0), 200);
}
process.on('SIGTERM', stop);
setTimeout(stop, Number(values['max-seconds']) * 1000).unref();
open();
