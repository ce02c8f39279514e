import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';
import type { DemoCertificate } from './certificate.js';

/** What the demo upstream has seen: connections and how their handshakes went. */
export interface UpstreamCounts {
  connections: number;
  fullHandshakes: number;
  resumedHandshakes: number;
  requests: number;
}

/** A small HTTPS server: answers every request with one short line. */
export class DemoUpstream {
  readonly counts: UpstreamCounts = {
    connections: 0,
    fullHandshakes: 0,
    resumedHandshakes: 0,
    requests: 0,
  };
  private readonly server: https.Server;

  constructor(certificate: DemoCertificate) {
    this.server = https.createServer({ ...certificate, keepAliveTimeout: 30_000 }, (req, res) => {
      this.counts.requests++;
      req.resume();
      const body = `hello from the upstream (request ${this.counts.requests})\n`;
      res.writeHead(200, {
        'Content-Type': 'text/plain',
        'Content-Length': Buffer.byteLength(body),
      });
      res.end(body);
    });
    this.server.on('connection', (_socket: net.Socket) => this.counts.connections++);
    this.server.on('secureConnection', (socket: tls.TLSSocket) => {
      if (socket.isSessionReused()) this.counts.resumedHandshakes++;
      else this.counts.fullHandshakes++;
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return (this.server.address() as net.AddressInfo).port;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
