// The naive relay: what a few lines of `net` + `pipe` give, for context next to sidepool
// and HAProxy. One upstream connection per downstream connection, dialed on accept.
// Usage: node bench/naive-relay.mjs --upstream HOST:PORT [--port N]   (prints {"event":"ready"})
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { upstream: { type: 'string' }, port: { type: 'string', default: '0' } },
});
const [host, port] = values.upstream.split(':');

const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (down) => {
  const up = net.connect({ host, port: Number(port), allowHalfOpen: true, noDelay: true });
  down.pipe(up);
  up.pipe(down);
  down.on('error', () => up.destroy());
  up.on('error', () => down.destroy());
});
server.listen({ host: '127.0.0.1', port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ event: 'ready', port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
