import type { Duplex } from 'node:stream';
import { describe } from '../../errors.js';
import { READ_MORE, READ_PAUSE, readWith, stopReading } from '../../net/reads.js';
import type { Link } from '../../pool/link.js';
import { Framer, type FrameSink } from './framer.js';
import { loginOf } from './login.js';
import { BodyReader, Code, extendedQuery, query, readFields, type TxStatus } from './messages.js';
import { OutstandingQueue, type Outstanding } from './outstanding.js';
import { BackendStatements } from './prepared.js';

/** Backend messages decoded whole; the rest stream through. */
const DECODED = new Set<number>([
  Code.ReadyForQuery,
  Code.ErrorResponse,
  Code.ParameterStatus,
  Code.CopyInResponse,
  Code.CopyOutResponse,
  Code.CopyBothResponse,
]);
const MAX_DECODED = 1024 * 1024;

/**
 * Where a bound backend's messages go: the session relaying them to its client. Each
 * comes with the outstanding request it answers (already matched and popped), or
 * undefined for asynchronous ones (NoticeResponse, ParameterStatus, NotificationResponse).
 */
export interface BackendSink {
  message(code: number, msg: Buffer, request: Outstanding | undefined): void;
  streamStart(code: number, length: number, request: Outstanding | undefined): void;
  streamBytes(bytes: Buffer): void;
  streamEnd(code: number): void;
  /** The backend's socket closed or broke, or sent bytes that are not the protocol. */
  backendLost(err: Error | undefined): void;
  /** Around each chunk read (to batch writes). chunkEnd: true = pause reading until resume(). */
  chunkStart?(): void;
  chunkEnd?(): boolean;
}

/** The result of a query sidepool runs itself (reset, rollback, check, SET, authQuery). */
export interface RunResult {
  status: TxStatus;
  /** The first ErrorResponse's fields, when the query failed. */
  error?: Map<string, string> | undefined;
  /** The rows, as text (null for NULL). */
  rows: Array<Array<string | null>>;
}

/**
 * One logged-in PostgreSQL backend, seen through the pooled link that carries it: the
 * parameters it runs with, its cancel key, the outstanding requests on it, and its
 * transaction status as the last ReadyForQuery said. Shared state lives here because it
 * belongs to the backend, whichever client is bound to it.
 */
export class Backend {
  readonly link: Link;
  readonly socket: Duplex;
  readonly pid: number;
  readonly secretKey: number;
  /** The server's reported parameters now (ParameterStatus), by name. */
  readonly params: Map<string, string>;
  /**
   * The same by lower-case name: a client's parameters are keyed so, and every bind
   * compares them (setParametersSql), which must not lower-case every name each time.
   */
  readonly paramsByKey = new Map<string, string>();
  /**
   * Parameters sidepool SET on this backend that the server does not report (search_path,
   * extra_float_digits, …), lower-cased name → value. Cleared by a reset.
   */
  readonly applied = new Map<string, string>();
  /**
   * The parameter set (a client's `parametersKey`) this backend was last checked to run
   * with, so that a client with the same set binds it without comparing them one by one.
   * Anything that changes the backend's parameters clears it.
   */
  paramsMatched: string | undefined;
  readonly queue = new OutstandingQueue();
  /** Shared prepared statements on this backend (transaction pooling). */
  readonly statements = new BackendStatements();
  status: TxStatus = 'I';
  /** When it last went back to the pool, for checkAfter. */
  releasedAt = Date.now();
  private readonly framer: Framer;
  private sink: BackendSink | undefined;
  private reading = false;

  /** A reset or a failed SET: what sidepool set is gone, or unknown. */
  forgetApplied(): void {
    this.applied.clear();
    this.paramsMatched = undefined;
  }

  private constructor(link: Link) {
    this.link = link;
    this.socket = link.socket;
    const login = loginOf(this.socket);
    this.pid = login?.pid ?? 0;
    this.secretKey = login?.secretKey ?? 0;
    this.params = new Map(login?.params);
    for (const [name, value] of this.params) this.paramsByKey.set(name.toLowerCase(), value);
    this.framer = new Framer(this.frames, {
      decode: (code) => DECODED.has(code),
      maxDecoded: MAX_DECODED,
    });
    // Its statements leave its pool's count with it.
    this.socket.once('close', () => this.statements.clear());
    // For its whole life, not per attach: they tell whichever sink is attached, if any
    // (adding and removing listeners on every bind cost four EventEmitter edits each).
    (this.socket as Tagged)[kBackend] = this;
    this.socket.on('close', onClose);
    this.socket.on('error', onError);
  }

  /** The backend state of a pooled link, made on its first lease. */
  static of(link: Link): Backend {
    const tagged = link as Link & { [kBackend]?: Backend };
    let backend = tagged[kBackend];
    if (backend === undefined) {
      backend = new Backend(link);
      tagged[kBackend] = backend;
    }
    return backend;
  }

  /** Starts reading for `sink`. The link must be leased (the pool's idle reader is off). */
  attach(sink: BackendSink): void {
    this.sink = sink;
    this.reading = true;
    readWith(this.socket, onBytes);
  }

  /** Stops reading for the sink; the link can go back to the pool. */
  detach(): void {
    this.sink = undefined;
    if (this.reading) stopReading(this.socket);
    this.reading = false;
  }

  /** Reading paused by the sink (the client is slow): resume. */
  resume(): void {
    if (this.sink !== undefined) readWith(this.socket, onBytes);
  }

  write(bytes: Buffer): boolean {
    return this.socket.write(bytes);
  }

  /** Whether the backend sits between messages with nothing asked of it. */
  get isQuiet(): boolean {
    return this.queue.isEmpty && this.framer.atBoundary;
  }

  /**
   * Runs a query of sidepool's own (the backend must be attached to nobody): its replies
   * are read here and dropped, ParameterStatus noted. Rejects if the backend breaks.
   */
  run(sql: string, timeoutMs = 0, params?: readonly string[]): Promise<RunResult> {
    return new Promise((resolve, reject) => {
      let error: Map<string, string> | undefined;
      let timer: NodeJS.Timeout | undefined;
      const rows: RunResult['rows'] = [];
      let row: Buffer[] | undefined;
      const collector: BackendSink = {
        message: (code, msg) => {
          if (code === Code.ErrorResponse) error ??= readFields(msg);
          else if (code === Code.ReadyForQuery) {
            if (timer !== undefined) clearTimeout(timer);
            this.detach();
            resolve({ status: this.status, error, rows });
          }
        },
        streamStart: (code) => {
          row = code === Code.DataRow ? [] : undefined;
        },
        streamBytes: (bytes) => row?.push(Buffer.from(bytes)),
        streamEnd: () => {
          if (row !== undefined) rows.push(readRow(Buffer.concat(row)));
          row = undefined;
        },
        backendLost: (err) => {
          if (timer !== undefined) clearTimeout(timer);
          this.detach();
          reject(err ?? new Error('the backend closed'));
        },
      };
      this.attach(collector);
      if (timeoutMs > 0) {
        timer = setTimeout(
          () => collector.backendLost(new Error(`timed out after ${timeoutMs}ms`)),
          timeoutMs,
        );
      }
      if (params === undefined) {
        this.queue.push(Code.Query, 'swallow');
        this.socket.write(query(sql));
      } else {
        for (const code of [Code.Parse, Code.Bind, Code.Execute, Code.Sync]) {
          this.queue.push(code, 'swallow');
        }
        this.socket.write(extendedQuery(sql, params));
      }
    });
  }

  // ── reading ─────────────────────────────────────────────────────────────

  bytes(chunk: Buffer): number {
    const sink = this.sink;
    sink?.chunkStart?.();
    const ok = this.deliver(() => this.framer.push(chunk));
    const full = sink?.chunkEnd?.() ?? false;
    if (!ok) return READ_PAUSE;
    return full && this.sink !== undefined ? READ_PAUSE : READ_MORE;
  }

  private deliver(step: () => boolean): boolean {
    try {
      return step();
    } catch (err) {
      this.lost(err as Error);
      return false;
    }
  }

  lost(err: Error | undefined): void {
    const sink = this.sink;
    this.detach();
    sink?.backendLost(err);
  }

  /** Backend messages: the queue and status are kept here, then the sink relays. */
  private readonly frames: FrameSink = {
    message: (code, msg) => {
      const request = this.queue.reply(code);
      if (code === Code.ReadyForQuery) {
        this.status = String.fromCharCode(msg[5] as number) as TxStatus;
      } else if (code === Code.ParameterStatus) {
        const r = new BodyReader(msg, 5);
        const name = r.cstring();
        const value = r.cstring();
        this.params.set(name, value);
        this.paramsByKey.set(name.toLowerCase(), value);
        this.paramsMatched = undefined;
      }
      this.sink?.message(code, msg, request);
      return true;
    },
    streamStart: (code, length) => {
      this.sink?.streamStart(code, length, this.queue.reply(code));
      return true;
    },
    streamBytes: (bytes) => this.sink?.streamBytes(bytes),
    streamEnd: (code) => this.sink?.streamEnd(code),
  };
}

/** A DataRow's columns as text. */
function readRow(msg: Buffer): Array<string | null> {
  const r = new BodyReader(msg, 5);
  const n = r.int16();
  const out: Array<string | null> = [];
  for (let i = 0; i < n; i++) {
    const length = r.int32();
    out.push(length < 0 ? null : r.bytes(length).toString('utf8'));
  }
  return out;
}

const kBackend = Symbol('sidepool.pgBackend');
type Tagged = Duplex & { [kBackend]?: Backend };

function onBytes(this: Duplex, chunk: Buffer): number {
  return (this as Tagged)[kBackend]?.bytes(chunk) ?? READ_PAUSE;
}
function onClose(this: Tagged): void {
  this[kBackend]?.lost(undefined);
}
function onError(this: Tagged, err: Error): void {
  this[kBackend]?.lost(new Error(describe(err)));
}
