/** Sources of packed items a ring can hold at most (the low bits of a packed handle name the source). */
const PACKED_SOURCE_BITS = 3;
const PACKED_SOURCES_MAX = 1 << PACKED_SOURCE_BITS;
/** A packed item's payload, below this, keeps the handle a small integer (never a heap number). */
export const RING_PACKED_PAYLOAD_LIMIT = 2 ** (30 - PACKED_SOURCE_BITS);

/**
 * Fixed-capacity ring of the most recent items; old items are overwritten (Hubble's flow ring).
 *
 * An item may also be kept packed: a small integer that a source registered with packedSource() turns
 * back into the item when the ring is read. A young garbage collection copies every object the ring
 * still holds that was made since the last one, and at thousands of items a second that copying is
 * most of each pause (bench/README §8); a small integer is not an object and is never copied.
 */
export class Ring<T> {
  private readonly items: (T | number | undefined)[];
  private readonly thaws: Array<(payload: number) => T> = [];
  private next = 0;
  private size = 0;
  /** Total items ever written; lets readers tell how many they missed. */
  written = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('ring capacity must be a positive integer');
    this.items = new Array<T | number | undefined>(capacity);
  }

  push(item: T): void {
    this.put(item);
  }

  /**
   * Registers a source of packed items: `thaw` makes the item of a payload again whenever the ring is
   * read, for as long as the ring holds it (the source must keep what it needs for the last
   * `capacity` items it pushed). Returns the function that pushes a payload (an integer from 0 below
   * RING_PACKED_PAYLOAD_LIMIT).
   */
  packedSource(thaw: (payload: number) => T): (payload: number) => void {
    const source = this.thaws.length;
    if (source >= PACKED_SOURCES_MAX) throw new RangeError(`a ring takes at most ${PACKED_SOURCES_MAX} packed sources`);
    this.thaws.push(thaw);
    return (payload) => {
      if (!((payload | 0) === payload && payload >= 0 && payload < RING_PACKED_PAYLOAD_LIMIT)) throw new RangeError(`packed ring payload ${payload} is not an integer from 0 below ${RING_PACKED_PAYLOAD_LIMIT}`);
      this.put(payload * PACKED_SOURCES_MAX + source);
    };
  }

  private put(item: T | number): void {
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

  /** The item `back` places before the newest (0: the newest); undefined past the oldest. No copy of the ring. */
  newest(back = 0): T | undefined {
    if (!(back >= 0 && back < this.size)) return undefined;
    const item = this.items[(this.next - 1 - back + 2 * this.capacity) % this.capacity];
    return typeof item === 'number' ? this.thaws[item % PACKED_SOURCES_MAX]!(Math.floor(item / PACKED_SOURCES_MAX)) : (item as T);
  }

  /** The newest `n` items (all if n is omitted), oldest first. */
  last(n = this.size): T[] {
    const count = Math.max(0, Math.min(n, this.size));
    const out: T[] = new Array<T>(count);
    let idx = (this.next - count + this.capacity) % this.capacity;
    for (let i = 0; i < count; i++) {
      const item = this.items[idx];
      out[i] = typeof item === 'number' ? this.thaws[item % PACKED_SOURCES_MAX]!(Math.floor(item / PACKED_SOURCES_MAX)) : (item as T);
      idx = (idx + 1) % this.capacity;
    }
    return out;
  }
}
