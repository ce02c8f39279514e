import net from 'node:net';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { startRedis } from './helpers/redis.js';

/**
 * README, "Bounding idle tcp sessions": with one link (maxSize 1) held by an app that went
 * quiet, the next app gets the link only when the route's idleTimeout ends the idle session.
 * Real redis-server, raw RESP.
 */

/** Connects, sends PING, and resolves with the socket once +PONG came back (or with why not). */
function ping(port: number): Promise<{ socket: net.Socket; reply: string; closed: Promise<void> }> {
  return new Promise((resolve) => {
    let reply = '';
    const socket = net.connect(port, '127.0.0.1', () => socket.write('PING\r\n'));
    socket.on('error', () => {});
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.on('data', (c: Buffer) => {
      reply += c.toString();
      if (reply.includes('\r\n')) resolve({ socket, reply, closed });
    });
    socket.once('close', () => resolve({ socket, reply, closed }));
  });
}

for (const idleTimeout of [0, 300]) {
  void t.test(
    idleTimeout === 0
      ? 'idleTimeout 0: a quiet app holds the only link, the next app is refused after acquireTimeout'
      : 'idleTimeout 300ms: the quiet session is closed and the next app gets the link',
    async (t) => {
      const redis = await startRedis();
      t.teardown(() => redis.stop());
      const proxy = await startProxy(
        `127.0.0.1:${redis.port}`,
        { minIdle: 1, maxSize: 1, acquireTimeout: idleTimeout === 0 ? 1000 : 10_000 },
        { idleTimeout },
      );
      t.teardown(() => proxy.app.stop(100));
      const quiet = await ping(proxy.port);
      t.equal(quiet.reply, '+PONG\r\n', 'the first app is served');
      t.teardown(() => quiet.socket.destroy());
      const next = await ping(proxy.port);
      if (idleTimeout === 0) {
        t.equal(next.reply, '', 'the next app got no link');
        t.equal(quiet.socket.destroyed, false, 'the quiet app still holds it');
      } else {
        t.equal(next.reply, '+PONG\r\n', 'the next app got the link');
        await quiet.closed;
        t.pass('the quiet app was disconnected: it must reconnect (the trade-off)');
        next.socket.destroy();
      }
    },
  );
}
