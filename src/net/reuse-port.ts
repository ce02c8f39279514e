/**
 * Whether `net.Server#listen` takes `reusePort` here: Node.js 22.12 or later (23.1 on the
 * 23 line), on Linux (SO_REUSEPORT with the kernel balancing connections over the sockets
 * bound to one port; elsewhere the option is refused or balances differently).
 */
export function reusePortAvailable(
  version: string = process.versions.node,
  platform: NodeJS.Platform = process.platform,
): boolean {
  if (platform !== 'linux') return false;
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}
