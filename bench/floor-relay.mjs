// The floor relay: the least work per chunk a Node relay can do, for context next to
// sidepool. Both sockets read into one shared buffer (`onread`; the accepted socket's
// handle is moved onto a socket opened with it, as sidepool does, since net.Server takes
// no `onread`), and each chunk is copied out and written to the other side: no pool, no
// queue, no timers, no bookkeeping. One upstream connection per downstream connection,
// dialed on accept. Its CPU per request is Node's own cost of a read and a write.
// Usage: node bench/floor-relay.mjs --upstream HOST:PORT [--port N]   (prints {"event":"ready"})
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { upstream: { type: 'string' }, port: { type: 'string', default: '0' } },
});
const [host, port] = values.upstream.split(':');
const scratch = Buffer.allocUnsafe(64 * 1024);

// The copy is needed: a write the kernel does not take at once keeps pointing at its memory.
const readInto = (other) => ({
  buffer: scratch,
  callback: (n, buf) => {
    other().write(Buffer.from(buf.subarray(0, n)));
  },
});

const server = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true });
server.on('connection', (accepted) => {
  const handle = accepted._handle;
  accepted._handle = null;
  accepted.destroy();
  const down = new net.Socket({
    handle,
    allowHalfOpen: true,
    pauseOnCreate: true,
    onread: readInto(() => up),
  });
  const up = net.connect({
    host,
    port: Number(port),
    allowHalfOpen: true,
    noDelay: true,
    onread: readInto(() => down),
  });
  down.setNoDelay(true);
  up.on('connect', () => down.resume());
  down.on('end', () => up.end());
  up.on('end', () => down.end());
  down.on('error', () => up.destroy());
  up.on('error', () => down.destroy());
  down.on('close', () => up.destroy());
  up.on('close', () => down.destroy());
});
server.listen({ host: '127.0.0.1', port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ event: 'ready', port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
