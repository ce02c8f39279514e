import type { UpstreamSecret } from '../login.js';
import type { AuthFile, Secret } from './secrets.js';
import type { ScramKeys } from './scram.js';

/** Looks a user's secret up upstream (authQuery), or resolves undefined for no such user. */
export type SecretLookup = (user: string, database: string) => Promise<Secret | undefined>;

/** How long a secret found by authQuery is used before it is asked for again. */
const QUERIED_TTL_MS = 60_000;

/**
 * Users' secrets for one route: from the auth file, else from authQuery (cached for a
 * minute), plus what client logins taught us for logging in upstream: the SCRAM ClientKey
 * recovered from a proof (pass-through), or a password a client sent in clear. Nothing
 * here is ever logged.
 */
export class Credentials {
  private readonly learned = new Map<string, { secret: Secret; upstream: UpstreamSecret }>();
  private readonly queried = new Map<string, { secret: Secret | undefined; at: number }>();

  constructor(
    private readonly file: AuthFile | undefined,
    private readonly query: SecretLookup | undefined,
  ) {}

  /** The user's secret, or undefined when the user is unknown. */
  async lookup(user: string, database: string): Promise<Secret | undefined> {
    const fromFile = this.file?.lookup(user);
    if (fromFile !== undefined || this.query === undefined) return fromFile;
    const cached = this.queried.get(user);
    if (cached !== undefined && Date.now() - cached.at < QUERIED_TTL_MS) return cached.secret;
    const secret = await this.query(user, database);
    this.queried.set(user, { secret, at: Date.now() });
    return secret;
  }

  /** The secret known now without asking upstream. */
  known(user: string): Secret | undefined {
    const fromFile = this.file?.lookup(user);
    if (fromFile !== undefined) return fromFile;
    const cached = this.queried.get(user);
    return cached !== undefined && Date.now() - cached.at < QUERIED_TTL_MS
      ? cached.secret
      : undefined;
  }

  /** A client logged in as `user` against `secret`, and showed us how to log in upstream. */
  learn(user: string, secret: Secret, upstream: { keys: ScramKeys } | { password: string }): void {
    this.learned.set(user, {
      secret,
      upstream:
        'keys' in upstream
          ? { kind: 'scram', keys: upstream.keys }
          : { kind: 'plain', password: upstream.password },
    });
  }

  /**
   * What to log in upstream with as `user`: a plain or md5 secret as stored, or what a
   * client's login taught us while the stored secret is still the one it proved.
   */
  upstreamSecret(user: string): UpstreamSecret | undefined {
    const secret = this.known(user);
    const learned = this.learned.get(user);
    if (learned !== undefined && (secret === undefined || sameSecret(learned.secret, secret))) {
      return learned.upstream;
    }
    if (secret === undefined) return undefined;
    if (secret.kind === 'plain') return { kind: 'plain', password: secret.password };
    if (secret.kind === 'md5') return { kind: 'md5', hash: secret.hash };
    return undefined;
  }
}

function sameSecret(a: Secret, b: Secret): boolean {
  if (a.kind === 'plain' && b.kind === 'plain') return a.password === b.password;
  if (a.kind === 'md5' && b.kind === 'md5') return a.hash === b.hash;
  if (a.kind === 'scram' && b.kind === 'scram') {
    return (
      a.verifier.storedKey.equals(b.verifier.storedKey) &&
      a.verifier.serverKey.equals(b.verifier.serverKey)
    );
  }
  return false;
}
