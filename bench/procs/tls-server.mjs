// TLS echo server (node:tls; TLS 1.3 with session tickets, Node's defaults): the TLS
// upstream of workload 6. Writes back what it reads; a FIN is answered with a FIN.
// SIGUSR2 prints {"event":"handshakes","full":N,"resumed":M}.
// Usage: node bench/procs/tls-server.mjs --cert FILE --key FILE [--port N]
//        (prints {"event":"ready","port":N})
import fs from 'node:fs';
import tls from 'node:tls';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    cert: { type: 'string' },
    key: { type: 'string' },
    port: { type: 'string', default: '0' },
  },
});

const counts = { full: 0, resumed: 0 };
const server = tls.createServer(
  {
    cert: fs.readFileSync(values.cert),
    key: fs.readFileSync(values.key),
    allowHalfOpen: true,
    noDelay: true,
  },
  (socket) => {
    if (socket.isSessionReused()) counts.resumed++;
    else counts.full++;
    socket.on('data', (chunk) => socket.write(chunk));
    socket.on('end', () => socket.end());
    socket.on('error', () => {});
  },
);
server.on('tlsClientError', (_err, socket) => socket.destroy());
server.listen({ host: '127.0.0.1', port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ event: 'ready', port: server.address().port })}\n`);
});
process.on('SIGUSR2', () => {
  process.stdout.write(`${JSON.stringify({ event: 'handshakes', ...counts })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
