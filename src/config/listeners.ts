import { lookup } from 'node:dns/promises';
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import net from 'node:net';
import { dirname } from 'node:path';
import type { ConfigIssue } from '../errors.js';
import { formatAddress, listenAddress, type Address } from './address.js';

/** One address the config binds, and the key that says so. */
export interface Binding {
  /** `admin.listen`, `routes[2].listen`, … */
  path: string;
  /** What binds it, for messages: `the admin server`, `route redis`. */
  owner: string;
  text: string;
  address: Address;
}

/** Every address a config binds: the admin listeners and each route's. */
export function bindingsOf(config: {
  admin: false | { listen: string; controlListen?: string | undefined };
  routes: ReadonlyArray<{ name: string; listen: string }>;
}): Binding[] {
  const out: Binding[] = [];
  const add = (path: string, owner: string, text: string): void => {
    out.push({ path, owner, text, address: listenAddress(text) });
  };
  if (config.admin !== false) {
    add('admin.listen', 'the admin server', config.admin.listen);
    if (config.admin.controlListen !== undefined) {
      add('admin.controlListen', 'the admin control server', config.admin.controlListen);
    }
  }
  config.routes.forEach((route, i) =>
    add(`routes[${i}].listen`, `route ${route.name}`, route.listen),
  );
  return out;
}

/**
 * Pairs of bindings that cannot both be bound, as `run` would find out with EADDRINUSE:
 * the same unix socket, or the same TCP port on the same address, or on an address and a
 * wildcard that covers it (Linux refuses 127.0.0.1:P while 0.0.0.0:P listens, and Node's
 * `::` is dual-stack, so it covers every IPv4 address too). `ipOf` gives a host's IP
 * address, or undefined for a name not resolved (compared by its text then). Port 0 asks
 * the kernel for a free port, so it never conflicts.
 */
export function bindingConflicts(
  bindings: readonly Binding[],
  ipOf: (host: string) => string | undefined = literalIp,
): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  bindings.forEach((binding, i) => {
    const taken = bindings.slice(0, i).find((other) => overlap(other, binding, ipOf));
    if (taken === undefined) return;
    const same = formatAddress(taken.address) === formatAddress(binding.address);
    issues.push({
      path: binding.path,
      message: same
        ? `${binding.text} is already the listen address of ${where(taken)}`
        : `${binding.text} overlaps ${taken.text}, the listen address of ${where(taken)}: ${why(taken, binding, ipOf)}`,
    });
  });
  return issues;
}

function where(binding: Binding): string {
  return binding.path.startsWith('routes[')
    ? binding.path.slice(0, binding.path.indexOf('.'))
    : `${binding.owner} (${binding.path})`;
}

function why(a: Binding, b: Binding, ipOf: (host: string) => string | undefined): string {
  const hosts = [a, b].map((x) => (x.address.kind === 'tcp' ? x.address.host : ''));
  if (hosts.some((h) => WILDCARDS.has(ipOf(h) ?? h))) {
    return 'a listener on every address takes the port on each of them';
  }
  const named = hosts.find((h) => net.isIP(h) === 0);
  return `${named} is ${named === undefined ? '' : ipOf(named)} here`;
}

const WILDCARDS = new Set(['0.0.0.0', '::']);

function overlap(a: Binding, b: Binding, ipOf: (host: string) => string | undefined): boolean {
  if (a.address.kind === 'unix' || b.address.kind === 'unix') {
    return (
      a.address.kind === b.address.kind && formatAddress(a.address) === formatAddress(b.address)
    );
  }
  if (a.address.port === 0 || b.address.port === 0 || a.address.port !== b.address.port) {
    return false;
  }
  const x = ipOf(a.address.host) ?? a.address.host.toLowerCase();
  const y = ipOf(b.address.host) ?? b.address.host.toLowerCase();
  if (x === y || x === '::' || y === '::') return true;
  if (x === '0.0.0.0') return net.isIPv4(y);
  if (y === '0.0.0.0') return net.isIPv4(x);
  return false;
}

function literalIp(host: string): string | undefined {
  return net.isIP(host) === 0 ? undefined : host.toLowerCase();
}

/**
 * What `run` would find when it binds, beyond what the config says on its face: listen
 * host names resolved the way `listen()` resolves them (the first address), then checked
 * for overlaps; and unix socket directories that are missing or not writable.
 */
export async function bindingIssues(bindings: readonly Binding[]): Promise<ConfigIssue[]> {
  const names = new Set<string>();
  for (const b of bindings) {
    if (b.address.kind === 'tcp' && net.isIP(b.address.host) === 0) names.add(b.address.host);
  }
  const resolved = new Map<string, string>();
  const issues: ConfigIssue[] = [];
  await Promise.all(
    [...names].map(async (name) => {
      try {
        resolved.set(name, (await lookup(name)).address);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? 'an error';
        for (const b of bindings) {
          if (b.address.kind === 'tcp' && b.address.host === name) {
            issues.push({ path: b.path, message: `cannot resolve ${name} (${code})` });
          }
        }
      }
    }),
  );
  if (names.size > 0) {
    // The pairs between literal addresses were checked with the schema; these involve a name.
    const withName = bindingConflicts(bindings, (h) => resolved.get(h) ?? literalIp(h));
    const literal = new Set(bindingConflicts(bindings).map((i) => i.path));
    issues.push(...withName.filter((i) => !literal.has(i.path)));
  }
  for (const b of bindings) {
    if (b.address.kind === 'unix') {
      const problem = await socketDirectoryProblem(b.address.path);
      if (problem !== undefined) issues.push({ path: b.path, message: problem });
    }
  }
  return issues;
}

/** Why a unix socket cannot be made at `path`, or undefined when it can. */
export async function socketDirectoryProblem(path: string): Promise<string | undefined> {
  const dir = dirname(path);
  try {
    if (!(await stat(dir)).isDirectory()) return `${dir} is not a directory`;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT'
      ? `the directory ${dir} does not exist`
      : `cannot use the directory ${dir} (${code ?? 'error'})`;
  }
  try {
    await access(dir, constants.W_OK | constants.X_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EACCES';
    return `cannot create a socket in ${dir} (${code}: the directory is not writable)`;
  }
  return undefined;
}
