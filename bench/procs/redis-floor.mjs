// The Node floor of a Redis proxy: a server that answers every command itself, with no
// upstream at all (GET: a 3-byte value, SET: +OK, CONFIG GET: an empty value, anything
// else: an empty array), and closes at the client's FIN. It accepts and reads as sidepool
// does: one `onread` socket built straight from each accepted handle (Node's accept
// callback, as src/proxy/listener.ts takes it), chunks copied out of one buffer. Whatever
// a Node proxy does per request, it pays at least this: Node's CPU per request of
// accepting, reading, writing and closing, where redis-benchmark `-k 0` spends most of a
// proxy's time. (Until sidepool built one socket per accepted connection, the floor moved
// Node's socket's handle onto a second one, as sidepool did.)
// Usage: node bench/procs/redis-floor.mjs [--port N]   (prints {"event":"ready","port":N})
import net from 'node:net';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { port: { type: 'string', default: '0' } } });

const GET = Buffer.from('$3\r\nxxx\r\n');
const OK = Buffer.from('+OK\r\n');
const EMPTY = Buffer.from('*0\r\n');

/**
 * The replies to the whole commands in `buf` from `pos` on; returns where the first
 * incomplete command starts. Commands are multibulk (`*N` then N `$len` arguments).
 */
function answer(buf, replies) {
  let pos = 0;
  for (;;) {
    const start = pos;
    if (pos >= buf.length || buf[pos] !== 0x2a) return start;
    let eol = buf.indexOf(10, pos);
    if (eol < 0) return start;
    const argc = Number(buf.latin1Slice(pos + 1, eol - 1));
    pos = eol + 1;
    let name = '';
    let last = '';
    for (let i = 0; i < argc; i++) {
      eol = buf.indexOf(10, pos);
      if (eol < 0) return start;
      const len = Number(buf.latin1Slice(pos + 1, eol - 1));
      if (i === 0) name = buf.latin1Slice(eol + 1, eol + 1 + len).toUpperCase();
      else if (i === argc - 1 && len < 64) last = buf.latin1Slice(eol + 1, eol + 1 + len);
      pos = eol + 1 + len + 2;
      if (pos > buf.length) return start;
    }
    if (name === 'GET') replies.push(GET);
    else if (name === 'SET') replies.push(OK);
    // redis-benchmark asks CONFIG GET save and appendonly first: a parameter, empty.
    else if (name === 'CONFIG')
      replies.push(Buffer.from(`*2\r\n$${last.length}\r\n${last}\r\n$0\r\n\r\n`));
    else replies.push(EMPTY);
  }
}

const scratch = Buffer.allocUnsafeSlow(64 * 1024);

function serve(handle) {
  let rest;
  const socket = new net.Socket({
    handle,
    allowHalfOpen: true,
    pauseOnCreate: true,
    onread: {
      buffer: scratch,
      callback: (n) => {
        const chunk = Buffer.from(scratch.subarray(0, n));
        const buf = rest === undefined ? chunk : Buffer.concat([rest, chunk]);
        const replies = [];
        const used = answer(buf, replies);
        rest = used < buf.length ? buf.subarray(used) : undefined;
        if (replies.length === 1) socket.write(replies[0]);
        else if (replies.length > 1) socket.write(Buffer.concat(replies));
      },
    },
  });
  socket.on('end', () => socket.destroy());
  socket.on('error', () => {});
  socket.resume();
}

const server = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true });
// Where Node's accept callback is missing, its socket's handle is moved onto ours.
server.on('connection', (accepted) => {
  const handle = accepted._handle;
  accepted._handle = null;
  accepted.destroy();
  serve(handle);
});
server.on('listening', () => {
  const listening = server._handle;
  const nodeAccept = listening?.onconnection;
  if (typeof nodeAccept !== 'function') return;
  listening.onconnection = (status, handle) => {
    if (status !== 0) {
      nodeAccept.call(listening, status, handle);
      return;
    }
    handle.setNoDelay(true);
    serve(handle);
  };
});
server.listen({ host: '127.0.0.1', port: Number(values.port), backlog: 4096 }, () => {
  process.stdout.write(`${JSON.stringify({ event: 'ready', port: server.address().port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
