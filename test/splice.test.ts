import { createHash, randomBytes } from 'node:crypto';
import type net from 'node:net';
import t from 'tap';
import { Splice, type SpliceOutcome } from '../src/proxy/splice.js';
import { socketPair } from './helpers/pair.js';
import { sleep, until } from './helpers/util.js';

/**
 * app ⇄ [down | splice | up] ⇄ server: two real loopback connections joined by a Splice.
 */
async function spliced(idleTimeoutMs = 0, halfCloseTimeoutMs = 0) {
  const [app, down] = await socketPair();
  const [up, server] = await socketPair();
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

void t.test('large payloads both ways arrive intact', async (t) => {
  const s = await spliced();
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

void t.test('a FIN is passed on as a half-close; the other direction keeps flowing', async (t) => {
  const s = await spliced();
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
});

void t.test('an upstream reset is passed on as a reset', async (t) => {
  const s = await spliced();
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

void t.test('a downstream that vanishes mid-stream closes the upstream', async (t) => {
  const s = await spliced();
  s.server.on('data', () => {});
  s.app.write(randomBytes(64 * 1024));
  const serverClosed = new Promise<void>((resolve) => s.server.once('close', () => resolve()));
  s.app.resetAndDestroy();
  await serverClosed;
  await until(() => s.outcome() !== undefined);
  t.equal(s.outcome()?.brokenBy, 'downstream');
});

void t.test('a slow reader pauses the writer: memory stays bounded', async (t) => {
  const s = await spliced();
  s.app.pause(); // the app does not read
  const chunk = randomBytes(64 * 1024);
  let sent = 0;
  // The server writes as fast as the splice lets it, for a bounded 200 MiB at most.
  while (sent < 200 * 1024 * 1024) {
    sent += chunk.length;
    if (!s.server.write(chunk)) {
      const drained = await Promise.race([
        new Promise((r) => s.server.once('drain', () => r(true))),
        sleep(300).then(() => false),
      ]);
      if (!drained) break;
    }
  }
  t.ok(sent < 200 * 1024 * 1024, `the server was stopped by backpressure after ${sent >> 20} MiB`);
  t.ok(
    s.down.writableLength <= 1024 * 1024,
    `the proxy holds little toward the app (${s.down.writableLength} bytes)`,
  );
  t.ok(s.up.isPaused(), 'the proxy stopped reading the upstream');
  // Now the app reads: everything arrives, in order.
  let received = 0;
  s.app.on('data', (c: Buffer) => (received += c.length));
  s.app.resume();
  s.server.end();
  await new Promise((r) => s.app.once('end', r));
  t.equal(received, sent, 'every byte arrived');
  s.app.end();
  await until(() => s.outcome() !== undefined);
});

void t.test('idle sessions end after the route idle timeout', async (t) => {
  const s = await spliced(50);
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

void t.test('a half-closed session whose other side never finishes is ended', async (t) => {
  const s = await spliced(0, 50);
  s.server.resume();
  const appEnded = new Promise<void>((resolve) => s.app.once('end', resolve));
  s.app.resume();
  s.app.end('bye'); // the server never answers with its FIN
  await appEnded;
  await until(() => s.outcome() !== undefined);
  t.equal(s.outcome()?.brokenBy, 'timeout');
  s.server.destroy();
});

void t.test('destroy() tears both sides down', async (t) => {
  const s = await spliced();
  s.app.resume();
  s.splice.destroy();
  await new Promise((r) => s.app.once('end', r));
  await until(() => s.outcome() !== undefined);
  t.equal(s.outcome()?.brokenBy, 'proxy');
  s.app.destroy();
  s.server.destroy();
});
