/** Replies sidepool writes itself, in redis-server's words where redis-server has some. */

export const OK = Buffer.from('+OK\r\n');
export const PONG = Buffer.from('+PONG\r\n');
export const RESET_REPLY = Buffer.from('+RESET\r\n');
export const QUEUED = Buffer.from('+QUEUED\r\n');
export const NIL = Buffer.from('$-1\r\n');
export const NULL_ARRAY = Buffer.from('*-1\r\n');
/** RESP3's null. */
export const NULL = Buffer.from('_\r\n');

export const NOAUTH = Buffer.from('-NOAUTH Authentication required.\r\n');
export const HELLO_NOAUTH = Buffer.from(
  '-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n',
);
export const WRONGPASS = Buffer.from(
  '-WRONGPASS invalid username-password pair or user is disabled.\r\n',
);
export const AUTH_NOT_CONFIGURED = Buffer.from(
  '-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n',
);
export const SYNTAX_ERROR = Buffer.from('-ERR syntax error\r\n');
export const NOT_AN_INTEGER = Buffer.from('-ERR value is not an integer or out of range\r\n');
export const DB_OUT_OF_RANGE = Buffer.from('-ERR DB index is out of range\r\n');
export const BAD_CLIENT_NAME = Buffer.from(
  '-ERR Client names cannot contain spaces, newlines or special characters.\r\n',
);
export const HELLO_BAD_VERSION = Buffer.from(
  '-ERR Protocol version is not an integer or out of range\r\n',
);
export const NOPROTO = Buffer.from('-NOPROTO unsupported protocol version\r\n');
export const MULTI_NESTED = Buffer.from('-ERR MULTI calls can not be nested\r\n');
export const WATCH_IN_MULTI = Buffer.from('-ERR WATCH inside MULTI is not allowed\r\n');
export const EXECABORT = Buffer.from(
  '-EXECABORT Transaction discarded because of previous errors.\r\n',
);
export const REPLICATION_REFUSED = Buffer.from(
  '-ERR sidepool: SYNC and PSYNC are not proxied; a replica must connect to Redis directly\r\n',
);

export function wrongArity(command: string): Buffer {
  return Buffer.from(`-ERR wrong number of arguments for '${command}' command\r\n`);
}

export function helloSyntax(option: Buffer): Buffer {
  return Buffer.from(`-ERR Syntax error in HELLO option '${option.toString('latin1')}'\r\n`);
}

export function bulk(value: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`$${value.length}\r\n`), value, Buffer.from('\r\n')]);
}

export function integer(value: number): Buffer {
  return Buffer.from(`:${value}\r\n`);
}

/**
 * What UNSUBSCRIBE, PUNSUBSCRIBE or SUNSUBSCRIBE answers a client that is not subscribed:
 * one message per channel named (one with a null channel when none is), each with a
 * count of 0; pushes in RESP3.
 */
export function unsubscribedReplies(
  kind: string,
  channels: readonly Buffer[],
  protocol: 2 | 3,
): Buffer {
  const head = `${protocol === 3 ? '>' : '*'}3\r\n$${kind.length}\r\n${kind}\r\n`;
  if (channels.length === 0) {
    return Buffer.from(`${head}${protocol === 3 ? '_' : '$-1'}\r\n:0\r\n`);
  }
  return Buffer.concat(
    channels.flatMap((channel) => [
      Buffer.from(`${head}$${channel.length}\r\n`),
      channel,
      Buffer.from('\r\n:0\r\n'),
    ]),
  );
}

/** A sidepool error reply: `-ERR sidepool: <what> (<code>)`, one line. */
export function sidepoolError(what: string, code: string): Buffer {
  return Buffer.from(`-ERR sidepool: ${what.replace(/[\r\n]+/g, ' ')} (${code})\r\n`);
}

/** Whether a client name is one redis-server accepts: printable ASCII without spaces. */
export function validClientName(name: Buffer): boolean {
  for (const c of name) if (c < 0x21 || c > 0x7e) return false;
  return true;
}

/**
 * A SELECT or HELLO argument as redis-server reads an integer: digits with an optional
 * '-', no leading zero or '+', within 64 bits. Undefined when it is not one.
 */
export function parseInteger(arg: Buffer): number | undefined {
  const text = arg.toString('latin1');
  if (!/^-?(0|[1-9][0-9]{0,18})$/.test(text) || text === '-0') return undefined;
  const value = Number(text);
  return Number.isSafeInteger(value) ? value : undefined;
}
