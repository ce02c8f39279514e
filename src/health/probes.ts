import type { Duplex } from 'node:stream';
import type { Config } from '../config/schema.js';
import { ProbeError, describe } from '../errors.js';

export type ProbeConfig = NonNullable<Config['routes'][number]['health']>['probe'];

/** Replies longer than this without a match are a failed probe. */
const MAX_REPLY = 16 * 1024;

/**
 * Runs one probe over a fresh connection to `endpoint`: `tcp` is done once connected
 * (and, with TLS, once the handshake is); the others send bytes and read a reply.
 * Resolves on success; rejects with ProbeError. The caller owns the socket and the timeout.
 */
export function runProbe(probe: ProbeConfig, socket: Duplex, endpoint: string): Promise<void> {
  if (probe === 'tcp') return Promise.resolve();
  if (probe === 'redis')
    return exchange(socket, endpoint, 'PING\r\n', (reply) => prefix(reply, '+PONG'));
  if ('http' in probe) {
    const { path, expectStatus, host } = probe.http;
    const request =
      `GET ${path} HTTP/1.1\r\nHost: ${host ?? endpoint}\r\nUser-Agent: sidepool-health\r\n` +
      'Connection: close\r\n\r\n';
    return exchange(socket, endpoint, request, (reply) => {
      const end = reply.indexOf('\r\n');
      if (end < 0) return reply.length < 64 ? undefined : 'no HTTP status line';
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(reply.slice(0, end));
      if (!status) return `not an HTTP status line: ${JSON.stringify(reply.slice(0, end))}`;
      return Number(status[1]) === expectStatus
        ? true
        : `status ${status[1]}, expected ${expectStatus}`;
    });
  }
  const { send, expect } = probe;
  const pattern = /^\/(.*)\/$/s.exec(expect);
  const regex = pattern ? new RegExp(pattern[1] as string) : undefined;
  return exchange(socket, endpoint, send, (reply) =>
    regex ? (regex.test(reply) ? true : undefined) : prefix(reply, expect),
  );
}

/** true: matched; a string: failed, with why; undefined: keep reading. */
type Verdict = true | string | undefined;

function prefix(reply: string, expected: string): Verdict {
  if (reply.length < expected.length)
    return expected.startsWith(reply) ? undefined : `unexpected reply ${JSON.stringify(reply)}`;
  return reply.startsWith(expected)
    ? true
    : `unexpected reply ${JSON.stringify(reply.slice(0, 64))}`;
}

function exchange(
  socket: Duplex,
  endpoint: string,
  send: string,
  judge: (reply: string) => Verdict,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let reply = '';
    const done = (err?: Error): void => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      if (err) reject(err);
      else resolve();
    };
    const onData = (chunk: Buffer): void => {
      reply += chunk.toString('latin1');
      const verdict = judge(reply);
      if (verdict === true) done();
      else if (typeof verdict === 'string') done(new ProbeError(endpoint, verdict));
      else if (reply.length > MAX_REPLY)
        done(new ProbeError(endpoint, 'reply too long without a match'));
    };
    const onEnd = (): void =>
      done(new ProbeError(endpoint, `closed after ${JSON.stringify(reply.slice(0, 64))}`));
    const onError = (err: Error): void =>
      done(new ProbeError(endpoint, describe(err), { cause: err }));
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
    socket.write(send);
  });
}
