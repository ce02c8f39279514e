// Echo server: writes back what it reads; a FIN is answered with a FIN. Holds any number of
// idle connections cheaply (the upstream of the RSS workload).
// Usage: node bench/procs/echo-server.mjs [--port N]   (prints {"event":"ready","port":N})
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string', default: '0' } } });

const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
  socket.on('data', (chunk) => socket.write(chunk));
  socket.on('end', () => socket.end());
  socket.on('error', () => {});
});
server.listen({ host: '127.0.0.1', port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ event: 'ready', port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
