import net from 'node:net';
import type { Duplex } from 'node:stream';

/**
 * Who reads a socket's bytes, and into which memory.
 *
 * Node reads every chunk into a fresh 64 KiB allocation that V8 frees in batches long
 * after. In a bulk relay that churn (malloc, page faults when glibc hands the freed memory
 * back, V8 marking driven by external memory) cost ~3× the CPU per byte of the copy itself.
 * A socket opened with `onread` reads into a buffer we supply instead. One buffer cannot be
 * shared by every socket: a write the kernel does not take at once keeps pointing into the
 * memory it came from. So:
 *
 * - A socket reads into one process-wide scratch buffer and each chunk is copied out
 *   (small chunks come from Node's pooled slab, which is cheap). Idle and chatty sockets
 *   thus hold no read buffer of their own, which keeps ten thousand connections small.
 * - A socket whose reads are large (a stream) gets a buffer of its own, and its chunks are
 *   views of it, relayed without a copy. The buffer is read into again unless the handler
 *   still holds the chunk (queued, or in a write the kernel has not taken), in which case
 *   the next read gets a new one. After a run of small reads the socket goes back to the
 *   scratch buffer.
 *
 * Whoever owns a socket's bytes at the moment (an idle link, a queued session, a splice)
 * installs a `BytesHandler` with `readWith`. The same handlers serve sockets that read the
 * usual way (TLS, http mode) through a 'data' listener, so callers need not care which
 * kind they hold.
 */

/** Keep reading. */
export const READ_MORE = 0;
/** Stop reading until the socket is resumed. */
export const READ_PAUSE = 1;
/** The handler still holds the chunk after it returns: its memory must not be read into. */
export const CHUNK_KEPT = 2;

/**
 * How a socket that reads into our buffers hands out chunks: `views` of a buffer it may
 * read into again (the handler says CHUNK_KEPT when it holds on), or `copies` the handler
 * may keep as long as it likes, for protocol sessions that store slices of what they read.
 */
export type OwnReads = 'views' | 'copies';

/** Takes one chunk; returns READ_MORE, or READ_PAUSE and/or CHUNK_KEPT. */
export type BytesHandler = (this: Duplex, chunk: Buffer) => number;

/** Node's own read size: what a read fills when a peer streams. */
const READ_SIZE = 64 * 1024;
/** A read this large makes a socket read into a buffer of its own. */
const OWN_BUFFER_AT = 16 * 1024;
/** This many smaller reads in a row send it back to the scratch buffer. */
const SMALL_READS_TO_SCRATCH = 16;
/**
 * At most this many sockets read into buffers of their own (16 MiB); past it, large reads
 * are copied out of the scratch buffer too. A socket keeps its buffer while it is quiet
 * (Node offers no way to take it back between reads), so this bounds what streams that
 * went idle can hold.
 */
const MAX_OWN_BUFFERS = 256;
let ownBuffers = 0;

interface ReadState {
  handler: BytesHandler | undefined;
  /** Whether the socket reads through `onread` (ours) rather than 'data' events. */
  readonly ownReads: boolean;
  /** Chunks are always copies: the socket never reads into a buffer of its own. */
  readonly copies: boolean;
  /** The socket's own read buffer while its reads are large; else it reads into scratch. */
  own: Buffer | undefined;
  smallReads: number;
  /** Bytes read while no handler was installed; handed to the next one. */
  unclaimed: Buffer[] | undefined;
}

const kReads = Symbol('sidepool.reads');
type ReadingSocket = Duplex & { [kReads]?: ReadState };

const scratch = Buffer.allocUnsafeSlow(READ_SIZE);
/** The socket whose read just ended: `nextBuffer`, which Node calls next, serves it. */
let lastRead: ReadState | undefined;

function nextBuffer(): Buffer {
  const state = lastRead;
  lastRead = undefined;
  // A socket being constructed asks too (no read yet): it starts on scratch.
  return state?.own ?? scratch;
}

function onRead(this: ReadingSocket, n: number): boolean {
  const state = this[kReads] as ReadState;
  const own = state.own;
  let chunk: Buffer;
  if (own === undefined) {
    chunk = Buffer.allocUnsafe(n);
    scratch.copy(chunk, 0, 0, n);
    if (n >= OWN_BUFFER_AT && ownBuffers < MAX_OWN_BUFFERS && !state.copies) {
      state.own = Buffer.allocUnsafeSlow(READ_SIZE);
      state.smallReads = 0;
      ownBuffers++;
      this.once('close', onOwnerClose);
    }
  } else {
    chunk = own.subarray(0, n);
  }
  let flags: number;
  const handler = state.handler;
  if (handler === undefined) {
    (state.unclaimed ??= []).push(chunk);
    flags = CHUNK_KEPT | READ_PAUSE;
  } else {
    flags = handler.call(this, chunk);
  }
  if (own !== undefined) {
    if (n >= OWN_BUFFER_AT) state.smallReads = 0;
    else if (++state.smallReads >= SMALL_READS_TO_SCRATCH) {
      state.own = undefined;
      ownBuffers--;
      this.off('close', onOwnerClose);
    }
    if ((flags & CHUNK_KEPT) !== 0 && state.own === own)
      state.own = Buffer.allocUnsafeSlow(READ_SIZE);
  }
  lastRead = state;
  return (flags & READ_PAUSE) === 0;
}

function onOwnerClose(this: ReadingSocket): void {
  const state = this[kReads] as ReadState;
  if (state.own !== undefined) {
    state.own = undefined;
    ownBuffers--;
  }
}

/** How many sockets read into buffers of their own now. */
export function ownReadBuffers(): number {
  return ownBuffers;
}

function ownReadOptions(): net.OnReadOpts {
  return { buffer: nextBuffer, callback: onRead };
}

function newState(ownReads: boolean, copies = false): ReadState {
  return {
    handler: undefined,
    ownReads,
    copies,
    own: undefined,
    smallReads: 0,
    unclaimed: undefined,
  };
}

/** `net.connect`, with the socket reading into our buffers. */
export function connectOwnReads(options: net.NetConnectOpts, kind: OwnReads = 'views'): net.Socket {
  const socket = net.connect({ ...options, onread: ownReadOptions() }) as net.Socket &
    ReadingSocket;
  socket[kReads] = newState(true, kind === 'copies');
  return socket;
}

/** What Node keeps of an accepted connection: its libuv stream (TCP or pipe). */
interface StreamHandle {
  readStart(): number;
  useUserBuffer(buffer: Uint8Array): void;
  setNoDelay?(on: boolean): number;
}

function isStreamHandle(handle: unknown): handle is StreamHandle {
  const h = handle as Partial<StreamHandle> | null | undefined;
  return (
    typeof h === 'object' &&
    h !== null &&
    typeof h.useUserBuffer === 'function' &&
    typeof h.readStart === 'function'
  );
}

/** A socket, paused, that reads `handle` (which has read nothing yet) into our buffers. */
function socketReadingOwn(
  handle: StreamHandle,
  allowHalfOpen: boolean,
  kind: OwnReads,
): net.Socket {
  const options = {
    handle,
    allowHalfOpen,
    noDelay: true,
    pauseOnCreate: true,
    onread: ownReadOptions(),
  };
  const socket = new net.Socket(options) as net.Socket & ReadingSocket;
  socket[kReads] = newState(true, kind === 'copies');
  return socket;
}

/**
 * The accepted socket, moved onto one that reads into our buffers. `net.Server` has no
 * `onread` option, so the connection's handle is taken from the socket Node made (which
 * must come from a server with `pauseOnConnect`, so that nothing was read yet) and given
 * to a new one. This leans on two long-stable internals, `socket._handle` and the
 * constructor's `handle` option; where they are missing the accepted socket is returned
 * as it is, and reads the usual way. A socket that reads into our buffers already (see
 * `acceptOwnReads`) is returned as it is.
 */
export function adoptOwnReads(accepted: net.Socket, kind: OwnReads = 'views'): net.Socket {
  if (readsOwnBuffers(accepted)) return accepted;
  const old = accepted as net.Socket & { _handle?: unknown };
  const handle = old._handle;
  if (!isStreamHandle(handle)) return accepted;
  old._handle = null;
  // Handle-less, the old socket only counts itself off the server's connections.
  old.destroy();
  return socketReadingOwn(handle, accepted.allowHalfOpen, kind);
}

/**
 * A socket that reads into our buffers, made straight from a connection handle a server
 * just accepted, with no socket of Node's made first (see Listener: that saves building
 * and destroying one net.Socket per connection). Undefined when the handle is not a stream
 * that can read into our buffers: the caller then lets Node make its socket. TCP_NODELAY
 * is set here, as net.Server's `noDelay` would.
 */
export function acceptOwnReads(
  handle: unknown,
  allowHalfOpen: boolean,
  kind: OwnReads,
): net.Socket | undefined {
  if (!isStreamHandle(handle)) return undefined;
  handle.setNoDelay?.(true);
  return socketReadingOwn(handle, allowHalfOpen, kind);
}

/** Whether the socket reads into our buffers. */
export function readsOwnBuffers(socket: Duplex): boolean {
  return (socket as ReadingSocket)[kReads]?.ownReads === true;
}

/**
 * From now on `handler` takes the socket's bytes, and the socket reads. Bytes read while
 * nobody held the socket go to the handler first.
 */
export function readWith(socket: Duplex, handler: BytesHandler): void {
  const s = socket as ReadingSocket;
  let state = s[kReads];
  if (state === undefined) {
    state = newState(false);
    s[kReads] = state;
  }
  const wasHeld = state.handler !== undefined;
  state.handler = handler;
  if (!state.ownReads && !wasHeld) s.on('data', onData);
  let paused = false;
  const unclaimed = state.unclaimed;
  if (unclaimed !== undefined) {
    state.unclaimed = undefined;
    for (const chunk of unclaimed) {
      if ((handler.call(s, chunk) & READ_PAUSE) !== 0) paused = true;
    }
  }
  if (!paused) s.resume();
}

/**
 * Nobody takes the socket's bytes now: they wait for the next `readWith`. A socket read
 * through streams pauses. One that reads into our buffers stops at its first read while
 * unheld: stopping it now would cost two system calls (epoll_ctl out, and in again at the
 * next `readWith`) on every hand-over between holders, such as a pooled link given back
 * and leased again, where bytes in between are rare.
 */
export function stopReading(socket: Duplex): void {
  const s = socket as ReadingSocket;
  const state = s[kReads];
  if (state?.handler === undefined) return;
  state.handler = undefined;
  if (state.ownReads) return;
  s.off('data', onData);
  s.pause();
}

function onData(this: ReadingSocket, chunk: Buffer): void {
  const handler = this[kReads]?.handler;
  if (handler !== undefined && (handler.call(this, chunk) & READ_PAUSE) !== 0) this.pause();
}
