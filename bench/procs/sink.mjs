// Bulk sink: discards what each connection sends and counts it; on the client's FIN it
// answers with the count (8 bytes, big endian) and closes, so the client knows every byte
// arrived. Usage: node bench/procs/sink.mjs [--port N]   (prints {"event":"ready","port":N})
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string', default: '0' } } });

const server = net.createServer({ allowHalfOpen: true }, (socket) => {
  let bytes = 0;
  socket.on('data', (chunk) => {
    bytes += chunk.length;
  });
  socket.on('end', () => {
    const reply = Buffer.alloc(8);
    reply.writeBigUInt64BE(BigInt(bytes));
    socket.end(reply);
  });
  socket.on('error', () => {});
});
server.listen({ host: '127.0.0.1', port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ event: 'ready', port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
