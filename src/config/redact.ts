/**
 * What never reaches a log line or an admin page: the value of any key that can hold a
 * credential. The rule is by key name, wherever the key sits, so that a key a mode adds
 * (`postgres.password`, `redis.auth`, …) is covered when its name says what it is:
 *
 * - these names exactly: `send` (a probe's payload, e.g. `AUTH <password>`), `key` (a
 *   private key's path), `cookie`;
 * - any name that starts with `auth` (`auth`, `authFile`, `authorization`) or contains
 *   `password`, `passwd`, `passphrase`, `secret`, `token`, `credential` or `apikey` /
 *   `api_key`, in any case: `tokenFile`, `passwordFile`, `clientSecret`. Paths to secret
 *   files are redacted too: where a secret lives is for the config file's reader, not for
 *   every reader of `/config` or of the logs.
 *
 * To cover a new key, name it so, or add it to SECRET_KEYS.
 */
export const SECRET_KEYS: ReadonlySet<string> = new Set(['send', 'key', 'cookie']);

const SECRET_NAME = /^auth|passw(?:or)?d|passphrase|secret|token|credential|api_?key/i;

export const REDACTED = '[redacted]';

export function isSecretKey(key: string): boolean {
  return SECRET_KEYS.has(key) || SECRET_NAME.test(key);
}

/**
 * A copy of `value` with the value of every secret key (see above) replaced. A secret key
 * whose value is an object (`redis.auth: { username, passwordFile }`) keeps its keys, so
 * that `/config` still says which settings are in force, and their values are redacted by
 * the same rule.
 */
export function redact(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redact);
  if (isPlainObject(value)) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [
        k,
        isSecretKey(k) && !isPlainObject(v) ? REDACTED : redact(v),
      ]),
    );
  }
  return value;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The same rule for pino, whose `redact` takes paths: each secret name, at the top of a
 * log line's object and up to three levels down. The names matched by pattern are listed
 * in the forms sidepool's config and modes use.
 */
export function logRedactPaths(): string[] {
  const names = [
    ...SECRET_KEYS,
    'auth',
    'authFile',
    'authorization',
    'password',
    'passwd',
    'passphrase',
    'secret',
    'token',
    'credentials',
    'apiKey',
    'api_key',
    'tokenFile',
    'passwordFile',
  ];
  return names.flatMap((name) => [name, `*.${name}`, `*.*.${name}`, `*.*.*.${name}`]);
}
