// Bulk client: `--conns` connections each stream `--chunk`-byte writes (with backpressure)
// until `--max-bytes` or `--seconds`, then half-close and wait for the sink's 8-byte count.
// Throughput = bytes the sink confirmed ÷ time from the first connect to the last count.
// Prints one {"event":"result", ...} line and exits. Bounded: gives up `--grace` s after the
// sending deadline.
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    conns: { type: 'string', default: '1' },
    seconds: { type: 'string', default: '3' },
    'max-bytes': { type: 'string', default: String(256 * 1024 * 1024) },
    chunk: { type: 'string', default: String(64 * 1024) },
    grace: { type: 'string', default: '20' },
  },
});
const port = Number(values.port);
const conns = Number(values.conns);
const maxBytes = Number(values['max-bytes']);
const buf = Buffer.alloc(Number(values.chunk), 'x');

const started = performance.now();
const deadline = started + Number(values.seconds) * 1000;
let lastAck = started;

function one() {
  return new Promise((resolve) => {
    const socket = net.connect({ host: values.host, port, allowHalfOpen: true, noDelay: true });
    let sent = 0;
    let ended = false;
    let settled = false;
    const reply = [];
    const finish = (result) => {
      if (settled) return;
      settled = true;
      clearTimeout(guard);
      socket.destroy();
      resolve({ sent, ...result });
    };
    const guard = setTimeout(
      () => finish({ acked: 0, error: 'timeout' }),
      deadline - performance.now() + Number(values.grace) * 1000,
    );
    const pump = () => {
      while (!ended) {
        if (sent >= maxBytes || performance.now() >= deadline) {
          ended = true;
          socket.end();
          return;
        }
        sent += buf.length;
        if (!socket.write(buf)) return;
      }
    };
    socket.on('connect', pump);
    socket.on('drain', pump);
    socket.on('data', (chunk) => reply.push(chunk));
    socket.on('end', () => {
      const data = Buffer.concat(reply);
      if (data.length !== 8) {
        finish({ acked: 0, error: `reply of ${data.length} bytes` });
        return;
      }
      lastAck = Math.max(lastAck, performance.now());
      finish({ acked: Number(data.readBigUInt64BE(0)) });
    });
    socket.on('error', (err) => finish({ acked: 0, error: err.code ?? err.message }));
    socket.on('close', () => finish({ acked: 0, error: 'closed before the count' }));
  });
}

const results = await Promise.all(Array.from({ length: conns }, one));
const seconds = (lastAck - started) / 1000;
const errors = {};
let mismatches = 0;
for (const r of results) {
  if (r.error) errors[r.error] = (errors[r.error] ?? 0) + 1;
  else if (r.acked !== r.sent) mismatches++;
}
const bytesAcked = results.reduce((n, r) => n + (r.error ? 0 : r.acked), 0);
process.stdout.write(
  `${JSON.stringify({
    event: 'result',
    conns,
    seconds,
    bytesSent: results.reduce((n, r) => n + r.sent, 0),
    bytesAcked,
    mbPerSec: seconds > 0 ? bytesAcked / 1e6 / seconds : 0,
    mismatches,
    errors,
  })}\n`,
);
process.exit(0);
