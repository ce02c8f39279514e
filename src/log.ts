import { createRequire } from 'node:module';
import pino, { type Logger } from 'pino';
import { REDACTED, logRedactPaths } from './config/redact.js';

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';

/**
 * JSON lines on stdout; readable colour lines when stdout is a terminal. Written
 * synchronously so that the last lines before an exit are never lost.
 */
export function createLogger(level: LogLevel, destination?: NodeJS.WritableStream): Logger {
  const options = {
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    // No credential reaches a log line (config/redact.ts has the rule).
    redact: { paths: logRedactPaths(), censor: REDACTED },
  };
  if (destination !== undefined) return pino(options, destination);
  if (process.stdout.isTTY) {
    // Loaded only for a terminal: a sidecar writes JSON and need not carry it.
    const pretty = createRequire(import.meta.url)('pino-pretty') as typeof import('pino-pretty');
    return pino(options, pretty({ sync: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid' }));
  }
  return pino(options, pino.destination({ dest: 1, sync: true }));
}
