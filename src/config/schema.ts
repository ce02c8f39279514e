import { z } from 'zod';
import { parseAddress } from './address.js';
import { parseDuration } from './duration.js';

/**
 * The configuration schema: the one place where config keys, their types and their
 * defaults are written down. The TypeScript types are inferred from it.
 */

const duration = z
  .union([z.string(), z.number()], {
    error: 'expected a duration such as 250ms, 5s, 5m, 1h, or a number of milliseconds',
  })
  .transform((value, ctx) => {
    const ms = parseDuration(value);
    if (ms === undefined) {
      ctx.addIssue({
        code: 'custom',
        message: `expected a duration such as 250ms, 5s, 5m, 1h, or a number of milliseconds, got ${JSON.stringify(value)}`,
      });
      return z.NEVER;
    }
    return ms;
  });

function address(kind: 'listen' | 'upstream') {
  return z
    .string({ error: 'expected an address string such as 127.0.0.1:6380' })
    .superRefine((value, ctx) => {
      const parsed = parseAddress(value, {
        allowAnyHost: kind === 'listen',
        allowPortZero: kind === 'listen',
      });
      if (typeof parsed === 'string') ctx.addIssue({ code: 'custom', message: parsed });
    });
}

const count = (min: number) =>
  z
    .number({
      error: (issue) => (issue.code === 'invalid_type' ? 'expected a whole number' : undefined),
    })
    .int('expected a whole number')
    .min(min, `must be at least ${min}`);

export const poolSchema = z
  .strictObject({
    /** Warm links kept ready; default 4, or maxSize when that is smaller. */
    minIdle: count(0).optional(),
    /** Links per destination: idle + active + connecting. */
    maxSize: count(1).default(64),
    /** Downstreams that may queue while the pool is at maxSize. */
    maxWaiters: count(0).default(1024),
    /** A downstream queued longer than this is closed. */
    acquireTimeout: duration.default(5000),
    /** A dial (TCP connect, and TLS handshake) longer than this fails. */
    connectTimeout: duration.default(3000),
    /** Idle links above minIdle close after this; warm ones are replaced by fresh ones. */
    idleTimeout: duration.default(300_000),
    /** Idle links older than this close (±10% jitter). 0 = no limit. */
    maxLifetime: duration.default(3_600_000),
  })
  .transform(({ minIdle, ...pool }) => ({
    minIdle: minIdle ?? Math.min(4, pool.maxSize),
    ...pool,
  }));

const upstreamObject = z
  .strictObject({
    address: address('upstream').optional(),
    addresses: z.array(address('upstream')).min(1, 'expected at least one address').optional(),
  })
  .superRefine((value, ctx) => {
    if (value.address === undefined && value.addresses === undefined) {
      ctx.addIssue({ code: 'custom', message: 'expected "address" or "addresses"' });
    }
    if (value.address !== undefined && value.addresses !== undefined) {
      ctx.addIssue({ code: 'custom', message: 'give "address" or "addresses", not both' });
    }
  })
  .transform((value) => ({ addresses: value.addresses ?? [value.address as string] }));

/** `upstream: host:port` is shorthand for `upstream: { address: host:port }`. */
export const upstreamSchema = z.preprocess(
  (value) => (typeof value === 'string' ? { address: value } : value),
  upstreamObject,
);

export const routeSchema = z.strictObject({
  /** A name for logs and metrics; defaults to the listen address. */
  name: z
    .string()
    .regex(/^[A-Za-z0-9_.:-]+$/, 'expected letters, digits, "_", ".", ":" or "-"')
    .optional(),
  /** host:port, or a unix socket path. */
  listen: address('listen'),
  /** What sidepool understands of the bytes. */
  mode: z.enum(['tcp']).default('tcp'),
  upstream: upstreamSchema,
  /** Downstream session idle timeout; 0 = none. */
  idleTimeout: duration.default(0),
  /** After one side's FIN, the other side must finish within this; 0 = none. */
  halfCloseTimeout: duration.default(30_000),
  pool: poolSchema.prefault({}),
});

export const configSchema = z
  .strictObject({
    admin: z
      .union([
        z.literal(false),
        z.strictObject({ listen: address('listen').default('127.0.0.1:9901') }),
      ])
      .default({ listen: '127.0.0.1:9901' }),
    log: z
      .strictObject({
        level: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'),
      })
      .prefault({}),
    drain: z
      .strictObject({
        /** After SIGTERM, listeners keep accepting this long before they close. */
        delay: duration.default(0),
        /** Active sessions may run this long after the listeners close. */
        timeout: duration.default(30_000),
      })
      .prefault({}),
    routes: z.array(routeSchema).min(1, 'expected at least one route'),
  })
  .transform((config) => ({
    ...config,
    routes: config.routes.map(({ name, ...route }) => ({ name: name ?? route.listen, ...route })),
  }));

export type Config = z.output<typeof configSchema>;
export type RouteConfig = Config['routes'][number];
export type PoolConfig = z.output<typeof poolSchema>;
export type UpstreamConfig = z.output<typeof upstreamSchema>;
export type ConfigInput = z.input<typeof configSchema>;
