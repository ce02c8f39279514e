import tls from 'node:tls';

/** What an upstream TLS link trusts when `upstream.tls.ca` names no CA of its own. */
export interface DefaultTrust {
  /** CA certificates (PEM) for the secure context; undefined leaves Node's default store. */
  ca: string[] | undefined;
  /** Where they come from, for the start-up log: bundled, system, NODE_EXTRA_CA_CERTS. */
  sources: string[];
  /** Whether this runtime can read the system store (tls.getCACertificates). */
  systemStore: boolean;
}

type CaType = 'default' | 'system' | 'bundled' | 'extra';
type GetCaCertificates = (type?: CaType) => string[];

let cached: DefaultTrust | undefined;

/**
 * Node's default roots are its bundled Mozilla list (plus NODE_EXTRA_CA_CERTS), not the
 * operating system's store, so a private CA installed in the image (update-ca-certificates)
 * would not be trusted. Where the runtime can read the system store (Node 22.15+, 23.8+,
 * 24: `tls.getCACertificates('system')`, which on Linux reads SSL_CERT_FILE or
 * /etc/ssl/cert.pem and SSL_CERT_DIR or /etc/ssl/certs), upstream TLS trusts Node's
 * default roots and the system's. Where it cannot (Node 20), Node's default roots are what
 * is trusted, and the log at start says so. Read once per process, as Node does.
 */
export function defaultTrust(): DefaultTrust {
  if (cached !== undefined) return cached;
  const extra = process.env.NODE_EXTRA_CA_CERTS ? ['NODE_EXTRA_CA_CERTS'] : [];
  const get = (tls as { getCACertificates?: GetCaCertificates }).getCACertificates;
  if (typeof get !== 'function') {
    cached = { ca: undefined, sources: ['bundled', ...extra], systemStore: false };
  } else {
    const ca = [...new Set([...get('default'), ...get('system')])];
    cached = { ca, sources: ['bundled', 'system', ...extra], systemStore: true };
  }
  return cached;
}
