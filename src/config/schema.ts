import { accessSync, constants, readFileSync } from 'node:fs';
import { z } from 'zod';
import { isLoopback, parseAddress } from './address.js';
import { formatDuration, parseDuration } from './duration.js';

/**
 * The configuration schema: the one place where config keys, their types and their
 * defaults are written down. The TypeScript types are inferred from it.
 */

/**
 * The longest duration a setTimeout keeps: Node turns anything above 2^31−1 ms into 1 ms.
 * 596h is the largest whole number of hours below it.
 */
export const MAX_DURATION_MS = 596 * 3_600_000;

/**
 * A duration in milliseconds, at most `maxMs` (which must keep every timer made from it
 * in range). With `positive`, 0 is refused: for keys where 0 would mean "at once, in a
 * loop" rather than "off".
 */
function durationOf(options: { positive?: boolean; maxMs?: number } = {}) {
  const maxMs = options.maxMs ?? MAX_DURATION_MS;
  return z
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
      if (ms > maxMs) {
        ctx.addIssue({
          code: 'custom',
          message: `must be at most ${formatDuration(maxMs)} (${maxMs} ms), got ${JSON.stringify(value)}: Node's timers hold no longer`,
        });
        return z.NEVER;
      }
      if (options.positive === true && ms === 0) {
        ctx.addIssue({ code: 'custom', message: 'must be more than 0' });
        return z.NEVER;
      }
      return ms;
    });
}

const duration = durationOf();
const positiveDuration = durationOf({ positive: true });

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

/** A whole number from `min` to `max`. */
const count = (min: number, max: number) =>
  z
    .number({
      error: (issue) => (issue.code === 'invalid_type' ? 'expected a whole number' : undefined),
    })
    .superRefine((value, ctx) => {
      // Bounds first: 1e300 is "at most", not "not a whole number" (zod's int() says so
      // of anything above 2^53).
      if (value > max) ctx.addIssue({ code: 'custom', message: `must be at most ${max}` });
      else if (value < min) ctx.addIssue({ code: 'custom', message: `must be at least ${min}` });
      else if (!Number.isInteger(value))
        ctx.addIssue({ code: 'custom', message: 'expected a whole number' });
    });

/** One source address holds at most this many connections to one endpoint (ports). */
const MAX_LINKS = 65_535;

export const poolSchema = z
  .strictObject({
    /** Warm links kept ready; default 4, or maxSize when that is smaller. */
    minIdle: count(0, MAX_LINKS).optional(),
    /** Links per destination: idle + active + connecting. */
    maxSize: count(1, MAX_LINKS).default(64),
    /** Downstreams that may queue while the pool is at maxSize (each holds a socket). */
    maxWaiters: count(0, 1_000_000).default(1024),
    /** A downstream queued longer than this is closed. 0 = it waits without limit. */
    acquireTimeout: duration.default(5000),
    /** A dial (TCP connect, and TLS handshake) longer than this fails. 0 = no limit. */
    connectTimeout: duration.default(3000),
    /**
     * Idle links above minIdle close after this; warm ones are replaced by fresh ones.
     * 0 = idle links are kept.
     */
    idleTimeout: duration.default(300_000),
    /**
     * Idle links older than this close (±10% jitter, hence the lower limit). 0 = no limit.
     */
    maxLifetime: durationOf({ maxMs: 540 * 3_600_000 }).default(3_600_000),
  })
  .transform(({ minIdle, ...pool }) => ({
    minIdle: minIdle ?? Math.min(4, pool.maxSize),
    ...pool,
  }));

/** A file that must be readable when the config is loaded; relative to the working directory. */
const readableFile = z
  .string({ error: 'expected a file path' })
  .min(1, 'expected a file path')
  .superRefine((file, ctx) => {
    try {
      accessSync(file, constants.R_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'EACCES';
      ctx.addIssue({ code: 'custom', message: `cannot read ${file} (${code})` });
    }
  });

const tlsVersion = z.enum(['TLSv1.2', 'TLSv1.3']);

function certAndKeyTogether(value: { cert?: string; key?: string }, ctx: z.RefinementCtx): void {
  if ((value.cert === undefined) !== (value.key === undefined)) {
    ctx.addIssue({
      code: 'custom',
      path: [value.cert === undefined ? 'cert' : 'key'],
      message: 'cert and key must be given together',
    });
  }
}

/** TLS to the upstream (origination). Verification is on unless insecureSkipVerify. */
export const upstreamTlsSchema = z
  .strictObject({
    /** SNI and the name verified; default: the host of the address (or of `dns`). */
    servername: z.string().min(1).optional(),
    /**
     * PEM bundle of trusted CAs, which replaces the default: Node's bundled roots, plus
     * the system store where the runtime can read it (src/tls/trust.ts).
     */
    ca: readableFile.optional(),
    /** Client certificate and key, for upstreams that require mTLS. */
    cert: readableFile.optional(),
    key: readableFile.optional(),
    minVersion: tlsVersion.default('TLSv1.2'),
    /** ALPN protocols offered, in order of preference. */
    alpn: z.array(z.string().min(1).max(255)).min(1).optional(),
    /** Replacement dials resume a cached TLS session instead of a full handshake. */
    sessionResumption: z.boolean().default(true),
    /** Encrypt without authenticating the upstream. Logged as a warning at start. */
    insecureSkipVerify: z.boolean().default(false),
  })
  .superRefine(certAndKeyTogether);

/** `tls: true` is shorthand for `tls: {}`: the default trust, the address's host as the name. */
const upstreamTls = z.preprocess(
  (value) => (value === true ? {} : value === false ? undefined : value),
  upstreamTlsSchema.optional(),
);

/** TLS on a route's listener (termination). */
export const routeTlsSchema = z
  .strictObject({
    /** The certificate (and chain) the listener presents, and its key. */
    cert: readableFile,
    key: readableFile,
    /** CAs whose client certificates are accepted. */
    ca: readableFile.optional(),
    /** mTLS: refuse downstreams without a certificate that `ca` verifies. */
    requireClientCert: z.boolean().default(false),
    minVersion: tlsVersion.default('TLSv1.2'),
    /** A downstream that has not finished its handshake by then is closed. 0 = no limit. */
    handshakeTimeout: duration.default(10_000),
  })
  .superRefine((value, ctx) => {
    if (value.requireClientCert && value.ca === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['ca'],
        message: 'requireClientCert needs ca: the CA that signs the client certificates',
      });
    }
  });

/** A Host field value: host (name or IP literal) and an optional port. */
const HOST_VALUE = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::\d{1,5})?$/;

const upstreamObject = z
  .strictObject({
    /** http mode: the Host sent upstream, in place of the app's. */
    host: z
      .string()
      .regex(HOST_VALUE, 'expected a Host value such as api.example.com or 10.0.0.5:8080')
      .optional(),
    /** One static endpoint. */
    address: address('upstream').optional(),
    /** Several static endpoints. */
    addresses: z.array(address('upstream')).min(1, 'expected at least one address').optional(),
    /** A DNS name (host:port) resolved, A and AAAA, at start and every dnsRefresh. */
    dns: address('upstream').optional(),
    /** How often `dns` is resolved again. 0 = only at start. */
    dnsRefresh: duration.default(30_000),
    /** DNS servers to ask (host:port); default: the system's. */
    resolvers: z.array(address('upstream')).min(1).optional(),
    /** How new dials are spread over healthy endpoints. */
    balance: z.enum(['least-active', 'round-robin']).default('least-active'),
    /** TLS to the upstream; plain TCP when not given. */
    tls: upstreamTls,
  })
  .superRefine((value, ctx) => {
    const given = [value.address, value.addresses, value.dns].filter((v) => v !== undefined).length;
    if (given === 0) {
      ctx.addIssue({ code: 'custom', message: 'expected "address", "addresses" or "dns"' });
    }
    if (given > 1) {
      ctx.addIssue({ code: 'custom', message: 'give one of "address", "addresses" or "dns"' });
    }
  })
  .transform(({ address, addresses, ...rest }) => ({
    addresses: addresses ?? (address === undefined ? [] : [address]),
    ...rest,
  }));

/** `upstream: host:port` is shorthand for `upstream: { address: host:port }`. */
export const upstreamSchema = z.preprocess(
  (value) => (typeof value === 'string' ? { address: value } : value),
  upstreamObject,
);

const probeSchema = z.union(
  [
    z.enum(['tcp', 'redis']),
    z.strictObject({
      /** Bytes to send. */
      send: z.string(),
      /** What the reply must start with; `/regex/` to match a pattern. */
      expect: z.string().min(1),
    }),
    z.strictObject({
      http: z.strictObject({
        path: z.string().startsWith('/').default('/'),
        expectStatus: count(100, 599).default(200),
        /** Host header; default: the endpoint address. */
        host: z.string().optional(),
      }),
    }),
  ],
  { error: 'expected tcp, redis, { send, expect } or { http: { path, expectStatus } }' },
);

/** Active health probes, on their own connections. */
export const healthSchema = z.strictObject({
  interval: positiveDuration.default(10_000),
  /** A probe (connect, TLS, exchange) that takes longer fails. */
  timeout: positiveDuration.default(2000),
  healthyThreshold: count(1, 1000).default(2),
  unhealthyThreshold: count(1, 1000).default(3),
  probe: probeSchema.default('tcp'),
});

/** Passive outlier detection from dial failures, TLS failures and resets. */
export const outlierSchema = z.strictObject({
  /** Failures in a row that eject an endpoint; 0 turns ejection off. */
  consecutiveFailures: count(0, 1_000_000).default(5),
  /** The first ejection; each later one lasts this × times ejected. */
  baseEjectionTime: positiveDuration.default(30_000),
  maxEjectionTime: positiveDuration.default(300_000),
  /** Never eject more than this share of a destination's endpoints. */
  maxEjectedPercent: count(0, 100).default(50),
});

/** Route keys that only http mode reads. */
export const HTTP_ONLY_KEYS = [
  'upstreamKeepAlive',
  'responseTimeout',
  'headersTimeout',
  'requestBodyTimeout',
  'forwardedHeaders',
] as const;

interface HttpRouteKeys {
  mode: string;
  upstream: { host?: string | undefined };
  upstreamKeepAlive?: number | undefined;
  responseTimeout?: number | undefined;
  headersTimeout?: number | undefined;
  requestBodyTimeout?: number | undefined;
  forwardedHeaders?: boolean | undefined;
}

function httpOnlyKeys(route: HttpRouteKeys, ctx: z.RefinementCtx): void {
  if (route.mode === 'http') return;
  const message = `only for mode: http (this route is mode: ${route.mode})`;
  for (const key of HTTP_ONLY_KEYS) {
    if (route[key] !== undefined) ctx.addIssue({ code: 'custom', path: [key], message });
  }
  if (route.upstream.host !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['upstream', 'host'], message });
  }
}

/**
 * The http defaults: links idle 4s at most (below the keep-alive timeouts of common
 * upstreams: Node 5s, nginx 75s), 60s for a response, 10s for a request head, 60s for a
 * request body to progress (nginx's client_body_timeout). An http
 * pool's idle links are closed (and warm ones replaced) at upstreamKeepAlive, so that a
 * warm link is one the upstream still keeps.
 */
function withHttpDefaults<R extends HttpRouteKeys & { pool: { idleTimeout: number } }>(route: R) {
  const upstreamKeepAlive = route.upstreamKeepAlive ?? 4000;
  const idleTimeout =
    route.mode !== 'http' || upstreamKeepAlive === 0
      ? route.pool.idleTimeout
      : route.pool.idleTimeout === 0
        ? upstreamKeepAlive
        : Math.min(route.pool.idleTimeout, upstreamKeepAlive);
  return {
    ...route,
    upstreamKeepAlive,
    responseTimeout: route.responseTimeout ?? 60_000,
    headersTimeout: route.headersTimeout ?? 10_000,
    requestBodyTimeout: route.requestBodyTimeout ?? 60_000,
    forwardedHeaders: route.forwardedHeaders ?? false,
    pool: idleTimeout === route.pool.idleTimeout ? route.pool : { ...route.pool, idleTimeout },
  };
}

/** PgBouncer's default auth_query. */
export const DEFAULT_AUTH_QUERY = 'SELECT usename, passwd FROM pg_shadow WHERE usename = $1';

/** postgres mode: PostgreSQL wire protocol, pools per (database, user). */
export const postgresSchema = z
  .strictObject({
    /** session: a client keeps its backend until it leaves; transaction: per transaction. */
    poolMode: z.enum(['session', 'transaction']).default('transaction'),
    /** How clients prove who they are to sidepool. `trust` checks nothing. */
    authType: z.enum(['scram-sha-256', 'md5', 'password', 'trust']).default('scram-sha-256'),
    /** Users and secrets, in PgBouncer's auth_file format; re-read when it changes. */
    authFile: readableFile.optional(),
    /** With authQuery: the user (in authFile) that looks up the secrets of other users. */
    authUser: z.string().min(1).optional(),
    /** Run as authUser for a user not in authFile: returns (name, secret). */
    authQuery: z.string().min(1).default(DEFAULT_AUTH_QUERY),
    /** (database, user) pools warmed at start; others are made on first use. */
    pools: z
      .array(z.strictObject({ database: z.string().min(1), user: z.string().min(1) }))
      .default([]),
    /** Run on a backend before it serves another client, after a session (or pin) ends. */
    resetQuery: z.string().default('DISCARD ALL'),
    /** Backends idle longer than this are checked with an empty query before reuse; 0 = never. */
    checkAfter: duration.default(30_000),
    /** A client with session state in transaction mode: pin it to its backend, or refuse. */
    onSessionState: z.enum(['pin', 'error']).default('pin'),
    /** A client idle inside a transaction longer than this is disconnected; 0 = never. */
    idleTransactionTimeout: duration.default(0),
    /** A query running longer than this is cancelled and the client disconnected; 0 = never. */
    queryTimeout: duration.default(0),
    /** A client idle between transactions longer than this is disconnected; 0 = never. */
    clientIdleTimeout: duration.default(0),
    /**
     * Transaction pooling: named prepared statements kept per backend (an LRU); clients
     * with them share backends. 0 turns it off: a named Parse pins the client instead.
     */
    maxPreparedStatements: z.number().int().min(0).max(100_000).default(200),
    /** Bytes of prepared statement text (and types) kept for all clients of the route. */
    maxPreparedStatementBytes: z
      .number()
      .int()
      .min(1024)
      .default(64 * 1024 * 1024),
    /** Bytes of prepared statement text (and types) one client may keep. */
    maxClientPreparedStatementBytes: z
      .number()
      .int()
      .min(1024)
      .default(8 * 1024 * 1024),
  })
  .superRefine((value, ctx) => {
    if (value.authType !== 'trust' && value.authFile === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['authFile'],
        message: `authType ${value.authType} needs authFile (the users' secrets)`,
      });
    }
    if (value.authUser !== undefined && value.authFile === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['authFile'],
        message: 'authUser needs authFile (its own secret)',
      });
    }
  });

export type PostgresConfig = z.output<typeof postgresSchema>;

const SIZE_UNITS: Record<string, number> = { '': 1, b: 1, kib: 1024, mib: 1024 * 1024 };

/** A size in bytes: a whole number, or a string such as 512, 64KiB, 1MiB. */
function byteSize(min: number, max: number) {
  return z
    .union([z.number(), z.string()], {
      error: 'expected a size such as 64KiB, 1MiB, or a number of bytes',
    })
    .transform((value, ctx) => {
      const match = /^\s*(\d+)\s*(B|KiB|MiB)?\s*$/i.exec(String(value));
      const bytes =
        match === null
          ? undefined
          : Number(match[1]) * (SIZE_UNITS[(match[2] ?? '').toLowerCase()] as number);
      if (bytes === undefined || !Number.isSafeInteger(bytes)) {
        ctx.addIssue({
          code: 'custom',
          message: `expected a size such as 64KiB, 1MiB, or a number of bytes, got ${JSON.stringify(value)}`,
        });
        return z.NEVER;
      }
      if (bytes < min || bytes > max) {
        ctx.addIssue({ code: 'custom', message: `must be between ${min} and ${max} bytes` });
        return z.NEVER;
      }
      return bytes;
    });
}

/** redis mode: multiplexing, and the credentials of the upstream and of clients. */
export const redisSchema = z.strictObject({
  /** One write to a Redis link holds at most this; a larger command gets a link of its own. */
  maxBatchBytes: byteSize(1024, 64 * 1024 * 1024).default(64 * 1024),
  /** Replies outstanding per shared link; past it on every link, clients queue. */
  maxPending: count(1, 1_000_000).default(256),
  /** sidepool's login on every link: AUTH [username] <password in passwordFile>. */
  auth: z
    .strictObject({
      username: z.string().min(1).optional(),
      passwordFile: readableFile,
    })
    .optional(),
  /**
   * The password clients AUTH to sidepool with (checked here); default: auth's. `false`:
   * clients need not authenticate.
   */
  clientAuth: z
    .union([z.literal(false), z.strictObject({ passwordFile: readableFile })])
    .optional(),
});

const routeObject = z.strictObject({
  /** A name for logs and metrics; defaults to the listen address. */
  name: z
    .string()
    .regex(/^[A-Za-z0-9_.:-]+$/, 'expected letters, digits, "_", ".", ":" or "-"')
    .optional(),
  /** host:port, or a unix socket path. */
  listen: address('listen'),
  /** What sidepool understands of the bytes. */
  mode: z.enum(['tcp', 'http', 'postgres', 'redis']).default('tcp'),
  upstream: upstreamSchema,
  /** TLS termination: downstreams speak TLS to the listener; plain TCP when not given. */
  tls: routeTlsSchema.optional(),
  /** Downstream session idle timeout; 0 = none. */
  idleTimeout: duration.default(0),
  /** After one side's FIN, the other side must finish within this; 0 = none. */
  halfCloseTimeout: duration.default(30_000),
  /**
   * http mode: an idle upstream link is not reused after this long (nor past the timeout
   * the upstream announces); also caps pool.idleTimeout. 0 = no limit of ours. Default 4s.
   */
  upstreamKeepAlive: duration.optional(),
  /** http mode: the upstream must answer, and keep a body flowing, within this (else 504). */
  responseTimeout: duration.optional(),
  /** http mode: the app must send a complete request head within this (else 408). */
  headersTimeout: duration.optional(),
  /**
   * http mode: a request body must progress (1 KiB more of it, or its end) within this,
   * measured from the last time it did, not over the whole body (else 408). 0 = no limit.
   */
  requestBodyTimeout: duration.optional(),
  /** http mode: add X-Forwarded-For, X-Forwarded-Proto and Via. */
  forwardedHeaders: z.boolean().optional(),
  pool: poolSchema.prefault({}),
  /** Active probes; off when not given (passive outlier detection is always on). */
  health: healthSchema.optional(),
  outlier: outlierSchema.prefault({}),
  /** `/readyz` waits for the listener only, or also for a healthy upstream. */
  readyWhen: z.enum(['listening', 'upstreamHealthy']).default('listening'),
  /** postgres mode's settings. */
  postgres: postgresSchema.optional(),
  /** redis mode: multiplexing and credentials (defaults filled for redis routes). */
  redis: redisSchema.optional(),
});

/** `postgres:` only on postgres routes, where it gets its defaults; `password` needs TLS. */
function postgresKeys(route: z.output<typeof routeObject>, ctx: z.RefinementCtx): void {
  if (route.mode !== 'postgres') {
    if (route.postgres !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['postgres'],
        message: `only for mode: postgres (this route is mode: ${route.mode})`,
      });
    }
    return;
  }
  const settings = route.postgres ?? postgresSchema.parse({ authType: 'trust' });
  if (route.postgres === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['postgres'],
      message: 'a postgres route needs postgres: { authFile } (or authType: trust)',
    });
  }
  const unix = !/:\d+$/.test(route.listen);
  if (settings.authType === 'password' && route.tls === undefined && !unix) {
    ctx.addIssue({
      code: 'custom',
      path: ['postgres', 'authType'],
      message: 'password sends it in clear: only with tls on the route, or on a unix socket',
    });
  }
}

/** The `redis` key belongs to redis routes, which get its defaults when it is left out. */
function redisOnlyKeys(route: { mode: string; redis?: unknown }, ctx: z.RefinementCtx): void {
  if (route.mode !== 'redis' && route.redis !== undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['redis'],
      message: `only for mode: redis (this route is mode: ${route.mode})`,
    });
  }
}

function withRedisDefaults<R extends { mode: string; redis?: z.output<typeof redisSchema> }>(
  route: R,
) {
  return route.mode === 'redis' && route.redis === undefined
    ? { ...route, redis: redisSchema.parse({}) }
    : route;
}

/** A file holding a bearer token: readable, and not empty. */
const tokenFile = readableFile.superRefine((file, ctx) => {
  try {
    if (readFileSync(file, 'utf8').trim() === '') {
      ctx.addIssue({ code: 'custom', message: `${file} is empty: it must hold the token` });
    }
  } catch {
    // Unreadable: readableFile said so.
  }
});

/** A DNS name, as a Host header names it (no port). */
const HOST_NAME =
  /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/;

/**
 * The admin server. Probes and metrics (`/healthz`, `/readyz`, `/metrics`) are served on
 * `listen`; control and introspection (`/reload`, `/drain`, `/config`, `/pools`) only on
 * a loopback listener (`controlListen`, else `listen` when it is loopback) or with
 * `tokenFile`'s bearer token. README, "Security".
 */
export const adminSchema = z
  .strictObject({
    listen: address('listen').default('127.0.0.1:9901'),
    /** Control and introspection on a listener of their own: loopback, unless tokenFile. */
    controlListen: address('listen').optional(),
    /** A bearer token (the file's content) that every control request must carry. */
    tokenFile: tokenFile.optional(),
    /** Host names control requests may name, besides localhost and IP addresses. */
    hosts: z
      .array(z.string().regex(HOST_NAME, 'expected a host name such as sidepool.internal'))
      .optional(),
  })
  .superRefine((admin, ctx) => {
    if (admin.controlListen === undefined || admin.tokenFile !== undefined) return;
    const control = parseAddress(admin.controlListen, { allowAnyHost: true, allowPortZero: true });
    if (typeof control === 'object' && !isLoopback(control)) {
      ctx.addIssue({
        code: 'custom',
        path: ['controlListen'],
        message: `${admin.controlListen} is reachable from other hosts: bind control to loopback (127.0.0.1, [::1] or a unix socket), or set admin.tokenFile`,
      });
    }
  });

/** A route's keys in the order the schema gives them, for printing. */
export const ROUTE_KEYS: readonly string[] = Object.keys(routeObject.shape);

export const routeSchema = routeObject
  .superRefine(httpOnlyKeys)
  .superRefine(postgresKeys)
  .superRefine(redisOnlyKeys)
  .transform(withHttpDefaults)
  .transform(withRedisDefaults);

export const configSchema = z
  .strictObject({
    admin: z.union([z.literal(false), adminSchema]).default({ listen: '127.0.0.1:9901' }),
    log: z
      .strictObject({
        level: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'),
      })
      .prefault({}),
    drain: z
      .strictObject({
        /** After SIGTERM, listeners keep accepting this long before they close. */
        delay: duration.default(0),
        /**
         * Active sessions may run this long after the listeners close (also for routes a
         * reload retires). 0 = they are ended at once.
         */
        timeout: duration.default(30_000),
      })
      .prefault({}),
    /**
     * Processes that serve the routes. Above 1, a primary process runs the admin server
     * and this many workers accept on the shared listeners, each with its share of every
     * pool's minIdle, maxSize and maxWaiters.
     */
    workers: count(1, 64).default(1),
    /**
     * With workers: `shared`, every worker accepts on the one socket the primary binds
     * (whichever worker the kernel wakes takes the connection, so a busy worker takes
     * fewer); `own`, each worker binds a socket of its own for every TCP route
     * (SO_REUSEPORT: the kernel hashes connections over them, busy or not), where Node.js
     * has `reusePort` (22.12 and later, on Linux). Routes on port 0 or a unix socket always
     * share. `shared` is the default because it measured faster (README, Workers).
     */
    workerSockets: z.enum(['own', 'shared']).default('shared'),
    routes: z.array(routeSchema).min(1, 'expected at least one route'),
  })
  .superRefine((config, ctx) => {
    if (config.workers > 1 && config.routes.some((r) => r.mode === 'postgres')) {
      ctx.addIssue({
        code: 'custom',
        path: ['workers'],
        message:
          'a postgres route needs workers: 1: each worker would hold its own share of every pool, so maxSize would be split (limits are not shared across workers yet)',
      });
    }
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
