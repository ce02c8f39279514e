import http from 'node:http';
import type { Logger } from 'pino';
import { boundAddress, boundPort, type Address } from '../config/address.js';
import { describe } from '../errors.js';
import { listenOn } from '../net/listen.js';

/** What the admin endpoints ask of the running app. */
export interface AdminHandlers {
  metrics(): Promise<{ contentType: string; body: string }>;
  /** Ready means: every route listening, healthy where a route asks for it, not draining. */
  readiness():
    { ready: boolean; reasons: string[] } | Promise<{ ready: boolean; reasons: string[] }>;
  pools(): unknown;
  config(): unknown;
  reload(): Promise<{ ok: boolean; problems?: string[] }>;
  drain(): void;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> | void;

/**
 * The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/pools`, `/config`,
 * `POST /reload`, `POST /drain`. It shares the event loop with the data path, so every
 * handler is short and nothing it does waits on a session.
 */
export class AdminServer {
  private readonly server: http.Server;
  private readonly routes: Record<string, Partial<Record<string, Handler>>>;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly listenAddress: Address,
    handlers: AdminHandlers,
    private readonly log: Logger,
  ) {
    this.routes = {
      '/metrics': {
        GET: async (_req, res) => {
          const { contentType, body } = await handlers.metrics();
          send(res, 200, body, contentType);
        },
      },
      '/healthz': { GET: (_req, res) => send(res, 200, 'ok\n') },
      '/readyz': {
        GET: async (_req, res) => {
          const { ready, reasons } = await handlers.readiness();
          send(res, ready ? 200 : 503, ready ? 'ready\n' : `not ready: ${reasons.join('; ')}\n`);
        },
      },
      '/pools': { GET: async (_req, res) => sendJson(res, 200, await handlers.pools()) },
      '/config': { GET: (_req, res) => sendJson(res, 200, handlers.config()) },
      '/reload': {
        POST: async (_req, res) => {
          const result = await handlers.reload();
          sendJson(res, result.ok ? 200 : 400, result);
        },
      },
      '/drain': {
        POST: (_req, res) => {
          handlers.drain();
          sendJson(res, 202, { draining: true });
        },
      },
    };
    this.server = http.createServer(this.onRequest);
    this.server.keepAliveTimeout = 5000;
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 30_000;
    this.server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      else socket.destroy();
    });
  }

  async listen(): Promise<void> {
    await listenOn(this.server, this.listenAddress, 'admin server');
    this.server.on('error', (err) => this.log.error({ err: describe(err) }, 'admin server error'));
    this.log.info({ listen: this.address }, 'admin listening');
  }

  get address(): string {
    return boundAddress(this.server, this.listenAddress);
  }

  get port(): number {
    return boundPort(this.server);
  }

  /** Stops the server and its keep-alive connections. Idempotent. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      if (!this.server.listening) return resolve();
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    return this.closing;
  }

  private readonly onRequest = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const methods = this.routes[path];
    if (methods === undefined) {
      send(res, 404, `no such admin endpoint: ${path}\n`);
      return;
    }
    const handler = methods[req.method ?? 'GET'];
    if (handler === undefined) {
      res.setHeader('Allow', Object.keys(methods).join(', '));
      send(res, 405, `${req.method} is not allowed on ${path}\n`);
      return;
    }
    // Bodies are not used; drain them so that keep-alive works.
    req.resume();
    Promise.resolve()
      .then(() => handler(req, res))
      .catch((err: unknown) => {
        this.log.error({ path, err: describe(err) }, 'admin request failed');
        if (!res.headersSent) send(res, 500, `internal error: ${describe(err)}\n`);
        else res.destroy();
      });
  };
}

function send(
  res: http.ServerResponse,
  status: number,
  body: string,
  contentType = 'text/plain; charset=utf-8',
): void {
  res.writeHead(status, { 'Content-Type': contentType, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function sendJson(res: http.ServerResponse, status: number, value: unknown): void {
  send(res, status, `${JSON.stringify(value, null, 2)}\n`, 'application/json');
}
