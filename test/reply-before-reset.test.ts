import { randomBytes } from 'node:crypto';
import net from 'node:net';
import t from 'tap';
import { startProxy } from './helpers/app.js';

/**
 * A server's last reply before it closes with a reset, while the client is still
 * sending, reaches the client: direct, through a tcp route, and through an http tunnel.
 * (redis-desync.test.ts does the same with redis-server and redis's own test.)
 */

interface Tally {
  got: number;
  lost: number;
  sample: string;
}

const REPLY = '-ERR planted reply before a reset\r\n';

/**
 * A loopback server that, once it has read `after` bytes (past an HTTP upgrade request,
 * which it answers with 101), writes REPLY and resets (SO_LINGER 0) with input unread.
 */
async function replyThenReset(after: number) {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    let head = '';
    let upgraded = false;
    let read = 0;
    socket.on('data', (chunk: Buffer) => {
      if (!upgraded && (head.length > 0 || chunk.toString('latin1').startsWith('GET '))) {
        head += chunk.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        upgraded = true;
        socket.write(
          'HTTP/1.1 101 Switching Protocols\r\nUpgrade: planted\r\nConnection: Upgrade\r\n\r\n',
        );
        read = head.length - end - 4;
      } else {
        upgraded = true;
        read += chunk.length;
      }
      if (read >= after && !socket.destroyed) {
        socket.write(REPLY);
        socket.resetAndDestroy();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/**
 * One exchange: connect, send `head` then a megabyte, and collect what comes back until
 * the connection closes. Resolves with whether REPLY was among it.
 */
function exchange(port: number, head: string): Promise<boolean> {
  return new Promise((resolve) => {
    let received = '';
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(head);
      socket.write(randomBytes(1024 * 1024));
    });
    socket.on('data', (c: Buffer) => (received += c.toString('latin1')));
    socket.on('error', () => {});
    socket.on('close', () => resolve(received.includes(REPLY)));
  });
}

async function exchanges(port: number, head: string, rounds: number): Promise<Tally> {
  const tally: Tally = { got: 0, lost: 0, sample: '' };
  for (let i = 0; i < rounds; i++) {
    if (await exchange(port, head)) tally.got++;
    else tally.lost++;
  }
  return tally;
}

const UPGRADE =
  'GET /planted HTTP/1.1\r\nHost: a\r\nUpgrade: planted\r\nConnection: Upgrade\r\n\r\n';
const ROUNDS = 200;

void t.test(
  'a server that writes a reply then resets while the client sends: 200 exchanges direct and through a tcp route, no reply lost',
  async (t) => {
    const server = await replyThenReset(64 * 1024);
    t.teardown(() => server.close());
    const proxy = await startProxy(`127.0.0.1:${server.port}`, { minIdle: 4 });
    t.teardown(() => proxy.app.stop(100));
    t.same(
      await exchanges(server.port, '', ROUNDS),
      { got: ROUNDS, lost: 0, sample: '' },
      'direct',
    );
    t.same(
      await exchanges(proxy.port, '', ROUNDS),
      { got: ROUNDS, lost: 0, sample: '' },
      'tcp route',
    );
  },
);

void t.test('the same through an http upgrade tunnel: 200 exchanges, no reply lost', async (t) => {
  const server = await replyThenReset(64 * 1024);
  t.teardown(() => server.close());
  const proxy = await startProxy(`127.0.0.1:${server.port}`, { minIdle: 1 }, { mode: 'http' });
  t.teardown(() => proxy.app.stop(100));
  t.same(
    await exchanges(server.port, UPGRADE, ROUNDS),
    { got: ROUNDS, lost: 0, sample: '' },
    'direct',
  );
  t.same(
    await exchanges(proxy.port, UPGRADE, ROUNDS),
    { got: ROUNDS, lost: 0, sample: '' },
    'tunnel',
  );
});
