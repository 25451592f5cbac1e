import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import { PrefixFollower, type PrefixChange } from './prefix-follower.js';

export type MirrorState = 'connecting' | 'synced' | 'unreachable';

/**
 * A read-only copy of one etcd prefix (keys and values as text), kept by a PrefixFollower (a list,
 * then a watch; a broken watch lists again). While the etcd is unreachable the copy keeps what it had,
 * so readers go on with the last known state until the etcd answers and the copy resyncs.
 * `onChange` hears every key that was added, changed or removed (after a list: the difference).
 */
export class PrefixMirror {
  private readonly kvs = new Map<string, string>();
  private readonly follower: PrefixFollower;
  /** When the last list completed. */
  syncedAt: Date | undefined;

  constructor(
    client: Etcd3,
    readonly prefix: string,
    log: Logger,
    private readonly onChange: (key: string, value: string | undefined) => void = () => undefined,
  ) {
    this.follower = new PrefixFollower(client, prefix, {
      resync: async (all) => {
        for (const key of [...this.kvs.keys()]) if (!all.has(key)) this.set(key, undefined);
        for (const [key, value] of all) this.set(key, value);
        this.syncedAt = new Date();
      },
      change: async (changes: readonly PrefixChange[]) => {
        for (const c of changes) this.set(c.key, c.value);
      },
    }, log);
  }

  /** Starts following; resolves after the first list (or its failure: retried in the background). */
  start(): Promise<void> {
    return this.follower.start();
  }

  get state(): MirrorState {
    if (this.follower.connected) return 'synced';
    return this.follower.lastError !== undefined ? 'unreachable' : 'connecting';
  }

  get lastError(): string | undefined {
    return this.follower.lastError;
  }

  get lists(): number {
    return this.follower.lists;
  }

  get(key: string): string | undefined {
    return this.kvs.get(key);
  }

  entries(): IterableIterator<[string, string]> {
    return this.kvs.entries();
  }

  get size(): number {
    return this.kvs.size;
  }

  private set(key: string, value: string | undefined): void {
    if (value === undefined) {
      if (!this.kvs.delete(key)) return;
    } else {
      if (this.kvs.get(key) === value) return;
      this.kvs.set(key, value);
    }
    this.onChange(key, value);
  }

  close(): Promise<void> {
    return this.follower.close();
  }
}
