import type { Route } from '../route.js';
import type { RequestHeadSettings } from './headers.js';
import type { HttpObserver } from './observer.js';

/** One http route's settings, from its config (see `httpSettings` in mode.ts). */
export interface HttpSettings extends RequestHeadSettings {
  /** An idle link is not reused after this long; 0 = no limit of our own. */
  upstreamKeepAliveMs: number;
  /** The upstream must answer (and keep a response body flowing) within this; 0 = no limit. */
  responseTimeoutMs: number;
  /** The app must send a complete request head within this; 0 = no limit. */
  headersTimeoutMs: number;
  /** A request body must progress (BODY_PROGRESS_BYTES more, or its end) within this; 0 = none. */
  requestBodyTimeoutMs: number;
}

/** What an exchange or tunnel needs from its route, fixed when the route is made. */
export interface HttpRouteContext {
  readonly route: Route;
  readonly settings: HttpSettings;
  readonly observer: HttpObserver;
}
