import net from 'node:net';
import t from 'tap';
import { DelayRelay } from '../src/demo/delay-relay.js';
import { startServer } from './helpers/util.js';

/** Blocks the event loop now and then, as a loaded machine does. */
function hog(): () => void {
  const timer = setInterval(() => {
    const until = Date.now() + 12;
    while (Date.now() < until) {
      // busy
    }
  }, 5);
  return () => clearInterval(timer);
}

void t.test(
  'the delay relay keeps bytes and the FIN in order even when the loop stalls',
  async (t) => {
    // The upstream answers with chunks and its FIN in separate turns of the loop, so that
    // a stall can fall between them: per-chunk timers then fired the FIN first.
    const upstream = await startServer((socket) => {
      socket.once('data', () => {
        socket.write('a'.repeat(1000));
        setImmediate(() => socket.write('b'.repeat(1000)));
        setTimeout(() => socket.end('c'.repeat(1000)), 2);
      });
    });
    t.teardown(() => upstream.close());
    const relay = new DelayRelay({ host: '127.0.0.1', port: upstream.port }, 10);
    const port = await relay.listen();
    t.teardown(() => relay.close());
    const stop = hog();
    t.teardown(stop);
    let complete = 0;
    const one = (): Promise<void> =>
      new Promise((resolve) => {
        const socket = net.connect(port, '127.0.0.1', () => socket.write('go'));
        let got = '';
        socket.on('data', (c: Buffer) => (got += c.toString()));
        socket.on('error', () => {});
        socket.on('close', () => {
          if (got === 'a'.repeat(1000) + 'b'.repeat(1000) + 'c'.repeat(1000)) complete++;
          resolve();
        });
      });
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        for (let i = 0; i < 15; i++) await one();
      }),
    );
    t.equal(complete, 300, 'every response arrived whole, before its FIN');
  },
);
