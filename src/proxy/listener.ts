import net from 'node:net';
import type { Logger } from 'pino';
import { boundAddress, boundPort, type Address } from '../config/address.js';
import { codeOf, describe } from '../errors.js';
import { listenOn } from '../net/listen.js';
import { acceptOwnReads, type OwnReads } from '../net/reads.js';

/** Who gets a listener's connections: a route, now; another route after a reload. */
export interface ListenerTarget {
  /** Takes one accepted socket. */
  accept(socket: net.Socket): void;
  /**
   * How the target's sockets read (net/reads.ts), when into its own buffers. The listener
   * then makes such sockets itself where it can; where Node makes one, it must arrive
   * having read nothing (the server's `pauseOnConnect`), so that the target can move its
   * handle onto a socket reading into its own buffers.
   */
  readonly ownReads: OwnReads | undefined;
}

/**
 * What net.Server keeps of its bound socket (or, in a cluster worker, of the primary's):
 * the handle whose `onconnection` Node calls with each accepted connection's handle.
 */
interface ServerHandle {
  onconnection?: (this: ServerHandle, status: number, clientHandle: unknown) => void;
}
type ServerInternals = net.Server & { _handle?: ServerHandle | null };

type ListenerState = 'new' | 'binding' | 'listening' | 'closed';

/**
 * One bound address. It hands each accepted socket to its target, which a reload may
 * change: a route rebuilt on the same address gets the listener that is already bound,
 * so the address never stops accepting and nothing has to bind it twice. (Binding the new
 * route beside the old one would need SO_REUSEPORT, which net.Server offers from Node
 * 22.12 only, and would let the kernel hand connections to the old listener while both
 * are open.) Sockets accepted before it has a target wait; closing it without one ends
 * them.
 */
export class Listener {
  private readonly server: net.Server;
  private state: ListenerState = 'new';
  private target: ListenerTarget | undefined;
  private readonly waiting: net.Socket[] = [];
  /** Whether the bound socket is this process's own (SO_REUSEPORT), not the primary's. */
  readonly reusePort: boolean;

  constructor(
    readonly listenAddress: Address,
    /** Whose listener, for errors and logs: `route redis`. */
    readonly owner: string,
    private readonly log: Logger,
    /** Whether the first target reads into its own buffers (see ListenerTarget.ownReads). */
    pauseOnConnect = false,
    /**
     * Bind a socket of this process's own with SO_REUSEPORT (a TCP port other than 0)
     * rather than share the cluster primary's: each worker then has its own accept queue.
     */
    reusePort = false,
  ) {
    this.reusePort = reusePort && listenAddress.kind === 'tcp' && listenAddress.port !== 0;
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect });
    this.server.on('connection', this.onConnection);
    this.server.on('error', (err) => {
      // After listening, an accept error (EMFILE, …) must not take the process down.
      if (this.state === 'listening')
        this.log.error({ code: codeOf(err), err: describe(err) }, 'listener error');
    });
  }

  /** Binds the address. Rejects with ListenError (in use, no permission, …). */
  async listen(): Promise<void> {
    if (this.state !== 'new') throw new Error(`${this.owner}: listen() called twice`);
    this.state = 'binding';
    try {
      await listenOn(this.server, this.listenAddress, this.owner, {
        backlog: 4096,
        reusePort: this.reusePort,
      });
    } catch (err) {
      this.state = 'closed';
      throw err;
    }
    this.state = 'listening';
    this.takeAccepts();
  }

  /**
   * A target that reads into its own buffers would otherwise get a socket Node made, only
   * to move its handle onto a socket of its own (net/reads.ts `adoptOwnReads`): two
   * net.Sockets built per connection. Where a client connects per request (redis mode,
   * redis-benchmark -k 0) one fewer took sidepool's CPU per request from 60–67 to 49–51
   * µs on Node 20 and from 37–39 to 34–37 on Node 24. So the listener takes Node's
   * accept callback and builds the one socket the target wants. As with an adopted
   * socket, net.Server does not count it: the route counts its sessions itself.
   * An accept error, a target reading the usual way or a handle of another kind goes to
   * Node's callback. This leans on `server._handle.onconnection` (Node calls it with each
   * accepted handle, in a cluster worker too), set before 'listening' and stable for as
   * long as net.Server has existed; where it is missing, Node accepts as before.
   */
  private takeAccepts(): void {
    const server = this.server as ServerInternals;
    const handle = server._handle;
    const nodeAccept = handle?.onconnection;
    if (handle === null || handle === undefined || typeof nodeAccept !== 'function') return;
    handle.onconnection = (status, clientHandle) => {
      const kind = this.target?.ownReads;
      // allowHalfOpen: as the server was made. (It never sets maxConnections, which
      // Node's callback would enforce.)
      const socket =
        status !== 0 || kind === undefined ? undefined : acceptOwnReads(clientHandle, true, kind);
      if (socket === undefined) {
        nodeAccept.call(handle, status, clientHandle);
        return;
      }
      this.onConnection(socket);
    };
  }

  get isListening(): boolean {
    return this.state === 'listening';
  }

  /** The bound address (with the real port when the config said port 0). */
  get address(): string {
    return boundAddress(this.server, this.listenAddress);
  }

  get port(): number {
    return boundPort(this.server);
  }

  /** From now on `target` gets the connections, first those that waited for one. */
  handTo(target: ListenerTarget): void {
    this.target = target;
    // Read per connection by net.Server: it applies to the next accept.
    (this.server as net.Server & { pauseOnConnect: boolean }).pauseOnConnect =
      target.ownReads !== undefined;
    for (const socket of this.waiting.splice(0)) target.accept(socket);
  }

  /** Whether `target` is the one this listener hands connections to. */
  isHandingTo(target: ListenerTarget): boolean {
    return this.target === target;
  }

  /**
   * Stops accepting and frees the address at once; connections still waiting for a target
   * are ended. Connections handed on are their target's: this does not wait for them
   * (net.Server's close callback would). Idempotent.
   */
  close(): void {
    if (this.state === 'closed') return;
    const wasListening = this.state === 'listening';
    this.state = 'closed';
    this.target = undefined;
    for (const socket of this.waiting.splice(0)) socket.destroy();
    if (wasListening) this.server.close();
  }

  private readonly onConnection = (socket: net.Socket): void => {
    if (this.state !== 'listening') {
      socket.destroy();
      return;
    }
    if (this.target !== undefined) {
      this.target.accept(socket);
      return;
    }
    socket.on('error', () => {});
    this.waiting.push(socket);
  };
}
