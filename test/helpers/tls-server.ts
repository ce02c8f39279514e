import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import type { KeyPair } from './certs.js';

/** What a test TLS server saw of one handshake. */
export interface SeenHandshake {
  /** The SNI name the client sent, or false. */
  servername: string | false;
  resumed: boolean;
  /** Whether the client certificate verified (when one was requested). */
  authorized: boolean;
  clientSubject: string | undefined;
  alpn: string | false | null;
  protocol: string | null;
}

export interface TlsTestServer {
  server: tls.Server;
  port: number;
  address: string;
  handshakes: SeenHandshake[];
  /** Handshakes that failed on the server's side, by error code. */
  failures: string[];
  close(): Promise<void>;
}

export interface TlsTestServerOptions {
  identity: KeyPair;
  /** CA for client certificates; with `requireClientCert`, mTLS. */
  clientCa?: string;
  requireClientCert?: boolean;
  maxVersion?: tls.SecureVersion;
  alpn?: string[];
  /** What to do with a connection once it is secure; default: echo. */
  handler?: (socket: tls.TLSSocket) => void;
}

/**
 * A real node:tls server on 127.0.0.1, port 0: an echo server by default, recording what
 * each handshake looked like from the server's side.
 */
export async function startTlsServer(options: TlsTestServerOptions): Promise<TlsTestServer> {
  const handshakes: SeenHandshake[] = [];
  const failures: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = tls.createServer({
    cert: readFileSync(options.identity.cert),
    key: readFileSync(options.identity.key),
    ca: options.clientCa === undefined ? undefined : readFileSync(options.clientCa),
    requestCert: options.requireClientCert ?? false,
    rejectUnauthorized: options.requireClientCert ?? false,
    maxVersion: options.maxVersion,
    ALPNProtocols: options.alpn,
    allowHalfOpen: true,
  });
  server.on('connection', (socket: net.Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    socket.on('error', () => {});
    const peer = socket.getPeerCertificate();
    handshakes.push({
      servername: (socket as tls.TLSSocket & { servername: string | false }).servername,
      resumed: socket.isSessionReused(),
      authorized: socket.authorized,
      clientSubject: [peer?.subject?.CN].flat()[0],
      alpn: socket.alpnProtocol,
      protocol: socket.getProtocol(),
    });
    if (options.handler !== undefined) options.handler(socket);
    else socket.pipe(socket);
  });
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket) => {
    failures.push(err.code ?? err.message);
    socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    server,
    port,
    address: `127.0.0.1:${port}`,
    handshakes,
    failures,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A TLS client to a TLS listener of sidepool: connects, sends, collects until the peer's FIN. */
export function tlsRoundTrip(
  port: number,
  payload: string,
  options: tls.ConnectionOptions,
): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = tls.connect({ host: '127.0.0.1', port, ...options }, () => socket.end(payload));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => resolve(Buffer.concat(chunks).toString()));
    socket.on('error', reject);
  });
}
