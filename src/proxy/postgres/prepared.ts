import { BodyReader, Code, message } from './messages.js';

/**
 * Named prepared statements in transaction pooling (PgBouncer 1.21's design): each
 * distinct (query text, parameter types) gets one sidepool-wide name, every client keeps a
 * map from its own names to those, and every backend keeps an LRU of the ones prepared on
 * it. A client's Parse is recorded, then sent to its backend under the shared name only if
 * that backend lacks it; a Bind or Describe for a statement the backend lacks gets a Parse
 * injected before it.
 */

/** Bytes counted per statement on top of its text: the map entries and the object. */
const OVERHEAD = 96;

/** One statement shared by every client that prepared the same text and parameter types. */
export interface SharedStatement {
  /** The name it has on every backend, `sidepool_<n>`. */
  readonly name: string;
  /** The Parse message that prepares it under that name. */
  readonly parse: Buffer;
  /** Bytes counted against the caps. */
  readonly bytes: number;
  readonly key: string;
  /** Client names mapped to it. */
  refs: number;
  /** A backend accepted its Parse once: the text is valid SQL with these types. */
  valid: boolean;
}

/** Why a statement could not be recorded: the cap it would break. */
export type RecordRefusal = 'client_bytes' | 'total_bytes';

/** The route's shared statements, with the total bytes they keep. */
export class StatementRegistry {
  private readonly byKey = new Map<string, SharedStatement>();
  private next = 1;
  /** Bytes of the statements some client maps to. */
  bytes = 0;

  constructor(readonly maxBytes: number) {}

  get size(): number {
    return this.byKey.size;
  }

  /**
   * The shared statement for a client Parse's body after its name (text, parameter
   * types), made on first use; undefined when making it would break the total cap.
   */
  acquire(rest: Buffer): SharedStatement | undefined {
    const key = rest.toString('latin1');
    let statement = this.byKey.get(key);
    if (statement === undefined) {
      const bytes = key.length + OVERHEAD;
      if (this.bytes + bytes > this.maxBytes) return undefined;
      const name = `sidepool_${this.next++}`;
      statement = {
        name,
        parse: message(Code.Parse, Buffer.concat([Buffer.from(`${name}\0`, 'latin1'), rest])),
        bytes,
        key,
        refs: 0,
        valid: false,
      };
      this.byKey.set(key, statement);
    }
    this.retain(statement);
    return statement;
  }

  /** The statement of this Parse body if one exists and a backend accepted it. */
  valid(rest: Buffer): SharedStatement | undefined {
    const statement = this.byKey.get(rest.toString('latin1'));
    return statement?.valid === true ? statement : undefined;
  }

  retain(statement: SharedStatement): void {
    if (statement.refs++ === 0) {
      this.bytes += statement.bytes;
      if (!this.byKey.has(statement.key)) this.byKey.set(statement.key, statement);
    }
  }

  release(statement: SharedStatement): void {
    if (--statement.refs > 0) return;
    this.bytes -= statement.bytes;
    if (this.byKey.get(statement.key) === statement) this.byKey.delete(statement.key);
  }
}

/** One client's names, and the bytes of the statements they map to. */
export class ClientStatements {
  private readonly names = new Map<string, SharedStatement>();
  private bytes = 0;

  constructor(
    private readonly registry: StatementRegistry,
    private readonly maxBytes: number,
  ) {}

  get(name: string): SharedStatement | undefined {
    return this.names.get(name);
  }

  has(name: string): boolean {
    return this.names.has(name);
  }

  /** Maps `name` (which must be free) to the statement of `rest`, or says which cap refuses. */
  record(name: string, rest: Buffer): SharedStatement | RecordRefusal {
    const size = rest.length + OVERHEAD;
    if (this.bytes + size > this.maxBytes) return 'client_bytes';
    const statement = this.registry.acquire(rest);
    if (statement === undefined) return 'total_bytes';
    this.names.set(name, statement);
    this.bytes += statement.bytes;
    return statement;
  }

  /** Maps `name` back to a statement it had (undoing a Close the server skipped). */
  restore(name: string, statement: SharedStatement): void {
    if (this.names.has(name)) return;
    this.registry.retain(statement);
    this.names.set(name, statement);
    this.bytes += statement.bytes;
  }

  /** Forgets `name`; returns the statement it mapped to. */
  remove(name: string): SharedStatement | undefined {
    const statement = this.names.get(name);
    if (statement === undefined) return undefined;
    this.names.delete(name);
    this.bytes -= statement.bytes;
    this.registry.release(statement);
    return statement;
  }

  /** Forgets `name` if it still maps to `statement` (undoing a Parse the server refused). */
  removeIf(name: string, statement: SharedStatement): void {
    if (this.names.get(name) === statement) this.remove(name);
  }

  clear(): void {
    for (const statement of this.names.values()) this.registry.release(statement);
    this.names.clear();
    this.bytes = 0;
  }
}

/** A running count of statements on a pool's backends, for its gauge. */
export interface StatementCount {
  onBackends: number;
}

/**
 * The shared statements prepared on one backend, least recently used first. `needsReset`:
 * the backend's statements can no longer be trusted (a cached plan changed result type,
 * or a client ran DISCARD ALL): DEALLOCATE ALL at the next point where it is idle.
 */
export class BackendStatements {
  private readonly names = new Map<string, true>();
  private count: StatementCount | undefined;
  needsReset = false;

  get size(): number {
    return this.names.size;
  }

  /** Statements are counted in `count` (the backend's pool) from now on. */
  countIn(count: StatementCount): void {
    if (this.count === count) return;
    if (this.count !== undefined) this.count.onBackends -= this.names.size;
    this.count = count;
    count.onBackends += this.names.size;
  }

  /** Whether it is prepared here; marks it most recently used. */
  use(name: string): boolean {
    if (!this.names.delete(name)) return false;
    this.names.set(name, true);
    return true;
  }

  /** Adds a statement; returns the ones to close so that at most `max` remain. */
  add(name: string, max: number): string[] {
    const evicted: string[] = [];
    for (const old of this.names.keys()) {
      if (this.names.size < max) break;
      this.names.delete(old);
      evicted.push(old);
    }
    this.names.set(name, true);
    if (this.count !== undefined) this.count.onBackends += 1 - evicted.length;
    return evicted;
  }

  /** Puts back a statement a skipped Close did not remove (it stays prepared there). */
  restore(name: string): void {
    if (this.names.has(name)) return;
    this.names.set(name, true);
    if (this.count !== undefined) this.count.onBackends++;
  }

  delete(name: string): void {
    if (this.names.delete(name) && this.count !== undefined) this.count.onBackends--;
  }

  clear(): void {
    if (this.count !== undefined) this.count.onBackends -= this.names.size;
    this.names.clear();
  }
}

// ── messages ─────────────────────────────────────────────────────────────

/** A Parse's name and the rest of its body (text and parameter types). */
export function readParse(msg: Buffer): { name: string; rest: Buffer } {
  const r = new BodyReader(msg, 5);
  const name = r.cstring();
  return { name, rest: r.rest() };
}

/** A Bind's statement name and where it sits in the message. */
export function readBindStatement(msg: Buffer): { name: string; start: number; end: number } {
  const r = new BodyReader(msg, 5);
  r.cstring(); // portal
  const start = r.offset;
  const name = r.cstring();
  return { name, start, end: r.offset };
}

/** Describe or Close: the kind ('S' statement, 'P' portal) and the name. */
export function readTarget(msg: Buffer): { kind: number; name: string } {
  const r = new BodyReader(msg, 5);
  const kind = r.byte();
  return { kind, name: r.cstring() };
}

/** `msg` with bytes [start, end) (a C string) replaced by `name`. */
export function withName(msg: Buffer, start: number, end: number, name: string): Buffer {
  const nameBytes = Buffer.from(`${name}\0`, 'latin1');
  const out = Buffer.allocUnsafe(msg.length - (end - start) + nameBytes.length);
  msg.copy(out, 0, 0, start);
  nameBytes.copy(out, start);
  msg.copy(out, start + nameBytes.length, end);
  out.writeInt32BE(out.length - 1, 1);
  return out;
}

/** Describe or Close of a statement under its shared name. */
export function targetMessage(code: number, name: string): Buffer {
  return message(code, Buffer.from(`S${name}\0`, 'latin1'));
}
