import { App, type AppOptions } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';
import { captureLogger } from './util.js';

/** Runs sidepool in-process with one route to `upstream`; listens on a free port. */
export async function startProxy(
  upstream: string | { addresses: string[] },
  pool: Record<string, unknown> = {},
  route: Record<string, unknown> = {},
  top: Record<string, unknown> = { admin: false },
  options: AppOptions = {},
) {
  const config = parseConfig({
    ...top,
    routes: [{ name: 'test', listen: '127.0.0.1:0', upstream, pool, ...route }],
  });
  const { logger, lines } = captureLogger('debug');
  const app = new App(config, logger, options);
  await app.start();
  const route0 = app.firstRoute;
  return { app, route: route0, pool: route0.pool, port: route0.port, lines };
}
