/**
 * The one catalogue of sidepool's errors. Every error has a stable `code`; tests and
 * callers match on the code, never on the message. The original error, where there is
 * one, is kept as `cause`.
 */
export class SidepoolError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A configuration problem: one entry per field that is wrong. */
export interface ConfigIssue {
  /** Dotted path of the field, e.g. `routes[0].pool.maxSize`. */
  path: string;
  /** What is wrong and what is expected. */
  message: string;
}

export class ConfigError extends SidepoolError {
  readonly issues: readonly ConfigIssue[];

  constructor(issues: readonly ConfigIssue[], options?: { cause?: unknown }) {
    super(
      'SIDEPOOL_CONFIG_INVALID',
      issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join('\n'),
      options,
    );
    this.issues = issues;
  }
}

export class AcquireTimeoutError extends SidepoolError {
  constructor(pool: string, timeoutMs: number) {
    super('SIDEPOOL_ACQUIRE_TIMEOUT', `no link to ${pool} within ${timeoutMs}ms`);
  }
}

export class PoolOverflowError extends SidepoolError {
  constructor(pool: string, maxWaiters: number) {
    super('SIDEPOOL_POOL_OVERFLOW', `${pool} is at maxSize and ${maxWaiters} waiters are queued`);
  }
}

export class PoolClosedError extends SidepoolError {
  constructor(pool: string) {
    super('SIDEPOOL_POOL_CLOSED', `pool ${pool} is closed`);
  }
}

export class AcquireAbortedError extends SidepoolError {
  constructor(pool: string) {
    super('SIDEPOOL_ACQUIRE_ABORTED', `the downstream left while waiting for a link to ${pool}`);
  }
}

/** A dial that failed; `endpoint` says which of the destination's endpoints. */
export class DialError extends SidepoolError {
  readonly endpoint: string;

  constructor(code: string, endpoint: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.endpoint = endpoint;
  }
}

export class ConnectTimeoutError extends DialError {
  constructor(endpoint: string, timeoutMs: number) {
    super(
      'SIDEPOOL_CONNECT_TIMEOUT',
      endpoint,
      `connect to ${endpoint} timed out after ${timeoutMs}ms`,
    );
  }
}

export class ConnectError extends DialError {
  constructor(endpoint: string, cause: unknown) {
    super(
      'SIDEPOOL_CONNECT_FAILED',
      endpoint,
      `connect to ${endpoint} failed: ${describe(cause)}`,
      {
        cause,
      },
    );
  }
}

/** A dial given up because its owner closed (a pool or prober going away), not a failure. */
export class DialAbortedError extends DialError {
  constructor(endpoint: string) {
    super('SIDEPOOL_DIAL_ABORTED', endpoint, `dial to ${endpoint} aborted: its pool is closing`);
  }
}

export class TlsHandshakeError extends DialError {
  /**
   * Why, as a stable code for logs and metrics: the Node/OpenSSL code of the cause
   * (`ERR_TLS_CERT_ALTNAME_INVALID`, `CERT_HAS_EXPIRED`, `UNABLE_TO_VERIFY_LEAF_SIGNATURE`,
   * `ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED`, …) or ours (`SIDEPOOL_CONNECT_TIMEOUT`).
   */
  readonly reason: string;

  constructor(endpoint: string, cause: unknown) {
    const reason = codeOf(cause);
    const detail = cause instanceof Error ? cause.message : String(cause);
    super(
      'SIDEPOOL_TLS_HANDSHAKE_FAILED',
      endpoint,
      `TLS to ${endpoint} failed (${reason}): ${detail}`,
      {
        cause,
      },
    );
    this.reason = reason;
  }
}

/** The peer closed a TLS connection during or right after the handshake, without an alert. */
export class TlsPeerClosedError extends SidepoolError {
  constructor(when: 'during' | 'after') {
    super('SIDEPOOL_TLS_PEER_CLOSED', `the peer closed the connection ${when} the TLS handshake`);
  }
}

/** A certificate, key or CA file that cannot be used; `field` names the config key. */
export class TlsMaterialError extends SidepoolError {
  readonly field: 'cert' | 'key' | 'ca';
  readonly path: string;

  constructor(
    field: 'cert' | 'key' | 'ca',
    path: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super('SIDEPOOL_TLS_MATERIAL_INVALID', `tls.${field} ${path}: ${problem}`, options);
    this.field = field;
    this.path = path;
  }
}

/** Every endpoint of a destination is down (unhealthy, ejected, or failing its dials). */
export class UpstreamDownError extends SidepoolError {
  constructor(pool: string) {
    super('SIDEPOOL_UPSTREAM_DOWN', `every endpoint of ${pool} is down; failing fast`);
  }
}

export class NoHealthyEndpointError extends DialError {
  constructor(pool: string) {
    super('SIDEPOOL_NO_HEALTHY_ENDPOINT', pool, `no endpoint of ${pool} may take a dial now`);
  }
}

export class ProbeError extends SidepoolError {
  constructor(endpoint: string, message: string, options?: { cause?: unknown }) {
    super('SIDEPOOL_PROBE_FAILED', `probe of ${endpoint}: ${message}`, options);
  }
}

export class LinkClosedError extends SidepoolError {
  constructor(reason: string) {
    super('SIDEPOOL_LINK_CLOSED', `link closed: ${reason}`);
  }
}

/** A listener could not bind; `owner` says whose (`route redis`, `admin server`). */
export class ListenError extends SidepoolError {
  constructor(owner: string, listen: string, cause: unknown, problem?: string) {
    const code = codeOf(cause);
    const unix = !/:\d+$/.test(listen);
    const why =
      problem !== undefined
        ? `${code}, ${problem}`
        : code === 'EADDRINUSE'
          ? 'EADDRINUSE, the address is already in use'
          : code === 'EACCES'
            ? unix
              ? 'EACCES, permission denied'
              : 'EACCES, permission denied (ports below 1024 need privileges)'
            : code === 'EADDRNOTAVAIL'
              ? 'EADDRNOTAVAIL, no such local address'
              : describe(cause);
    super('SIDEPOOL_LISTEN_FAILED', `${owner}: cannot listen on ${listen}: ${why}`, {
      cause,
    });
  }
}

export class ResolveError extends SidepoolError {
  constructor(host: string, cause: unknown) {
    super('SIDEPOOL_RESOLVE_FAILED', `cannot resolve ${host}: ${describe(cause)}`, { cause });
  }
}

/** An upstream HTTP response sidepool will not pass on; the link it came on is closed. */
export class HttpResponseError extends SidepoolError {
  /** What is wrong with it, e.g. "differing Content-Length values". */
  readonly problem: string;

  constructor(problem: string) {
    super('SIDEPOOL_HTTP_BAD_RESPONSE', `malformed response from the upstream: ${problem}`);
    this.problem = problem;
  }
}

/** A short, single-line description of any thrown value, with its code when it has one. */
export function describe(err: unknown): string {
  if (err instanceof SidepoolError) return err.message;
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code && !err.message.includes(code) ? `${code} ${err.message}` : err.message;
  }
  return String(err);
}

/** The stable code of an error (ours, or Node's errno code), for logs and metrics. */
export function codeOf(err: unknown): string {
  if (err && typeof err === 'object' && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return 'UNKNOWN';
}

/** A worker process (with `workers` above 1) could not start its routes. */
export class WorkerStartError extends SidepoolError {
  constructor(
    readonly worker: number,
    readonly reason: string,
    message: string,
  ) {
    super('SIDEPOOL_WORKER_START', `worker ${worker} could not start: ${message}`);
  }
}

/** The primary asked a worker something (`op`) and got no answer. */
export class WorkerCallError extends SidepoolError {
  constructor(
    readonly op: string,
    problem: string,
  ) {
    super('SIDEPOOL_WORKER_CALL', `no answer to ${op}: ${problem}`);
  }
}

/** One line per problem in a failed reload: each field of a ConfigError, else the error. */
export function reloadProblems(err: unknown): string[] {
  return err instanceof ConfigError
    ? err.issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message))
    : [describe(err)];
}

/** Bytes from a Redis client or server that are not RESP sidepool can frame safely. */
export class RedisProtocolError extends SidepoolError {
  constructor(problem: string) {
    super('SIDEPOOL_REDIS_PROTOCOL', problem);
  }
}

/**
 * A new Redis link's login (AUTH, SELECT) was refused. `reply` is Redis's error text, which
 * names no secret (a password is never echoed).
 */
export class RedisLoginError extends DialError {
  constructor(
    endpoint: string,
    readonly step: 'auth' | 'select',
    readonly reply: string,
  ) {
    super(
      step === 'auth' ? 'SIDEPOOL_REDIS_AUTH_FAILED' : 'SIDEPOOL_REDIS_SELECT_FAILED',
      endpoint,
      `Redis at ${endpoint} refused ${step === 'auth' ? 'AUTH' : 'SELECT'}: ${reply}`,
    );
  }
}
