import { createHash, randomBytes } from 'node:crypto';
import type net from 'node:net';
import t from 'tap';
import { readsOwnBuffers } from '../src/net/reads.js';
import { Splice, type SpliceOutcome } from '../src/proxy/splice.js';
import { socketPair } from './helpers/pair.js';
import { sleep, until } from './helpers/util.js';

/**
 * app ⇄ [down | splice | up] ⇄ server: two real loopback connections joined by a Splice.
 * The proxy's two sockets read the usual way (streams), or into sidepool's own buffers as
 * tcp-mode routes and links do; every test runs with both.
 */
type Reads = 'streams' | 'own buffers';

async function spliced(reads: Reads, idleTimeoutMs = 0, halfCloseTimeoutMs = 0) {
  const own = reads === 'own buffers';
  const [app, down] = await socketPair(own ? 'server' : undefined);
  const [up, server] = await socketPair(own ? 'client' : undefined);
  if (readsOwnBuffers(down) !== own || readsOwnBuffers(up) !== own) {
    throw new Error(`the proxy's sockets do not read ${reads}`);
  }
  for (const s of [app, server]) s.on('error', () => {});
  let outcome: SpliceOutcome | undefined;
  const splice = new Splice(down, up, (o) => (outcome = o));
  splice.start({ idleTimeoutMs, halfCloseTimeoutMs });
  return { app, down, up, server, splice, outcome: () => outcome };
}

function sha(buffers: Buffer[]): string {
  const h = createHash('sha256');
  for (const b of buffers) h.update(b);
  return h.digest('hex');
}

function collect(socket: net.Socket): Promise<Buffer[]> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve) => socket.on('end', () => resolve(chunks)));
}

for (const reads of ['streams', 'own buffers'] as const) {
  void t.test(`large payloads both ways arrive intact (${reads})`, async (t) => {
    const s = await spliced(reads);
    const upPayload = randomBytes(16 * 1024 * 1024);
    const downPayload = randomBytes(16 * 1024 * 1024);
    const atServer = collect(s.server);
    const atApp = collect(s.app);
    s.app.end(upPayload);
    s.server.end(downPayload);
    const [gotUp, gotDown] = await Promise.all([atServer, atApp]);
    t.equal(sha(gotUp), sha([upPayload]), 'app → server checksum');
    t.equal(sha(gotDown), sha([downPayload]), 'server → app checksum');
    await until(() => s.outcome() !== undefined);
    t.match(s.outcome(), {
      bytesUp: upPayload.length,
      bytesDown: downPayload.length,
      brokenBy: undefined,
      error: undefined,
    });
  });

  void t.test(
    `a FIN is passed on as a half-close; the other direction keeps flowing (${reads})`,
    async (t) => {
      const s = await spliced(reads);
      const serverEnded = new Promise<void>((resolve) => s.server.once('end', resolve));
      s.server.on('data', () => {});
      s.app.end('request');
      await serverEnded;
      t.equal(s.outcome(), undefined, 'session still open after one FIN');
      const atApp = collect(s.app);
      s.server.write('response part 1, ');
      await sleep(10);
      s.server.end('part 2');
      t.equal(Buffer.concat(await atApp).toString(), 'response part 1, part 2');
      await until(() => s.outcome() !== undefined);
      t.equal(s.outcome()?.brokenBy, undefined, 'ended cleanly');
      t.ok(s.up.destroyed && s.down.destroyed, 'both proxy sockets released');
    },
  );

  void t.test(`an upstream reset is passed on as a reset (${reads})`, async (t) => {
    const s = await spliced(reads);
    s.app.write('hello');
    await new Promise((r) => s.server.once('data', r));
    const appError = new Promise<string | undefined>((resolve) => {
      s.app.once('error', (e: NodeJS.ErrnoException) => resolve(e.code));
      s.app.once('close', () => resolve(undefined));
    });
    s.server.resetAndDestroy();
    t.equal(await appError, 'ECONNRESET', 'the app sees a reset, not a clean close');
    await until(() => s.outcome() !== undefined);
    t.equal(s.outcome()?.brokenBy, 'upstream');
    t.equal((s.outcome()?.error as NodeJS.ErrnoException).code, 'ECONNRESET');
  });

  void t.test(`a downstream that vanishes mid-stream closes the upstream (${reads})`, async (t) => {
    const s = await spliced(reads);
    s.server.on('data', () => {});
    s.app.write(randomBytes(64 * 1024));
    const serverClosed = new Promise<void>((resolve) => s.server.once('close', () => resolve()));
    s.app.resetAndDestroy();
    await serverClosed;
    await until(() => s.outcome() !== undefined);
    t.equal(s.outcome()?.brokenBy, 'downstream');
  });

  void t.test(`a slow reader pauses the writer: memory stays bounded (${reads})`, async (t) => {
    const s = await spliced(reads);
    s.app.pause(); // the app does not read
    const sentHash = createHash('sha256');
    let sent = 0;
    // The server writes as fast as the splice lets it, for a bounded 200 MiB at most. Every
    // chunk differs: a proxy that read into memory a queued write still held would be
    // caught by the checksum, not only by the count.
    while (sent < 200 * 1024 * 1024) {
      const chunk = randomBytes(64 * 1024);
      sentHash.update(chunk);
      sent += chunk.length;
      if (!s.server.write(chunk)) {
        const drained = await Promise.race([
          new Promise((r) => s.server.once('drain', () => r(true))),
          // No drain for 2 s: the proxy has stopped reading (on a loaded machine a drain
          // that is coming can take far longer than the usual few ms).
          sleep(2000).then(() => false),
        ]);
        if (!drained) break;
      }
    }
    t.ok(
      sent < 200 * 1024 * 1024,
      `the server was stopped by backpressure after ${sent >> 20} MiB`,
    );
    t.ok(
      s.down.writableLength <= 1024 * 1024,
      `the proxy holds little toward the app (${s.down.writableLength} bytes)`,
    );
    const readSoFar = s.up.bytesRead;
    await sleep(100);
    t.equal(s.up.bytesRead, readSoFar, 'the proxy stopped reading the upstream');
    // Now the app reads: everything arrives, in order.
    const receivedHash = createHash('sha256');
    let received = 0;
    s.app.on('data', (c: Buffer) => {
      receivedHash.update(c);
      received += c.length;
    });
    s.app.resume();
    s.server.end();
    await new Promise((r) => s.app.once('end', r));
    t.equal(received, sent, 'every byte arrived');
    t.equal(receivedHash.digest('hex'), sentHash.digest('hex'), 'in order, unchanged');
    s.app.end();
    await until(() => s.outcome() !== undefined);
  });

  void t.test(`chunks of every size, in any order, arrive intact (${reads})`, async (t) => {
    const s = await spliced(reads);
    // Small and large writes mixed, with pauses between bursts, so that the proxy's reads
    // go from small to large and back (scratch buffer, own buffer, scratch again).
    const sizes = [1, 100, 4096, 200_000, 17, 65_536, 3, 1_000_000, 9, 9, 9, 9, 9, 9, 9, 9];
    const atServer = collect(s.server);
    const atApp = collect(s.app);
    const up: Buffer[] = [];
    const down: Buffer[] = [];
    for (let round = 0; round < 3; round++) {
      for (const size of sizes) {
        const a = randomBytes(size);
        const b = randomBytes(size);
        up.push(a);
        down.push(b);
        s.app.write(a);
        s.server.write(b);
        if (size < 20) await sleep(1);
      }
    }
    s.app.end();
    s.server.end();
    const [gotUp, gotDown] = await Promise.all([atServer, atApp]);
    t.equal(sha(gotUp), sha(up), 'app → server checksum');
    t.equal(sha(gotDown), sha(down), 'server → app checksum');
    await until(() => s.outcome() !== undefined);
    t.equal(s.outcome()?.brokenBy, undefined);
  });

  void t.test(`idle sessions end after the route idle timeout (${reads})`, async (t) => {
    const s = await spliced(reads, 50);
    const appEnded = new Promise<void>((resolve) => s.app.once('end', resolve));
    const serverEnded = new Promise<void>((resolve) => s.server.once('end', resolve));
    s.app.resume();
    s.server.resume();
    await Promise.all([appEnded, serverEnded]);
    await until(() => s.outcome() !== undefined);
    t.equal(s.outcome()?.brokenBy, 'timeout');
    s.app.destroy();
    s.server.destroy();
  });

  void t.test(
    `a half-closed session whose other side never finishes is ended (${reads})`,
    async (t) => {
      const s = await spliced(reads, 0, 50);
      s.server.resume();
      const appEnded = new Promise<void>((resolve) => s.app.once('end', resolve));
      s.app.resume();
      s.app.end('bye'); // the server never answers with its FIN
      await appEnded;
      await until(() => s.outcome() !== undefined);
      t.equal(s.outcome()?.brokenBy, 'timeout');
      s.server.destroy();
    },
  );

  void t.test(`destroy() tears both sides down (${reads})`, async (t) => {
    const s = await spliced(reads);
    s.app.resume();
    s.splice.destroy();
    await new Promise((r) => s.app.once('end', r));
    await until(() => s.outcome() !== undefined);
    t.equal(s.outcome()?.brokenBy, 'proxy');
    s.app.destroy();
    s.server.destroy();
  });
}
