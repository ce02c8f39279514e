// A TCP relay that simulates a remote upstream `--one-way` ms away (default 10 ms, so a
// 20 ms round trip), in its own process.
//
// The model: accepting a connection costs one round trip before it is usable (the TCP
// handshake a real remote connect pays), and every chunk in either direction arrives one
// one-way delay after it was sent, in order. So for a connection accepted at time A:
//   client → upstream: a chunk read at t is delivered at max(t, A + RTT) + one-way
//   upstream → client: a chunk read at t is delivered at max(t + one-way, A + RTT)
// A fresh connect + "PING" + reply costs 2 RTT (40 ms); on a connection opened earlier
// (a warm pooled link) the same request costs 1 RTT (20 ms). FINs travel like data.
//
// Usage: node bench/delay-relay.mjs --upstream HOST:PORT [--one-way 10] [--port N]
// (prints {"event":"ready","port":N})
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { clearImmediate, setImmediate } from 'node:timers';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    upstream: { type: 'string' },
    'one-way': { type: 'string', default: '10' },
    port: { type: 'string', default: '0' },
  },
});
const [upHost, upPort] = values.upstream.split(':');
const oneWay = Number(values['one-way']);
const rtt = 2 * oneWay;
/** Past this many queued bytes a direction pauses its reader (backpressure). */
const MAX_QUEUED = 1024 * 1024;

/** Delivers chunks (and a final FIN) from `src` to `dst` at the times `deliverAt` gives. */
function delayed(src, dst, deliverAt) {
  const queue = [];
  let queued = 0;
  let timer;
  let last = 0;
  const flush = () => {
    timer = undefined;
    const now = performance.now();
    while (queue.length > 0 && queue[0].at <= now) {
      const item = queue.shift();
      if (item.chunk === null) {
        dst.end();
      } else {
        queued -= item.chunk.length;
        dst.write(item.chunk);
      }
    }
    if (queued < MAX_QUEUED && src.isPaused()) src.resume();
    schedule();
  };
  // setTimeout fires up to ~1 ms late; the last stretch is polled with setImmediate so that
  // a delay is what it says (the relay only carries one request at a time in workload 4).
  const schedule = () => {
    if (timer !== undefined || queue.length === 0) return;
    const wait = queue[0].at - performance.now();
    if (wait > 2) timer = setTimeout(() => ((timer = undefined), schedule()), wait - 1.5);
    else timer = setImmediate(flush);
  };
  const push = (chunk) => {
    // Order is kept: nothing is delivered before what was read earlier.
    last = Math.max(last, deliverAt(performance.now()));
    queue.push({ at: last, chunk });
    if (chunk !== null) {
      queued += chunk.length;
      if (queued >= MAX_QUEUED) src.pause();
    }
    schedule();
  };
  src.on('data', (chunk) => push(chunk));
  src.on('end', () => push(null));
  return () => {
    clearTimeout(timer);
    clearImmediate(timer);
    queue.length = 0;
  };
}

const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
  const acceptedAt = performance.now();
  const usableAt = acceptedAt + rtt;
  const upstream = net.connect({
    host: upHost,
    port: Number(upPort),
    allowHalfOpen: true,
    noDelay: true,
  });
  const stopUp = delayed(client, upstream, (t) => Math.max(t, usableAt) + oneWay);
  const stopDown = delayed(upstream, client, (t) => Math.max(t + oneWay, usableAt));
  const kill = () => {
    stopUp();
    stopDown();
    client.destroy();
    upstream.destroy();
  };
  client.on('error', kill);
  upstream.on('error', kill);
  let closed = 0;
  const onClose = () => {
    if (++closed === 2) kill();
  };
  client.on('close', onClose);
  upstream.on('close', onClose);
});
server.listen({ host: '127.0.0.1', port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(
    `${JSON.stringify({ event: 'ready', port: server.address().port, oneWay })}\n`,
  );
});
process.on('SIGTERM', () => process.exit(0));
