/**
 * A FIFO queue in which any entry can also leave from the middle in O(1): a downstream
 * that gives up while queued must not cost a scan of everyone behind it.
 */
export class WaiterQueue<T extends QueueEntry<T>> {
  private head: T | undefined;
  private tail: T | undefined;
  size = 0;

  /** The entry next in line (its `queueNext` the one after it). */
  get first(): T | undefined {
    return this.head;
  }

  push(entry: T): void {
    entry.queuePrev = this.tail;
    entry.queueNext = undefined;
    entry.queued = true;
    if (this.tail === undefined) this.head = entry;
    else this.tail.queueNext = entry;
    this.tail = entry;
    this.size++;
  }

  /** Puts an entry back at the head: it was next in line before. */
  unshift(entry: T): void {
    entry.queuePrev = undefined;
    entry.queueNext = this.head;
    entry.queued = true;
    if (this.head === undefined) this.tail = entry;
    else this.head.queuePrev = entry;
    this.head = entry;
    this.size++;
  }

  shift(): T | undefined {
    const entry = this.head;
    if (entry !== undefined) this.remove(entry);
    return entry;
  }

  /** Removes an entry if it is queued; a no-op otherwise. */
  remove(entry: T): void {
    if (!entry.queued) return;
    if (entry.queuePrev === undefined) this.head = entry.queueNext;
    else entry.queuePrev.queueNext = entry.queueNext;
    if (entry.queueNext === undefined) this.tail = entry.queuePrev;
    else entry.queueNext.queuePrev = entry.queuePrev;
    entry.queuePrev = undefined;
    entry.queueNext = undefined;
    entry.queued = false;
    this.size--;
  }
}

export interface QueueEntry<T> {
  queuePrev: T | undefined;
  queueNext: T | undefined;
  queued: boolean;
}
