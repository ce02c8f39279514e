import http from 'node:http';
import type { Logger } from 'pino';
import {
  boundAddress,
  boundPort,
  isLoopback,
  listenAddress,
  type Address,
} from '../config/address.js';
import type { Config } from '../config/schema.js';
import { describe } from '../errors.js';
import { listenOn } from '../net/listen.js';
import { controlRefusal, type ControlPolicy, type Refusal } from './control.js';

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
type Methods = Partial<Record<string, Handler>>;

export interface AdminServerOptions {
  /** `admin server`, `admin control server`: for errors and logs. */
  name: string;
  /**
   * Control and introspection (`/reload`, `/drain`, `/config`, `/pools`): served here
   * under this policy, or refused with a word on where they are.
   */
  control: ControlPolicy | { elsewhere: string };
}

/**
 * An admin HTTP server. Probes and metrics (`/healthz`, `/readyz`, `/metrics`) on every
 * one; control and introspection (`/pools`, `/config`, `POST /reload`, `POST /drain`)
 * where the options say, each request checked (admin/control.ts). HEAD is served wherever
 * GET is. It shares the event loop with the data path, so every handler is short and
 * nothing it does waits on a session.
 */
export class AdminServer {
  private readonly server: http.Server;
  private readonly probes: Record<string, Methods>;
  private readonly controls: Record<string, Methods>;
  private closing: Promise<void> | undefined;

  constructor(
    private readonly listenAddress: Address,
    handlers: AdminHandlers,
    private readonly log: Logger,
    private readonly options: AdminServerOptions = { name: 'admin server', control: {} },
  ) {
    this.probes = {
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
    };
    this.controls = {
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
    await listenOn(this.server, this.listenAddress, this.options.name);
    this.server.on('error', (err) =>
      this.log.error({ err: describe(err) }, `${this.options.name} error`),
    );
    this.log.info(
      { listen: this.address, control: !('elsewhere' in this.options.control) },
      'admin listening',
    );
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
    const control = this.controls[path];
    const methods = control ?? this.probes[path];
    if (methods === undefined) {
      send(res, 404, `no such admin endpoint: ${path}\n`);
      return;
    }
    const method = req.method === 'HEAD' && methods.GET !== undefined ? 'GET' : req.method;
    const handler = methods[method ?? 'GET'];
    if (handler === undefined) {
      const allowed = Object.keys(methods).flatMap((m) => (m === 'GET' ? ['GET', 'HEAD'] : [m]));
      res.setHeader('Allow', allowed.join(', '));
      send(res, 405, `${req.method} is not allowed on ${path}\n`);
      return;
    }
    // Bodies are not used; drain them so that keep-alive works.
    req.resume();
    Promise.resolve()
      .then(async () => {
        if (control !== undefined) {
          const refusal = await this.refusal(req);
          if (refusal !== undefined) {
            this.log.warn(
              { path, method: req.method, status: refusal.status, why: refusal.message },
              'admin control request refused',
            );
            send(res, refusal.status, `${refusal.message}\n`, undefined, refusal.headers);
            return;
          }
        }
        await handler(req, res);
      })
      .catch((err: unknown) => {
        this.log.error({ path, err: describe(err) }, 'admin request failed');
        if (!res.headersSent) send(res, 500, `internal error: ${describe(err)}\n`);
        else res.destroy();
      });
  };

  private refusal(req: http.IncomingMessage): Promise<Refusal | undefined> {
    const control = this.options.control;
    if ('elsewhere' in control) {
      return Promise.resolve({ status: 403, message: control.elsewhere });
    }
    return controlRefusal(req, control);
  }
}

/**
 * The admin servers `settings` ask for, listening: the one on `admin.listen`, and the
 * control server on `admin.controlListen` when there is one. Control and introspection
 * go to a loopback listener, or anywhere with a token (README, "Security").
 */
export async function openAdmin(
  settings: Exclude<Config['admin'], false>,
  handlers: AdminHandlers,
  log: Logger,
): Promise<AdminServer[]> {
  const policy: ControlPolicy = { tokenFile: settings.tokenFile, hosts: settings.hosts };
  const listen = listenAddress(settings.listen);
  const servers: AdminServer[] = [];
  try {
    if (settings.controlListen !== undefined) {
      servers.push(
        new AdminServer(listen, handlers, log, {
          name: 'admin server',
          control: {
            elsewhere: `control endpoints are served on admin.controlListen (${settings.controlListen}) only`,
          },
        }),
        new AdminServer(listenAddress(settings.controlListen), handlers, log, {
          name: 'admin control server',
          control: policy,
        }),
      );
    } else if (isLoopback(listen) || settings.tokenFile !== undefined) {
      servers.push(
        new AdminServer(listen, handlers, log, { name: 'admin server', control: policy }),
      );
    } else {
      log.warn(
        { listen: settings.listen },
        'admin control endpoints are off: admin.listen is reachable from other hosts; set admin.controlListen (loopback) or admin.tokenFile',
      );
      servers.push(
        new AdminServer(listen, handlers, log, {
          name: 'admin server',
          control: {
            elsewhere: `control endpoints are off on ${settings.listen}, which other hosts reach: set admin.controlListen (loopback) or admin.tokenFile`,
          },
        }),
      );
    }
    for (const server of servers) await server.listen();
  } catch (err) {
    await Promise.all(servers.map((server) => server.close()));
    throw err;
  }
  return servers;
}

function send(
  res: http.ServerResponse,
  status: number,
  body: string,
  contentType = 'text/plain; charset=utf-8',
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, {
    ...headers,
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
  });
  res.end(body);
}

function sendJson(res: http.ServerResponse, status: number, value: unknown): void {
  send(res, status, `${JSON.stringify(value, null, 2)}\n`, 'application/json');
}
