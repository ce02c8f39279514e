import { Duplex } from 'node:stream';
import type { Connector, Dialed } from '../../src/pool/pool.js';

/** An in-memory socket: what is written is kept; the test pushes what the "upstream" sends. */
export class FakeSocket extends Duplex {
  readonly written: Buffer[] = [];

  constructor(readonly id: number) {
    super({ allowHalfOpen: true });
  }

  override _read(): void {}

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.written.push(chunk);
    cb();
  }

  /** The upstream sends bytes. */
  send(text: string): void {
    this.push(Buffer.from(text));
  }

  /** The upstream sends its FIN. */
  finish(): void {
    this.push(null);
  }
}

interface PendingDial {
  resolve: (dialed: Dialed) => void;
  reject: (err: Error) => void;
}

/**
 * A counting dialer for pool logic. By default each dial succeeds on the next turn of the
 * event loop; `failing` makes dials fail; `manual` holds them until the test settles them.
 */
export class FakeDialer implements Connector {
  dials = 0;
  readonly sockets: FakeSocket[] = [];
  readonly dialTimes: number[] = [];
  failing = false;
  manual = false;
  /** Say "down" after a failed dial until one succeeds, as a one-endpoint Dialer does. */
  reportsDown = false;
  private lastFailed = false;
  readonly pending: PendingDial[] = [];

  isDown(): boolean {
    return this.reportsDown && this.lastFailed;
  }

  dial(): Promise<Dialed> {
    this.dials++;
    this.dialTimes.push(Date.now());
    return new Promise((resolve, reject) => {
      if (this.manual) {
        this.pending.push({ resolve, reject });
        return;
      }
      setImmediate(() => {
        if (this.failing) reject(this.refused());
        else resolve(this.make());
      });
    });
  }

  /** Settles the oldest held dial. */
  settle(ok = true): void {
    const next = this.pending.shift();
    if (next === undefined) throw new Error('no pending dial');
    if (ok) next.resolve(this.make());
    else next.reject(this.refused());
  }

  private refused(): Error {
    this.lastFailed = true;
    return Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
  }

  get open(): FakeSocket[] {
    return this.sockets.filter((s) => !s.destroyed);
  }

  private make(): Dialed {
    this.lastFailed = false;
    const socket = new FakeSocket(this.sockets.length + 1);
    this.sockets.push(socket);
    return { socket, endpoint: 'fake:1' };
  }
}
