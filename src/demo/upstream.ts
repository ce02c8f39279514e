import { generateKeyPairSync } from 'node:crypto';
import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';
import forge from 'node-forge';

export interface DemoCertificate {
  cert: string;
  key: string;
}

/**
 * A self-signed certificate for `localhost` and 127.0.0.1, made on the spot: Node makes
 * the key, node-forge writes and signs the certificate (Node has no X.509 writer).
 */
export function selfSignedCertificate(): DemoCertificate {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  cert.serialNumber = Date.now().toString(16);
  cert.validity.notBefore = new Date(Date.now() - 60_000);
  cert.validity.notAfter = new Date(Date.now() + 24 * 3_600_000);
  const name = [{ name: 'commonName', value: 'sidepool demo upstream' }];
  cert.setSubject(name);
  cert.setIssuer(name);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, keyCertSign: true },
    { name: 'extKeyUsage', serverAuth: true },
    {
      name: 'subjectAltName',
      altNames: [
        { type: 2, value: 'localhost' },
        { type: 7, ip: '127.0.0.1' },
      ],
    },
  ]);
  cert.sign(forge.pki.privateKeyFromPem(privateKey), forge.md.sha256.create());
  return { cert: forge.pki.certificateToPem(cert), key: privateKey };
}

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
