import { posix } from 'node:path';
import type { Logger } from 'pino';
import { EtcdMutex } from './etcd-mutex.js';
import { IDENTITIES_PREFIX } from './identity-allocator.js';
import { inRange, type IdentityRange } from './identity-range.js';
import type { ClusterSession } from './session.js';

/** Cilium's identity GC interval (--identity-gc-interval). */
export const IDENTITY_GC_INTERVAL_MS = 15 * 60_000;
const LOCK_TIMEOUT_MS = 10_000;

/**
 * Cilium's two-round garbage collection of master keys (pkg/kvstore/allocator RunGC): a master key
 * of this cluster's range that no `value/` key uses is marked in one round, and deleted in a later one
 * only if it is still unused and unchanged (same ModRevision), under the label key's lock and in one
 * transaction conditioned on both, so an allocator that reuses the number meanwhile wins. Every host
 * may run it: the conditions make concurrent collectors and Cilium's operator safe.
 */
export class IdentityGc {
  /** id -> the ModRevision at which it was seen unused. */
  private marked = new Map<number, string>();
  private readonly idPrefix = `${IDENTITIES_PREFIX}/id/`;
  private readonly valuePrefix = `${IDENTITIES_PREFIX}/value`;
  private readonly lockPrefix = `${IDENTITIES_PREFIX}/locks`;

  constructor(
    private readonly session: ClusterSession,
    private readonly range: IdentityRange,
    private readonly log: Logger,
  ) {}

  /** One round; returns the ids deleted. */
  async round(): Promise<number[]> {
    const { client } = this.session;
    const res = await client.getAll().prefix(this.idPrefix).exec();
    const next = new Map<number, string>();
    const deleted: number[] = [];
    for (const kv of res.kvs) {
      const suffix = kv.key.toString('latin1').slice(this.idPrefix.length);
      if (!/^[1-9][0-9]{0,15}$/.test(suffix)) continue;
      const id = Number(suffix);
      if (!inRange(this.range, id)) continue; // other clusters' numbers are theirs to collect
      const labelsKey = kv.value.toString('utf8');
      if (await this.inUse(labelsKey)) continue;
      if (this.marked.get(id) !== kv.mod_revision) {
        next.set(id, kv.mod_revision);
        continue;
      }
      if (await this.deleteIfUnchanged(id, labelsKey, kv.mod_revision)) deleted.push(id);
      else next.set(id, kv.mod_revision);
    }
    this.marked = next;
    if (deleted.length) this.log.info({ identities: deleted }, 'unused cluster identities collected');
    return deleted;
  }

  /** Any `value/<labelsKey>/<node>` key (the node suffix directly after the label key). */
  private async inUse(labelsKey: string): Promise<boolean> {
    const prefix = posix.join(this.valuePrefix, labelsKey);
    const keys = await this.session.client.getAll().prefix(`${prefix}/`).keys();
    return keys.some((k) => k.lastIndexOf('/') === prefix.length);
  }

  private async deleteIfUnchanged(id: number, labelsKey: string, modRevision: string): Promise<boolean> {
    const { client } = this.session;
    const masterKey = `${this.idPrefix}${id}`;
    // A label key path.join would rewrite has no lock anyone takes: condition on the revision alone.
    const lockable = labelsKey.endsWith(';') && posix.join('/x', labelsKey) === `/x/${labelsKey}`;
    const mutex = lockable ? await EtcdMutex.lock(client, await this.session.lockLeaseId(), posix.join(this.lockPrefix, labelsKey), LOCK_TIMEOUT_MS) : undefined;
    try {
      if (await this.inUse(labelsKey)) return false;
      let txn = client.if(masterKey, 'Mod', '==', modRevision);
      if (mutex) txn = txn.and(mutex.key, 'Create', '==', mutex.revision);
      const res = await txn.then(client.delete().key(masterKey)).commit();
      return res.succeeded;
    } finally {
      await mutex?.unlock().catch(() => undefined);
    }
  }
}
