import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import { listenAddress } from '../src/config/address.js';
import { adoptOwnReads, readWith, readsOwnBuffers, type OwnReads } from '../src/net/reads.js';
import { Listener, type ListenerTarget } from '../src/proxy/listener.js';
import { captureLogger, until } from './helpers/util.js';

/** What a target was handed, and whether it read into our buffers as it arrived. */
const arrivedOwn = new WeakMap<net.Socket, boolean>();

/** A target that keeps what it is handed, as a route would. */
function target(ownReads: OwnReads | undefined): ListenerTarget & { sockets: net.Socket[] } {
  const sockets: net.Socket[] = [];
  return {
    sockets,
    ownReads,
    accept(socket) {
      // Before anything could adopt it.
      arrivedOwn.set(socket, readsOwnBuffers(socket));
      sockets.push(socket);
    },
  };
}

function ownOnArrival(socket: net.Socket): boolean | undefined {
  return arrivedOwn.get(socket);
}

async function connect(options: net.NetConnectOpts): Promise<net.Socket> {
  const client = net.connect(options);
  await new Promise<void>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('error', reject);
  });
  return client;
}

async function accepted(to: { sockets: net.Socket[] }, count: number): Promise<net.Socket> {
  await until(() => to.sockets.length >= count, undefined, `accepted connection ${count}`);
  return to.sockets[count - 1] as net.Socket;
}

/** Echoes through the listener-made socket: proves it reads and writes. */
async function echoes(client: net.Socket, socket: net.Socket, text: string): Promise<string> {
  readWith(socket, function (chunk) {
    this.write(chunk);
    return 0;
  });
  const reply = new Promise<string>((resolve) =>
    client.once('data', (c: Buffer) => resolve(c.toString())),
  );
  client.write(text);
  return reply;
}

const addresses = {
  tcp: () => ({
    listen: '127.0.0.1:0',
    dial: (l: Listener) => ({ port: l.port, host: '127.0.0.1' }),
  }),
  'a unix socket': () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'sidepool-listener-'));
    const file = path.join(dir, 'l.sock');
    return {
      listen: `unix:${file}`,
      dial: () => ({ path: file }),
      cleanup: () => rmSync(dir, { recursive: true, force: true }),
    };
  },
};

for (const [kind, make] of Object.entries(addresses)) {
  void t.test(
    `${kind}: a target that reads into its own buffers gets a socket that already does, made from the accepted handle`,
    async (t) => {
      const where = make();
      const listener = new Listener(
        listenAddress(where.listen),
        'test',
        captureLogger().logger,
        true,
      );
      t.teardown(() => {
        listener.close();
        if ('cleanup' in where) where.cleanup();
      });
      await listener.listen();
      const to = target('copies');
      listener.handTo(to);
      const client = await connect(where.dial(listener));
      t.teardown(() => client.destroy());
      const socket = await accepted(to, 1);
      t.teardown(() => socket.destroy());
      // Node's own accept makes a socket that reads the usual way, which a route then has
      // to move onto a second socket: the listener built the one the target wants.
      t.equal(ownOnArrival(socket), true, 'reads into our buffers as it arrives');
      t.equal(adoptOwnReads(socket), socket, 'adopting it again is a no-op');
      // Had the adoption above moved the handle, the socket could no longer echo.
      if (!t.passing()) return;
      t.equal(await echoes(client, socket, 'hello'), 'hello');
      const ended = new Promise<void>((resolve) => socket.once('end', resolve));
      client.end();
      await ended;
      t.pass("the client's FIN is the socket's 'end'");
    },
  );
}

void t.test('a target that reads the usual way gets the socket Node made', async (t) => {
  const listener = new Listener(listenAddress('127.0.0.1:0'), 'test', captureLogger().logger);
  t.teardown(() => listener.close());
  await listener.listen();
  const to = target(undefined);
  listener.handTo(to);
  const client = await connect({ port: listener.port, host: '127.0.0.1' });
  t.teardown(() => client.destroy());
  const socket = await accepted(to, 1);
  t.teardown(() => socket.destroy());
  t.equal(ownOnArrival(socket), false);
  const reply = new Promise<string>((resolve) =>
    client.once('data', (c: Buffer) => resolve(c.toString())),
  );
  socket.on('data', (c: Buffer) => socket.write(c));
  client.write('plain');
  t.equal(await reply, 'plain');
});

void t.test(
  'a reload that hands the listener to a target of the other kind applies from the next accept',
  async (t) => {
    const listener = new Listener(
      listenAddress('127.0.0.1:0'),
      'test',
      captureLogger().logger,
      true,
    );
    t.teardown(() => listener.close());
    await listener.listen();
    const own = target('views');
    listener.handTo(own);
    const first = await connect({ port: listener.port, host: '127.0.0.1' });
    t.teardown(() => first.destroy());
    t.equal(ownOnArrival(await accepted(own, 1)), true);

    const plain = target(undefined);
    listener.handTo(plain);
    const second = await connect({ port: listener.port, host: '127.0.0.1' });
    t.teardown(() => second.destroy());
    const socket = await accepted(plain, 1);
    t.equal(ownOnArrival(socket), false);
    t.equal(own.sockets.length, 1, 'the old target got nothing more');

    listener.handTo(own);
    const third = await connect({ port: listener.port, host: '127.0.0.1' });
    t.teardown(() => third.destroy());
    const back = await accepted(own, 2);
    t.equal(ownOnArrival(back), true);
    t.equal(await echoes(third, back, 'again'), 'again');
    for (const s of [...own.sockets, ...plain.sockets]) s.destroy();
  },
);

void t.test('closing the listener frees the address while its connections stay open', async (t) => {
  const listener = new Listener(listenAddress('127.0.0.1:0'), 'test', captureLogger().logger, true);
  await listener.listen();
  const port = listener.port;
  const to = target('views');
  listener.handTo(to);
  const client = await connect({ port, host: '127.0.0.1' });
  t.teardown(() => client.destroy());
  const socket = await accepted(to, 1);
  t.teardown(() => socket.destroy());
  listener.close();
  listener.close();
  // The address is free at once: another server binds it.
  const again = net.createServer();
  await new Promise<void>((resolve, reject) => {
    again.once('error', reject);
    again.listen(port, '127.0.0.1', resolve);
  });
  await new Promise<void>((resolve) => again.close(() => resolve()));
  t.equal(await echoes(client, socket, 'still open'), 'still open');
});
