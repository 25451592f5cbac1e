import type { Etcd3, IKeyValue } from 'etcd3';

/**
 * A lock held in etcd, taken exactly as etcd's Go client (clientv3/concurrency.Mutex) takes it, which
 * is what Cilium's kvstore.LockPath uses: a key `<prefix>/<lease id in hex>` under the session's
 * lease, created only if absent; the holder is the key with the lowest create revision under the
 * prefix, and a waiter watches the next older key until it is deleted. So a kitnet host and a Cilium
 * agent locking the same label key exclude each other.
 */
export class EtcdMutex {
  private constructor(
    private readonly client: Etcd3,
    /** The key this holder created. */
    readonly key: string,
    /** Its create revision: writes conditioned on it fail once the lock is lost (the lease expired). */
    readonly revision: string,
  ) {}

  /**
   * Takes the lock on `prefix` (without trailing slash) for the session lease `leaseId`. One holder per
   * session and prefix at a time: callers in one process serialise per prefix themselves (two takers
   * sharing a session share the key). Fails after `timeoutMs` (a crashed holder's key lives as long as
   * its lease).
   */
  static async lock(client: Etcd3, leaseId: string, prefix: string, timeoutMs: number): Promise<EtcdMutex> {
    const pfx = `${prefix}/`;
    const key = `${pfx}${BigInt(leaseId).toString(16)}`;
    const firstCreated = client.getAll().prefix(pfx).sort('Create', 'Ascend').limit(1);
    const res = await client
      .if(key, 'Create', '==', 0)
      .then(client.put(key).value('').lease(leaseId), firstCreated)
      .else(client.get(key), firstCreated)
      .commit();
    const revision = res.succeeded ? res.header.revision : res.responses[0]!.response_range!.kvs[0]!.create_revision;
    const owner = res.responses[1]!.response_range!.kvs[0];
    const mutex = new EtcdMutex(client, key, revision);
    if (owner && owner.create_revision !== revision) {
      try {
        await mutex.waitOlderGone(pfx, BigInt(revision) - 1n, Date.now() + timeoutMs);
      } catch (err) {
        await mutex.unlock().catch(() => undefined);
        throw err;
      }
    }
    return mutex;
  }

  /** Until no key under pfx is older than ours (Go's waitDeletes). */
  private async waitOlderGone(pfx: string, maxCreateRevision: bigint, deadline: number): Promise<void> {
    for (;;) {
      const res = await this.client.getAll().prefix(pfx).maxCreateRevision(String(maxCreateRevision)).sort('Create', 'Descend').limit(1).exec();
      const older: IKeyValue | undefined = res.kvs[0];
      if (!older) return;
      await this.waitDeleted(older.key, res.header.revision, deadline);
    }
  }

  private async waitDeleted(key: Buffer, fromRevision: string, deadline: number): Promise<void> {
    const watcher = await this.client.watch().key(key).startRevision(fromRevision).create();
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`lock ${this.key.slice(0, this.key.lastIndexOf('/'))} still held by ${key.toString()} after waiting; its holder's lease must expire first`)),
          Math.max(0, deadline - Date.now()),
        );
        watcher.on('delete', () => {
          clearTimeout(timer);
          resolve();
        });
        watcher.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
    } finally {
      await watcher.cancel().catch(() => undefined);
    }
  }

  async unlock(): Promise<void> {
    await this.client.delete().key(this.key).exec();
  }
}
