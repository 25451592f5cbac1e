/**
 * The workload service: register, relabel and remove, serialised under the agent's mutex. Admission
 * of a request is workload-admission.ts, what the kernel gets for a record workload-specs.ts, the
 * errors a client sees workload-errors.ts.
 */
import type { Logger } from 'pino';
import { KitnetError } from '../common/errors.js';
import type { Config } from './config.js';
import { IdentityAllocator, lowestFree } from './identity/allocator.js';
import { workloadLabelKeyForbidden, type Label } from '../common/labels.js';
import type { ClusterServices } from './cluster/index.js';
import { ClusterIdentityError } from './cluster/identity-allocator.js';
import { Pool } from './ipam.js';
import type { KernelOps } from './kernel-ops.js';
import type { Reconciler } from './reconciler.js';
import type { WorkloadController } from './reconcile/controller.js';
import type { Store, StoreTx, TransactionOptions } from './store/store.js';
import type { WorkloadMode, WorkloadRecord, WorkloadSpec } from './store/types.js';
import type { Mutex } from './mutex.js';
import type { PolicyEngine } from './policy/engine.js';
import { workloadRegistrationObserve } from './metrics/process.js';
import { WorkloadAdmission, type RegisterCaller, type WorkloadCreateInput } from './workload-admission.js';
import { errorToKitnet } from './workload-errors.js';
import { hostIfnameFor, VM_UPLINK } from './workload-specs.js';

const ENDPOINT_ID_MAX = 65535;

/**
 * Registration and removal of workloads. Desired state goes to the store first (state `pending`),
 * then the first reconcile runs at once and its result is the answer; a failure of that attempt
 * rolls both back so bad input or a kernel refusal leaves nothing behind. Later failures stay with
 * the reconcile loop, which retries. Mutations are serialised: the kernel work of one workload never interleaves
 * with another's, and allocation sees a consistent store.
 */
export class WorkloadService {
  private readonly identities: IdentityAllocator;
  private readonly pool4: Pool;
  private readonly pool6: Pool;
  private readonly admission: WorkloadAdmission;

  constructor(
    private readonly store: Store,
    private readonly config: Config,
    kernel: KernelOps,
    private readonly reconciler: Reconciler,
    private readonly log: Logger,
    /** Shared with every other service that changes desired state, so changes never interleave. */
    private readonly mutex: Mutex,
    private readonly policy: PolicyEngine,
    private readonly controller: WorkloadController,
    /** Cluster mode: identity numbers come from etcd, addresses go to its ipcache (agent/cluster/). */
    private readonly cluster?: ClusterServices,
  ) {
    const ids = cluster?.identities;
    this.identities = new IdentityAllocator(ids && { extraLabels: ids.extraLabels, numbers: () => ids.numbers() });
    this.pool4 = new Pool(config.ipam.ipv4Pool);
    this.pool6 = new Pool(config.ipam.ipv6Pool);
    this.admission = new WorkloadAdmission(store, kernel);
  }

  list(namespace?: string): WorkloadRecord[] {
    return this.store.workloadList(namespace);
  }

  get(namespace: string, name: string): WorkloadRecord {
    const rec = this.store.workloadGet(namespace, name);
    if (!rec) throw new KitnetError('AGENT_ERR_WORKLOAD_NOT_FOUND', `workload ${namespace}/${name} is not registered`);
    return rec;
  }

  modeResolve(requested: WorkloadCreateInput['mode'], kind: WorkloadCreateInput['kind'] = 'netns'): Promise<WorkloadMode> {
    return this.admission.modeResolve(requested, kind);
  }

  /**
   * A store transaction that may create identities for `labelSets`: in cluster mode their numbers are
   * reserved in etcd first (the transaction itself never waits on the network), and what it did not
   * use is given back after.
   */
  private async identityTransaction<T>(labelSets: Label[][], fn: (tx: StoreTx) => T, opts?: TransactionOptions): Promise<T> {
    const ids = this.cluster?.identities;
    if (!ids) return this.store.transaction(fn, opts);
    try {
      await ids.reserve(this.store, labelSets);
    } catch (err) {
      // 503 (etcd out of reach) or 409 (range exhausted) for every caller: register, relabel, namespace labels.
      throw err instanceof ClusterIdentityError ? errorToKitnet(err, 'cluster identity') : err;
    }
    try {
      return await this.store.transaction(fn, opts);
    } finally {
      await ids.settle(this.store);
    }
  }

  /**
   * Cluster mode: the workloads' addresses in the cluster ipcache. A failure is logged, not the
   * caller's: the workload works on this host, and the entries are written again at the next start.
   */
  async ipcachePublish(records: readonly WorkloadRecord[], how: 'publish' | 'withdraw' = 'publish'): Promise<void> {
    const ipcache = this.cluster?.ipcache;
    if (!ipcache) return;
    for (const rec of records) {
      await ipcache[how](rec).catch((err: unknown) =>
        this.log.warn({ err, workload: `${rec.spec.namespace}/${rec.spec.name}`, identity: rec.identity }, `cannot ${how} the workload's addresses in the cluster ipcache`),
      );
    }
  }

  /** Cluster mode: identities the store released give back this host's etcd reference. */
  private async identitiesReleased(ids: readonly number[]): Promise<void> {
    await this.cluster?.identities.release(ids);
  }

  /** `caller` defaults to admin: the API passes who asks; the agent's own callers are trusted. */
  register(input: WorkloadCreateInput, caller: RegisterCaller = { admin: true }): Promise<WorkloadRecord> {
    return this.mutex.run(() => this.registerLocked(input, caller));
  }

  private async registerLocked(input: WorkloadCreateInput, caller: RegisterCaller): Promise<WorkloadRecord> {
    const started = performance.now();
    const ref = `${input.namespace}/${input.name}`;
    if (this.store.workloadGet(input.namespace, input.name)) {
      throw new KitnetError('AGENT_ERR_WORKLOAD_EXISTS', `workload ${ref} is already registered`, { field: 'name' });
    }
    const kindSpec = await this.admission.kindSpecResolve(input, caller);
    const mode = await this.modeResolve(input.mode, input.kind);

    const spec: WorkloadSpec = {
      name: input.name,
      namespace: input.namespace,
      kind: input.kind,
      labels: input.labels,
      netns: kindSpec.netns,
      ...(kindSpec.netnsId ? { netnsId: { dev: kindSpec.netnsId.dev, ino: kindSpec.netnsId.ino, cookie: kindSpec.netnsId.cookie, boot: kindSpec.netnsId.boot } } : {}),
      requestedMode: input.mode,
      interface: input.interface ?? (input.kind === 'vm' ? VM_UPLINK : input.kind === 'tap' ? input.device! : this.config.datapath.workloadIfname),
      ...(input.ports?.length ? { ports: input.ports } : {}),
      ...(kindSpec.vm ? { vm: kindSpec.vm } : {}),
      ...(kindSpec.tap ? { tap: kindSpec.tap } : {}),
      ...(input.addressing === 'static' ? { addressing: 'static' as const } : {}),
    };
    let rec: WorkloadRecord;
    try {
      // kind netns: not durable on its own (no fsync); the client has not been answered yet, and the
      // commit of state "ready" below syncs the log with this row in it. A power loss in between loses
      // the row but not the store's consistency, and the next start removes everything the kernel got
      // for it as orphans (the pair with its routes, pinned links, map entries). Kinds vm and tap also
      // make things the orphan sweep does not know (a VM namespace, routes via an adopted tap).
      const labelSets = [this.identities.labels(input.labels, input.namespace, this.store.namespaceGet(input.namespace)?.labels)];
      rec = await this.identityTransaction(labelSets, (tx) => {
        const used = tx.usedAddresses();
        const ipv4 = input.ipv4 ? this.pool4.check(input.ipv4, used.ipv4, 'ipv4') : this.pool4.allocate(used.ipv4, 'ipv4');
        const ipv6 = input.ipv6 ? this.pool6.check(input.ipv6, used.ipv6, 'ipv6') : this.pool6.allocate(used.ipv6, 'ipv6');
        const identity = this.identities.acquire(tx, input.labels, input.namespace, tx.namespaceGet(input.namespace)?.labels);
        const endpointId = lowestFree(tx.usedEndpointIds(), 1, ENDPOINT_ID_MAX);
        if (endpointId === undefined) throw new KitnetError('AGENT_ERR_INTERNAL', 'no free endpoint id left');
        return tx.workloadInsert({
          spec,
          mode,
          endpointId,
          identity,
          ipv4,
          ipv6,
          hostIfname: input.kind === 'tap' ? input.device! : hostIfnameFor(input.namespace, input.name),
        });
      }, { durable: input.kind !== 'netns' });
    } catch (err) {
      throw errorToKitnet(err, `workload ${ref}`);
    }

    const log = this.log.child({ workload: ref, device: rec.hostIfname, identity: rec.identity });
    try {
      // Policy first (entries are keyed by endpoint id, so they can precede the device): the programs
      // attached by the converge must find the endpoint's entries. Incremental: the endpoint's own
      // entries, and those of endpoints whose rules select its identity if that identity is new.
      await this.policy.endpointsUpdateSliced({ upsert: [rec] });
      // the first attempt of the reconcile loop, answered here: it writes state "ready"
      await this.controller.reconcileLocked(rec, { registering: true });
    } catch (err) {
      log.warn({ err }, 'registration failed; rolling back');
      await this.reconciler.workloadTeardown(rec).catch((e: unknown) => log.error({ err: e }, 'rollback teardown failed'));
      const released = await this.store.transaction((tx) => {
        tx.workloadDelete(input.namespace, input.name);
        return tx.identitiesReleaseUnused();
      });
      await this.identitiesReleased(released);
      // The policy map may already hold entries for the half-made endpoint and for peers of its identity.
      try {
        await this.policy.endpointsUpdateSliced({ remove: [rec] });
      } catch (e) {
        log.error({ err: e }, 'policy update after rollback failed');
      }
      workloadRegistrationObserve((performance.now() - started) / 1000, 'failure', mode);
      throw errorToKitnet(err, `registering workload ${ref}`);
    }
    const done = this.store.workloadGet(input.namespace, input.name)!;
    if (input.kind !== 'tap') await this.admission.netnsUserAdd(ref, done.spec.netns, kindSpec.netnsId);
    log.info(
      { mode: done.mode, ipv4: done.ipv4, ipv6: done.ipv6, ifindex: done.observed?.hostIfindex, ms: +(performance.now() - started).toFixed(1) },
      'workload registered',
    );
    workloadRegistrationObserve((performance.now() - started) / 1000, 'success', done.mode);
    await this.ipcachePublish([done]);
    return done;
  }

  remove(namespace: string, name: string): Promise<WorkloadRecord> {
    return this.mutex.run(() => this.removeLocked(namespace, name));
  }

  /** remove, with the lock already held (the reconcile loop removes workloads whose namespace is gone). */
  async removeLocked(namespace: string, name: string): Promise<WorkloadRecord> {
    const rec = this.get(namespace, name);
    const log = this.log.child({ workload: `${namespace}/${name}`, device: rec.hostIfname, identity: rec.identity });
    await this.reconciler.workloadTeardown(rec);
    const released = await this.store.transaction((tx) => {
      tx.workloadDelete(namespace, name);
      return tx.identitiesReleaseUnused();
    });
    await this.identitiesReleased(released);
    await this.ipcachePublish([rec], 'withdraw');
    await this.policy.endpointsUpdateSliced({ remove: [rec] });
    this.admission.netnsUsersRemove(`${namespace}/${name}`);
    log.info({ releasedIdentities: released }, 'workload removed');
    return rec;
  }

  /** Reconciles one workload now (its device was damaged from outside); no-op if it is gone. */
  repair(namespace: string, name: string): Promise<void> {
    return this.controller.reconcileNow(namespace, name);
  }

  /** Replaces a workload's labels: new identity, updated maps, policy updated for whom it concerns. */
  labelsSet(namespace: string, name: string, labels: Record<string, string>): Promise<WorkloadRecord> {
    return this.mutex.run(async () => {
      const rec = this.get(namespace, name);
      // The old identity is kept until policy took the new one, so a refusal can go back to it.
      const updated = await this.identitiesRederive([{ ...rec, spec: { ...rec.spec, labels } }], false);
      try {
        await this.policy.endpointsUpdateSliced({ upsert: updated });
      } catch (err) {
        // Refused (the policy map has no room for the new identity's entries) or failed: back to the
        // old labels and identity, in the store, the endpoint maps and policy.
        const restored = await this.identitiesRederive([rec]);
        await this.policy.endpointsUpdateSliced({ upsert: restored }).catch((e: unknown) =>
          this.log.error({ err: e, workload: `${namespace}/${name}` }, 'policy update after a refused relabel failed'));
        throw errorToKitnet(err, `relabelling workload ${namespace}/${name}`);
      }
      await this.identitiesReleaseUnused();
      return updated[0]!;
    });
  }

  /**
   * Releases the identities no workload uses any more (kept by `identitiesRederive(.., false)` until
   * policy took the new ones) and drops their policy entries. Runs under the caller's lock.
   */
  async identitiesReleaseUnused(): Promise<void> {
    const released = await this.store.transaction((tx) => tx.identitiesReleaseUnused());
    await this.identitiesReleased(released);
    if (released.length) await this.policy.endpointsUpdateSliced({ released });
  }

  /**
   * Recomputes the identities of the given workloads (after a label or namespace-label change),
   * writes the new numbers to the endpoint map and ipcache, and releases identities left unused.
   * Runs under the caller's lock; the caller updates policy afterwards (and, with `releaseUnused`
   * false, releases the identities left unused once it has). Established connections
   * that remain allowed keep flowing: conntrack entries are not touched.
   */
  async identitiesRederive(records: WorkloadRecord[], releaseUnused = true): Promise<WorkloadRecord[]> {
    const labelSets = records.map((rec) => this.identities.labels(rec.spec.labels, rec.spec.namespace, this.store.namespaceGet(rec.spec.namespace)?.labels));
    const { changed, released } = await this.identityTransaction(labelSets, (tx) => {
      const out: WorkloadRecord[] = [];
      for (const rec of records) {
        const nsLabels = tx.namespaceGet(rec.spec.namespace)?.labels;
        const identity = this.identities.acquire(tx, rec.spec.labels, rec.spec.namespace, nsLabels);
        tx.workloadUpdate(rec.spec.namespace, rec.spec.name, rec.spec, identity);
        out.push(tx.workloadGet(rec.spec.namespace, rec.spec.name)!);
      }
      return { changed: out, released: releaseUnused ? tx.identitiesReleaseUnused() : [] };
    });
    await this.identitiesReleased(released);
    for (const rec of changed) this.reconciler.endpointMapsWrite(rec);
    await this.ipcachePublish(changed);
    return changed;
  }

  /**
   * Workloads stored before the labels kitnet derives were refused may still carry them, and their
   * stored identity with them (a forged namespace label). Re-derives their identities, which ignore
   * those labels, and updates policy. Runs at start, under the caller's lock, after the restore.
   */
  async forgedLabelsScrub(): Promise<WorkloadRecord[]> {
    const forged = this.store.workloadList().filter((r) => Object.keys(r.spec.labels).some((k) => workloadLabelKeyForbidden(k) !== undefined));
    if (forged.length === 0) return [];
    for (const r of forged) {
      this.log.warn({ workload: `${r.spec.namespace}/${r.spec.name}`, labels: Object.keys(r.spec.labels).filter((k) => workloadLabelKeyForbidden(k)) },
        'workload carries labels kitnet derives itself (stored before they were refused); its identity no longer includes them');
    }
    const updated = await this.identitiesRederive(forged);
    await this.policy.endpointsUpdateSliced({ upsert: updated });
    return updated;
  }

  /** Runs fn while no registration or removal is in progress (startup sync, shutdown). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.mutex.run(fn);
  }
}
