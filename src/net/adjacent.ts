/**
 * Slices of read buffers on their way to one socket, joined where they touch: the messages
 * a relay passes on from one read are adjacent in its buffer, and leave as one slice in
 * one write rather than one write each (each a Writable request, and at uncork a writev of
 * them all).
 *
 * A slice extends the one before it only when it starts where that one ends in the same
 * memory, so the joined slice holds exactly the bytes added, in order. The memory must
 * stay unchanged until `take()`: slices of a buffer that is read into again must be taken
 * before it is.
 */
export class AdjacentSlices {
  private first: Buffer | undefined;
  private start = 0;
  private end = 0;

  get isEmpty(): boolean {
    return this.first === undefined;
  }

  /** Holds `slice`; false when it does not join what is held (take() that first). */
  add(slice: Buffer): boolean {
    const first = this.first;
    if (first === undefined) {
      this.first = slice;
      this.start = slice.byteOffset;
      this.end = slice.byteOffset + slice.length;
      return true;
    }
    if (slice.buffer !== first.buffer || slice.byteOffset !== this.end) return false;
    this.end += slice.length;
    return true;
  }

  /** What is held, as one slice; afterwards nothing is held. */
  take(): Buffer | undefined {
    const first = this.first;
    if (first === undefined) return undefined;
    this.first = undefined;
    const length = this.end - this.start;
    return length === first.length ? first : Buffer.from(first.buffer, this.start, length);
  }
}
