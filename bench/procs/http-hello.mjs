// The cheapest node:http server: answers every request with a small fixed body and no
// upstream at all. In the http workload it marks what one Node thread can do with a new
// connection per request on this machine, the ceiling for any Node proxy.
// Usage: node bench/procs/http-hello.mjs [--port N] [--body TEXT]  (prints {"event":"ready","port":N})
import http from 'node:http';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { port: { type: 'string', default: '0' }, body: { type: 'string', default: 'hello\n' } },
});
const body = Buffer.from(values.body);
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': String(body.length) });
  res.end(body);
});
server.listen({ host: '127.0.0.1', port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ event: 'ready', port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
