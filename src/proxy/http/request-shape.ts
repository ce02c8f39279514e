import type { IncomingMessage } from 'node:http';
import type { RequestFraming } from './headers.js';

/** A request as the session found it: how its body is framed, and where it goes. */
export interface RequestShape {
  framing: RequestFraming;
  /** Content-Length, for 'length' framing. */
  length: number;
  /** The app sent `Expect: 100-continue` and waits for the upstream's 100 before its body. */
  expectContinue: boolean;
  /** The request target sent upstream: origin-form, `*`, or CONNECT's authority-form. */
  target: string;
  /** The authority of an absolute-form target: the Host sent unless the route overrides it. */
  authority: string | undefined;
}

/** A request refused before it goes anywhere. */
export interface Refusal {
  status: number;
  problem: string;
}

/** host, IP-literal or reg-name, and an optional port (RFC 9110 §7.2, RFC 3986 §3.2.2). */
const HOST_VALUE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::\d*)?$/;

/** scheme "://" authority, then path and query (RFC 9112 §3.2.2). */
const ABSOLUTE_FORM = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^#]*)$/;

/**
 * The target to send upstream. An absolute-form target (`GET http://admin.internal/x`) is
 * what a client sends to a proxy; forwarded as it is, the upstream would pick its virtual
 * host from it (RFC 9112 §3.2.2 has it override Host) and a route's `upstream.host` would
 * not hold. So it goes in origin-form, its authority kept for the Host field, and an
 * OPTIONS to a bare authority becomes `OPTIONS *` (RFC 9112 §3.2.4: we are the last proxy).
 */
function requestTarget(
  method: string,
  url: string,
): { target: string; authority: string | undefined } | Refusal {
  if (url.startsWith('/') || url === '*' || method === 'CONNECT') {
    return { target: url, authority: undefined };
  }
  const absolute = ABSOLUTE_FORM.exec(url);
  if (absolute === null) return { status: 400, problem: 'bad request target' };
  const scheme = (absolute[1] as string).toLowerCase();
  const authority = absolute[2] as string;
  const rest = absolute[3] as string;
  if (scheme !== 'http' && scheme !== 'https') {
    return { status: 400, problem: 'absolute-form target not http or https' };
  }
  // RFC 9110 §4.2.4: userinfo in an http(s) URI is to be treated as an error.
  if (authority.includes('@')) return { status: 400, problem: 'userinfo in the target' };
  // RFC 9110 §4.2.1: an http(s) URI with an empty host is invalid.
  if (authority === '' || authority.startsWith(':') || !HOST_VALUE.test(authority)) {
    return { status: 400, problem: 'bad authority in the target' };
  }
  if (rest === '') return { target: method === 'OPTIONS' ? '*' : '/', authority };
  return { target: rest.startsWith('?') ? `/${rest}` : rest, authority };
}

/**
 * What llhttp leaves to us (it already refuses Content-Length with Transfer-Encoding,
 * duplicate Content-Length, bad chunk sizes, obsolete folding, bare CR or LF, and bad field
 * names and values): the HTTP version, the Host rules of RFC 9112 §3.2, the request target,
 * and Transfer-Encoding in HTTP/1.0 or with codings other than chunked. Returns how the
 * body is framed and where the request goes, or why the request is refused.
 */
export function inspectRequest(
  req: IncomingMessage,
  expectContinue: boolean,
): RequestShape | Refusal {
  if (req.httpVersionMajor !== 1) return { status: 505, problem: 'HTTP version not supported' };
  const raw = req.rawHeaders;
  let hosts = 0;
  let host = '';
  let transferEncoding: string | undefined;
  let contentLength: string | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === 4) {
      if (name.toLowerCase() === 'host') {
        hosts++;
        host = raw[i + 1] as string;
      }
    } else if (name.length === 17) {
      if (name.toLowerCase() === 'transfer-encoding') {
        const value = raw[i + 1] as string;
        transferEncoding = transferEncoding === undefined ? value : `${transferEncoding}, ${value}`;
      }
    } else if (name.length === 14 && name.toLowerCase() === 'content-length') {
      contentLength = raw[i + 1];
    }
  }
  if (hosts > 1) return { status: 400, problem: 'more than one Host' };
  if (hosts === 0 && req.httpVersionMinor === 1) return { status: 400, problem: 'no Host' };
  if (!HOST_VALUE.test(host)) return { status: 400, problem: 'bad Host' };
  const where = requestTarget(req.method ?? '', req.url ?? '');
  if (isRefusal(where)) return where;
  const { target, authority } = where;
  if (transferEncoding !== undefined) {
    // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
    if (req.httpVersionMinor === 0)
      return { status: 400, problem: 'Transfer-Encoding in HTTP/1.0' };
    if (transferEncoding.trim().toLowerCase() !== 'chunked') {
      return { status: 501, problem: 'transfer coding not supported' };
    }
    return { framing: 'chunked', length: 0, expectContinue, target, authority };
  }
  if (contentLength !== undefined) {
    return { framing: 'length', length: Number(contentLength), expectContinue, target, authority };
  }
  return { framing: 'none', length: 0, expectContinue, target, authority };
}

export function isRefusal<T extends object>(shape: T | Refusal): shape is Refusal {
  return 'status' in shape;
}
