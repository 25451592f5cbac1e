import type { StoreTx } from '../store/store.js';
import { identityLabels, labelFormat, labelSetKey } from '../../common/labels.js';
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
  /** Returns the identity for these labels, allocating one if the set is new. */
  acquire(tx: StoreTx, workloadLabels: Record<string, string>, namespace: string, namespaceLabels?: Record<string, string>): number {
    const labels = identityLabels(workloadLabels, namespace, namespaceLabels);
    const key = labelSetKey(labels);
    const existing = tx.identityByKey(key);
    if (existing) return existing.id;
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
