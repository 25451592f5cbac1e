/** Backoff of a key's retries: base · 2^(failures-1), capped. */
export interface Backoff {
  baseMs: number;
  maxMs: number;
}

/** The delay before retry number `failures` (1 = the first retry). */
export function backoffDelay(failures: number, b: Backoff): number {
  return Math.min(b.maxMs, b.baseMs * 2 ** Math.min(Math.max(failures - 1, 0), 30));
}

/**
 * A work queue keyed by name, in the manner of client-go's workqueue: a key waits at most once
 * (adding it again while it waits does nothing), is never handed out twice at once (added while it is
 * being processed, it waits until `done`), and can be added after a delay or after its backoff. Keys
 * carry no payload: whoever processes one reads the state afresh (level-triggered).
 */
export class WorkQueue {
  private readonly waiting = new Set<string>();
  private readonly processing = new Set<string>();
  /** Added while being processed: queued again at `done`. */
  private readonly dirty = new Set<string>();
  private readonly delayed = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private readonly failures = new Map<string, number>();
  private wake: (() => void) | undefined;
  private closed = false;

  constructor(private readonly backoff: Backoff) {}

  add(key: string): void {
    if (this.closed) return;
    const d = this.delayed.get(key);
    if (d) {
      clearTimeout(d.timer);
      this.delayed.delete(key);
    }
    if (this.processing.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.waiting.has(key)) return;
    this.waiting.add(key);
    this.wake?.();
  }

  /** Adds the key after `ms`; an earlier pending add of the same key wins. */
  addAfter(key: string, ms: number): void {
    if (this.closed) return;
    if (ms <= 0) return this.add(key);
    const at = Date.now() + ms;
    const d = this.delayed.get(key);
    if (d && d.at <= at) return;
    if (d) clearTimeout(d.timer);
    const timer = setTimeout(() => {
      this.delayed.delete(key);
      this.add(key);
    }, ms);
    timer.unref();
    this.delayed.set(key, { at, timer });
  }

  /** Counts a failure of the key and adds it after its backoff; returns the delay. */
  addRateLimited(key: string): number {
    const n = (this.failures.get(key) ?? 0) + 1;
    this.failures.set(key, n);
    const ms = backoffDelay(n, this.backoff);
    this.addAfter(key, ms);
    return ms;
  }

  /** The key succeeded (or is gone): its next failure starts the backoff afresh. */
  forget(key: string): void {
    this.failures.delete(key);
  }

  /** Failures counted since the key last succeeded. */
  failuresOf(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  /** When a delayed add of the key is due (ms since the epoch), if one is pending. */
  dueAt(key: string): number | undefined {
    return this.delayed.get(key)?.at;
  }

  /** Takes the key out of the queue (waiting or delayed): it was just processed some other way. */
  drop(key: string): void {
    this.waiting.delete(key);
    this.dirty.delete(key);
    const d = this.delayed.get(key);
    if (d) {
      clearTimeout(d.timer);
      this.delayed.delete(key);
    }
  }

  /** Keys waiting to be processed now (not the delayed ones). */
  get depth(): number {
    return this.waiting.size;
  }

  /** The next key to process, once there is one; undefined when the queue was closed. */
  async get(): Promise<string | undefined> {
    while (!this.closed) {
      const next = this.waiting.values().next();
      if (!next.done) {
        this.waiting.delete(next.value);
        this.processing.add(next.value);
        return next.value;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = undefined;
    }
    return undefined;
  }

  /** The key's processing is over; if it was added meanwhile, it waits again. */
  done(key: string): void {
    this.processing.delete(key);
    if (this.dirty.delete(key)) this.add(key);
  }

  close(): void {
    this.closed = true;
    for (const d of this.delayed.values()) clearTimeout(d.timer);
    this.delayed.clear();
    this.waiting.clear();
    this.wake?.();
  }
}
