/** The signals `sidepool run` acts on. */
export type SignalName = 'SIGHUP' | 'SIGTERM' | 'SIGINT';

const SIGNALS: readonly SignalName[] = ['SIGHUP', 'SIGTERM', 'SIGINT'];

let held: SignalName[] | undefined;
let handler: ((signal: SignalName) => void) | undefined;

function receive(signal: SignalName): void {
  if (handler !== undefined) handler(signal);
  else held?.push(signal);
}

/**
 * Takes SIGHUP, SIGTERM and SIGINT from now on and holds them until `onSignal` is given a
 * handler. Until a process has a handler for them, these signals take Node's default
 * action: an exit (129, 143, 130) without a word. Idempotent.
 */
export function holdSignals(): void {
  if (held !== undefined) return;
  held = [];
  for (const signal of SIGNALS) process.on(signal, receive);
}

/** From now on `next` gets every signal, first those held so far, in order. */
export function onSignal(next: (signal: SignalName) => void): void {
  holdSignals();
  handler = next;
  for (const signal of (held ?? []).splice(0)) next(signal);
}
