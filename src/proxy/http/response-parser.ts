import { HttpResponseError } from '../../errors.js';

/**
 * The upstream side's HTTP/1.1 response framer (RFC 9112): finds the head, checks it, and
 * delimits the body (Content-Length, chunked with trailers, or until the upstream closes),
 * handing body bytes on as slices of what was read, without copies.
 *
 * Requests from the app are parsed by Node's llhttp (node:http); responses come from an
 * upstream we chose and are framed here, because a response framer is small and lets the
 * body stream straight from the link socket, with no ClientRequest, IncomingMessage or
 * Agent bookkeeping per request (see the benchmark in bench/workloads/6-http.mjs).
 * Anything ambiguous is an error, and the link it came on is never reused.
 */

/** The head of one response, as the upstream sent it. */
export interface ResponseHead {
  statusCode: number;
  statusMessage: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minorVersion: number;
  /** Field lines in order: name, value, name, value… (values without surrounding space). */
  rawHeaders: string[];
  /** From Content-Length; -1 when absent. */
  contentLength: number;
  /** The last transfer coding is chunked. */
  chunked: boolean;
  /** Transfer-Encoding as sent, when it is more than plain "chunked" (undefined otherwise). */
  transferEncoding: string | undefined;
  /** The upstream lets the connection carry another request after this response. */
  keepAlive: boolean;
  /** Seconds from `Keep-Alive: timeout=N`, when given. */
  keepAliveTimeout: number | undefined;
  /** Lower-cased Connection options: fields they name are hop-by-hop too. */
  connectionTokens: readonly string[];
  /** Bytes of the head, status line to the blank line, for tunnels that pass it on verbatim. */
  rawBytes: Buffer;
}

/** How the body of a final response is delimited, as decided by the request it answers. */
export type BodyKind = 'none' | 'message' | 'tunnel';

export interface ResponseHandler {
  /** A 1xx response other than 101: another head follows. */
  onInterim(head: ResponseHead): void;
  /**
   * The final head. Returns 'none' when the request was HEAD or the status has no body
   * (204, 304), 'tunnel' when the connection now carries another protocol (101, or 2xx to
   * CONNECT), and 'message' otherwise.
   */
  onHead(head: ResponseHead): BodyKind;
  onBody(chunk: Buffer): void;
  /** Trailer fields after a chunked body, name, value, name, value… */
  onTrailers(rawTrailers: string[]): void;
  /** The message is complete. `rest` holds bytes that came after it (a tunnel's first bytes). */
  onComplete(rest: Buffer | undefined): void;
}

type ParserState =
  | 'head'
  | 'length'
  | 'chunk-size'
  | 'chunk-data'
  | 'chunk-data-end'
  | 'trailers'
  | 'until-close'
  | 'done';

const MAX_HEAD_BYTES = 64 * 1024;

/**
 * Interim (1xx) responses accepted before the final one. Real ones are few: a 100
 * Continue, some 103 Early Hints, a 102 Processing now and then during a long operation
 * (every 10 s for a quarter of an hour stays under). More is an upstream that keeps a
 * request, and its link, going without ever answering, and the app reading heads
 * without end.
 */
export const MAX_INTERIM_RESPONSES = 100;
const MAX_CHUNK_LINE_BYTES = 4096;
const CR = 0x0d;
const LF = 0x0a;
const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');

const STATUS_LINE = /^HTTP\/1\.([01]) ([1-9]\d\d)(?: ([\t\x20-\x7e\x80-\xff]*))?$/;
// A field name is a token; the value has no control characters but HTAB, and optional
// whitespace around it. A line that starts with whitespace (obsolete folding) fails here.
const FIELD_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[\t ]*([\t\x20-\x7e\x80-\xff]*?)[\t ]*$/;
const DIGITS = /^\d{1,15}$/;
const CHUNK_SIZE = /^([0-9A-Fa-f]{1,13})(?:;[\t\x20-\x7e\x80-\xff]*)?$/;

export class ResponseParser {
  private state: ParserState = 'head';
  private pending: Buffer | undefined;
  /** Bytes left in the current Content-Length body or chunk. */
  private remaining = 0;
  private lineText = '';
  private trailerLines: string[] = [];
  private trailerBytes = 0;
  private interims = 0;
  private error: HttpResponseError | undefined;

  constructor(private readonly handler: ResponseHandler) {}

  /** Whether the final head has been read. */
  get headDone(): boolean {
    return this.state !== 'head';
  }

  get done(): boolean {
    return this.state === 'done';
  }

  /** Feeds bytes read from the link. Returns the framing error, if the bytes make one. */
  execute(data: Buffer): HttpResponseError | undefined {
    if (this.error !== undefined) return this.error;
    try {
      this.run(data);
    } catch (err) {
      if (!(err instanceof HttpResponseError)) throw err;
      this.error = err;
      this.state = 'done';
    }
    return this.error;
  }

  /** The upstream closed its side: completes a close-delimited body; anything else is cut short. */
  finish(): HttpResponseError | undefined {
    if (this.error !== undefined) return this.error;
    if (this.state === 'until-close') {
      this.state = 'done';
      this.handler.onComplete(undefined);
      return undefined;
    }
    if (this.state === 'done') return undefined;
    this.error = new HttpResponseError(
      this.state === 'head'
        ? 'the upstream closed before a complete head'
        : 'the body is cut short',
    );
    return this.error;
  }

  private run(input: Buffer): void {
    let data = input;
    let at = 0;
    while (at < data.length) {
      switch (this.state) {
        case 'head': {
          if (this.pending !== undefined) {
            data = Buffer.concat([this.pending, data.subarray(at)]);
            at = 0;
            this.pending = undefined;
          }
          at = this.readHead(data, at);
          if (at < 0 || this.done) return;
          break;
        }
        case 'length': {
          const n = Math.min(this.remaining, data.length - at);
          this.remaining -= n;
          const chunk = at === 0 && n === data.length ? data : data.subarray(at, at + n);
          at += n;
          this.handler.onBody(chunk);
          if (this.remaining === 0) return this.complete(data, at);
          break;
        }
        case 'chunk-size': {
          const line = this.readLine(data, at, MAX_CHUNK_LINE_BYTES);
          if (line === undefined) return;
          at = line.next;
          const match = CHUNK_SIZE.exec(line.text);
          if (match === null) throw new HttpResponseError('bad chunk size line');
          this.remaining = parseInt(match[1] as string, 16);
          this.state = this.remaining === 0 ? 'trailers' : 'chunk-data';
          break;
        }
        case 'chunk-data': {
          const n = Math.min(this.remaining, data.length - at);
          this.remaining -= n;
          this.handler.onBody(data.subarray(at, at + n));
          at += n;
          if (this.remaining === 0) this.state = 'chunk-data-end';
          break;
        }
        case 'chunk-data-end': {
          const line = this.readLine(data, at, 0);
          if (line === undefined) return;
          if (line.text !== '') throw new HttpResponseError('chunk data is not followed by CRLF');
          at = line.next;
          this.state = 'chunk-size';
          break;
        }
        case 'trailers': {
          const line = this.readLine(data, at, MAX_HEAD_BYTES);
          if (line === undefined) return;
          at = line.next;
          if (line.text === '') {
            if (this.trailerLines.length > 0) this.handler.onTrailers(this.trailerLines);
            return this.complete(data, at);
          }
          this.trailerBytes += line.text.length + 2;
          if (this.trailerBytes > MAX_HEAD_BYTES) throw new HttpResponseError('trailers too large');
          const field = FIELD_LINE.exec(line.text);
          if (field === null) throw new HttpResponseError('bad trailer field');
          this.trailerLines.push(field[1] as string, field[2] as string);
          break;
        }
        case 'until-close': {
          this.handler.onBody(at === 0 ? data : data.subarray(at));
          return;
        }
        case 'done':
          // Bytes after the end of a message went to onComplete; a later read is a broken link.
          throw new HttpResponseError('bytes after the end of the response');
      }
    }
  }

  /** Reads a head from `at`; returns where the body starts, or -1 when it needs more bytes. */
  private readHead(data: Buffer, from: number): number {
    let at = from;
    // A recipient ought to ignore empty lines before the status line (RFC 9112 §2.2).
    while (at + 1 < data.length && data[at] === CR && data[at + 1] === LF) at += 2;
    const end = data.indexOf(HEAD_END, at);
    if (end < 0) {
      if (data.length - at > MAX_HEAD_BYTES) throw new HttpResponseError('head too large');
      if (at < data.length) this.pending = Buffer.from(data.subarray(at));
      return -1;
    }
    if (end - at > MAX_HEAD_BYTES) throw new HttpResponseError('head too large');
    const head = parseHead(data.toString('latin1', at, end), data.subarray(at, end + 4));
    const bodyAt = end + 4;
    if (head.statusCode < 200 && head.statusCode !== 101) {
      if (++this.interims > MAX_INTERIM_RESPONSES) {
        throw new HttpResponseError(`more than ${MAX_INTERIM_RESPONSES} interim responses`);
      }
      this.handler.onInterim(head);
      return bodyAt;
    }
    const kind = this.handler.onHead(head);
    if (kind === 'tunnel' || kind === 'none' || (!head.chunked && head.contentLength === 0)) {
      this.complete(data, bodyAt);
    } else if (head.chunked) {
      this.state = 'chunk-size';
    } else if (head.contentLength > 0) {
      this.remaining = head.contentLength;
      this.state = 'length';
    } else {
      this.state = 'until-close';
    }
    return bodyAt;
  }

  /**
   * Reads one CRLF-terminated line (latin1). Returns undefined when the line continues in the
   * next read; a bare CR or LF, or a line longer than `max`, is an error.
   */
  private readLine(
    data: Buffer,
    at: number,
    max: number,
  ): { text: string; next: number } | undefined {
    const lf = data.indexOf(LF, at);
    if (lf < 0) {
      this.lineText += data.toString('latin1', at);
      if (this.lineText.length > max + 1) throw new HttpResponseError('line too long');
      return undefined;
    }
    const text = this.lineText + data.toString('latin1', at, lf);
    this.lineText = '';
    if (text.length === 0 || text.charCodeAt(text.length - 1) !== CR) {
      throw new HttpResponseError('bare LF');
    }
    const line = text.slice(0, -1);
    if (line.length > max || line.includes('\r')) throw new HttpResponseError('bad line');
    return { text: line, next: lf + 1 };
  }

  private complete(data: Buffer, at: number): void {
    this.state = 'done';
    this.handler.onComplete(at < data.length ? data.subarray(at) : undefined);
  }
}

/** Parses and checks a head (without its final CRLFCRLF). Throws HttpResponseError. */
export function parseHead(text: string, rawBytes: Buffer): ResponseHead {
  const lines = text.split('\r\n');
  const status = STATUS_LINE.exec(lines[0] as string);
  if (status === null) throw new HttpResponseError('bad status line');
  const minorVersion = Number(status[1]);
  const rawHeaders: string[] = [];
  let contentLength = -1;
  let transferEncoding: string | undefined;
  let connection: string[] | undefined;
  let keepAliveTimeout: number | undefined;
  for (let i = 1; i < lines.length; i++) {
    const field = FIELD_LINE.exec(lines[i] as string);
    if (field === null) throw new HttpResponseError('bad header field');
    const name = field[1] as string;
    const value = field[2] as string;
    rawHeaders.push(name, value);
    switch (name.length) {
      case 14:
        if (name.toLowerCase() === 'content-length') {
          if (!DIGITS.test(value)) throw new HttpResponseError('bad Content-Length');
          const length = Number(value);
          if (contentLength >= 0 && contentLength !== length) {
            throw new HttpResponseError('differing Content-Length values');
          }
          contentLength = length;
        }
        break;
      case 17:
        if (name.toLowerCase() === 'transfer-encoding') {
          transferEncoding =
            transferEncoding === undefined ? value : `${transferEncoding}, ${value}`;
        }
        break;
      case 10: {
        const lower = name.toLowerCase();
        if (lower === 'connection') {
          for (const token of value.split(',')) {
            const t = token.trim().toLowerCase();
            if (t !== '') (connection ??= []).push(t);
          }
        } else if (lower === 'keep-alive') {
          const m = /(?:^|[,;\s])timeout\s*=\s*(\d{1,9})/i.exec(value);
          if (m !== null) keepAliveTimeout = Number(m[1]);
        }
        break;
      }
    }
  }
  let chunked = false;
  if (transferEncoding !== undefined) {
    if (minorVersion === 0) throw new HttpResponseError('Transfer-Encoding in HTTP/1.0');
    if (contentLength >= 0) {
      throw new HttpResponseError('both Content-Length and Transfer-Encoding');
    }
    const codings = transferEncoding.split(',').map((c) => c.trim().toLowerCase());
    const chunkedAt = codings.indexOf('chunked');
    if (chunkedAt >= 0 && chunkedAt !== codings.length - 1) {
      throw new HttpResponseError('chunked is not the last transfer coding');
    }
    chunked = chunkedAt >= 0;
    // Without chunked last, the body runs until the upstream closes (RFC 9112 §6.3).
  }
  const connectionTokens = connection ?? [];
  const keepAlive =
    !connectionTokens.includes('close') &&
    (minorVersion === 1 || connectionTokens.includes('keep-alive'));
  return {
    statusCode: Number(status[2]),
    statusMessage: status[3] ?? '',
    minorVersion,
    rawHeaders,
    contentLength,
    chunked,
    transferEncoding:
      transferEncoding === undefined || transferEncoding.toLowerCase() === 'chunked'
        ? undefined
        : transferEncoding,
    keepAlive,
    keepAliveTimeout,
    connectionTokens,
    rawBytes,
  };
}
