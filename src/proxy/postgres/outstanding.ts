import { Code, type TxStatus } from './messages.js';

/**
 * What to do with the replies to one request: pass them to the client, drop them (a
 * request sidepool injected), answer with bytes of our own when the request reaches the
 * head of the queue (a reply sidepool gives in the server's stead), or pass them with the
 * server's ErrorResponse replaced by ours (`replace`: a request sidepool sent to fail, so
 * that the server skips to Sync and aborts a transaction block where sidepool refused a
 * client's message, as its own error would have). Only `forward` is used by transaction
 * pooling itself; the others are how injected requests keep replies in order.
 */
export type ReplyAction = 'forward' | 'swallow' | 'answer' | 'replace';

/** Bytes sidepool answers with, or what makes them from the backend's status then. */
export type Answer = Buffer | ((status: TxStatus) => Buffer);

/** One request sent to the backend that a reply will complete. */
export interface Outstanding {
  /** The frontend message code (Parse, Bind, Describe, Execute, Close, Sync, Query, FunctionCall). */
  readonly code: number;
  readonly action: ReplyAction;
  /**
   * For `answer` and `replace`: the bytes sent to the client in place of the server's; for
   * `answer`, bytes or what makes them from the transaction status when it is answered.
   */
  readonly answer?: Answer | undefined;
  /**
   * Told once what became of the request: true when its reply completed it, false when the
   * server skipped it (an earlier error in its pipeline) or it failed. How prepared
   * statements recorded when the request was sent are undone.
   */
  readonly done?: ((ok: boolean) => void) | undefined;
}

/** What a backend message means for the queue. */
export interface ReplyVerdict {
  /** The request this reply belongs to, or undefined for an asynchronous message. */
  request: Outstanding | undefined;
  /** The reply completed it. */
  completes: boolean;
}

const FORWARD_SYNC: Outstanding = { code: Code.Sync, action: 'forward' };
const FORWARD_QUERY: Outstanding = { code: Code.Query, action: 'forward' };

/**
 * The ordered queue of outstanding requests on one backend, matched against its replies
 * (PgBouncer's server.c keeps the same list). The backend may be released only when it is
 * empty and the last ReadyForQuery said idle.
 *
 * The extended protocol's rules: after an ErrorResponse the server skips every message up
 * to the next Sync, so those requests never get a reply; during COPY FROM STDIN started by
 * Execute, Sync and Flush are ignored by the server (clients send them blindly).
 */
export class OutstandingQueue {
  private items: Outstanding[] = [];
  private head = 0;
  /** An extended-protocol error was seen and no Sync queued since: requests get no reply. */
  private skippingToSync = false;
  /** Copy-in started by Execute: Syncs the client sends before CopyDone are ignored. */
  private copyInByExecute = false;

  get size(): number {
    return this.items.length - this.head;
  }

  get isEmpty(): boolean {
    return this.head >= this.items.length;
  }

  /** Whether the server is skipping requests to the next Sync (after an error). */
  get isSkipping(): boolean {
    return this.skippingToSync;
  }

  /** A request the client sent (or sidepool injected). */
  push(
    code: number,
    action: ReplyAction = 'forward',
    answer?: Answer,
    done?: (ok: boolean) => void,
  ): void {
    if (code === Code.Sync) {
      if (this.copyInByExecute) return;
      this.skippingToSync = false;
      this.items.push(action === 'forward' ? FORWARD_SYNC : { code, action, answer, done });
      return;
    }
    if (this.skippingToSync) {
      done?.(false);
      return;
    }
    this.items.push(
      code === Code.Query && action === 'forward' && done === undefined
        ? FORWARD_QUERY
        : { code, action, answer, done },
    );
  }

  /** The client sent CopyDone or CopyFail: Syncs count again. */
  copyInEnded(): void {
    this.copyInByExecute = false;
  }

  peek(): Outstanding | undefined {
    return this.items[this.head];
  }

  /**
   * Matches one backend message against the head of the queue, and pops what it completes.
   * Returns the request it belongs to (undefined for NoticeResponse, ParameterStatus,
   * NotificationResponse, or a reply nothing asked for).
   */
  reply(code: number): Outstanding | undefined {
    const head = this.items[this.head];
    if (head === undefined) return undefined;
    switch (code) {
      case Code.ParseComplete:
      case Code.BindComplete:
      case Code.CloseComplete:
      case Code.PortalSuspended:
        return this.shift();
      case Code.NoData:
        return head.code === Code.Describe ? this.shift() : head;
      case Code.RowDescription:
        return head.code === Code.Describe ? this.shift() : head;
      case Code.CommandComplete:
      case Code.EmptyQueryResponse:
        return head.code === Code.Execute ? this.shift() : head;
      case Code.ReadyForQuery:
        return this.shift();
      case Code.ErrorResponse:
        if (head.code === Code.Query || head.code === Code.FunctionCall) return head;
        if (head.code === Code.Sync) return head;
        return this.failExtended();
      case Code.CopyInResponse:
        if (head.code === Code.Execute) this.startCopyInByExecute();
        return head;
      case Code.NoticeResponse:
      case Code.ParameterStatus:
      case Code.NotificationResponse:
        return undefined;
      default:
        return head;
    }
  }

  /** Empties the queue (the backend is gone). */
  clear(): void {
    this.items = [];
    this.head = 0;
    this.skippingToSync = false;
    this.copyInByExecute = false;
  }

  private shift(): Outstanding | undefined {
    const item = this.items[this.head];
    this.head++;
    item?.done?.(true);
    if (this.head === this.items.length) {
      this.items.length = 0;
      this.head = 0;
    } else if (this.head > 64 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  /** The server skips to the next Sync: drop the requests before it. */
  private failExtended(): Outstanding | undefined {
    const failed = this.items[this.head];
    const from = this.head;
    while (this.head < this.items.length && this.items[this.head]?.code !== Code.Sync) {
      this.head++;
    }
    // Undone last first: a Close then a Parse of one name must leave the Close's state.
    for (let i = this.head - 1; i >= from; i--) this.items[i]?.done?.(false);
    if (this.head >= this.items.length) {
      this.items.length = 0;
      this.head = 0;
      this.skippingToSync = true;
    }
    this.copyInByExecute = false;
    return failed;
  }

  /** Syncs queued behind the Execute that started COPY FROM STDIN will get no reply. */
  private startCopyInByExecute(): void {
    this.items = [
      ...this.items.slice(this.head, this.head + 1),
      ...this.items.slice(this.head + 1).filter((r) => r.code !== Code.Sync),
    ];
    this.head = 0;
    this.copyInByExecute = true;
  }
}
