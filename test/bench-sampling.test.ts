// The bench's count of a proxy's upstream connections (bench/lib.mjs) is what the README's
// "upstream connections ≤ maxSize" figures rest on. A read of /proc/net/tcp while
// connections churn can list a connection twice; it must still count once.
import t from 'tap';

type CountEstablished = (lines: string[], inodes: Set<string>, remotePort: number) => number;
// bench/ is plain ESM JavaScript outside the typed build: name what the test uses.
const benchLib: string = '../bench/lib.mjs';
const bench = (await import(benchLib)) as {
  countEstablished: CountEstablished;
};

// /proc/net/tcp columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
function line(sl: number, localPort: number, remotePort: number, state: string, inode: number) {
  const hex = (port: number) => port.toString(16).toUpperCase().padStart(4, '0');
  return (
    `  ${sl}: 0100007F:${hex(localPort)} 0100007F:${hex(remotePort)} ${state} ` +
    `00000000:00000000 00:00000000 00000000     0        0 ${inode} 1 0000000000000000 20 4 30 10 -1`
  );
}

void t.test('a connection listed twice by one read counts once', (t) => {
  const ours = new Set(['101', '102', '103']);
  const lines = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    line(0, 6379, 0, '0A', 50),
    line(1, 40001, 6379, '01', 101),
    line(2, 40002, 6379, '01', 102),
    // The kernel resumed the table a few lines back: the same two again.
    line(1, 40001, 6379, '01', 101),
    line(2, 40002, 6379, '01', 102),
    line(3, 40003, 6379, '06', 0), // TIME_WAIT: not established
    line(4, 40004, 6379, '01', 999), // another process's
    line(5, 40005, 6380, '01', 103), // another port
  ];
  t.equal(bench.countEstablished(lines, ours, 6379), 2);
  t.equal(bench.countEstablished(lines, ours, 6380), 1);
  t.equal(bench.countEstablished([], ours, 6379), 0);
  t.end();
});
