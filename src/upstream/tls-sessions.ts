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
  /**
   * Endpoints whose first handshake brought no ticket in time: their dials do not wait for
   * one. Bounded like the sessions: endpoints come and go with DNS.
   */
  private readonly ticketless = new Set<string>();

  constructor(private readonly maxEntries = 100) {}

  get(endpoint: string): Buffer | undefined {
    return this.sessions.get(endpoint);
  }

  /** Keeps the newest session of an endpoint (TLS 1.3 servers send several tickets). */
  set(endpoint: string, session: Buffer): void {
    this.sessions.delete(endpoint);
    this.sessions.set(endpoint, session);
    this.ticketless.delete(endpoint);
    trim(this.sessions, this.maxEntries);
  }

  /** The endpoint issued no ticket in time (until `set` brings one). */
  markTicketless(endpoint: string): void {
    this.ticketless.delete(endpoint);
    this.ticketless.add(endpoint);
    trim(this.ticketless, this.maxEntries);
  }

  isTicketless(endpoint: string): boolean {
    return this.ticketless.has(endpoint);
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

/** Drops the oldest entries (insertion order) past `max`. */
function trim(entries: Map<string, unknown> | Set<string>, max: number): void {
  while (entries.size > max) {
    const oldest = entries.keys().next().value;
    if (oldest === undefined) return;
    entries.delete(oldest);
  }
}
