import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { codeOf } from '../../errors.js';
import type { Pool } from '../../pool/pool.js';
import type { HttpFailure } from './observer.js';

/** The status the app gets for each failure. */
export const FAILURE_STATUS: Readonly<Record<HttpFailure, number>> = {
  bad_request: 400,
  headers_too_large: 431,
  headers_timeout: 408,
  body_timeout: 408,
  acquire_timeout: 503,
  pool_overflow: 503,
  pool_closed: 503,
  upstream_error: 502,
  bad_response: 502,
  response_timeout: 504,
  send_timeout: 0,
  downstream_closed: 0,
};

/** The pool's dial counts when a request started to wait for a link. */
export interface DialCounts {
  dials: number;
  dialFailures: number;
}

export function dialCounts(pool: Pool): DialCounts {
  return { dials: pool.totals.dials, dialFailures: pool.totals.dialFailures };
}

/**
 * What a failure to get a link means to the app. A wait that timed out while every dial
 * failed is an unreachable upstream (502), not a busy pool (503).
 */
export function acquireFailure(err: Error, pool: Pool, before: DialCounts): HttpFailure {
  switch (codeOf(err)) {
    case 'SIDEPOOL_ACQUIRE_TIMEOUT':
      return pool.totals.dialFailures > before.dialFailures && pool.totals.dials === before.dials
        ? 'upstream_error'
        : 'acquire_timeout';
    case 'SIDEPOOL_POOL_OVERFLOW':
      return 'pool_overflow';
    case 'SIDEPOOL_POOL_CLOSED':
      return 'pool_closed';
    default:
      // Every endpoint down, or failing fast: the upstream is unreachable.
      return 'upstream_error';
  }
}

/** Seconds an app is asked to wait after a 503. */
const RETRY_AFTER = '1';

/**
 * Sends an error response through Node's ServerResponse. `close` ends the connection after
 * it: the app's request stream cannot be trusted, or was not read to its end.
 */
export function sendError(
  res: ServerResponse,
  status: number,
  reason: string,
  close: boolean,
): void {
  const body = `${status} ${STATUS_CODES[status] ?? ''} (${reason})\n`;
  const headers: string[] = [
    'Content-Type',
    'text/plain; charset=utf-8',
    'Content-Length',
    String(Buffer.byteLength(body)),
  ];
  if (status === 503) headers.push('Retry-After', RETRY_AFTER);
  if (close) {
    headers.push('Connection', 'close');
    res.shouldKeepAlive = false;
  }
  res.writeHead(status, headers);
  res.end(body);
}

/**
 * Writes an error response straight to the socket and closes it: for errors found while
 * no response is under way (a malformed request, a slow head), where there is no
 * ServerResponse to use.
 */
export function sendRawErrorAndClose(socket: Socket, status: number, reason: string): void {
  const body = `${status} ${STATUS_CODES[status] ?? ''} (${reason})\n`;
  const head =
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n` +
    `Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    'Connection: close\r\n\r\n';
  if (socket.writable) socket.end(head + body, () => socket.destroy());
  else socket.destroy();
}
