/** Why an exchange failed; each reason is counted. */
export type HttpFailure =
  /** Malformed or ambiguous request: 400 (or 501/505), and the connection closes. */
  | 'bad_request'
  /** Request head over the size limit: 431. */
  | 'headers_too_large'
  /** Request head not complete within headersTimeout: 408. */
  | 'headers_timeout'
  /** Request body made no progress within requestBodyTimeout (or responseTimeout): 408. */
  | 'body_timeout'
  /** No link within acquireTimeout: 503. */
  | 'acquire_timeout'
  /** The pool is at maxSize with maxWaiters queued: 503. */
  | 'pool_overflow'
  /** The pool is closing: 503. */
  | 'pool_closed'
  /** The upstream is unreachable, reset the link or closed it early: 502. */
  | 'upstream_error'
  /** The upstream's response is malformed: 502. */
  | 'bad_response'
  /** The upstream was slower than responseTimeout: 504. */
  | 'response_timeout'
  /** The app stopped reading the response for responseTimeout: its connection is cut. */
  | 'send_timeout'
  /** The app closed its connection before the response was complete. */
  | 'downstream_closed';

export const HTTP_FAILURES: readonly HttpFailure[] = [
  'bad_request',
  'headers_too_large',
  'headers_timeout',
  'body_timeout',
  'acquire_timeout',
  'pool_overflow',
  'pool_closed',
  'upstream_error',
  'bad_response',
  'response_timeout',
  'send_timeout',
  'downstream_closed',
];

/**
 * Told of every request of an http route, for metrics. Called once per request or event,
 * never per chunk: implementations must be cheap and must not throw.
 */
export interface HttpObserver {
  /** A response went to the app (or was cut short); `status` as the app saw it. */
  responded(status: number, seconds: number): void;
  failed(reason: HttpFailure): void;
  /** A request was sent again on a fresh link after a stale one closed. */
  retried(): void;
  /** A request went out on a link that had carried one before. */
  reused(): void;
}

export const NO_HTTP_OBSERVER: HttpObserver = {
  responded() {},
  failed() {},
  retried() {},
  reused() {},
};
