import net from 'node:net';
import { formatAddress, type Address } from '../config/address.js';
import { ConnectError, ConnectTimeoutError } from '../errors.js';
import type { Connector, Dialed } from '../pool/pool.js';

export interface DialerOptions {
  endpoints: readonly Address[];
  connectTimeout: number;
  /** TCP keep-alive probe delay on every upstream socket. */
  keepAliveDelay?: number;
}

/**
 * Makes links: picks the next endpoint (round-robin), connects with a timeout, and sets
 * the socket up for pooling (keep-alive, no Nagle delay, half-close allowed so that a
 * downstream FIN can be passed on as a FIN).
 */
export class Dialer implements Connector {
  private readonly endpoints: readonly { address: Address; name: string }[];
  private readonly connectTimeout: number;
  private readonly keepAliveDelay: number;
  private next = 0;

  constructor(options: DialerOptions) {
    if (options.endpoints.length === 0) throw new RangeError('a dialer needs an endpoint');
    this.endpoints = options.endpoints.map((address) => ({
      address,
      name: formatAddress(address),
    }));
    this.connectTimeout = options.connectTimeout;
    this.keepAliveDelay = options.keepAliveDelay ?? 30_000;
  }

  dial(): Promise<Dialed> {
    const endpoint = this.endpoints[this.next++ % this.endpoints.length] as {
      address: Address;
      name: string;
    };
    return new Promise((resolve, reject) => {
      const { address, name } = endpoint;
      const socket =
        address.kind === 'unix'
          ? net.connect({ path: address.path, allowHalfOpen: true })
          : net.connect({
              host: address.host,
              port: address.port,
              allowHalfOpen: true,
              noDelay: true,
              keepAlive: true,
              keepAliveInitialDelay: this.keepAliveDelay,
            });
      const timer =
        this.connectTimeout > 0
          ? setTimeout(() => {
              cleanup();
              socket.destroy();
              reject(new ConnectTimeoutError(name, this.connectTimeout));
            }, this.connectTimeout)
          : undefined;
      const onConnect = (): void => {
        cleanup();
        resolve({ socket, endpoint: name });
      };
      const onError = (err: Error): void => {
        cleanup();
        socket.destroy();
        reject(new ConnectError(name, err));
      };
      const cleanup = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        socket.off('connect', onConnect);
        socket.off('error', onError);
      };
      socket.once('connect', onConnect);
      socket.once('error', onError);
    });
  }
}
