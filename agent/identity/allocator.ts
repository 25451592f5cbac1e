import type { SqliteStore } from '../store/sqlite-store.js';
import { identityLabels, labelFormat, labelSetKey } from './labels.js';
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
 * Maps label sets to numeric identities. Must be called inside the store transaction that also
 * writes the referencing workload, so allocation and reference are atomic; identities whose last
 * reference goes are released by `SqliteStore.identitiesReleaseUnused` in the deleting transaction.
 */
export class IdentityAllocator {
  constructor(private readonly store: SqliteStore) {}

  /** Returns the identity for these labels, allocating one if the set is new. */
  acquire(workloadLabels: Record<string, string>, namespace: string, namespaceLabels?: Record<string, string>): number {
    const labels = identityLabels(workloadLabels, namespace, namespaceLabels);
    const key = labelSetKey(labels);
    const existing = this.store.identityByKey(key);
    if (existing) return existing.id;
    const id = lowestFree(this.store.usedIdentityIds(), IDENTITY_MIN, IDENTITY_MAX);
    if (id === undefined) {
      throw new IdentityExhaustedError(`no free identity left in ${IDENTITY_MIN}-${IDENTITY_MAX}`);
    }
    this.store.identityInsert(id, key, labels.map(labelFormat));
    return id;
  }
}
