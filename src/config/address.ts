import type net from 'node:net';
/** Where a listener binds or a link connects: a TCP host and port, or a unix socket path. */
export type Address = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string };

/**
 * Parses `host:port`, `[v6]:port`, `:port` (all interfaces) or a unix socket path (one
 * that starts with `/`, `./` or `unix:`). Returns a message saying what is expected when
 * the text is not an address.
 */
export function parseAddress(
  text: string,
  opts: { allowAnyHost?: boolean; allowPortZero?: boolean } = {},
): Address | string {
  const value = text.trim();
  if (value.startsWith('unix:')) return unixAddress(value.slice('unix:'.length));
  if (value.startsWith('/') || value.startsWith('./')) return unixAddress(value);

  const colon = value.lastIndexOf(':');
  if (colon < 0) return `expected host:port or a unix socket path, got "${text}"`;
  let host = value.slice(0, colon);
  const portText = value.slice(colon + 1);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  else if (host.includes(':'))
    return `an IPv6 host must be in brackets, e.g. [::1]:6379, got "${text}"`;
  if (host === '') {
    if (!opts.allowAnyHost) return `expected host:port, the host is missing in "${text}"`;
    host = '0.0.0.0';
  }
  if (!/^\d+$/.test(portText)) return `expected a port number after ":", got "${text}"`;
  const port = Number(portText);
  if (port < (opts.allowPortZero ? 0 : 1) || port > 65535)
    return `port must be ${opts.allowPortZero ? 0 : 1}-65535, got ${port} in "${text}"`;
  return { kind: 'tcp', host, port };
}

/**
 * Whether only this machine can connect to an address: a unix socket, 127.0.0.0/8, ::1,
 * or localhost.
 */
export function isLoopback(address: Address): boolean {
  if (address.kind === 'unix') return true;
  const host = address.host.toLowerCase();
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** A listen address from the config (validated there): `:port` and port 0 allowed. */
export function listenAddress(text: string): Address {
  return parseAddress(text, { allowAnyHost: true, allowPortZero: true }) as Address;
}

function unixAddress(path: string): Address | string {
  if (path === '') return 'a unix socket path is empty';
  return { kind: 'unix', path };
}

export function formatAddress(address: Address): string {
  if (address.kind === 'unix') return address.path;
  return address.host.includes(':')
    ? `[${address.host}]:${address.port}`
    : `${address.host}:${address.port}`;
}

/** What a server is bound to, as text: its real port when it was asked for port 0. */
export function boundAddress(server: net.Server, configured: Address): string {
  const bound = server.address();
  if (bound === null) return formatAddress(configured);
  if (typeof bound === 'string') return bound;
  return formatAddress({ kind: 'tcp', host: bound.address, port: bound.port });
}

/** The TCP port a server is bound to; 0 for a unix socket or when not listening. */
export function boundPort(server: net.Server): number {
  const bound = server.address();
  return bound !== null && typeof bound === 'object' ? bound.port : 0;
}
