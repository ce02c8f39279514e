/**
 * Exponential backoff with jitter for failed dials: base · 2^(failures-1), capped, then
 * scaled by a random factor in [0.5, 1) so that many pools don't retry in lockstep.
 */
export class Backoff {
  private failuresInRow = 0;

  constructor(
    private readonly baseMs = 100,
    private readonly capMs = 10_000,
    private readonly random: () => number = Math.random,
  ) {}

  get failures(): number {
    return this.failuresInRow;
  }

  /** Records a failure and returns how long to wait before the next try. */
  fail(): number {
    this.failuresInRow++;
    const exp = Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.failuresInRow - 1, 30));
    return Math.round(exp * (0.5 + this.random() / 2));
  }

  succeed(): void {
    this.failuresInRow = 0;
  }
}
