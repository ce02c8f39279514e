import net from 'node:net';
import { adoptOwnReads, connectOwnReads, type OwnReads } from '../../src/net/reads.js';

/**
 * Two ends of one real loopback TCP connection, both allowing half-close. `ownReads`
 * makes one end read into sidepool's buffers as the proxy's sockets do: the connecting
 * end (as a link) or the accepting end (as a downstream), handing out `kind` chunks.
 */
export async function socketPair(
  ownReads?: 'client' | 'server',
  kind: OwnReads = 'views',
): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: ownReads === 'server' });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const options = { port, host: '127.0.0.1', allowHalfOpen: true };
  const client = ownReads === 'client' ? connectOwnReads(options, kind) : net.connect(options);
  await new Promise<void>((resolve) => client.once('connect', resolve));
  const serverSide = await accepted;
  server.close();
  return [client, ownReads === 'server' ? adoptOwnReads(serverSide, kind) : serverSide];
}
