import { ProtocolViolation } from './messages.js';

/**
 * What the reader of one direction does with the messages the framer finds. A message the
 * policy decodes arrives whole (`message`); any other streams through in slices of the
 * read buffer (`streamStart`, `streamBytes`, `streamEnd`), so a 100 MB DataRow costs no
 * buffer of its own. `message` and `streamStart` may return false: "not now" — the framer
 * stops before that message, keeps the rest of the bytes, and delivers it again on
 * `resume()`.
 */
export interface FrameSink {
  /** A whole message, header included (a view of the read buffer when it came in one). */
  message(code: number, msg: Buffer): boolean;
  /** A streamed message begins: its code and length (the int32, which counts itself). */
  streamStart(code: number, length: number): boolean;
  /** Bytes of the streamed message, its header first. */
  streamBytes(bytes: Buffer): void;
  streamEnd(code: number): void;
}

export interface FramerOptions {
  /** Whether a message with this code is delivered whole (decoded) rather than streamed. */
  decode(code: number): boolean;
  /** The largest message delivered whole; above it, ProtocolViolation. */
  maxDecoded: number;
  /** The largest message at all (PostgreSQL's own limit is 1 GB). */
  maxLength?: number;
  /** The first message has no type byte (a client's startup packet). */
  untypedFirst?: boolean;
}

const MAX_LENGTH = 0x3fffffff;
/** PostgreSQL's MAX_STARTUP_PACKET_LENGTH: the untyped first messages are small. */
const MAX_STARTUP = 10_000;

/**
 * Finds message boundaries in a PostgreSQL byte stream: a 1-byte code and an int32 length
 * (node-postgres' parser does the same), keeping partial messages across reads. Throws
 * ProtocolViolation from `push`/`resume` on a length below 4 or above the bounds; the
 * connection is then beyond repair.
 */
export class Framer {
  private readonly sink: FrameSink;
  private readonly decode: (code: number) => boolean;
  private readonly maxDecoded: number;
  private readonly maxLength: number;
  private headSize: number;
  private readonly head = Buffer.allocUnsafe(5);
  private headHave = 0;
  private neverPushed = true;
  /** Unread bytes: the chunk being framed, and where we are in it. */
  private chunk: Buffer | undefined;
  private pos = 0;
  /** A decoded message being assembled across reads. */
  private whole: Buffer | undefined;
  private wholeCode = 0;
  private wholeHave = 0;
  /** Bytes still to pass of a streamed message. */
  private streamLeft = 0;
  private streamCode = 0;
  /** A message the sink refused ("not now"), delivered again on resume. */
  private held:
    | { kind: 'whole'; code: number; msg: Buffer }
    | { kind: 'stream'; code: number; length: number; header: Buffer }
    | undefined;

  constructor(sink: FrameSink, options: FramerOptions) {
    this.sink = sink;
    this.decode = (code) => options.decode(code);
    this.maxDecoded = options.maxDecoded;
    this.maxLength = options.maxLength ?? MAX_LENGTH;
    this.headSize = options.untypedFirst === true ? 4 : 5;
  }

  /** Whether the framer holds bytes it has not delivered (a message waiting for resume). */
  get isPaused(): boolean {
    return this.held !== undefined;
  }

  /** Nothing was pushed yet: the stream's first byte is still to come. */
  get atStart(): boolean {
    return this.neverPushed;
  }

  /** The next message has no type byte (a startup packet after SSLRequest was refused). */
  expectUntyped(): void {
    this.headSize = 4;
  }

  /** Bytes pushed and not yet framed (after the message being delivered). */
  get unreadBytes(): number {
    return this.chunk === undefined ? 0 : this.chunk.length - this.pos + this.headHave;
  }

  /** True between messages: no partial message read or passed. */
  get atBoundary(): boolean {
    return (
      this.headHave === 0 &&
      this.whole === undefined &&
      this.streamLeft === 0 &&
      this.held === undefined &&
      (this.chunk === undefined || this.pos >= this.chunk.length)
    );
  }

  /**
   * Frames a chunk. Returns false when the sink said "not now": the framer keeps a
   * reference to the chunk (the caller must not reuse its memory) until `resume()`.
   */
  push(chunk: Buffer): boolean {
    this.neverPushed = false;
    if (this.chunk !== undefined && this.pos < this.chunk.length) {
      // Pushed while paused (the caller kept reading): append.
      this.chunk = Buffer.concat([this.chunk.subarray(this.pos), chunk]);
    } else {
      this.chunk = chunk;
    }
    this.pos = 0;
    return this.run();
  }

  /** Delivers the held message and what follows. Returns false if paused again. */
  resume(): boolean {
    return this.run();
  }

  private run(): boolean {
    const sink = this.sink;
    for (;;) {
      const held = this.held;
      if (held !== undefined) {
        if (held.kind === 'whole') {
          if (!sink.message(held.code, held.msg)) return false;
          this.held = undefined;
        } else {
          if (!sink.streamStart(held.code, held.length)) return false;
          this.held = undefined;
          this.startStream(held.code, held.length, held.header);
        }
        continue;
      }
      const chunk = this.chunk;
      if (chunk === undefined) return true;
      let avail = chunk.length - this.pos;
      if (this.streamLeft > 0) {
        if (avail === 0) return this.drained();
        const n = Math.min(this.streamLeft, avail);
        sink.streamBytes(chunk.subarray(this.pos, this.pos + n));
        this.pos += n;
        this.streamLeft -= n;
        if (this.streamLeft === 0) sink.streamEnd(this.streamCode);
        continue;
      }
      if (this.whole !== undefined) {
        if (avail === 0) return this.drained();
        const whole = this.whole;
        const n = Math.min(whole.length - this.wholeHave, avail);
        chunk.copy(whole, this.wholeHave, this.pos, this.pos + n);
        this.pos += n;
        this.wholeHave += n;
        if (this.wholeHave < whole.length) continue;
        this.whole = undefined;
        if (!this.deliverWhole(this.wholeCode, whole)) return false;
        continue;
      }
      if (avail === 0) return this.drained();

      // A header: from the chunk directly when it is all there, else gathered.
      const size = this.headSize;
      let header: Buffer;
      let contiguous = false;
      if (this.headHave === 0 && avail >= size) {
        header = chunk.subarray(this.pos, this.pos + size);
        this.pos += size;
        contiguous = true;
      } else {
        const n = Math.min(size - this.headHave, avail);
        chunk.copy(this.head, this.headHave, this.pos, this.pos + n);
        this.pos += n;
        this.headHave += n;
        if (this.headHave < size) return this.drained();
        header = Buffer.from(this.head.subarray(0, size));
        this.headHave = 0;
      }
      avail = chunk.length - this.pos;
      const code = size === 5 ? (header[0] as number) : 0;
      const length = header.readInt32BE(size - 4);
      const untyped = size === 4;
      this.headSize = 5;
      if (length < 4 || (untyped && length < 8)) {
        throw new ProtocolViolation(`invalid message length ${length}`);
      }
      if (untyped && length > MAX_STARTUP) {
        throw new ProtocolViolation(`startup packet of ${length} bytes is above ${MAX_STARTUP}`);
      }
      if (length > this.maxLength) {
        throw new ProtocolViolation(`message length ${length} is above the limit`);
      }
      const total = length + (untyped ? 0 : 1);
      if (untyped || this.decode(code)) {
        if (total > this.maxDecoded) {
          throw new ProtocolViolation(
            `message of ${total} bytes is above the limit of ${this.maxDecoded}`,
          );
        }
        const bodyLen = total - size;
        if (contiguous && avail >= bodyLen) {
          const start = this.pos - size;
          this.pos += bodyLen;
          if (!this.deliverWhole(code, chunk.subarray(start, start + total))) return false;
          continue;
        }
        const whole = Buffer.allocUnsafe(total);
        header.copy(whole, 0);
        this.whole = whole;
        this.wholeCode = code;
        this.wholeHave = size;
        continue;
      }
      if (!sink.streamStart(code, length)) {
        this.held = {
          kind: 'stream',
          code,
          length,
          header: contiguous ? header : Buffer.from(header),
        };
        return false;
      }
      this.startStream(code, length, header);
    }
  }

  private deliverWhole(code: number, msg: Buffer): boolean {
    if (this.sink.message(code, msg)) return true;
    this.held = { kind: 'whole', code, msg };
    return false;
  }

  private startStream(code: number, length: number, header: Buffer): void {
    this.sink.streamBytes(header);
    this.streamCode = code;
    this.streamLeft = length - 4;
    if (this.streamLeft === 0) this.sink.streamEnd(code);
  }

  private drained(): boolean {
    this.chunk = undefined;
    this.pos = 0;
    return true;
  }
}
