/**
 * RESP framing: where messages start and end, decoded only as far as the proxy acts on.
 *
 * Requests (app → sidepool) are framed by `RequestFramer` the way redis-server frames
 * them (`*N` multibulk, or an inline line), but stricter: anything redis-server might
 * read differently (a bulk not followed by CRLF, a count line ended by a bare CR) is a
 * protocol error here, because on a shared link a command boundary that sidepool and Redis
 * disagree on would hand one client's replies to another. Replies (Redis → sidepool) are
 * framed by `ReplyFramer`, RESP2 and RESP3. Both are incremental state machines: a message
 * may arrive in any number of reads, and neither buffers a bulk string's payload, so a
 * 512 MB value costs no more memory than a small one.
 */

const CR = 13;
const LF = 10;
const DOLLAR = 36; // $
const STAR = 42; // *
const MINUS = 45; // -

/** What `RequestFramer.next` found. */
export const FRAME_COMMAND = 0;
/** The bytes so far are the start of a command; the framer keeps slices of them. */
export const FRAME_NEED_MORE = 1;
/** An empty command (`*0`, `*-1`, a blank inline line): nothing to do, no reply. */
export const FRAME_EMPTY = 2;
/** The command is larger than the framer's limit: its bytes are streamed from here. */
export const FRAME_LARGE = 3;
/** Malformed input: `error` says what, in redis-server's words where it has some. */
export const FRAME_ERROR = 4;

/** redis-server's limits (`proto-max-bulk-len`, PROTO_INLINE_MAX_SIZE, INT_MAX). */
export const MAX_BULK_LENGTH = 512 * 1024 * 1024;
export const MAX_INLINE_BYTES = 64 * 1024;
export const MAX_MULTIBULK_LENGTH = 2_147_483_647;
/** redis-server's limits for a client that has not authenticated. */
const UNAUTHENTICATED_MAX_COUNT = 10;
const UNAUTHENTICATED_MAX_BULK = 16 * 1024;
/** No command name is longer than this; a longer first argument is refused. */
export const MAX_COMMAND_NAME = 1024;
/** Digits in a count or length line: 2^31 and 512 MB both fit in 10. */
const MAX_DIGITS = 19;

// Request framer states.
const Q_START = 0;
const Q_COUNT = 1;
const Q_COUNT_LF = 2;
const Q_BULK_TYPE = 3;
const Q_BULK_LEN = 4;
const Q_BULK_LEN_LF = 5;
const Q_BULK_DATA = 6;
const Q_BULK_CR = 7;
const Q_BULK_LF = 8;
const Q_INLINE = 9;

const NEED_DIGITS = -1;
const BAD_DIGITS = -2;

/**
 * Recognises command names: returns an id the caller defined for `name` (bytes
 * `[start, start + length)` of `buf`, any case), or 0 for a command it has no rule for.
 */
export type NameLookup = (buf: Buffer, start: number, length: number) => number;

/**
 * Frames the commands an app sends. `next(buf, pos)` reads from `pos` and returns one of
 * the FRAME_* codes; the fields below describe what it found. Bytes of a command that
 * spans reads are kept as slices (`pieces`): the caller must not reuse a buffer the
 * framer returned FRAME_NEED_MORE or FRAME_LARGE for.
 */
export class RequestFramer {
  /** After FRAME_COMMAND/FRAME_EMPTY: where the command ends in `buf`. */
  end = 0;
  /** After FRAME_COMMAND: where it starts in `buf` (0 when it began in an earlier read). */
  start = 0;
  /** Earlier parts of the command, when it spans reads; else undefined. */
  pieces: Buffer[] | undefined;
  /** The command's size in bytes (so far, for FRAME_LARGE). */
  size = 0;
  /** Arguments, the name included. */
  argc = 0;
  /** The lookup's id for the command name. */
  command = 0;
  /** For an inline command: its arguments (it is forwarded as multibulk). */
  inline: Buffer[] | undefined;
  /** After FRAME_ERROR: what is wrong, as the text of a RESP error. */
  error = '';
  /** redis-server's stricter limits for a client that has not authenticated. */
  unauthenticated = false;

  private state = Q_START;
  private number = 0;
  private negative = false;
  private digits = 0;
  private argsLeft = 0;
  private argIndex = 0;
  private bulkLeft = 0;
  private nameBytes: Buffer | undefined;
  private nameLength = 0;
  private inlineParts: Buffer[] | undefined;
  private inlineLength = 0;
  private streaming = false;

  constructor(
    private readonly lookup: NameLookup,
    /** A command larger than this is reported as FRAME_LARGE. */
    private readonly largeAt: number,
  ) {}

  /** Whether a command is part-way through (its bytes kept in `pieces`). */
  get midCommand(): boolean {
    return this.state !== Q_START;
  }

  /** Reads one command from `buf` at `pos`; returns a FRAME_* code. */
  next(buf: Buffer, pos: number): number {
    const len = buf.length;
    const begin = pos;
    if (this.state === Q_START) {
      if (pos >= len) return FRAME_NEED_MORE;
      this.pieces = undefined;
      this.size = 0;
      this.inline = undefined;
      this.command = 0;
      if (buf[pos] === STAR) {
        pos++;
        this.state = Q_COUNT;
        this.number = 0;
        this.negative = false;
        this.digits = 0;
      } else {
        this.state = Q_INLINE;
        this.inlineParts = undefined;
        this.inlineLength = 0;
      }
    }
    for (;;) {
      switch (this.state) {
        case Q_COUNT: {
          const r = this.digitLine(buf, pos, len);
          if (r === NEED_DIGITS) return this.needMore(buf, begin);
          if (r === BAD_DIGITS) return this.fail('invalid multibulk length');
          pos = r;
          this.state = Q_COUNT_LF;
          break;
        }
        case Q_COUNT_LF: {
          if (pos >= len) return this.needMore(buf, begin);
          if (buf[pos++] !== LF) return this.fail('invalid multibulk length');
          const count = this.negative ? -this.number : this.number;
          if (count > MAX_MULTIBULK_LENGTH) return this.fail('invalid multibulk length');
          if (count <= 0) {
            this.state = Q_START;
            this.end = pos;
            return FRAME_EMPTY;
          }
          if (this.unauthenticated && count > UNAUTHENTICATED_MAX_COUNT) {
            return this.fail('unauthenticated multibulk length');
          }
          this.argc = count;
          this.argsLeft = count;
          this.argIndex = 0;
          this.state = Q_BULK_TYPE;
          break;
        }
        case Q_BULK_TYPE: {
          if (pos >= len) return this.needMore(buf, begin);
          const c = buf[pos++] as number;
          if (c !== DOLLAR) {
            return this.fail(`expected '$', got '${printable(c)}'`);
          }
          this.state = Q_BULK_LEN;
          this.number = 0;
          this.negative = false;
          this.digits = 0;
          break;
        }
        case Q_BULK_LEN: {
          const r = this.digitLine(buf, pos, len);
          if (r === NEED_DIGITS) return this.needMore(buf, begin);
          if (r === BAD_DIGITS || this.negative) return this.fail('invalid bulk length');
          pos = r;
          this.state = Q_BULK_LEN_LF;
          break;
        }
        case Q_BULK_LEN_LF: {
          if (pos >= len) return this.needMore(buf, begin);
          if (buf[pos++] !== LF) return this.fail('invalid bulk length');
          const length = this.number;
          if (length > MAX_BULK_LENGTH) return this.fail('invalid bulk length');
          if (this.unauthenticated && length > UNAUTHENTICATED_MAX_BULK) {
            return this.fail('unauthenticated bulk length');
          }
          if (this.argIndex === 0 && length > MAX_COMMAND_NAME) {
            return this.fail(`command name longer than ${MAX_COMMAND_NAME} bytes`);
          }
          this.bulkLeft = length;
          this.state = Q_BULK_DATA;
          if (
            !this.streaming &&
            this.argIndex > 0 &&
            this.size + (pos - begin) + length + 2 > this.largeAt
          ) {
            this.streaming = true;
            this.size += pos - begin;
            this.keep(buf, begin, pos);
            this.end = pos;
            return FRAME_LARGE;
          }
          if (this.argIndex === 0) {
            this.nameLength = 0;
            this.nameBytes = undefined;
          }
          break;
        }
        case Q_BULK_DATA: {
          const available = len - pos;
          if (this.argIndex === 0) {
            // The name: found in place when it lies in this read, else gathered.
            const take = Math.min(available, this.bulkLeft);
            if (take === this.bulkLeft && this.nameLength === 0) {
              this.command = this.lookup(buf, pos, take);
            } else {
              this.nameBytes ??= Buffer.allocUnsafe(MAX_COMMAND_NAME);
              buf.copy(this.nameBytes, this.nameLength, pos, pos + take);
              this.nameLength += take;
              if (take === this.bulkLeft) {
                this.command = this.lookup(this.nameBytes, 0, this.nameLength);
              }
            }
          }
          if (available < this.bulkLeft) {
            this.bulkLeft -= available;
            return this.needMore(buf, begin);
          }
          pos += this.bulkLeft;
          this.bulkLeft = 0;
          this.state = Q_BULK_CR;
          break;
        }
        case Q_BULK_CR: {
          if (pos >= len) return this.needMore(buf, begin);
          if (buf[pos++] !== CR) return this.fail('expected CRLF after bulk data');
          this.state = Q_BULK_LF;
          break;
        }
        case Q_BULK_LF: {
          if (pos >= len) return this.needMore(buf, begin);
          if (buf[pos++] !== LF) return this.fail('expected CRLF after bulk data');
          this.argIndex++;
          if (--this.argsLeft > 0) {
            this.state = Q_BULK_TYPE;
            break;
          }
          this.state = Q_START;
          this.end = pos;
          this.size += pos - begin;
          if (this.streaming) {
            // The caller streams the large command's bytes; this read's part ends here.
            this.streaming = false;
            this.start = begin;
            return FRAME_COMMAND;
          }
          if (this.pieces === undefined) this.start = begin;
          else {
            this.pieces.push(buf.subarray(begin, pos));
            this.start = 0;
          }
          return FRAME_COMMAND;
        }
        case Q_INLINE:
          return this.inlineLine(buf, pos, begin);
        default:
          throw new Error(`request framer in state ${this.state}`);
      }
    }
  }

  /**
   * After FRAME_LARGE: the caller forwards the large command's bytes itself. `next` then
   * returns FRAME_NEED_MORE while the command goes on past `buf` (all of `buf` from `pos`
   * is the command's), and FRAME_COMMAND at its end (`[start, end)` is its last part).
   * `pieces` are not kept while streaming.
   */
  get isStreaming(): boolean {
    return this.streaming;
  }

  private keep(buf: Buffer, from: number, to: number): void {
    if (to > from) (this.pieces ??= []).push(buf.subarray(from, to));
  }

  private needMore(buf: Buffer, begin: number): number {
    const len = buf.length;
    if (this.streaming) {
      this.start = begin;
      this.end = len;
      this.size += len - begin;
      return FRAME_NEED_MORE;
    }
    if (this.state === Q_INLINE) return FRAME_NEED_MORE;
    this.size += len - begin;
    this.keep(buf, begin, len);
    if (this.size > this.largeAt && this.argIndex > 0) {
      // Past the limit inside an argument whose length was within it (many small ones).
      this.streaming = true;
      this.end = len;
      return FRAME_LARGE;
    }
    return FRAME_NEED_MORE;
  }

  /**
   * Parses a number up to its CR the way redis-server's string2ll does: digits with an
   * optional leading '-', no leading zero, no '+', not empty, not "-0". Returns the
   * position after the CR, NEED_DIGITS when `buf` ends first, or BAD_DIGITS.
   */
  private digitLine(buf: Buffer, pos: number, len: number): number {
    while (pos < len) {
      const c = buf[pos++] as number;
      if (c === CR) {
        if (this.digits === 0 || (this.negative && this.number === 0)) return BAD_DIGITS;
        return pos;
      }
      if (c === MINUS && this.digits === 0 && !this.negative) {
        this.negative = true;
        continue;
      }
      const d = c - 48;
      if (d < 0 || d > 9) return BAD_DIGITS;
      if (this.digits === 1 && this.number === 0) return BAD_DIGITS;
      if (++this.digits > MAX_DIGITS) return BAD_DIGITS;
      this.number = this.number * 10 + d;
    }
    return NEED_DIGITS;
  }

  private fail(problem: string): number {
    this.error = `Protocol error: ${problem}`;
    this.state = Q_START;
    this.pieces = undefined;
    this.streaming = false;
    return FRAME_ERROR;
  }

  /**
   * An inline command: one line, split like redis-server's sdssplitargs. Its raw bytes are
   * `[start, end)` or `pieces` like a multibulk command's; `inline` holds its arguments.
   */
  private inlineLine(buf: Buffer, pos: number, begin: number): number {
    const len = buf.length;
    const nl = buf.indexOf(LF, pos);
    const stop = nl < 0 ? len : nl;
    if (this.inlineLength + (stop - pos) > MAX_INLINE_BYTES) {
      return this.fail('too big inline request');
    }
    if (nl < 0) {
      if (len > begin) (this.inlineParts ??= []).push(buf.subarray(begin, len));
      this.inlineLength += len - pos;
      return FRAME_NEED_MORE;
    }
    let line: Buffer;
    const parts = this.inlineParts;
    if (parts === undefined) {
      line = buf.subarray(begin, nl);
      this.pieces = undefined;
      this.start = begin;
    } else {
      parts.push(buf.subarray(begin, nl + 1));
      this.pieces = parts;
      this.start = 0;
      line = Buffer.concat(parts).subarray(0, -1);
    }
    this.inlineParts = undefined;
    this.inlineLength = 0;
    this.state = Q_START;
    this.end = nl + 1;
    if (line.length > 0 && line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
    const args = splitArgs(line);
    if (args === undefined) return this.fail('unbalanced quotes in request');
    if (typeof args === 'string') return this.fail(args);
    if (args.length === 0) return FRAME_EMPTY;
    if (this.unauthenticated && args.length > UNAUTHENTICATED_MAX_COUNT) {
      return this.fail('unauthenticated multibulk length');
    }
    const name = args[0] as Buffer;
    if (name.length > MAX_COMMAND_NAME) {
      return this.fail(`command name longer than ${MAX_COMMAND_NAME} bytes`);
    }
    this.command = this.lookup(name, 0, name.length);
    this.inline = args;
    this.argc = args.length;
    this.size = this.end - begin;
    return FRAME_COMMAND;
  }
}

function printable(c: number): string {
  return c >= 32 && c < 127 ? String.fromCharCode(c) : '?';
}

function isSpace(c: number | undefined): boolean {
  return c === 32 || c === 9 || c === 10 || c === 11 || c === 12 || c === 13;
}

function hexValue(c: number | undefined): number {
  if (c === undefined) return -1;
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/**
 * Splits an inline command line like redis-server's sdssplitargs: blanks separate
 * arguments; "double quotes" take \xHH, \n, \r, \t, \b, \a and \<char> escapes; 'single
 * quotes' take \'; a closing quote must be followed by a blank or the end. Returns
 * undefined for unbalanced quotes, a message for a NUL byte (which redis-server would read
 * as the end of the line, and so frame differently).
 */
export function splitArgs(line: Buffer): Buffer[] | string | undefined {
  const args: Buffer[] = [];
  const n = line.length;
  if (line.indexOf(0) >= 0) return 'NUL byte in inline request';
  let p = 0;
  for (;;) {
    while (p < n && isSpace(line[p])) p++;
    if (p >= n) return args;
    const out: number[] = [];
    let inDouble = false;
    let inSingle = false;
    let done = false;
    const plainStart = p;
    let plain = true;
    while (!done) {
      const c = line[p];
      if (inDouble) {
        if (
          c === 92 &&
          line[p + 1] === 120 &&
          hexValue(line[p + 2]) >= 0 &&
          hexValue(line[p + 3]) >= 0
        ) {
          out.push(hexValue(line[p + 2]) * 16 + hexValue(line[p + 3]));
          p += 3;
        } else if (c === 92 && p + 1 < n) {
          p++;
          const e = line[p] as number;
          out.push(
            e === 110 ? 10 : e === 114 ? 13 : e === 116 ? 9 : e === 98 ? 8 : e === 97 ? 7 : e,
          );
        } else if (c === 34) {
          if (p + 1 < n && !isSpace(line[p + 1])) return undefined;
          done = true;
        } else if (c === undefined) {
          return undefined;
        } else {
          out.push(c);
        }
      } else if (inSingle) {
        if (c === 92 && line[p + 1] === 39) {
          p++;
          out.push(39);
        } else if (c === 39) {
          if (p + 1 < n && !isSpace(line[p + 1])) return undefined;
          done = true;
        } else if (c === undefined) {
          return undefined;
        } else {
          out.push(c);
        }
      } else if (c === undefined || isSpace(c)) {
        done = true;
      } else if (c === 34) {
        inDouble = true;
        plain = false;
      } else if (c === 39) {
        inSingle = true;
        plain = false;
      } else {
        out.push(c);
      }
      if (p < n) p++;
    }
    if (plain) {
      // No quotes: the argument is a slice of the line (the common case).
      const end = p - (p <= n && isSpace(line[p - 1]) ? 1 : 0);
      args.push(line.subarray(plainStart, end));
    } else {
      args.push(Buffer.from(out));
    }
  }
}

/** `ReplyFramer.next`: `buf` ended inside a value. */
export const REPLY_MORE = -1;
/** `ReplyFramer.next`: not RESP; `error` says why. */
export const REPLY_BAD = -2;

// Reply framer states.
const R_TYPE = 0;
const R_LINE = 1;
const R_LENGTH = 2;
const R_LENGTH_LF = 3;
const R_DATA = 4;
const R_CHUNK_TYPE = 5;

/** An open aggregate of unknown length (RESP3 `*?`), ended by `.`. */
const STREAMED = -1;
/** Nesting deeper than this is refused (redis-server's replies stay far below). */
const MAX_DEPTH = 1024;
const RESET_LINE = Buffer.from('RESET\r');

const PLUS = 43; // +
const BANG = 33; // ! (RESP3 blob error)
const GREATER = 62; // > (RESP3 push)
const PIPE = 124; // | (RESP3 attribute)
const QUESTION = 63; // ?
const SEMICOLON = 59; // ;
const DOT = 46; // .

/**
 * Frames the replies of a Redis server, RESP2 and RESP3: `next(buf, pos)` returns the
 * position right after one complete top-level value, or REPLY_MORE when `buf` ends first
 * (call again with the next read), or REPLY_BAD. Bulk payloads are skipped, never copied.
 * After a complete value, `type` is its type byte (an attribute before it is not the
 * value), and `isReset` says whether it is the simple string RESET.
 */
export class ReplyFramer {
  type = 0;
  isReset = false;
  error = '';
  private state = R_TYPE;
  private readonly counts: number[] = [];
  private readonly attributes: boolean[] = [];
  private depth = 0;
  private topType = -1;
  private lineType = 0;
  private lengthType = 0;
  private number = 0;
  private negative = false;
  private digits = 0;
  private left = 0;
  private simpleBytes = 0;
  private simpleMatch = false;
  /** Inside a streamed string (`$?`): its chunks follow. */
  private chunked = false;

  /** Whether a value has begun and not ended. */
  get midValue(): boolean {
    return this.topType !== -1 || this.state !== R_TYPE;
  }

  next(buf: Buffer, pos: number): number {
    const len = buf.length;
    for (;;) {
      switch (this.state) {
        case R_TYPE: {
          if (pos >= len) return REPLY_MORE;
          const t = buf[pos++] as number;
          if (this.topType === -1) this.topType = t;
          switch (t) {
            case PLUS:
            case MINUS:
            case 58: // :
            case 44: // ,
            case 35: // #
            case 40: // (
            case 95: // _
              this.lineType = t;
              if (t === PLUS && this.depth === 0) {
                this.simpleBytes = 0;
                this.simpleMatch = true;
              }
              this.state = R_LINE;
              break;
            case DOLLAR:
            case BANG:
            case 61: // = (verbatim string)
            case STAR:
            case 37: // % (map)
            case 126: // ~ (set)
            case GREATER:
            case PIPE:
              this.lengthType = t;
              this.number = 0;
              this.negative = false;
              this.digits = 0;
              this.state = R_LENGTH;
              break;
            case DOT:
              if (this.depth === 0 || this.counts[this.depth - 1] !== STREAMED) {
                return this.bad(`unexpected '.'`);
              }
              this.lineType = t;
              this.state = R_LINE;
              break;
            default:
              return this.bad(`unknown reply type byte ${t}`);
          }
          break;
        }
        case R_LINE: {
          const nl = buf.indexOf(LF, pos);
          const stop = nl < 0 ? len : nl + 1;
          if (this.lineType === PLUS && this.depth === 0 && this.simpleMatch) {
            for (let i = pos; i < stop && this.simpleMatch; i++) {
              if (this.simpleBytes < RESET_LINE.length) {
                this.simpleMatch = buf[i] === RESET_LINE[this.simpleBytes++];
              } else {
                this.simpleMatch = buf[i] === LF && this.simpleBytes++ === RESET_LINE.length;
              }
            }
          }
          if (nl < 0) return REPLY_MORE;
          pos = stop;
          this.state = R_TYPE;
          if (this.lineType === DOT) {
            // The end of a streamed aggregate: it is an element of its parent.
            this.depth--;
            if (this.completeElement()) return this.done(pos);
          } else if (this.completeElement()) {
            return this.done(pos);
          }
          break;
        }
        case R_LENGTH: {
          if (pos >= len) return REPLY_MORE;
          const c = buf[pos++] as number;
          if (c === CR) {
            if (this.digits === 0 && !this.negative) return this.bad('empty length');
            this.state = R_LENGTH_LF;
          } else if (c === MINUS && this.digits === 0 && !this.negative) {
            this.negative = true;
          } else if (c === QUESTION && this.digits === 0 && !this.negative && !this.chunked) {
            this.digits = -1;
          } else {
            const d = c - 48;
            if (d < 0 || d > 9 || this.digits < 0 || this.digits >= MAX_DIGITS) {
              return this.bad('bad length');
            }
            this.number = this.number * 10 + d;
            this.digits++;
          }
          break;
        }
        case R_LENGTH_LF: {
          if (pos >= len) return REPLY_MORE;
          if (buf[pos++] !== LF) return this.bad('expected LF');
          this.state = R_TYPE;
          const t = this.lengthType;
          const unknownLength = this.digits === -1;
          const n = this.negative ? -1 : this.number;
          if (t === DOLLAR || t === BANG || t === 61 || t === SEMICOLON) {
            if (unknownLength) {
              // `$?`: chunks `;N` follow, up to `;0`.
              this.chunked = true;
              this.state = R_CHUNK_TYPE;
            } else if (t === SEMICOLON && n === 0) {
              this.chunked = false;
              if (this.completeElement()) return this.done(pos);
            } else if (n < 0) {
              if (this.completeElement()) return this.done(pos);
            } else {
              this.left = n + 2;
              this.state = R_DATA;
            }
            break;
          }
          // An aggregate.
          if (this.depth >= MAX_DEPTH) return this.bad('nesting too deep');
          const attribute = t === PIPE;
          if (unknownLength) {
            this.counts[this.depth] = STREAMED;
            this.attributes[this.depth] = attribute;
            this.depth++;
            break;
          }
          const elements = t === 37 || attribute ? n * 2 : n;
          if (elements > 0) {
            this.counts[this.depth] = elements;
            this.attributes[this.depth] = attribute;
            this.depth++;
          } else if (attribute) {
            if (this.depth === 0) this.topType = -1;
          } else if (this.completeElement()) {
            return this.done(pos);
          }
          break;
        }
        case R_DATA: {
          const available = len - pos;
          if (available < this.left) {
            this.left -= available;
            return REPLY_MORE;
          }
          pos += this.left;
          this.left = 0;
          if (this.chunked) {
            this.state = R_CHUNK_TYPE;
            break;
          }
          this.state = R_TYPE;
          if (this.completeElement()) return this.done(pos);
          break;
        }
        case R_CHUNK_TYPE: {
          if (pos >= len) return REPLY_MORE;
          if (buf[pos++] !== SEMICOLON) return this.bad(`expected ';' in a streamed string`);
          this.lengthType = SEMICOLON;
          this.number = 0;
          this.negative = false;
          this.digits = 0;
          this.state = R_LENGTH;
          break;
        }
        default:
          throw new Error(`reply framer in state ${this.state}`);
      }
    }
  }

  /** An element ended; returns whether that completed a top-level value. */
  private completeElement(): boolean {
    for (;;) {
      if (this.depth === 0) return this.topType !== -1;
      const top = this.depth - 1;
      const left = this.counts[top] as number;
      if (left === STREAMED) return false;
      if (left > 1) {
        this.counts[top] = left - 1;
        return false;
      }
      this.depth--;
      if (this.attributes[top] === true) {
        // An attribute describes the value after it and is no element of its own.
        if (this.depth === 0) this.topType = -1;
        return false;
      }
    }
  }

  private done(pos: number): number {
    this.type = this.topType;
    this.isReset = this.type === PLUS && this.simpleMatch && this.simpleBytes === 7;
    this.simpleMatch = false;
    this.topType = -1;
    return pos;
  }

  private bad(problem: string): number {
    this.error = problem;
    return REPLY_BAD;
  }
}

/** Whether a reply's type byte is an error (RESP2 `-`, RESP3 `!`). */
export function isErrorType(type: number): boolean {
  return type === MINUS || type === BANG;
}

/** Whether a reply's type byte is a RESP3 push (out of band, answers no command). */
export function isPushType(type: number): boolean {
  return type === GREATER;
}

/** A RESP error reply: `-<text>\r\n`, with CR and LF in the text replaced by spaces. */
export function errorReply(text: string): Buffer {
  return Buffer.from(`-${text.replace(/[\r\n]+/g, ' ')}\r\n`);
}

/** A command in multibulk form. */
export function encodeCommand(args: ReadonlyArray<string | Buffer>): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const arg of args) {
    const bytes = typeof arg === 'string' ? Buffer.from(arg) : arg;
    parts.push(Buffer.from(`$${bytes.length}\r\n`), bytes, CRLF);
  }
  return Buffer.concat(parts);
}

const CRLF = Buffer.from('\r\n');

/**
 * The arguments of a complete multibulk command (the name first), as slices of its bytes.
 * Only for commands the framer accepted: it trusts their shape.
 */
export function commandArgs(bytes: Buffer): Buffer[] {
  const args: Buffer[] = [];
  let pos = bytes.indexOf(LF) + 1;
  while (pos < bytes.length) {
    const nl = bytes.indexOf(LF, pos);
    const length = Number(bytes.toString('latin1', pos + 1, nl - 1));
    args.push(bytes.subarray(nl + 1, nl + 1 + length));
    pos = nl + 1 + length + 2;
  }
  return args;
}
