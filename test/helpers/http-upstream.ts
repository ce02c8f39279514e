import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';

/** A request as an upstream saw it. */
export interface SeenRequest {
  method: string;
  url: string;
  rawHeaders: string[];
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  trailers: string[];
  /** Which upstream connection (0, 1, …) carried it. */
  connection: number;
}

/** A real node:http upstream on 127.0.0.1:0 that counts its connections. */
export interface HttpUpstream {
  server: http.Server;
  port: number;
  address: string;
  /** Connections accepted so far. */
  readonly connections: number;
  /** Requests whose body was read to its end. */
  requests: SeenRequest[];
  sockets: Set<net.Socket>;
  close(): Promise<void>;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse, seen: SeenRequest) => void;

const CONNECTION_ID = Symbol('connectionId');

/**
 * Starts an upstream. The handler runs once the request body has been read (`seen.body`);
 * the default answers 200 with a small text body naming the connection.
 */
export async function startHttpUpstream(
  handler: Handler = (_req, res, seen) => {
    res.setHeader('Content-Type', 'text/plain');
    res.end(`conn ${seen.connection} ${seen.method} ${seen.url} ${seen.body.length}`);
  },
  options: http.ServerOptions & { keepAliveTimeout?: number } = {},
): Promise<HttpUpstream> {
  const server = http.createServer(options);
  if (options.keepAliveTimeout !== undefined) server.keepAliveTimeout = options.keepAliveTimeout;
  const state = { connections: 0 };
  const requests: SeenRequest[] = [];
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket: net.Socket) => {
    (socket as net.Socket & { [CONNECTION_ID]?: number })[CONNECTION_ID] = state.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const seen: SeenRequest = {
        method: req.method ?? '',
        url: req.url ?? '',
        rawHeaders: req.rawHeaders,
        headers: req.headers,
        body: Buffer.concat(chunks),
        trailers: req.rawTrailers,
        connection: (req.socket as net.Socket & { [CONNECTION_ID]?: number })[CONNECTION_ID] ?? -1,
      };
      requests.push(seen);
      handler(req, res, seen);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    server,
    port,
    address: `127.0.0.1:${port}`,
    get connections() {
      return state.connections;
    },
    requests,
    sockets,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export interface ClientResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
  trailers: http.IncomingHttpHeaders;
  /** The socket was closed after the response (no keep-alive). */
  text: string;
}

export interface ClientOptions {
  method?: string;
  path?: string;
  headers?: http.OutgoingHttpHeaders;
  body?: string | Buffer | Buffer[];
  agent?: http.Agent | false;
}

/** One request through node:http's client; by default on a new connection with `Connection: close`. */
export function fetchHttp(port: number, options: ClientOptions = {}): Promise<ClientResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method: options.method ?? 'GET',
        path: options.path ?? '/',
        headers: options.headers,
        agent: options.agent ?? false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            rawHeaders: res.rawHeaders,
            body,
            trailers: res.trailers,
            text: body.toString(),
          });
        });
      },
    );
    req.on('error', reject);
    const body = options.body;
    if (Array.isArray(body)) {
      for (const chunk of body) req.write(chunk);
      req.end();
    } else req.end(body);
  });
}

/** What came back over a raw connection, and how the connection ended. */
export interface RawResult {
  text: string;
  /** The peer closed (FIN or reset) within the wait. */
  closed: boolean;
  error: string | undefined;
}

/**
 * Writes raw bytes to the proxy and collects everything until the peer closes, or until
 * `waitMs` passes with the connection still open (generous by default: a close that is
 * coming can be slow on a loaded machine).
 */
export function rawRequest(
  port: number,
  bytes: string | Buffer,
  waitMs = 30_000,
): Promise<RawResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let error: string | undefined;
    const socket = net.connect(port, '127.0.0.1', () =>
      socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes),
    );
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: false, error });
    }, waitMs);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', (e: NodeJS.ErrnoException) => (error = e.code));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ text: Buffer.concat(chunks).toString('latin1'), closed: true, error });
    });
  });
}

/** The status codes of the responses in a raw text, in order. */
export function statuses(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.[01] (\d{3}) /g)].map((m) => Number(m[1]));
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A keep-alive agent with one socket: every request goes on the same connection. */
export function oneConnectionAgent(): http.Agent {
  return new http.Agent({ keepAlive: true, maxSockets: 1 });
}
