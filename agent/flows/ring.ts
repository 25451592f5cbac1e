/** Fixed-capacity ring of the most recent items; old items are overwritten (Hubble's flow ring). */
export class Ring<T> {
  private readonly items: (T | undefined)[];
  private next = 0;
  private size = 0;
  /** Total items ever written; lets readers tell how many they missed. */
  written = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('ring capacity must be a positive integer');
    this.items = new Array<T | undefined>(capacity);
  }

  push(item: T): void {
    this.items[this.next] = item;
    this.next = (this.next + 1) % this.capacity;
    if (this.size < this.capacity) this.size++;
    this.written++;
  }

  /**
   * Counts n items as written without keeping them, as if they had been pushed and overwritten: for
   * a caller about to push at least `capacity` more (their slots are cleared meanwhile).
   */
  skip(n: number): void {
    for (let i = 0; i < Math.min(n, this.capacity); i++) this.items[(this.next + i) % this.capacity] = undefined;
    this.next = (this.next + n) % this.capacity;
    this.size = Math.min(this.capacity, this.size + n);
    this.written += n;
  }

  get length(): number {
    return this.size;
  }

  /** The newest `n` items (all if n is omitted), oldest first. */
  last(n = this.size): T[] {
    const count = Math.max(0, Math.min(n, this.size));
    const out: T[] = new Array<T>(count);
    let idx = (this.next - count + this.capacity) % this.capacity;
    for (let i = 0; i < count; i++) {
      out[i] = this.items[idx] as T;
      idx = (idx + 1) % this.capacity;
    }
    return out;
  }
}
