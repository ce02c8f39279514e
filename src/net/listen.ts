import { lstat, unlink } from 'node:fs/promises';
import net from 'node:net';
import { formatAddress, type Address } from '../config/address.js';
import { socketDirectoryProblem } from '../config/listeners.js';
import { ListenError, codeOf } from '../errors.js';

/**
 * Binds `server` to `address`; rejects with a ListenError that names `owner` (`route r`,
 * `admin server`) and says why in words: in use, no privilege for a low port, a unix
 * socket's directory missing or not writable (Node says EACCES for both).
 */
export async function listenOn(
  server: net.Server,
  address: Address,
  owner: string,
  options: { backlog?: number; reusePort?: boolean } = {},
): Promise<void> {
  const { backlog } = options;
  // reusePort: a socket of this process's own (exclusive: not through the cluster
  // primary's handle), so that the kernel spreads connections over the workers' sockets.
  const own = options.reusePort === true ? { exclusive: true, reusePort: true } : {};
  if (address.kind === 'unix') await removeStaleSocket(address.path);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const listening = (): void => {
        server.off('error', reject);
        resolve();
      };
      if (address.kind === 'unix') server.listen({ path: address.path, backlog }, listening);
      else server.listen({ host: address.host, port: address.port, backlog, ...own }, listening);
    });
  } catch (err) {
    const problem =
      address.kind === 'unix' && codeOf(err) !== 'EADDRINUSE'
        ? await socketDirectoryProblem(address.path)
        : undefined;
    throw new ListenError(owner, formatAddress(address), err, problem);
  }
}

/** A unix socket file left by a process that died would make listen fail with EADDRINUSE. */
async function removeStaleSocket(path: string): Promise<void> {
  try {
    const stat = await lstat(path);
    if (!stat.isSocket()) return;
    const live = await new Promise<boolean>((resolve) => {
      const probe = net.connect({ path });
      probe.once('connect', () => {
        probe.destroy();
        resolve(true);
      });
      probe.once('error', () => resolve(false));
    });
    if (!live) await unlink(path);
  } catch {
    // Nothing there: nothing to remove.
  }
}
