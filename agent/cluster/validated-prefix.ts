import type { Logger } from 'pino';
import type { PrefixChange, PrefixSink } from './prefix-follower.js';

/** A key's value judged: what it holds, or why it is ignored. */
export type Judged<T> = { value: T } | { reason: string };

/**
 * What the shared prefixes (policies, namespace labels) have in common. Anyone with etcd access can
 * write there, so every value is judged as the API would judge it. An invalid value is ignored, counted
 * and shown with its reason, and its key keeps the last valid value this host had: a bad write never
 * evicts good state. Subclasses say how to judge a value, what this host has now, and how to bring the
 * host to `desired`.
 */
export abstract class ValidatedPrefixSink<T> implements PrefixSink {
  /** The last valid value per key, as etcd holds it (what this host should have). */
  protected desired = new Map<string, T>();
  /** Keys whose current value is ignored, with the reason. */
  readonly ignoredKeys = new Map<string, string>();
  /** Values ignored since the start. */
  ignored = 0;

  constructor(
    protected readonly log: Logger,
    /** What a value is, for logs: "policy", "namespace labels". */
    private readonly noun: string,
  ) {}

  protected abstract judgeValue(key: string, value: string): Judged<T> | Promise<Judged<T>>;
  /** What this host has applied now, by key: kept for a key whose etcd value is invalid. */
  protected abstract hostCurrent(): Map<string, T>;
  /** Brings this host to `desired`. */
  protected abstract reconcile(): Promise<void>;

  private async judge(key: string, value: string): Promise<T | undefined> {
    const verdict = await this.judgeValue(key, value);
    if ('value' in verdict) {
      this.ignoredKeys.delete(key);
      return verdict.value;
    }
    this.ignored++;
    this.ignoredKeys.set(key, verdict.reason);
    this.log.warn({ key, value: value.slice(0, 200), reason: verdict.reason }, `cluster ${this.noun} value ignored; the key keeps the last valid ${this.noun} this host had`);
    return undefined;
  }

  async resync(all: ReadonlyMap<string, string>, revision: bigint): Promise<void> {
    const current = this.hostCurrent();
    const next = new Map<string, T>();
    for (const [key, value] of all) {
      const keep = (await this.judge(key, value)) ?? this.desired.get(key) ?? current.get(key);
      if (keep !== undefined) next.set(key, keep);
    }
    for (const key of this.ignoredKeys.keys()) if (!all.has(key)) this.ignoredKeys.delete(key);
    this.desired = next;
    this.log.info({ revision: String(revision), entries: next.size, ignored: this.ignoredKeys.size }, `cluster ${this.noun} listed`);
    await this.reconcile();
  }

  async change(changes: readonly PrefixChange[]): Promise<void> {
    for (const c of changes) {
      if (c.value === undefined) {
        this.desired.delete(c.key);
        this.ignoredKeys.delete(c.key);
        continue;
      }
      const value = await this.judge(c.key, c.value);
      if (value !== undefined) this.desired.set(c.key, value);
    }
    await this.reconcile();
  }
}
