/**
 * The TLS sessions of one destination, by endpoint, so that a replacement dial resumes
 * (an abbreviated handshake: no certificate chain to send and verify, no key exchange on
 * TLS 1.2) instead of paying for a full one. Bounded: the least recently stored go first.
 *
 * Keyed by endpoint rather than by server name because the endpoints of one name need
 * not share their ticket keys; a session offered to the wrong one costs a full handshake.
 */
export class TlsSessionCache {
  private readonly sessions = new Map<string, Buffer>();

  constructor(private readonly maxEntries = 100) {}

  get(endpoint: string): Buffer | undefined {
    return this.sessions.get(endpoint);
  }

  /** Keeps the newest session of an endpoint (TLS 1.3 servers send several tickets). */
  set(endpoint: string, session: Buffer): void {
    this.sessions.delete(endpoint);
    this.sessions.set(endpoint, session);
    if (this.sessions.size > this.maxEntries) {
      const oldest = this.sessions.keys().next().value;
      if (oldest !== undefined) this.sessions.delete(oldest);
    }
  }

  delete(endpoint: string): void {
    this.sessions.delete(endpoint);
  }

  /** Forgets every session: after a CA or client certificate change, none may be resumed. */
  clear(): void {
    this.sessions.clear();
  }

  get size(): number {
    return this.sessions.size;
  }
}
