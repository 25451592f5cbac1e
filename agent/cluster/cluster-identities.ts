import type { Logger } from 'pino';
import { labelSetKey, type Label } from '../../common/labels.js';
import type { StoreReader } from '../store/store.js';
import { CLUSTER_LABEL, kvstoreLabelsKey, labelTextParse } from './cilium-labels.js';
import type { ClusterIdentityAllocator } from './identity-allocator.js';
import { inRange, type IdentityRange } from './identity-range.js';

/**
 * Cluster mode's identity numbers, between the store and etcd. The store transaction that writes a
 * workload cannot wait on the network, so the workload service reserves the numbers of label sets new
 * to this host first (`reserve`, one etcd reference each), the transaction inserts them, and
 * `settle` gives back what the transaction did not keep; identities the store releases give back
 * their reference (`release`). This host holds exactly one reference per identity in its store.
 * Callers hold the agent's mutation lock, so the store does not change between reserve and settle.
 */
export class ClusterIdentities {
  /** Local identity number -> its kvstore label key (what to release). */
  private readonly held = new Map<number, string>();
  /** Numbers reserved for the transaction under way, by labelSetKey. */
  private pending = new Map<string, number>();

  constructor(
    private readonly allocator: ClusterIdentityAllocator,
    readonly clusterName: string,
    readonly range: IdentityRange,
    private readonly log: Logger,
  ) {}

  get extraLabels(): Label[] {
    return [{ source: 'k8s', key: CLUSTER_LABEL, value: this.clusterName }];
  }

  /** For the allocator inside the transaction. */
  numbers(): ReadonlyMap<string, number> {
    return this.pending;
  }

  /** Reserves numbers in etcd for the label sets the store does not have yet. */
  async reserve(store: StoreReader, labelSets: Label[][]): Promise<void> {
    const fresh = new Map<string, Label[]>();
    for (const labels of labelSets) {
      const key = labelSetKey(labels);
      if (!store.identityByKey(key) && !this.pending.has(key)) fresh.set(key, labels);
    }
    const got = await Promise.allSettled(
      [...fresh].map(async ([key, labels]) => {
        const { id } = await this.allocator.acquire(kvstoreLabelsKey(labels));
        this.pending.set(key, id);
        this.held.set(id, kvstoreLabelsKey(labels));
      }),
    );
    const failed = got.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await this.settle(store);
      throw failed.reason;
    }
  }

  /** After the transaction (committed or not): gives back reservations the store did not take. */
  async settle(store: StoreReader): Promise<void> {
    const pending = this.pending;
    this.pending = new Map();
    const unused = [...pending.values()].filter((id) => !store.identityGet(id));
    await this.release(unused);
  }

  /** Gives back this host's reference of identities the store released. */
  async release(ids: readonly number[]): Promise<void> {
    for (const id of ids) {
      const key = this.held.get(id);
      if (key === undefined) continue;
      this.held.delete(id);
      await this.allocator.release(key).catch((err: unknown) => this.log.warn({ err, identity: id }, 'cannot release an identity in etcd; it goes with this node\'s lease'));
    }
  }

  /**
   * At start: takes a reference again for every cluster identity in the store (the previous run's
   * went with its lease, or goes when it expires). A number etcd now gives to other labels is a
   * conflict to fix by hand: logged, not overwritten.
   */
  async restore(store: StoreReader): Promise<void> {
    for (const rec of store.identityList()) {
      if (!inRange(this.range, rec.id)) {
        this.log.warn({ identity: rec.id }, 'identity from before cluster mode keeps its host-local number until its workloads re-register');
        continue;
      }
      const labels = rec.labels.map(labelTextParse);
      if (labels.some((l) => l === undefined)) {
        this.log.error({ identity: rec.id }, 'stored identity labels do not parse; not shared with the cluster');
        continue;
      }
      const key = kvstoreLabelsKey(labels as Label[]);
      const { id } = await this.allocator.acquire(key);
      this.held.set(rec.id, key);
      if (id !== rec.id) this.log.error({ identity: rec.id, clusterIdentity: id, labels: key }, 'the cluster gives these labels another number than this host stored; re-register the workloads that use it');
    }
  }
}
