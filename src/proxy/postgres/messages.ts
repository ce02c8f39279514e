/**
 * The few PostgreSQL protocol (v3) messages sidepool builds or reads. Everything else
 * passes through as bytes. https://www.postgresql.org/docs/current/protocol-message-formats.html
 */

/** Request codes of the untyped first messages (the int32 after the length). */
export const PROTOCOL_3_0 = 196608;
export const SSL_REQUEST = 80877103;
export const GSSENC_REQUEST = 80877104;
export const CANCEL_REQUEST = 80877102;

/** Message type bytes, as char codes. */
export const Code = {
  // frontend
  Bind: 0x42, // B
  Close: 0x43, // C (frontend) / CommandComplete (backend)
  Describe: 0x44, // D (frontend) / DataRow (backend)
  Execute: 0x45, // E (frontend) / ErrorResponse (backend)
  FunctionCall: 0x46, // F
  Flush: 0x48, // H (frontend) / CopyOutResponse (backend)
  Parse: 0x50, // P
  Query: 0x51, // Q
  Sync: 0x53, // S (frontend) / ParameterStatus (backend)
  Terminate: 0x58, // X
  CopyData: 0x64, // d
  CopyDone: 0x63, // c
  CopyFail: 0x66, // f
  Password: 0x70, // p (PasswordMessage, SASLInitialResponse, SASLResponse)
  // backend
  Authentication: 0x52, // R
  BackendKeyData: 0x4b, // K
  BindComplete: 0x32, // 2
  CloseComplete: 0x33, // 3
  CopyInResponse: 0x47, // G
  CopyBothResponse: 0x57, // W
  EmptyQueryResponse: 0x49, // I
  FunctionCallResponse: 0x56, // V
  NegotiateProtocolVersion: 0x76, // v
  NoData: 0x6e, // n
  NoticeResponse: 0x4e, // N
  NotificationResponse: 0x41, // A
  ParameterDescription: 0x74, // t
  ParseComplete: 0x31, // 1
  PortalSuspended: 0x73, // s
  ReadyForQuery: 0x5a, // Z
  RowDescription: 0x54, // T
  // backend codes that share a byte with a frontend one
  CommandComplete: 0x43, // C
  DataRow: 0x44, // D
  ErrorResponse: 0x45, // E
  CopyOutResponse: 0x48, // H
  ParameterStatus: 0x53, // S
} as const;

/** Authentication request kinds (the int32 after 'R'). */
export const AuthKind = {
  Ok: 0,
  CleartextPassword: 3,
  MD5Password: 5,
  SASL: 10,
  SASLContinue: 11,
  SASLFinal: 12,
} as const;

/** ReadyForQuery transaction status: idle, in a transaction block, in a failed one. */
export type TxStatus = 'I' | 'T' | 'E';

// ── writing ──────────────────────────────────────────────────────────────

/** A typed message: code, int32 length, body. */
export function message(code: number, body: Buffer | string = EMPTY): Buffer {
  const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const out = Buffer.allocUnsafe(5 + bytes.length);
  out[0] = code;
  out.writeInt32BE(4 + bytes.length, 1);
  bytes.copy(out, 5);
  return out;
}

const EMPTY = Buffer.alloc(0);

function cstring(text: string): Buffer {
  return Buffer.from(`${text}\0`, 'utf8');
}

function int32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(n);
  return b;
}

function int16(n: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeInt16BE(n);
  return b;
}

export interface ErrorFields {
  severity: 'ERROR' | 'FATAL';
  /** SQLSTATE, five characters. */
  code: string;
  message: string;
  detail?: string | undefined;
  hint?: string | undefined;
}

/** ErrorResponse (or NoticeResponse) with the fields clients show. */
export function errorResponse(fields: ErrorFields, code: number = Code.ErrorResponse): Buffer {
  const parts = [
    cstring(`S${fields.severity}`),
    cstring(`V${fields.severity}`),
    cstring(`C${fields.code}`),
    cstring(`M${fields.message}`),
  ];
  if (fields.detail !== undefined) parts.push(cstring(`D${fields.detail}`));
  if (fields.hint !== undefined) parts.push(cstring(`H${fields.hint}`));
  parts.push(Buffer.from([0]));
  return message(code, Buffer.concat(parts));
}

export function readyForQuery(status: TxStatus): Buffer {
  return message(Code.ReadyForQuery, status);
}

export function authentication(kind: number, data: Buffer = EMPTY): Buffer {
  return message(Code.Authentication, Buffer.concat([int32(kind), data]));
}

export function authSasl(mechanisms: readonly string[]): Buffer {
  return authentication(
    AuthKind.SASL,
    Buffer.concat([...mechanisms.map(cstring), Buffer.from([0])]),
  );
}

export function parameterStatus(name: string, value: string): Buffer {
  return message(Code.ParameterStatus, Buffer.concat([cstring(name), cstring(value)]));
}

export function backendKeyData(pid: number, key: number): Buffer {
  return message(Code.BackendKeyData, Buffer.concat([int32(pid), int32(key)]));
}

/** NegotiateProtocolVersion: the newest minor version we speak, and options we ignored. */
export function negotiateProtocolVersion(minor: number, unrecognized: readonly string[]): Buffer {
  return message(
    Code.NegotiateProtocolVersion,
    Buffer.concat([int32(minor), int32(unrecognized.length), ...unrecognized.map(cstring)]),
  );
}

export function query(sql: string): Buffer {
  return message(Code.Query, cstring(sql));
}

export function terminate(): Buffer {
  return message(Code.Terminate);
}

export function sync(): Buffer {
  return message(Code.Sync);
}

/** StartupMessage: protocol 3.0 and the parameters, name/value pairs. */
export function startupMessage(params: ReadonlyMap<string, string>): Buffer {
  const parts = [int32(PROTOCOL_3_0)];
  for (const [name, value] of params) parts.push(cstring(name), cstring(value));
  parts.push(Buffer.from([0]));
  const body = Buffer.concat(parts);
  return Buffer.concat([int32(body.length + 4), body]);
}

export function sslRequest(): Buffer {
  return Buffer.concat([int32(8), int32(SSL_REQUEST)]);
}

export function cancelRequest(pid: number, key: number): Buffer {
  return Buffer.concat([int32(16), int32(CANCEL_REQUEST), int32(pid), int32(key)]);
}

export function passwordMessage(password: string): Buffer {
  return message(Code.Password, cstring(password));
}

export function saslInitialResponse(mechanism: string, data: Buffer): Buffer {
  return message(Code.Password, Buffer.concat([cstring(mechanism), int32(data.length), data]));
}

export function saslResponse(data: Buffer): Buffer {
  return message(Code.Password, data);
}

/** Parse + Bind + Execute + Sync of an unnamed statement with text parameters. */
export function extendedQuery(sql: string, params: readonly string[]): Buffer {
  const parse = message(Code.Parse, Buffer.concat([cstring(''), cstring(sql), int16(0)]));
  const values: Buffer[] = [];
  for (const value of params) {
    const bytes = Buffer.from(value, 'utf8');
    values.push(int32(bytes.length), bytes);
  }
  const bind = message(
    Code.Bind,
    Buffer.concat([cstring(''), cstring(''), int16(0), int16(params.length), ...values, int16(0)]),
  );
  const execute = message(Code.Execute, Buffer.concat([cstring(''), int32(0)]));
  return Buffer.concat([parse, bind, execute, sync()]);
}

// ── reading ──────────────────────────────────────────────────────────────

/** A cursor over a message body: C strings and integers, with bounds checked. */
export class BodyReader {
  offset: number;

  constructor(
    readonly buf: Buffer,
    start = 0,
    readonly end = buf.length,
  ) {
    this.offset = start;
  }

  get remaining(): number {
    return this.end - this.offset;
  }

  int32(): number {
    if (this.offset + 4 > this.end) throw new ProtocolViolation('message too short');
    const n = this.buf.readInt32BE(this.offset);
    this.offset += 4;
    return n;
  }

  int16(): number {
    if (this.offset + 2 > this.end) throw new ProtocolViolation('message too short');
    const n = this.buf.readInt16BE(this.offset);
    this.offset += 2;
    return n;
  }

  byte(): number {
    if (this.offset >= this.end) throw new ProtocolViolation('message too short');
    return this.buf[this.offset++] as number;
  }

  cstring(): string {
    const zero = this.buf.indexOf(0, this.offset);
    if (zero < 0 || zero >= this.end) throw new ProtocolViolation('unterminated string');
    const text = this.buf.toString('utf8', this.offset, zero);
    this.offset = zero + 1;
    return text;
  }

  bytes(n: number): Buffer {
    if (n < 0 || this.offset + n > this.end) throw new ProtocolViolation('message too short');
    const out = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return out;
  }

  rest(): Buffer {
    return this.bytes(this.end - this.offset);
  }
}

/** Bytes that break the protocol: the peer is answered 08P01 (or closed) and dropped. */
export class ProtocolViolation extends Error {
  readonly code = 'SIDEPOOL_PG_PROTOCOL';
}

/** The fields of an ErrorResponse or NoticeResponse, by their one-letter codes. */
export function readFields(body: Buffer, start = 5): Map<string, string> {
  const fields = new Map<string, string>();
  const r = new BodyReader(body, start);
  for (;;) {
    const type = r.byte();
    if (type === 0) return fields;
    fields.set(String.fromCharCode(type), r.cstring());
  }
}

export type StartupRequest =
  | { kind: 'startup'; minor: number; params: Map<string, string>; options: string[] }
  | { kind: 'ssl' }
  | { kind: 'gssenc' }
  | { kind: 'cancel'; pid: number; key: number }
  | { kind: 'unsupported'; version: number };

/**
 * The first message of a connection (length included). Throws ProtocolViolation on a
 * malformed one. `options` lists `_pq_.` protocol options, answered with
 * NegotiateProtocolVersion.
 */
export function readStartup(packet: Buffer): StartupRequest {
  const r = new BodyReader(packet, 4);
  const version = r.int32();
  if (version === SSL_REQUEST) return { kind: 'ssl' };
  if (version === GSSENC_REQUEST) return { kind: 'gssenc' };
  if (version === CANCEL_REQUEST) {
    const pid = r.int32();
    const key = r.int32();
    return { kind: 'cancel', pid, key };
  }
  const major = version >>> 16;
  if (major !== 3) return { kind: 'unsupported', version };
  const params = new Map<string, string>();
  const options: string[] = [];
  for (;;) {
    const name = r.cstring();
    if (name === '') break;
    const value = r.cstring();
    if (name.startsWith('_pq_.')) options.push(name);
    else params.set(name, value);
  }
  if (r.remaining !== 0) throw new ProtocolViolation('bytes after the startup parameters');
  return { kind: 'startup', minor: version & 0xffff, params, options };
}
