import type { IncomingMessage } from 'node:http';

/**
 * Header rewriting between the app and the upstream (RFC 9110 §7.6.1): hop-by-hop fields
 * (Connection and the fields it names, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade,
 * Proxy-*) belong to one connection and are not passed on; the proxy sets its own framing.
 */

/** What the upstream request head is built from, fixed per route. */
export interface RequestHeadSettings {
  /** Replaces the app's Host, when set. */
  hostOverride: string | undefined;
  /** Host for a request that has none (HTTP/1.0): the upstream's HTTP/1.1 needs one. */
  defaultHost: string;
  /** Add X-Forwarded-For, X-Forwarded-Proto and Via. */
  forwardedHeaders: boolean;
}

/** How the request body is delimited toward the upstream. */
export type RequestFraming = 'none' | 'length' | 'chunked';

/** A field the app sent that the request head does not copy as it is. */
const enum Field {
  Copy,
  Drop,
  Host,
  ContentLength,
  ForwardedFor,
  ForwardedProto,
  Via,
}

/**
 * Classifies a field name without lower-casing every name: only names of a length that a
 * special field has are lower-cased and compared.
 */
function classify(name: string): Field {
  switch (name.length) {
    case 2:
      return name.toLowerCase() === 'te' ? Field.Drop : Field.Copy;
    case 3:
      return name.toLowerCase() === 'via' ? Field.Via : Field.Copy;
    case 4:
      return name.toLowerCase() === 'host' ? Field.Host : Field.Copy;
    case 7: {
      const lower = name.toLowerCase();
      return lower === 'trailer' || lower === 'upgrade' ? Field.Drop : Field.Copy;
    }
    case 10: {
      const lower = name.toLowerCase();
      return lower === 'connection' || lower === 'keep-alive' ? Field.Drop : isProxyField(name);
    }
    case 14:
      return name.toLowerCase() === 'content-length' ? Field.ContentLength : isProxyField(name);
    case 15:
      return name.toLowerCase() === 'x-forwarded-for' ? Field.ForwardedFor : isProxyField(name);
    case 17: {
      const lower = name.toLowerCase();
      if (lower === 'transfer-encoding') return Field.Drop;
      return lower === 'x-forwarded-proto' ? Field.ForwardedProto : isProxyField(name);
    }
    default:
      return isProxyField(name);
  }
}

/**
 * `Proxy-*` fields (Proxy-Authorization, Proxy-Connection, …) are for this hop. A bare
 * `Proxy` field is dropped too: CGI upstreams would read it as HTTP_PROXY ("httpoxy").
 */
function isProxyField(name: string): Field {
  const c = name.charCodeAt(0);
  if (c !== 0x50 && c !== 0x70) return Field.Copy;
  if (name.length === 5) return name.toLowerCase() === 'proxy' ? Field.Drop : Field.Copy;
  return name.length > 6 && name.slice(0, 6).toLowerCase() === 'proxy-' ? Field.Drop : Field.Copy;
}

/**
 * Options of the Connection fields, lower-cased: the fields they name are hop-by-hop. Never
 * Host or Content-Length: a Connection option must not be a way to strip framing or routing.
 */
export function connectionOptions(rawHeaders: readonly string[]): string[] | undefined {
  let tokens: string[] | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    if (name.length !== 10 || name.toLowerCase() !== 'connection') continue;
    for (const token of (rawHeaders[i + 1] as string).split(',')) {
      const t = token.trim().toLowerCase();
      if (
        t !== '' &&
        t !== 'close' &&
        t !== 'keep-alive' &&
        t !== 'host' &&
        t !== 'content-length'
      ) {
        (tokens ??= []).push(t);
      }
    }
  }
  return tokens;
}

/** The client address for X-Forwarded-For; IPv4-mapped IPv6 shown as IPv4. */
function clientAddress(req: IncomingMessage): string | undefined {
  const address = req.socket.remoteAddress;
  if (address === undefined) return undefined;
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

/** Where a request goes and how its body is framed, as the session found it. */
export interface RequestTarget {
  framing: RequestFraming;
  /** The request target to send (origin-form, `*`, or CONNECT's authority). */
  target: string;
  /** From an absolute-form target: replaces the app's Host unless the route overrides it. */
  authority: string | undefined;
}

/**
 * The request head sent upstream: always HTTP/1.1 (the upstream link is keep-alive), the
 * app's fields minus hop-by-hop ones, our framing, and the Host rule: the route's
 * override, else the authority of an absolute-form target, else the app's Host. For an
 * upgrade or CONNECT, `upgrade` carries the Upgrade value to keep.
 */
export function requestHead(
  req: IncomingMessage,
  request: RequestTarget,
  settings: RequestHeadSettings,
  upgrade?: string,
): string {
  const raw = req.rawHeaders;
  const tokens = connectionOptions(raw);
  const framing = request.framing;
  let host = settings.hostOverride ?? request.authority;
  let fields = '';
  let forwardedFor: string | undefined;
  let via: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    const value = raw[i + 1] as string;
    switch (classify(name)) {
      case Field.Copy:
        if (tokens === undefined || !tokens.includes(name.toLowerCase())) {
          fields += `${name}: ${value}\r\n`;
        }
        break;
      case Field.Host:
        // The session allows one Host at most.
        host ??= value;
        break;
      case Field.ContentLength:
        if (framing === 'length') fields += `${name}: ${value}\r\n`;
        break;
      case Field.ForwardedFor:
        if (!settings.forwardedHeaders) fields += `${name}: ${value}\r\n`;
        else forwardedFor = forwardedFor === undefined ? value : `${forwardedFor}, ${value}`;
        break;
      case Field.ForwardedProto:
        if (!settings.forwardedHeaders) fields += `${name}: ${value}\r\n`;
        break;
      case Field.Via:
        if (!settings.forwardedHeaders) fields += `${name}: ${value}\r\n`;
        else via = via === undefined ? value : `${via}, ${value}`;
        break;
      case Field.Drop:
        break;
    }
  }
  if (settings.forwardedHeaders) {
    const client = clientAddress(req);
    if (client !== undefined) {
      forwardedFor = forwardedFor === undefined ? client : `${forwardedFor}, ${client}`;
    }
    if (forwardedFor !== undefined) fields += `X-Forwarded-For: ${forwardedFor}\r\n`;
    const encrypted = (req.socket as { encrypted?: boolean }).encrypted === true;
    fields += `X-Forwarded-Proto: ${encrypted ? 'https' : 'http'}\r\n`;
    const received = `${req.httpVersionMajor}.${req.httpVersionMinor} sidepool`;
    fields += `Via: ${via === undefined ? received : `${via}, ${received}`}\r\n`;
  }
  if (framing === 'chunked') fields += 'Transfer-Encoding: chunked\r\n';
  if (upgrade !== undefined) fields += `Connection: Upgrade\r\nUpgrade: ${upgrade}\r\n`;
  // The Host goes first, as RFC 9112 §3.2 asks of clients.
  return `${req.method ?? 'GET'} ${request.target} HTTP/1.1\r\nHost: ${host ?? settings.defaultHost}\r\n${fields}\r\n`;
}

/**
 * The upstream's response fields for the app: hop-by-hop ones dropped, and a plain
 * `Transfer-Encoding: chunked` too, because Node frames the body for the app (chunked to
 * HTTP/1.1 apps, until close to HTTP/1.0 ones). Content-Length fields repeated with the
 * same value (the parser refuses differing ones) go on as one: clients such as llhttp
 * refuse a response with two (RFC 9110 §8.6 allows the fold).
 */
export function responseHeaders(
  rawHeaders: readonly string[],
  connectionTokens: readonly string[],
  transferEncoding: string | undefined,
  via: string | undefined,
): string[] {
  const out: string[] = [];
  const tokens = connectionTokens.length > 0 ? connectionTokens : undefined;
  let viaValue: string | undefined;
  let contentLength = false;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i] as string;
    const value = rawHeaders[i + 1] as string;
    const kind = classify(name);
    if (kind === Field.ContentLength) {
      if (contentLength) continue;
      contentLength = true;
    } else if (kind === Field.Drop) {
      // A transfer coding other than chunked stays: Node frames the body by chunks when
      // the value ends in chunked, and the exchange closes the app's connection after the
      // body when it does not.
      if (
        transferEncoding !== undefined &&
        name.length === 17 &&
        name.toLowerCase() === 'transfer-encoding'
      ) {
        out.push(name, value);
      }
      continue;
    }
    if (
      tokens !== undefined &&
      kind !== Field.ContentLength &&
      tokens.includes(name.toLowerCase())
    ) {
      continue;
    }
    if (kind === Field.Via && via !== undefined) {
      viaValue = viaValue === undefined ? value : `${viaValue}, ${value}`;
      continue;
    }
    out.push(name, value);
  }
  if (via !== undefined) out.push('Via', viaValue === undefined ? via : `${viaValue}, ${via}`);
  return out;
}

/**
 * Trailer fields passed on: those that may appear in a trailer section. Framing, routing,
 * hop-by-hop and the Host never do (RFC 9110 §6.5.1).
 */
export function trailerFields(rawTrailers: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < rawTrailers.length; i += 2) {
    const name = rawTrailers[i] as string;
    const kind = classify(name);
    if (kind === Field.Copy || kind === Field.ForwardedFor || kind === Field.Via) {
      out.push(name, rawTrailers[i + 1] as string);
    }
  }
  return out;
}

/** The request trailer section sent upstream after the last chunk. */
export function trailerSection(rawTrailers: readonly string[]): string {
  const fields = trailerFields(rawTrailers);
  let out = '';
  for (let i = 0; i < fields.length; i += 2) out += `${fields[i]}: ${fields[i + 1]}\r\n`;
  return out;
}
