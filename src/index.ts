/**
 * sidepool as a library: run the proxy from a configuration inside another Node process.
 * The CLI (`sidepool run`) is a thin layer over these.
 */
export { App, type AppOptions } from './app.js';
export { loadConfig, parseConfig, applyFlags, type ConfigFlags } from './config/load.js';
export type {
  Config,
  RouteConfig,
  PoolConfig,
  UpstreamConfig,
  ConfigInput,
} from './config/schema.js';
export { createLogger, type LogLevel } from './log.js';
export { Metrics } from './admin/metrics.js';
export * from './errors.js';
