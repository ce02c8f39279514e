import type { IncomingMessage } from 'node:http';
import type { RequestShape } from './exchange.js';

/** A request refused before it goes anywhere. */
export interface Refusal {
  status: number;
  problem: string;
}

/** host, IP-literal or reg-name, and an optional port (RFC 9110 §7.2, RFC 3986 §3.2.2). */
const HOST_VALUE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::\d*)?$/;

/**
 * What llhttp leaves to us (it already refuses Content-Length with Transfer-Encoding,
 * duplicate Content-Length, bad chunk sizes, obsolete folding, bare CR or LF, and bad field
 * names and values): the HTTP version, the Host rules of RFC 9112 §3.2, and
 * Transfer-Encoding in HTTP/1.0 or with codings other than chunked. Returns how the body
 * is framed, or why the request is refused.
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
  if (transferEncoding !== undefined) {
    // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
    if (req.httpVersionMinor === 0)
      return { status: 400, problem: 'Transfer-Encoding in HTTP/1.0' };
    if (transferEncoding.trim().toLowerCase() !== 'chunked') {
      return { status: 501, problem: 'transfer coding not supported' };
    }
    return { framing: 'chunked', length: 0, expectContinue };
  }
  if (contentLength !== undefined) {
    return { framing: 'length', length: Number(contentLength), expectContinue };
  }
  return { framing: 'none', length: 0, expectContinue };
}

export function isRefusal(shape: RequestShape | Refusal): shape is Refusal {
  return 'status' in shape;
}
