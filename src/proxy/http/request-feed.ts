import type { Socket } from 'node:net';

/** The session's side of a feed: how many more requests it will take now. */
export interface FeedOwner {
  roomForRequests(): number;
}

const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');
const CR = 0x0d;
const LF = 0x0a;

/**
 * Hands the app's bytes to node:http's parser no faster than the session can take the
 * requests they hold. node:http parses a whole read at once, and one 64 KiB read of
 * minimal pipelined requests is some 2,000 requests (each an IncomingMessage, a
 * ServerResponse and an exchange) before anything can pause the socket. So the feed
 * takes the parser's place as the socket's 'data' listener and gives it a read only up
 * to the end of the last request head the session has room for; the rest goes back to
 * the socket (unshift), which stops reading until the session has room again.
 *
 * A request head always ends with CRLFCRLF (llhttp, strict as Node runs it, refuses bare
 * LF line ends), so counting them bounds the requests a slice can make. Body bytes may
 * hold CRLFCRLF too: counting those only cuts a slice early, which is safe.
 */
export class RequestFeed {
  private readonly heads = new HeadEnds();
  private holding = false;
  private detached = false;

  private constructor(
    private readonly socket: Socket,
    private readonly owner: FeedOwner,
    /** node:http's own 'data' listener, which runs its parser on a chunk. */
    private readonly parse: (chunk: Buffer) => void,
  ) {}

  /**
   * Puts a feed between `socket` and the node:http server it was just given to. Returns
   * undefined when the server's listeners are not as expected (another Node version):
   * the socket then stays as node:http set it up, bounded per read only.
   */
  static take(socket: Socket, owner: FeedOwner): RequestFeed | undefined {
    const listeners = socket.listeners('data');
    if (listeners.length !== 1) return undefined;
    const parse = listeners[0] as (chunk: Buffer) => void;
    const feed = new RequestFeed(socket, owner, (chunk) => parse.call(socket, chunk));
    socket.removeListener('data', parse);
    (socket as Fed)[kFeed] = feed;
    // Adding a 'data' listener also makes node:http stop consuming the socket natively.
    socket.on('data', onData);
    return feed;
  }

  /** The socket is no longer parsed as HTTP (an upgrade took it): reads go to its new owner. */
  detach(): void {
    if (this.detached) return;
    this.detached = true;
    this.socket.removeListener('data', onData);
    (this.socket as Fed)[kFeed] = undefined;
  }

  /** The session has room again: what was held back is read. */
  resume(): void {
    if (!this.holding || this.detached || this.owner.roomForRequests() <= 0) return;
    this.holding = false;
    this.socket.resume();
  }

  data(chunk: Buffer): void {
    let rest = chunk;
    while (rest.length > 0) {
      if (this.detached) {
        // An upgrade came in this chunk: what follows its head is the tunnel's, which reads
        // the socket from now on.
        this.socket.unshift(rest);
        return;
      }
      const room = this.owner.roomForRequests();
      if (room <= 0 || (this.socket as Fed)._paused === true) {
        // No room, or node:http paused itself (its responses are not being read): the rest
        // waits in the socket, which reads no more until resumed.
        this.holding = true;
        // Paused first: into a flowing stream, unshift would emit the bytes again at once.
        this.socket.pause();
        this.socket.unshift(rest);
        return;
      }
      const cut = this.heads.cut(rest, room);
      const piece = cut === rest.length ? rest : rest.subarray(0, cut);
      rest = rest.subarray(cut);
      this.heads.fed(piece);
      this.parse(piece);
    }
  }
}

/**
 * Finds the ends of request heads (CRLFCRLF) in the bytes given to the parser, slice by
 * slice, including one that began in the slice before.
 */
export class HeadEnds {
  /** The bytes fed so far end with this many bytes of CRLFCRLF (0 to 3). */
  private partial = 0;

  /** Where `data` may be cut so that it completes at most `heads` request heads. */
  cut(data: Buffer, heads: number): number {
    let count = 0;
    let from = this.straddlingEnd(data);
    if (from > 0 && ++count === heads) return from;
    for (;;) {
      const at = data.indexOf(HEAD_END, from);
      if (at < 0) return data.length;
      from = at + 4;
      if (++count === heads) return from;
    }
  }

  /** The end, in `data`, of a CRLFCRLF begun in what was fed before; 0 when none. */
  private straddlingEnd(data: Buffer): number {
    let matched = this.partial;
    for (let i = 0; i < data.length && i < 3 && matched > 0; i++) {
      matched = step(matched, data[i] as number);
      if (matched === 4) return i + 1;
      // What is matched now began inside `data`: indexOf finds it.
      if (matched <= i + 1) return 0;
    }
    return 0;
  }

  /** `piece` (a prefix of the last `data` cut) went to the parser. */
  fed(piece: Buffer): void {
    const n = piece.length;
    // A match under way is at most 3 bytes long: the last 3 bytes decide it.
    let matched = n >= 3 ? 0 : this.partial;
    for (let i = Math.max(0, n - 3); i < n; i++) {
      matched = step(matched, piece[i] as number);
      // A full match: its last CRLF may begin the next one.
      if (matched === 4) matched = 2;
    }
    this.partial = matched;
  }
}

/** CRLFCRLF matched so far (0 to 3), after one more byte: 4 is a whole match. */
function step(matched: number, byte: number): number {
  if (byte === CR) return matched === 2 ? 3 : 1;
  if (byte === LF) return matched === 1 ? 2 : matched === 3 ? 4 : 0;
  return 0;
}

const kFeed = Symbol('sidepool.requestFeed');

interface Fed extends Socket {
  [kFeed]?: RequestFeed | undefined;
  /** node:http's own pause flag: it paused the socket because responses back up. */
  _paused?: boolean;
}

function onData(this: Fed, chunk: Buffer): void {
  this[kFeed]?.data(chunk);
}
