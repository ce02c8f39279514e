import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isDeepStrictEqual } from 'node:util';
import YAML from 'yaml';
import type { core } from 'zod';
import { ConfigError, type ConfigIssue, describe } from '../errors.js';
import { parseAddress, formatAddress } from './address.js';
import { bindingConflicts, bindingIssues, bindingsOf } from './listeners.js';
import { configSchema, type Config, type RouteConfig } from './schema.js';

/** Values given on the command line; each overrides the config file. */
export interface ConfigFlags {
  listen?: string | undefined;
  upstream?: string | undefined;
  mode?: string | undefined;
  minIdle?: number | undefined;
  maxSize?: number | undefined;
  admin?: string | undefined;
  logLevel?: string | undefined;
  workers?: number | undefined;
}

/** Reads a YAML or JSON file into plain data; a syntax error names the file and line. */
export async function readConfigFile(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError([{ path: '', message: `cannot read ${path}: ${describe(err)}` }], {
      cause: err,
    });
  }
  const doc = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => ({
        path: '',
        message: `${path}: ${e.message.split('\n')[0] ?? e.message}`,
      })),
    );
  }
  try {
    // maxAliasCount (yaml's default, said here): a file of nested aliases ("billion
    // laughs") would expand to gigabytes; it is refused instead.
    return doc.toJS({ maxAliasCount: 100 }) ?? {};
  } catch (err) {
    throw new ConfigError([{ path: '', message: `${path}: ${describe(err)}` }], { cause: err });
  }
}

/**
 * Lays command-line flags over the raw file data. Global flags (`--admin`, `--log-level`)
 * override the file. `--listen`/`--upstream` define a single route: merged onto the file's
 * route when it has at most one. `--mode`, `--min-idle` and `--max-size` apply to every
 * route.
 */
export function applyFlags(raw: unknown, flags: ConfigFlags): unknown {
  const input: Record<string, unknown> = isRecord(raw) ? { ...raw } : {};
  if (flags.admin !== undefined) {
    input.admin =
      flags.admin === 'false' || flags.admin === 'off'
        ? false
        : { ...(isRecord(input.admin) ? input.admin : {}), listen: flags.admin };
  }
  if (flags.workers !== undefined) input.workers = flags.workers;
  if (flags.logLevel !== undefined) {
    input.log = { ...(isRecord(input.log) ? input.log : {}), level: flags.logLevel };
  }

  let routes: unknown[] = Array.isArray(input.routes) ? [...(input.routes as unknown[])] : [];
  if (flags.listen !== undefined || flags.upstream !== undefined) {
    if (routes.length > 1) {
      throw new ConfigError([
        {
          path: 'routes',
          message: `--listen/--upstream define a single route, but the config file has ${routes.length} routes`,
        },
      ]);
    }
    const base: Record<string, unknown> = isRecord(routes[0]) ? { ...routes[0] } : {};
    if (flags.listen !== undefined) base.listen = flags.listen;
    if (flags.upstream !== undefined) base.upstream = flags.upstream;
    routes = [base];
  }
  routes = routes.map((route) => {
    if (!isRecord(route)) return route;
    const merged: Record<string, unknown> = { ...route };
    if (flags.mode !== undefined) merged.mode = flags.mode;
    if (flags.minIdle !== undefined || flags.maxSize !== undefined) {
      const pool: Record<string, unknown> = isRecord(merged.pool) ? { ...merged.pool } : {};
      if (flags.minIdle !== undefined) pool.minIdle = flags.minIdle;
      if (flags.maxSize !== undefined) pool.maxSize = flags.maxSize;
      merged.pool = pool;
    }
    return merged;
  });
  if (routes.length > 0 || 'routes' in input) input.routes = routes;
  return input;
}

/**
 * Validates raw config data: schema first, then the rules that span fields. Throws one
 * ConfigError listing every problem. The result is deeply frozen.
 */
export function parseConfig(raw: unknown): Config {
  const result = configSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(result.error.issues.flatMap(toConfigIssues));
  const config = result.data;
  const issues = crossFieldIssues(config);
  if (issues.length > 0) throw new ConfigError(issues);
  return deepFreeze(config);
}

/**
 * Reads the file (if any), applies the flags and validates, then checks what `run` would
 * find when it binds (see bindingIssues): a config this accepts is one `run` can start.
 */
export async function loadConfig(
  path: string | undefined,
  flags: ConfigFlags = {},
): Promise<Config> {
  const raw = path === undefined ? {} : await readConfigFile(path);
  if (path === undefined && flags.listen === undefined && flags.upstream === undefined) {
    throw new ConfigError([
      {
        path: '',
        message:
          'no configuration: give --config FILE (or SIDEPOOL_CONFIG), or --listen and --upstream',
      },
    ]);
  }
  const input = applyFlags(raw, flags);
  try {
    const config = parseConfig(input);
    // What binding would find: listen names resolved, unix socket directories.
    const issues = await bindingIssues(bindingsOf(config));
    if (issues.length > 0) throw new ConfigError(issues);
    return config;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new ConfigError(
      err.issues.map((issue) => namingFlags(issue, flags, input)),
      { cause: err },
    );
  }
}

/**
 * A problem with a value a flag gave names the flag (`--max-size: must be at most 65535
 * (routes[0].pool.maxSize)`), and a route the flags define but leave half-made says which
 * flag is missing.
 */
export function namingFlags(issue: ConfigIssue, flags: ConfigFlags, input: unknown): ConfigIssue {
  const routeFlags: Array<[RegExp, keyof ConfigFlags, string]> = [
    [/^routes\[0\]\.listen$/, 'listen', '--listen'],
    [/^routes\[0\]\.upstream(\.|$)/, 'upstream', '--upstream'],
    [/^routes\[\d+\]\.mode$/, 'mode', '--mode'],
    [/^routes\[\d+\]\.pool\.minIdle$/, 'minIdle', '--min-idle'],
    [/^routes\[\d+\]\.pool\.maxSize$/, 'maxSize', '--max-size'],
    [/^admin(\.listen)?$/, 'admin', '--admin'],
    [/^log\.level$/, 'logLevel', '--log-level'],
    [/^workers$/, 'workers', '--workers'],
  ];
  for (const [path, key, flag] of routeFlags) {
    if (!path.test(issue.path) || flags[key] === undefined) continue;
    return { path: flag, message: `${issue.message} (${issue.path})` };
  }
  // --listen without --upstream (or the reverse), and no route in the file to complete it.
  const route = isRecord(input) && Array.isArray(input.routes) ? (input.routes[0] as unknown) : {};
  const missing: Array<[string, keyof ConfigFlags, string, string]> = [
    ['upstream', 'listen', '--upstream', '--listen'],
    ['listen', 'upstream', '--listen', '--upstream'],
  ];
  for (const [key, given, flag, other] of missing) {
    const absent = !isRecord(route) || route[key] === undefined;
    if (issue.path === `routes[0].${key}` && flags[given] !== undefined && absent) {
      return {
        path: flag,
        message: `is required with ${other} (or in the config file's route)`,
      };
    }
  }
  return issue;
}

/** The key that decides which routes share a pool: the same upstream addresses or DNS name. */
export function destinationKey(route: RouteConfig): string {
  const tls = route.upstream.tls === undefined ? '' : `+tls:${tlsIdentity(route)}`;
  // A pool serves one mode: http links are reused across requests, tcp links never are.
  const mode = route.mode === 'tcp' ? '' : `+${route.mode}`;
  if (route.upstream.dns !== undefined) {
    return `dns:${normaliseAddress(route.upstream.dns)}${tls}${mode}`;
  }
  return route.upstream.addresses.map(normaliseAddress).join(',') + tls + mode;
}

/**
 * The readable name of a route's pool, for logs and metrics: its endpoints, plus `+tls`
 * when the links are TLS (e.g. `db.example.com:5432+tls`). Unlike the key, two pools to
 * the same endpoints with different TLS settings share a name.
 */
export function destinationName(route: RouteConfig): string {
  const key = destinationKey(route);
  return route.upstream.tls === undefined ? key : key.slice(0, key.lastIndexOf('+tls:') + 4);
}

/**
 * A short digest of everything that makes one TLS link differ from another (server name,
 * CA, client certificate, versions, ALPN, verification), so that routes with different
 * TLS settings never share links. File paths, not contents: contents may rotate.
 */
function tlsIdentity(route: RouteConfig): string {
  return createHash('sha256').update(JSON.stringify(route.upstream.tls)).digest('hex').slice(0, 8);
}

/**
 * What routes that share a pool must agree on. `upstream.host` is not among them: it is
 * a per-route rewrite of requests, not a property of the links.
 */
function poolShape(
  route: RouteConfig,
): Record<'pool' | 'upstream' | 'health' | 'outlier', unknown> {
  const { host: _host, ...upstream } = route.upstream;
  return { pool: route.pool, upstream, health: route.health, outlier: route.outlier };
}

function normaliseAddress(text: string): string {
  const parsed = parseAddress(text);
  return typeof parsed === 'string' ? text : formatAddress(parsed);
}

function crossFieldIssues(config: Config): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const names = new Map<string, number>();
  const pools = new Map<string, number>();
  const listenIssues = new Map(
    bindingConflicts(bindingsOf(config)).map((issue) => [issue.path, issue]),
  );
  for (const [path, issue] of listenIssues) if (!path.startsWith('routes[')) issues.push(issue);
  config.routes.forEach((route, i) => {
    const at = `routes[${i}]`;
    if (route.pool.minIdle > route.pool.maxSize) {
      issues.push({
        path: `${at}.pool.minIdle`,
        message: `minIdle (${route.pool.minIdle}) must not exceed maxSize (${route.pool.maxSize})`,
      });
    }
    if (config.workers > route.pool.maxSize) {
      issues.push({
        path: `${at}.pool.maxSize`,
        message: `maxSize (${route.pool.maxSize}) must be at least workers (${config.workers}): each worker holds a share of the pool`,
      });
    }
    const nameAt = names.get(route.name);
    if (nameAt !== undefined) {
      issues.push({
        path: `${at}.name`,
        message: `"${route.name}" is already the name of routes[${nameAt}]`,
      });
    } else names.set(route.name, i);

    const listenIssue = listenIssues.get(`${at}.listen`);
    if (listenIssue !== undefined) issues.push(listenIssue);

    const key = destinationKey(route);
    const poolAt = pools.get(key);
    if (poolAt === undefined) pools.set(key, i);
    else {
      const mine = poolShape(route);
      const theirs = poolShape(config.routes[poolAt] as RouteConfig);
      const field = (['pool', 'upstream', 'health', 'outlier'] as const).find(
        (f) => !isDeepStrictEqual(mine[f], theirs[f]),
      );
      if (field !== undefined) {
        issues.push({
          path: `${at}.${field}`,
          message: `routes[${poolAt}] has the same upstream (${key}) with other ${field} settings; routes to one upstream share one pool, so give them the same ${field} settings`,
        });
      }
    }
  });
  return issues;
}

function toConfigIssues(issue: core.$ZodIssue): ConfigIssue[] {
  const path = formatPath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => ({
      path: path ? `${path}.${key}` : key,
      message: 'unknown key',
    }));
  }
  if (issue.code === 'invalid_value' && 'values' in issue) {
    return [
      {
        path,
        message: `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`,
      },
    ];
  }
  if (issue.code === 'invalid_type' && issue.message.endsWith('received undefined')) {
    return [{ path, message: `is required (expected ${issue.expected})` }];
  }
  return [{ path, message: issue.message }];
}

function formatPath(path: PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? String(part) : `.${String(part)}`;
  }
  return out;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
