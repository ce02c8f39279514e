import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { startProxy } from './helpers/app.js';
import { startUpstreamProcess } from './helpers/upstream-process.js';
import { startServer, until } from './helpers/util.js';

/** Blocks this process's event loop (and so the in-process proxy) until `check()`. */
function blockUntil(check: () => boolean, timeoutMs: number): void {
  const nap = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out while blocked');
    Atomics.wait(nap, 0, 0, 1);
  }
}

void t.test(
  'tcp: an idle link whose FIN or RST is already in the kernel is never what an app gets',
  async (t) => {
    const upstream = await startUpstreamProcess();
    t.teardown(() => upstream.stop());
    const proxy = await startProxy(upstream.address, {
      minIdle: 8,
      maxSize: 64,
      acquireTimeout: '10s',
    });
    t.teardown(() => proxy.app.stop(100));
    const dir = mkdtempSync(join(tmpdir(), 'sidepool-race-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));

    // Each round: while the proxy's loop is blocked, 8 apps connect (the kernel queues
    // them on the listener) and then the upstream drops all 8 idle links. Unblocked, the
    // proxy accepts the apps before it reads the links' FINs or resets in the same batch
    // of events: every app is handed a dead link. This is the window after an upstream
    // restart, made certain instead of waited for.
    const ROUNDS = 8;
    const SESSIONS = 8;
    const failures: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      await until(() => proxy.pool.stats().idle === 8, 20_000, `warm before round ${round}`);
      const goFile = join(dir, `go-${round}`);
      const doneFile = join(dir, `done-${round}`);
      const armed = await upstream.race({
        proxyPort: proxy.port,
        sessions: SESSIONS,
        reset: round % 2 === 1,
        goFile,
        doneFile,
      });
      writeFileSync(goFile, 'go');
      blockUntil(() => existsSync(doneFile), 20_000);
      const outcomes = await armed.outcomes;
      outcomes.forEach((o, i) => {
        if (o !== 'ok') failures.push(`round ${round} session ${i}: ${o}`);
      });
    }
    const moved = proxy.lines.filter(
      (l) => l.msg === 'upstream closed the link before answering: the session moves to another',
    ).length;
    t.ok(moved >= ROUNDS, `sessions met dead links and moved on (${moved} moves)`);
    t.same(
      failures,
      [],
      `every app got its echo (${failures.length} of ${ROUNDS * SESSIONS} did not)`,
    );
  },
);

/** Connects, sends `payload` (and a FIN when `end`), collects the reply until the close. */
function exchange(port: number, payload: Buffer | string, end = true): Promise<string> {
  return new Promise((resolve) => {
    let reply = '';
    const socket = net.connect(port, '127.0.0.1', () =>
      end ? socket.end(payload) : socket.write(payload),
    );
    socket.setEncoding('utf8');
    socket.on('data', (c: string) => (reply += c));
    socket.on('error', () => {});
    socket.on('close', () => resolve(reply));
  });
}

void t.test(
  'tcp: what the upstream answered, or had time to act on, is never replayed',
  async (t) => {
    const seen: string[] = [];
    const upstream = await startServer((socket) => {
      socket.setEncoding('latin1');
      let got = '';
      socket.on('data', (c: string) => {
        got += c;
        if (got === 'answer me') {
          seen.push(got);
          socket.end('partial');
        } else if (got === 'slow') {
          seen.push(got);
          setTimeout(() => socket.destroy(), 1300);
        } else if (got.length === 70_000) {
          seen.push('big');
          socket.destroy();
        }
      });
    });
    t.teardown(() => upstream.close());
    const proxy = await startProxy(upstream.address, { minIdle: 2 });
    t.teardown(() => proxy.app.stop(100));
    await until(() => proxy.pool.isWarm);

    t.equal(await exchange(proxy.port, 'answer me'), 'partial', 'an answer, then the close');
    t.equal(await exchange(proxy.port, 'slow', false), '', 'a close long after the bytes went up');
    t.equal(await exchange(proxy.port, Buffer.alloc(70_000, 'x'), false), '', 'more than 64 KiB');
    t.same(seen, ['answer me', 'slow', 'big'], 'each reached the upstream once');
    t.notOk(
      proxy.lines.some(
        (l) => l.msg === 'upstream closed the link before answering: the session moves to another',
      ),
      'no session moved',
    );
  },
);
