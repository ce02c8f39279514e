import { HTTP_ONLY_KEYS, ROUTE_KEYS, type Config, type RouteConfig } from './schema.js';

/**
 * The config in force as a config file would say it: every default filled, and nothing a
 * config file may not say. `check` prints it and `/config` serves it (redacted), so it must
 * load as a config and load to the same one: keys a route's mode does not read (the http
 * defaults on a tcp route) and the empty `addresses` of a `dns` upstream are left out.
 */
export function effectiveConfig(config: Config): Record<string, unknown> {
  return { ...config, routes: config.routes.map(effectiveRoute) };
}

function effectiveRoute(route: RouteConfig): Record<string, unknown> {
  // In the schema's order, so that printing the printed config prints the same text.
  const out: Record<string, unknown> = {};
  for (const key of ROUTE_KEYS) {
    const value = (route as Record<string, unknown>)[key];
    if (value !== undefined) out[key] = value;
  }
  if (route.mode !== 'http') for (const key of HTTP_ONLY_KEYS) delete out[key];
  if (route.upstream.dns !== undefined) {
    const { addresses: _none, ...upstream } = route.upstream;
    out.upstream = upstream;
  }
  return out;
}
