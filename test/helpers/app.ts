import { App } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';
import { captureLogger } from './util.js';

/** Runs sidepool in-process with one route to `upstream`; listens on a free port. */
export async function startProxy(
  upstream: string | { addresses: string[] },
  pool: Record<string, unknown> = {},
  route: Record<string, unknown> = {},
) {
  const config = parseConfig({
    admin: false,
    routes: [{ name: 'test', listen: '127.0.0.1:0', upstream, pool, ...route }],
  });
  const { logger, lines } = captureLogger('debug');
  const app = new App(config, logger);
  await app.start();
  const route0 = app.routes[0];
  if (route0 === undefined) throw new Error('no route');
  const pool0 = route0.pool;
  return { app, route: route0, pool: pool0, port: route0.port, lines };
}
