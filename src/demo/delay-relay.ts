import net from 'node:net';

/**
 * A TCP relay that makes loopback behave like a network with a round-trip time: a new
 * connection costs one round trip before its first byte moves (the TCP handshake), and
 * every chunk then takes half a round trip each way, in order.
 */
export class DelayRelay {
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private closed = false;

  constructor(
    private readonly target: { host: string; port: number },
    private readonly rttMs: number,
  ) {
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, this.onConnection);
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return (this.server.address() as net.AddressInfo).port;
  }

  close(): Promise<void> {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const socket of this.sockets) socket.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private readonly onConnection = (client: net.Socket): void => {
    const upstream = net.connect({ ...this.target, allowHalfOpen: true, noDelay: true });
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
      socket.on('close', () => this.sockets.delete(socket));
    }
    // The client's first bytes can leave only once the (simulated) handshake is done.
    const usableAt = Date.now() + this.rttMs;
    this.pipe(client, upstream, usableAt);
    this.pipe(upstream, client, 0);
  };

  /**
   * Forwards `from` → `to`, each chunk (and the FIN) half a round trip later, in order.
   * One queue and one timer per direction: a timer per chunk could fire out of order
   * under load (timers count from the loop's cached clock), putting a FIN before data.
   */
  private pipe(from: net.Socket, to: net.Socket, notBefore: number): void {
    const queue: Array<{ at: number; action: () => void }> = [];
    let timer: NodeJS.Timeout | undefined;
    const run = (): void => {
      if (timer !== undefined) this.timers.delete(timer);
      timer = undefined;
      const now = Date.now();
      while (queue.length > 0 && (queue[0] as { at: number }).at <= now) {
        const { action } = queue.shift() as { action: () => void };
        if (!to.destroyed) action();
      }
      if (queue.length > 0 && !this.closed) {
        timer = setTimeout(run, (queue[0] as { at: number }).at - now);
        this.timers.add(timer);
      }
    };
    const later = (action: () => void): void => {
      if (this.closed) return;
      const last = queue.length > 0 ? (queue[queue.length - 1] as { at: number }).at : 0;
      const at = Math.max(Date.now(), notBefore, last) + this.rttMs / 2;
      queue.push({ at, action });
      if (timer === undefined) {
        timer = setTimeout(run, at - Date.now());
        this.timers.add(timer);
      }
    };
    from.on('data', (chunk: Buffer) => later(() => to.write(chunk)));
    from.on('end', () => later(() => to.end()));
  }
}
