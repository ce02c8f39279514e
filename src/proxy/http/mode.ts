import http from 'node:http';
import type { Socket } from 'node:net';
import type { RouteConfig } from '../../config/schema.js';
import type { SessionFactory } from '../route.js';
import type { HttpRouteContext } from './settings.js';
import { NO_HTTP_OBSERVER, type HttpObserver } from './observer.js';
import { HttpSession, sessionOf } from './session.js';
import type { HttpSettings } from './settings.js';

/** An http route's settings from its config. */
export function httpSettings(route: RouteConfig): HttpSettings {
  return {
    upstreamKeepAliveMs: route.upstreamKeepAlive,
    responseTimeoutMs: route.responseTimeout,
    headersTimeoutMs: route.headersTimeout,
    requestBodyTimeoutMs: route.requestBodyTimeout,
    forwardedHeaders: route.forwardedHeaders,
    hostOverride: route.upstream.host,
    defaultHost: route.upstream.host ?? route.upstream.addresses[0] ?? '',
  };
}

export interface HttpModeOptions {
  settings: HttpSettings;
  observer?: HttpObserver;
}

/**
 * The session factory of an http route. Requests are parsed by one node:http server per
 * route that never listens: the route's listener hands it each socket. llhttp (strict, as
 * Node runs it by default) refuses ambiguous framing, and node:http answers pipelined
 * requests in order and reports `Expect: 100-continue`, upgrades and CONNECT.
 */
export function httpSessionFactory(options: HttpModeOptions): SessionFactory {
  // Made with the route's first connection (a factory serves one route), then shared.
  let shared: { ctx: HttpRouteContext; parser: http.Server } | undefined;
  return (route, id, socket) => {
    shared ??= {
      ctx: { route, settings: options.settings, observer: options.observer ?? NO_HTTP_OBSERVER },
      parser: requestParser(),
    };
    return new HttpSession(shared.ctx, shared.parser, id, socket);
  };
}

function requestParser(): http.Server {
  const server = http.createServer({
    // Checked by the session, which also refuses a second Host.
    requireHostHeader: false,
    // The session keeps its own head timer; nothing of Node's runs without a listener anyway.
    headersTimeout: 0,
    requestTimeout: 0,
    keepAliveTimeout: 0,
  });
  // An app that half-closes after its request still gets the response.
  (server as { httpAllowHalfOpen?: boolean }).httpAllowHalfOpen = true;
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    sessionOf(req.socket)?.onRequest(req, res, false);
  });
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
    sessionOf(req.socket)?.onRequest(req, res, true);
  });
  const onTunnel = (req: http.IncomingMessage, socket: Socket, head: Buffer): void => {
    // Node versions after 20 hand over a wrapper stream when the upgrade has a body still
    // to come; the session, which refuses such upgrades, is found on the request's socket.
    const session = sessionOf(socket) ?? sessionOf(req.socket);
    if (session === undefined) socket.destroy();
    else session.onUpgrade(req, head);
  };
  server.on('upgrade', onTunnel);
  server.on('connect', onTunnel);
  server.on('clientError', (err: Error, socket: Socket) => {
    const session = sessionOf(socket);
    if (session === undefined) socket.destroy();
    else session.onClientError(err);
  });
  return server;
}
