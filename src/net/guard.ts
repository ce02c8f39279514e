import type { EventEmitter } from 'node:events';

/**
 * Keeps a socket's errors from ever being thrown. Each holder of an upstream socket (the
 * dialer, a link, a probe, a splice) listens for 'error' while it holds it, but a hand-off
 * from one to the next leaves a gap: promise callbacks run after process.nextTick's, so an
 * error queued in the same turn as a resolved dial (a reset read with the handshake's last
 * bytes) is emitted before the next holder listens, and an 'error' nobody listens to
 * kills the process. This listener stays for the socket's life; the holders still see
 * every error through their own listeners, and a socket that errored is destroyed, which
 * its next holder sees.
 */
export function neverThrowErrors(socket: EventEmitter): void {
  if (!socket.listeners('error').includes(ignoreError)) socket.on('error', ignoreError);
}

function ignoreError(): void {}
