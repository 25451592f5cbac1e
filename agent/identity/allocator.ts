import type { StoreTx } from '../store/store.js';
import { identityLabels, labelCompare, labelFormat, labelSetKey, type Label } from '../../common/labels.js';
import { IDENTITY_MAX, IDENTITY_MIN } from './reserved.js';

export class IdentityExhaustedError extends Error {
  override name = 'IdentityExhaustedError';
}

/** Lowest number in [min, max] not in the sorted list `used`. */
export function lowestFree(used: readonly number[], min: number, max: number): number | undefined {
  let candidate = min;
  for (const v of used) {
    if (v < candidate) continue;
    if (v > candidate) break;
    candidate++;
  }
  return candidate <= max ? candidate : undefined;
}

/**
 * Maps label sets to numeric identities. Runs inside the store transaction (`tx`) that also writes
 * the referencing workload, so allocation and reference are atomic; identities whose last reference
 * goes are released by `identitiesReleaseUnused` in the deleting transaction.
 */
export class IdentityAllocator {
  constructor(
    /**
     * Cluster mode: labels every identity gains (the cluster's) and the numbers the cluster gave label
     * sets new to this host, by labelSetKey (reserved in etcd before the transaction; a transaction
     * must not wait on the network). Without it, numbers come from this host's range.
     */
    private readonly cluster?: { extraLabels: readonly Label[]; numbers: () => ReadonlyMap<string, number> },
  ) {}

  /** The identity labels of a workload (with the cluster's in cluster mode). */
  labels(workloadLabels: Record<string, string>, namespace: string, namespaceLabels?: Record<string, string>): Label[] {
    const own = identityLabels(workloadLabels, namespace, namespaceLabels);
    if (!this.cluster) return own;
    const extra = new Set(this.cluster.extraLabels.map((l) => l.key));
    return [...own.filter((l) => !extra.has(l.key)), ...this.cluster.extraLabels].sort(labelCompare);
  }

  /** Returns the identity for these labels, allocating one if the set is new. */
  acquire(tx: StoreTx, workloadLabels: Record<string, string>, namespace: string, namespaceLabels?: Record<string, string>): number {
    const labels = this.labels(workloadLabels, namespace, namespaceLabels);
    const key = labelSetKey(labels);
    const existing = tx.identityByKey(key);
    if (existing) return existing.id;
    if (this.cluster) {
      const id = this.cluster.numbers().get(key);
      if (id === undefined) throw new Error(`BUG: label set ${key} has no number from the cluster (not reserved before the transaction)`);
      tx.identityInsert(id, key, labels.map(labelFormat));
      return id;
    }
    // Hand out numbers round-robin from a persisted cursor: a number released a moment ago is not
    // reused at once, so flows, conntrack and other hosts' caches never confuse two label sets.
    const used = tx.usedIdentityIds();
    const cursor = Number(tx.metaGet('identity_cursor') ?? IDENTITY_MIN);
    const id = lowestFree(used, Math.max(cursor, IDENTITY_MIN), IDENTITY_MAX) ?? lowestFree(used, IDENTITY_MIN, IDENTITY_MAX);
    if (id === undefined) {
      throw new IdentityExhaustedError(`no free identity left in ${IDENTITY_MIN}-${IDENTITY_MAX}`);
    }
    tx.identityInsert(id, key, labels.map(labelFormat));
    tx.metaSet('identity_cursor', String(id + 1));
    return id;
  }
}
