import type { Etcd3, Watcher } from 'etcd3';
import type { Logger } from 'pino';

/** Pause before listing again after a failed list or a broken watch (etcd unreachable: no tight loop). */
const RELIST_DELAY_MS = 1000;

export type MirrorState = 'connecting' | 'synced' | 'unreachable';

/**
 * A read-only copy of one etcd prefix (keys and values as text): a list, then a watch from the list's
 * revision; a broken watch lists again. While the etcd is unreachable the copy keeps what it had, so
 * readers go on with the last known state until the etcd answers and the copy resyncs.
 * `onChange` hears every key that was added, changed or removed (after a list: the difference).
 */
export class PrefixMirror {
  private readonly kvs = new Map<string, string>();
  private watcher: Watcher | undefined;
  private generation = 0;
  private closed = false;
  private retry: NodeJS.Timeout | undefined;
  state: MirrorState = 'connecting';
  lastError: string | undefined;
  /** When the last list completed. */
  syncedAt: Date | undefined;
  lists = 0;

  constructor(
    private readonly client: Etcd3,
    readonly prefix: string,
    private readonly log: Logger,
    private readonly onChange: (key: string, value: string | undefined) => void = () => undefined,
  ) {}

  /** Starts following; resolves after the first list (or its failure: retried in the background). */
  start(): Promise<void> {
    return this.run();
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

  private async run(): Promise<void> {
    if (this.closed) return;
    const generation = ++this.generation;
    this.drop();
    try {
      const res = await this.client.getAll().prefix(this.prefix).exec();
      if (generation !== this.generation || this.closed) return;
      const listed = new Map(res.kvs.map((kv) => [kv.key.toString('utf8'), kv.value.toString('utf8')]));
      for (const key of [...this.kvs.keys()]) if (!listed.has(key)) this.set(key, undefined);
      for (const [key, value] of listed) this.set(key, value);
      this.lists++;
      const watcher = await this.client.watch().prefix(this.prefix).startRevision(String(BigInt(res.header.revision) + 1n)).create();
      if (generation !== this.generation || this.closed) {
        void watcher.cancel().catch(() => undefined);
        return;
      }
      this.watcher = watcher;
      this.state = 'synced';
      this.lastError = undefined;
      this.syncedAt = new Date();
      watcher.on('data', (r) => {
        if (generation !== this.generation) return;
        for (const ev of r.events) this.set(ev.kv.key.toString('utf8'), ev.type === 'Put' ? ev.kv.value.toString('utf8') : undefined);
      });
      const broken = (err: unknown) => {
        if (generation !== this.generation || this.closed) return;
        this.failed(err);
      };
      watcher.on('error', broken);
      watcher.on('disconnected', broken);
    } catch (err) {
      if (generation !== this.generation || this.closed) return;
      this.failed(err);
    }
  }

  private failed(err: unknown): void {
    if (this.state !== 'unreachable') this.log.warn({ err, prefix: this.prefix }, 'etcd prefix not followed (etcd unreachable or compacted); keeping the last known keys, listing again');
    this.state = 'unreachable';
    this.lastError = (err as Error)?.message ?? String(err);
    clearTimeout(this.retry);
    this.retry = setTimeout(() => void this.run(), RELIST_DELAY_MS).unref();
  }

  /** Drops the current watch without waiting for etcd's answer (none comes while it is down). */
  private drop(): void {
    const old = this.watcher;
    this.watcher = undefined;
    void old?.cancel().catch(() => undefined);
  }

  close(): void {
    this.closed = true;
    this.generation++;
    clearTimeout(this.retry);
    this.drop();
  }
}
