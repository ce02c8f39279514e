import { isDeepStrictEqual } from 'node:util';
import type { ConfigIssue } from '../errors.js';
import { formatAddress, listenAddress } from './address.js';
import { destinationKey } from './load.js';
import { HTTP_ONLY_KEYS, type Config, type RouteConfig } from './schema.js';

/**
 * What a reload does, worked out from the running config and the new one alone, before
 * anything is touched. Steps that can fail come first (`prepare`), and each is undone if
 * a later one fails; then `commit`, whose steps cannot fail. So a reload applies whole or
 * leaves everything as it was, and nothing is retired before everything new is bound and
 * resolved.
 *
 * Changes are applied in place only where this module says how (`IN_PLACE_*` below); any
 * other change to a kept route rebuilds it, and any other change to a destination (its
 * endpoints, TLS, health probes, outlier detection, balance, DNS, connect timeout, and
 * whatever key a mode adds) rebuilds the destination and the routes on it. A new key is
 * therefore never ignored: it rebuilds what it belongs to. At the top level, what cannot be
 * applied refuses the reload, naming the key.
 */
export interface ReloadPlan {
  /** Keys whose change needs a restart: a plan with any is not applied at all. */
  refusals: ConfigIssue[];
  prepare: PrepareStep[];
  commit: CommitStep[];
}

export type PrepareStep =
  /** A new pool and destination (endpoints resolved); `replaces` an old one under the key. */
  | { kind: 'create-destination'; key: string; route: string; replaces: boolean }
  /** The route object for an added or rebuilt route (TLS material loaded). */
  | { kind: 'build-route'; route: string }
  /** A listener bound for a route that has none to take over. */
  | { kind: 'bind'; route: string; listen: string };

export type CommitStep =
  /**
   * The new route starts accepting: on the listener bound for it, or on the one the route
   * named in `takeFrom` had (that route stops getting connections at the same moment).
   */
  | { kind: 'attach'; route: string; listener: 'bound' | { takeFrom: string } }
  /** The old route object stops accepting; its sessions drain within drain.timeout. */
  | { kind: 'retire-route'; route: string; reason: 'removed' | 'rebuilt' }
  /** The old pool and destination close once no draining route uses them. */
  | { kind: 'retire-destination'; key: string }
  /** The new pool starts warming, the destination probing. */
  | { kind: 'start-destination'; key: string }
  /** Pool sizes and timeouts changed: applied to the running pool. */
  | { kind: 'resize-pool'; key: string; route: string; changed: string[] }
  /** Session timeouts or readyWhen changed: applied to the running route. */
  | { kind: 'reconfigure-route'; route: string; changed: string[] }
  | { kind: 'log-level'; level: Config['log']['level'] };

/** Route keys a running route takes in place (new sessions get them; readiness reads them). */
const IN_PLACE_ROUTE_KEYS = new Set(['idleTimeout', 'halfCloseTimeout', 'readyWhen']);

/** Pool keys a running pool takes in place (`Pool.configure`). */
const IN_PLACE_POOL_KEYS = new Set([
  'minIdle',
  'maxSize',
  'maxWaiters',
  'acquireTimeout',
  'idleTimeout',
  'maxLifetime',
]);

/**
 * Route keys that belong to the route (its listener, its sessions), not to the
 * destination it dials: changing them rebuilds the route on the same destination.
 */
const ROUTE_ONLY_KEYS = new Set<string>([
  'name',
  'listen',
  'tls',
  'upstream.host',
  // A protocol mode's settings: its pools are the route's (a new route, new pools).
  'postgres',
  'redis',
  ...IN_PLACE_ROUTE_KEYS,
  ...HTTP_ONLY_KEYS,
]);

/** Top-level keys applied in place; the rest refuse the reload. */
const IN_PLACE_TOP_KEYS = new Set(['log.level', 'drain.delay', 'drain.timeout']);

type PlannedConfig = Pick<Config, 'admin' | 'log' | 'drain' | 'workers'> & {
  routes: readonly RouteConfig[];
};

/**
 * `bound`: where each running route (by name) is bound, for routes configured on port 0.
 * A new config that names the port such a route was given (`127.0.0.1:0` running, bound
 * to 127.0.0.1:41234, and `127.0.0.1:41234` in the new config) keeps it: no change.
 */
export function planReload(
  runningConfig: PlannedConfig,
  next: PlannedConfig,
  bound: ReadonlyMap<string, string> = new Map(),
): ReloadPlan {
  const running = withBoundPorts(runningConfig, next, bound);
  const refusals = topLevelRefusals(running, next);
  const prepare: PrepareStep[] = [];
  const commit: CommitStep[] = [];

  // Destinations: one per key, made from the first route that names it (as the app does).
  const before = destinationsOf(running.routes);
  const after = destinationsOf(next.routes);
  const fresh = new Set<string>();
  for (const [key, route] of after) {
    const old = before.get(key);
    if (old === undefined) {
      fresh.add(key);
      prepare.push({ kind: 'create-destination', key, route: route.name, replaces: false });
      continue;
    }
    const changed = changedPaths(old, route);
    const rebuilt = changed.filter((path) => !isRouteOnly(path) && !isInPlacePool(path));
    if (rebuilt.length > 0) {
      fresh.add(key);
      prepare.push({ kind: 'create-destination', key, route: route.name, replaces: true });
      continue;
    }
    const resized = changed.filter(isInPlacePool);
    if (resized.length > 0)
      commit.push({ kind: 'resize-pool', key, route: route.name, changed: resized });
  }

  // Routes: kept in place, rebuilt (a new object, maybe on the listener it had), added, removed.
  const oldRoutes = new Map(running.routes.map((r) => [r.name, r]));
  const newRoutes = new Map(next.routes.map((r) => [r.name, r]));
  const started: RouteConfig[] = [];
  const retired: Array<{ route: RouteConfig; reason: 'removed' | 'rebuilt' }> = [];
  for (const route of next.routes) {
    const old = oldRoutes.get(route.name);
    if (old === undefined) {
      started.push(route);
      continue;
    }
    const key = destinationKey(route);
    const changed = changedPaths(old, route).filter((path) => !isInPlacePool(path));
    const rebuild =
      destinationKey(old) !== key ||
      fresh.has(key) ||
      changed.some((path) => !IN_PLACE_ROUTE_KEYS.has(topKey(path)));
    if (rebuild) {
      started.push(route);
      retired.push({ route: old, reason: 'rebuilt' });
    } else if (changed.length > 0) {
      commit.push({ kind: 'reconfigure-route', route: route.name, changed });
    }
  }
  for (const old of running.routes) {
    if (!newRoutes.has(old.name)) retired.push({ route: old, reason: 'removed' });
  }

  // A started route takes over the listener of a retired route on the same address.
  const released = new Map(retired.map(({ route }) => [bindingKey(route), route.name]));
  const attach: CommitStep[] = [];
  for (const route of started) {
    prepare.push({ kind: 'build-route', route: route.name });
    const from = released.get(bindingKey(route));
    if (from !== undefined) {
      released.delete(bindingKey(route));
      attach.push({ kind: 'attach', route: route.name, listener: { takeFrom: from } });
    } else {
      prepare.push({ kind: 'bind', route: route.name, listen: route.listen });
      attach.push({ kind: 'attach', route: route.name, listener: 'bound' });
    }
  }
  commit.unshift(
    ...attach,
    ...retired.map(({ route, reason }) => ({
      kind: 'retire-route' as const,
      route: route.name,
      reason,
    })),
    ...[...before.keys()]
      .filter((key) => !after.has(key) || fresh.has(key))
      .map((key) => ({ kind: 'retire-destination' as const, key })),
    ...[...fresh].map((key) => ({ kind: 'start-destination' as const, key })),
  );
  if (next.log.level !== running.log.level)
    commit.push({ kind: 'log-level', level: next.log.level });
  return { refusals, prepare, commit };
}

/** The running config, with a port-0 listen the new config names by its bound port replaced. */
function withBoundPorts(
  running: PlannedConfig,
  next: PlannedConfig,
  bound: ReadonlyMap<string, string>,
): PlannedConfig {
  const nextListen = new Map(next.routes.map((r) => [r.name, r.listen]));
  const routes = running.routes.map((route) => {
    const address = listenAddress(route.listen);
    const wanted = nextListen.get(route.name);
    const at = bound.get(route.name);
    if (address.kind !== 'tcp' || address.port !== 0 || wanted === undefined || at === undefined)
      return route;
    return formatAddress(listenAddress(wanted)) === at ? { ...route, listen: wanted } : route;
  });
  return { ...running, routes };
}

/** Each destination key, with the first route (in config order) that dials it. */
function destinationsOf(routes: readonly RouteConfig[]): Map<string, RouteConfig> {
  const out = new Map<string, RouteConfig>();
  for (const route of routes) {
    const key = destinationKey(route);
    if (!out.has(key)) out.set(key, route);
  }
  return out;
}

/**
 * What identifies a route's listener across a reload: its address; for port 0 (a port the
 * kernel picks) the route's name too, so that a rebuilt route keeps the port it was given.
 */
function bindingKey(route: RouteConfig): string {
  const address = listenAddress(route.listen);
  const text = formatAddress(address);
  return address.kind === 'tcp' && address.port === 0 ? `${route.name}\u0000${text}` : text;
}

function topLevelRefusals(running: PlannedConfig, next: PlannedConfig): ConfigIssue[] {
  const { routes: _a, ...a } = running;
  const { routes: _b, ...b } = next;
  return changedPaths(a, b)
    .filter((path) => !IN_PLACE_TOP_KEYS.has(path))
    .map((path) => ({
      path,
      message: `changes on restart only (running: ${describeValue(valueAt(a, path))}, new: ${describeValue(valueAt(b, path))}); the reload is refused: put it back, or restart`,
    }));
}

/** The paths (`pool.maxSize`, `upstream.tls`, `health`) where two values differ. */
export function changedPaths(a: unknown, b: unknown, prefix = ''): string[] {
  if (isDeepStrictEqual(a, b)) return [];
  if (isPlainObject(a) && isPlainObject(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].flatMap((key) =>
      changedPaths(a[key], b[key], prefix === '' ? key : `${prefix}.${key}`),
    );
  }
  return [prefix];
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function topKey(path: string): string {
  const dot = path.indexOf('.');
  return dot < 0 ? path : path.slice(0, dot);
}

function isRouteOnly(path: string): boolean {
  return ROUTE_ONLY_KEYS.has(path) || ROUTE_ONLY_KEYS.has(topKey(path));
}

function isInPlacePool(path: string): boolean {
  return path.startsWith('pool.') && IN_PLACE_POOL_KEYS.has(path.slice('pool.'.length));
}

function valueAt(value: unknown, path: string): unknown {
  let at = value;
  for (const part of path.split('.')) at = isPlainObject(at) ? at[part] : undefined;
  return at;
}

function describeValue(value: unknown): string {
  return value === undefined ? 'not set' : JSON.stringify(value);
}
