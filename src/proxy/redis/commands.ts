import type { NameLookup } from './resp.js';

/**
 * The commands sidepool acts on. Every other command is forwarded untouched on a shared
 * link, which is right for any command whose effect is on the data rather than on the
 * connection that sent it. The ids are what `lookupCommand` returns (0: forward).
 */
export const FORWARD = 0;
/** AUTH: checked locally for sidepool's user; another user pins. */
export const AUTH = 1;
/** HELLO: protocol 3 pins; AUTH and SETNAME in it are handled like the commands. */
export const HELLO = 2;
/** SELECT: moves the client to the database's shared links. */
export const SELECT = 3;
export const QUIT = 4;
/** PING: answered locally when the client has nothing pending. */
export const PING = 5;
export const RESET = 6;
/** CLIENT: SETNAME/GETNAME/ID local, REPLY OFF|SKIP and TRACKING ON pin, others forward. */
export const CLIENT = 7;
export const MULTI = 8;
export const EXEC = 9;
export const DISCARD = 10;
export const WATCH = 11;
export const UNWATCH = 12;
/** Blocks the connection until data or a timeout: runs on a dedicated link. */
export const BLOCKING = 13;
/** XREAD/XREADGROUP: blocking with a BLOCK option. */
export const XREAD = 14;
/** SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE and MONITOR: pin for the rest of the session. */
export const SUBSCRIBE = 15;
export const MONITOR = 16;
/** UNSUBSCRIBE and kin: one reply per channel; answered locally when not subscribed. */
export const UNSUBSCRIBE = 17;
/** Cluster connection flags (READONLY, READWRITE, ASKING): pin for the session. */
export const CONNECTION_FLAG = 18;
/** Replication handshakes: refused. */
export const REFUSED = 19;

const NAMES: ReadonlyArray<[string, number]> = [
  ['AUTH', AUTH],
  ['HELLO', HELLO],
  ['SELECT', SELECT],
  ['QUIT', QUIT],
  ['PING', PING],
  ['RESET', RESET],
  ['CLIENT', CLIENT],
  ['MULTI', MULTI],
  ['EXEC', EXEC],
  ['DISCARD', DISCARD],
  ['WATCH', WATCH],
  ['UNWATCH', UNWATCH],
  ['BLPOP', BLOCKING],
  ['BRPOP', BLOCKING],
  ['BRPOPLPUSH', BLOCKING],
  ['BLMOVE', BLOCKING],
  ['BLMPOP', BLOCKING],
  ['BZPOPMIN', BLOCKING],
  ['BZPOPMAX', BLOCKING],
  ['BZMPOP', BLOCKING],
  ['WAIT', BLOCKING],
  ['WAITAOF', BLOCKING],
  ['XREAD', XREAD],
  ['XREADGROUP', XREAD],
  ['SUBSCRIBE', SUBSCRIBE],
  ['PSUBSCRIBE', SUBSCRIBE],
  ['SSUBSCRIBE', SUBSCRIBE],
  ['MONITOR', MONITOR],
  ['UNSUBSCRIBE', UNSUBSCRIBE],
  ['PUNSUBSCRIBE', UNSUBSCRIBE],
  ['SUNSUBSCRIBE', UNSUBSCRIBE],
  ['READONLY', CONNECTION_FLAG],
  ['READWRITE', CONNECTION_FLAG],
  ['ASKING', CONNECTION_FLAG],
  ['SYNC', REFUSED],
  ['PSYNC', REFUSED],
];

/** The names by length: a lookup compares a few names of the right length, no string made. */
const BY_LENGTH: Array<Array<{ upper: Buffer; id: number }> | undefined> = [];
for (const [name, id] of NAMES) {
  (BY_LENGTH[name.length] ??= []).push({ upper: Buffer.from(name), id });
}

/**
 * The id of the command named by `buf[start, start + length)`, in any case; FORWARD for
 * every command sidepool has no rule for. Every name in the table is letters only, and
 * `byte & 0xdf` is an upper-case letter exactly when the byte is that letter in either case.
 */
export const lookupCommand: NameLookup = (buf, start, length) => {
  const candidates = BY_LENGTH[length];
  if (candidates === undefined) return FORWARD;
  for (const { upper, id } of candidates) {
    let i = 0;
    while (i < length && ((buf[start + i] as number) & 0xdf) === upper[i]) i++;
    if (i === length) return id;
  }
  return FORWARD;
};

/** The upper-case name of a command id's commands, for error messages. */
export function commandName(args: readonly Buffer[]): string {
  return (args[0] ?? Buffer.alloc(0)).toString('latin1').toLowerCase();
}

/** An argument, upper-cased, for comparing keywords. */
export function keyword(arg: Buffer | undefined): string {
  return arg === undefined ? '' : arg.toString('latin1').toUpperCase();
}

/** XREAD/XREADGROUP: whether the options before STREAMS include BLOCK. */
export function xreadBlocks(args: readonly Buffer[]): boolean {
  for (let i = 1; i < args.length; i++) {
    const word = keyword(args[i]);
    if (word === 'STREAMS') return false;
    if (word === 'BLOCK') return true;
  }
  return false;
}

/** Why a client holds a link of its own; counted in sidepool_redis_pins_total. */
export type PinReason =
  | 'transaction'
  | 'blocking'
  | 'large_command'
  | 'pubsub'
  | 'monitor'
  | 'client_reply'
  | 'tracking'
  | 'auth'
  | 'connection_flag';

export const PIN_REASONS: readonly PinReason[] = [
  'transaction',
  'blocking',
  'large_command',
  'pubsub',
  'monitor',
  'client_reply',
  'tracking',
  'auth',
  'connection_flag',
];

/**
 * Reasons whose state RESET clears (redis-server's clearClientConnectionState): a link
 * pinned for one of these goes back to the pool after RESET, AUTH and SELECT. Others
 * (cluster flags, CLIENT NO-EVICT, which survives RESET) close the link.
 */
export function resettable(reason: PinReason): boolean {
  return reason !== 'connection_flag';
}
