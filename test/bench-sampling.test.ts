// The bench's count of a proxy's upstream connections (bench/lib.mjs) is what the README's
// "upstream connections ≤ maxSize" figures rest on, and it is taken beside the load it
// counts: it must count each connection once, and it must not cost more as the TIME_WAIT
// sockets of a churn load pile up (a read of all of /proc/net/tcp did, and took a core from
// the load it measured).
import net from 'node:net';
import t from 'tap';
import { until } from './helpers/util.js';

interface BenchLib {
  countEstablished: (lines: string[], inodes: Set<string>) => number;
  establishedLines: (remotePort: number) => string[];
  establishedTo: (pid: number, remotePort: number) => number;
  isListening: (port: number) => boolean;
  timeWaitCount: (remotePort?: number) => number;
}
// bench/ is plain ESM JavaScript outside the typed build: name what the test uses.
const benchLib: string = '../bench/lib.mjs';
const bench = (await import(benchLib)) as BenchLib;

// `ss -Htne state established` columns: Recv-Q Send-Q local peer [timer] ino:N sk:… …
function line(localPort: number, remotePort: number, inode: number) {
  return (
    `0      0      127.0.0.1:${localPort} 127.0.0.1:${remotePort} ` +
    `timer:(keepalive,10sec,0) ino:${inode} sk:1 cgroup:/ <->`
  );
}

void t.test('a connection listed twice by one dump counts once', (t) => {
  const ours = new Set(['101', '102', '103']);
  const lines = [
    line(40001, 6379, 101),
    line(40002, 6379, 102),
    // The dump resumed a few entries back: the same two again.
    line(40001, 6379, 101),
    line(40002, 6379, 102),
    line(40004, 6379, 999), // another process's
  ];
  t.equal(bench.countEstablished(lines, ours), 2);
  t.equal(bench.countEstablished([], ours), 0);
  t.end();
});

void t.test(
  'the count asks the kernel for established connections to the port only, not the TIME_WAIT ones beside them',
  async (t) => {
    const server = net.createServer((socket) => socket.on('error', () => {}));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const held: net.Socket[] = [];
    t.teardown(() => {
      for (const socket of held) socket.destroy();
      server.close();
    });
    const connect = () =>
      new Promise<net.Socket>((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => resolve(socket));
        socket.once('error', reject);
      });
    t.ok(bench.isListening(port), 'the listener is seen');

    // Twenty connections closed from this side first: this side holds them in TIME_WAIT.
    for (let i = 0; i < 20; i++) {
      const socket = await connect();
      await new Promise<void>((resolve) => {
        socket.once('close', () => resolve());
        socket.end();
        socket.resume();
      });
    }
    await until(() => bench.timeWaitCount(port) >= 20, 10_000, 'twenty TIME_WAIT sockets');

    for (let i = 0; i < 3; i++) held.push(await connect());
    const lines = bench.establishedLines(port);
    t.equal(lines.length, 3, 'only the three live connections come back from the kernel', {
      lines,
    });
    t.equal(bench.establishedTo(process.pid, port), 3);
    t.equal(bench.establishedTo(process.pid, port + 1 === 65536 ? 1 : port + 1), 0);
  },
);
