import type {
  IdentityRecord, NamespaceRecord, NewWorkload, PolicyRecord, WorkloadRecord, WorkloadSpec, WorkloadState,
} from './types.js';

/**
 * The agent's state, as every module sees it. SQLite (`sqlite-store.ts`) is the embedded single-host
 * implementation; a cluster store (etcd) implements the same interface.
 *
 * Shape, and why:
 * - **Reads are synchronous**, from a consistent local view: SQLite itself, or for a remote store a
 *   cache its watches keep current (Cilium's allocator and ipcache read the same way). So the policy
 *   compiler and the flow pipeline never wait on the network, and reads still answer while the remote
 *   store is unreachable.
 * - **Shared desired state changes only in `transaction`**, which is asynchronous and atomic. `fn`
 *   reads and writes through `tx` only, and must have no other side effects: a remote store runs it
 *   optimistically (reads recorded with their revisions, writes buffered, committed as one
 *   compare-and-set on those revisions) and runs it again when another writer got in first. Creating
 *   writes are create-only (`workloadInsert`, `identityInsert` fail on a taken key, address or id),
 *   so two hosts can never allocate the same thing.
 * - **Node-local facts are written synchronously** outside transactions: this host's status of its
 *   workloads (phase, observed devices, last error, next retry) and the CIDR identities compiled
 *   from policies. They never leave the host, so a remote store keeps them in a local file as well.
 * - **Readers subscribe** to typed change events (`subscribe`), emitted after a commit, instead of
 *   polling.
 */
export interface StoreReader {
  workloadGet(namespace: string, name: string): WorkloadRecord | undefined;
  workloadList(namespace?: string): WorkloadRecord[];
  /** IPAM leases: the addresses workloads hold. */
  usedAddresses(): { ipv4: Set<string>; ipv6: Set<string> };
  /** Endpoint ids in use, ascending. */
  usedEndpointIds(): number[];

  namespaceGet(name: string): NamespaceRecord | undefined;
  namespaceList(): NamespaceRecord[];

  policyList(): PolicyRecord[];

  metaGet(key: string): string | undefined;

  identityByKey(labelsKey: string): IdentityRecord | undefined;
  identityGet(id: number): IdentityRecord | undefined;
  /** Every identity with its reference count (the workloads that use it). */
  identityList(): IdentityRecord[];
  /** The labels of one identity, without the reference count (undefined if it does not exist). */
  identityLabels(id: number): string[] | undefined;
  /** Every identity's labels, without reference counts. */
  identityLabelsAll(): Map<number, string[]>;
  /** Identity numbers in use, ascending. */
  usedIdentityIds(): number[];

  /** Node-local: CIDR identities compiled from policies. */
  cidrIdentities(): Map<string, number>;
}

/** Reads and writes inside one transaction (see `Store.transaction`). */
export interface StoreTx extends StoreReader {
  /** Create-only: fails when the workload, its addresses, endpoint id or host interface are taken. */
  workloadInsert(w: NewWorkload): WorkloadRecord;
  /** A new spec and identity for an existing workload (labels changed). */
  workloadUpdate(namespace: string, name: string, spec: WorkloadSpec, identity: number): void;
  workloadDelete(namespace: string, name: string): boolean;
  namespacePut(name: string, labels: Record<string, string>): void;
  /** Inserts or replaces; returns whether the policy was new. */
  policyPut(kind: string, namespace: string, name: string, document: Record<string, unknown>): boolean;
  policyDelete(kind: string, namespace: string, name: string): boolean;
  metaSet(key: string, value: string): void;
  /** Create-only: fails when the number or the label set is taken. */
  identityInsert(id: number, labelsKey: string, labels: string[]): void;
  /** Deletes identities no workload references any more; returns the ids released. */
  identitiesReleaseUnused(): number[];
}

/** What a workload's status says (node-local; written by the reconciler). */
export interface WorkloadStatus {
  state: WorkloadState;
  observed: WorkloadRecord['observed'];
  error: string | null;
}

/**
 * One committed change. `what: 'status'` is a node-local status write (the reconciler's own):
 * controllers that act on desired state ignore it, as controller-runtime's generation predicate does.
 */
export type StoreChange =
  | { kind: 'workload'; namespace: string; name: string; what: 'spec' | 'status' | 'deleted' }
  | { kind: 'namespace'; name: string }
  | { kind: 'policy'; policyKind: string; namespace: string; name: string; deleted: boolean }
  | { kind: 'identity'; id: number; deleted: boolean };

export interface TransactionOptions {
  /**
   * false: the commit may return before it is on disk (a crash of the process keeps it, a power loss
   * may not). For writes nobody has been told about yet, which a later durable commit covers.
   */
  durable?: boolean;
}

export interface Store extends StoreReader {
  /** Runs fn atomically: all of its writes commit, or none (it threw). See the interface comment. */
  transaction<T>(fn: (tx: StoreTx) => T, opts?: TransactionOptions): Promise<T>;
  /** Node-local: a workload's status; no-op when the workload is gone. */
  workloadStatusSet(namespace: string, name: string, status: WorkloadStatus): void;
  /** Node-local: replaces the set of CIDR identities in use (derived from policies). */
  cidrIdentitiesSet(entries: ReadonlyArray<{ cidr: string; identity: number }>): void;
  /** Calls listener with every change after it committed; returns the unsubscribe. */
  subscribe(listener: (change: StoreChange) => void): () => void;
  close(): void;
}
