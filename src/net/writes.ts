import type { Duplex } from 'node:stream';
import { codeOf } from '../errors.js';

/**
 * What a socket does when a write fails because its peer reset the connection.
 *
 * A server that answers and then closes while the client is still sending (redis replies
 * `-ERR Protocol error` to a desynchronised client and closes with its input unread)
 * makes the kernel send a reset right behind the reply. A relay that writes to that
 * server after the reset came in gets ECONNRESET or EPIPE, and Node destroys the socket
 * at once, closing it with the reply still unread in the kernel: the app never sees it.
 * Whether the write or the read is served first depends on the order of two sockets in
 * one poll, which lost 3–5% of such replies.
 *
 * A socket given `holdWriteErrors` instead keeps its read side: a write that fails with
 * ECONNRESET or EPIPE and every later one are dropped (the peer is gone), `onFailed` is
 * told once, and the socket is destroyed with the write's error only when its read side
 * has ended, that is once what the peer sent before its reset has been read and passed
 * on. Other write errors destroy the socket as usual.
 *
 * It works by wrapping the socket's own `_write` and `_writev` (the Writable interface
 * net.Socket implements), whose callback is the one place a write reports its outcome.
 */
export function holdWriteErrors(
  socket: Duplex,
  onFailed: (this: Duplex, err: Error) => void,
): void {
  const held = socket as HoldingSocket;
  if (held[kHold] !== undefined) return;
  held[kHold] = {
    write: held._write.bind(held),
    writev: held._writev?.bind(held),
    onFailed,
    error: undefined,
    writeCallback: undefined,
    heldCallback: undefined,
  };
  held._write = heldWrite;
  if (typeof held._writev === 'function') held._writev = heldWritev;
}

/** Write errors that mean the peer reset or closed: what it sent before may still be read. */
const PEER_GONE: ReadonlySet<string> = new Set(['ECONNRESET', 'EPIPE']);

type WriteCallback = (error?: Error | null) => void;

interface Hold {
  write: Duplex['_write'];
  writev: Duplex['_writev'];
  onFailed: (this: Duplex, err: Error) => void;
  error: Error | undefined;
  /** The stream's own write callback (one per stream), and ours around it. */
  writeCallback: WriteCallback | undefined;
  heldCallback: WriteCallback | undefined;
}

const kHold = Symbol('sidepool.writeHold');
type HoldingSocket = Duplex & { [kHold]?: Hold };

function heldWrite(
  this: HoldingSocket,
  chunk: unknown,
  encoding: BufferEncoding,
  callback: WriteCallback,
): void {
  const hold = this[kHold] as Hold;
  if (hold.error !== undefined) callback();
  else hold.write(chunk, encoding, wrapped(this, hold, callback));
}

function heldWritev(
  this: HoldingSocket,
  chunks: Array<{ chunk: unknown; encoding: BufferEncoding }>,
  callback: WriteCallback,
): void {
  const hold = this[kHold] as Hold;
  if (hold.error !== undefined) callback();
  else (hold.writev as NonNullable<Duplex['_writev']>)(chunks, wrapped(this, hold, callback));
}

/** Ours around the stream's write callback, made once per stream (Writable passes the same). */
function wrapped(socket: HoldingSocket, hold: Hold, callback: WriteCallback): WriteCallback {
  if (hold.writeCallback !== callback) {
    hold.writeCallback = callback;
    hold.heldCallback = (err) => {
      if (err === undefined || err === null) callback();
      else if (PEER_GONE.has(codeOf(err))) {
        writeFailed(socket, hold, err);
        callback();
      } else callback(err);
    };
  }
  return hold.heldCallback as WriteCallback;
}

function writeFailed(socket: HoldingSocket, hold: Hold, err: Error): void {
  if (hold.error !== undefined || socket.destroyed) return;
  hold.error = err;
  hold.onFailed.call(socket, err);
  if (socket.readableEnded) socket.destroy(err);
  else socket.once('end', destroyWithHeldError);
}

function destroyWithHeldError(this: HoldingSocket): void {
  this.destroy(this[kHold]?.error);
}
