import type { Logger } from 'pino';
import { ReservedIdentity, reservedIdentityLabels } from '../identity/reserved.js';
import type { KernelOps } from '../kernel-ops.js';
import {
  endpointPolicyFormat,
  policiesFromObjects,
  type CompiledPolicy,
  type EndpointPolicy,
  type LocalEndpoint,
  type ParsedPolicy,
  type TracePeer,
  type TraceResult,
} from './index.js';
import { CompileMeter, type CompileBudget } from './budget.js';
import { PolicyState, type EndpointPolicyChange } from './incremental.js';
import { hostDestinations } from './host-destinations.js';
import { ipcacheLocalView, ipcacheSyncSteps, type IpcacheLocalView } from './ipcache-sync.js';
import { PolicyMapWriter } from './map-writer.js';
import { stepsRun, stepsRunSliced, type Steps } from './slices.js';
import { workloadTrace } from './workload-trace.js';
import type { Store } from '../store/store.js';
import type { WorkloadRecord } from '../store/types.js';

export interface PolicyApplyStats {
  endpoints: number;
  entries: number;
  upserts: number;
  deletes: number;
  cidrIdentities: number;
  ms: number;
}

/** Workloads that came or changed (already in the store) and that went (already removed from it). */
export interface EndpointsChange {
  upsert?: readonly WorkloadRecord[];
  remove?: readonly WorkloadRecord[];
  /** Identities the store released after an earlier change (kept until then for a rollback). */
  released?: readonly number[];
}

/** What a workload contributes to the policy state. */
function localEndpoint(w: WorkloadRecord): LocalEndpoint {
  return { endpointId: w.endpointId, identity: w.identity, namedPorts: w.spec.ports ?? [], addresses: [w.ipv4, w.ipv6] };
}

/**
 * Ties the policy compiler to the store and the datapath. A change of policies (or a start) builds
 * the whole desired state; a workload that comes, goes or changes identity updates it incrementally
 * (agent/policy/incremental.ts: only its own class and the classes whose rules select an identity
 * that appeared or went away). Either way only the difference is written into the policy map, per
 * endpoint in an order that never allows more than either the old or the new state (see
 * policyEntriesDiff). The current state serves `policy trace` and `workload policy`, so both read
 * exactly what the datapath enforces.
 */
export class PolicyEngine {
  private policies: ParsedPolicy[] = [];
  private state: PolicyState | undefined;
  /** A state compiled by compile() for exactly these policies, for the apply() that usually follows. */
  private prepared: { policies: readonly ParsedPolicy[]; state: PolicyState } | undefined;
  /** The policy map as last written (or read back at start). */
  private readonly map: PolicyMapWriter;
  /** The CIDR ipcache entries last written (undefined until the first apply syncs everything). */
  private cidrKeyApplied: string | undefined;
  /** The CIDR identities last stored. */
  private cidrStored: string | undefined;
  /** The host prefixes (host-destinations.ts) the ipcache was last written with. */
  private hostsSynced: string | undefined;
  /** Cluster mode: identities other nodes allocated, referenced by remote ipcache entries (labels as stored). */
  private readonly remote = new Map<number, readonly string[]>();
  /** Cluster mode: the identity of another node's workload address (for `policy trace`). */
  remoteAddressResolve: (ip: string) => number | undefined = () => undefined;
  /**
   * Further local ipcache entries the sweep keeps, for the compiled state it writes (the DNS proxy's
   * learned addresses that no other entry holds: agent/dns/steering.ts, learnedKeyHolder).
   */
  ipcacheExtra: (compiled: CompiledPolicy | undefined) => Iterable<readonly [cidr: string, identity: number]> = () => [];
  /** Called after every write of policy entries (the DNS steering follows which endpoints need it). */
  onWritten: () => void = () => undefined;
  /** Cluster mode: this cluster's name (CompileOptions.localCluster; set before the first compile). */
  localCluster: string | undefined;

  constructor(
    private readonly store: Store,
    private readonly kernel: KernelOps,
    private readonly log: Logger,
  ) {
    this.map = new PolicyMapWriter(kernel);
  }

  /** Loads stored policies (validated when they were applied) and what the kernel map holds. */
  load(): void {
    this.cidrKeyApplied = undefined;
    this.cidrStored = undefined;
    this.state = undefined;
    this.prepared = undefined;
    this.policies = policiesFromObjects(this.store.policyList().map((p) => p.document));
    this.map.load();
  }

  get parsed(): readonly ParsedPolicy[] {
    return this.policies;
  }

  /** Replaces the policy set used by the next apply (the caller has stored it). */
  policiesSet(policies: ParsedPolicy[]): void {
    this.policies = policies;
  }

  identities(): Map<number, string[]> {
    const ids = new Map<number, string[]>();
    for (const id of Object.values(ReservedIdentity)) if (id !== 0) ids.set(id, reservedIdentityLabels(id));
    for (const [id, labels] of this.remote) ids.set(id, [...labels]);
    for (const [id, labels] of this.store.identityLabelsAll()) ids.set(id, labels);
    return ids;
  }

  private stateBuild(policies: readonly ParsedPolicy[], meter?: CompileMeter): PolicyState {
    return stepsRun(this.stateBuildSteps(policies, meter));
  }

  private *stateBuildSteps(policies: readonly ParsedPolicy[], meter?: CompileMeter): Steps<PolicyState> {
    const state = new PolicyState(
      {
        policies,
        identities: this.identities(),
        endpoints: this.store.workloadList().map(localEndpoint),
        options: { previousCidrIdentities: this.store.cidrIdentities(), ...(this.localCluster !== undefined ? { localCluster: this.localCluster } : {}) },
        meter,
      },
      false,
    );
    yield; // the CIDR identities of a policy naming tens of thousands of prefixes take a while
    yield* state.initialSteps();
    return state;
  }

  /**
   * The room a compile may use (max_entries from the loaded maps): the whole policy map, and the
   * ipcache less the entries of workloads, host destinations and remote nodes.
   */
  budget(): CompileBudget {
    const dp = this.kernel.datapath;
    const capacity = dp.mapCapacity();
    let taken = hostDestinations().length + 2 * this.store.workloadList().length;
    for (const [, e] of dp.ipcacheList()) if (e.hostId !== 0) taken++;
    return { policyEntries: capacity.policy, cidrIdentities: Math.max(0, capacity.ipcache - taken), ipcacheCapacity: capacity.ipcache };
  }

  /**
   * Compiles the desired state from the store without touching the kernel (throws what the compiler
   * refuses, and PolicyCapacityError as soon as the result would not fit the maps).
   */
  compile(policies: readonly ParsedPolicy[] = this.policies): CompiledPolicy {
    const state = this.stateBuild(policies, new CompileMeter(this.budget()));
    this.prepared = { policies, state };
    return state.compiled();
  }

  /**
   * compile, returning to the event loop between slices (agent/policy/slices.ts). The caller holds the
   * agent's mutex throughout: the store and the state it compiles from must not change meanwhile.
   */
  async compileSliced(policies: readonly ParsedPolicy[] = this.policies): Promise<void> {
    const state = await stepsRunSliced(this.stateBuildSteps(policies, new CompileMeter(this.budget())));
    this.prepared = { policies, state };
  }

  /** Compiles the whole desired state and writes the difference to the kernel. Endpoints no longer present lose their entries. */
  apply(): PolicyApplyStats {
    return stepsRun(this.applySteps());
  }

  /**
   * apply in slices (agent/policy/slices.ts), under the agent's mutex. Until it returns, `policy trace`
   * and `workload policy` read the previous state.
   */
  applySliced(): Promise<PolicyApplyStats> {
    return stepsRunSliced(this.applySteps());
  }

  private *applySteps(): Steps<PolicyApplyStats> {
    const started = performance.now();
    const state = this.prepared?.policies === this.policies ? this.prepared.state : yield* this.stateBuildSteps(this.policies);
    this.prepared = undefined;
    const changes: EndpointPolicyChange[] = [];
    for (const id of state.endpointIds()) changes.push({ endpointId: id, before: undefined, after: state.endpoint(id) });
    for (const id of this.map.endpointIds()) if (!state.endpoint(id)) changes.push({ endpointId: id, before: undefined, after: undefined });
    // CIDR identities first, so a new allow never refers to an address that still maps to world.
    // The full sweep (host addresses, a dump of the map) runs only when the CIDR set changed: a
    // workload's own entries are written by the reconciler, and the sweep is O(map) per call.
    const cidrKey = [...state.cidrIdentities, ...state.ipBlocks].map((c) => `${c.cidr}=${c.identity}`).sort().join(',');
    if (cidrKey !== this.cidrKeyApplied) {
      const hosts = hostDestinations();
      yield* ipcacheSyncSteps(this.kernel, this.store, state.compiled(), this.ipcacheExtra(state.compiled()), hosts);
      this.cidrKeyApplied = cidrKey;
      this.hostsSynced = hosts.join();
    }
    let written: { upserts: number; deletes: number };
    try {
      written = yield* this.map.writeSteps(changes);
    } catch (err) {
      this.state = undefined; // a failed write leaves no state to build on (the next change rebuilds)
      throw err;
    }
    const { upserts, deletes } = written;
    this.state = state;
    if (cidrKey !== this.cidrStored) {
      this.store.cidrIdentitiesSet(state.cidrIdentities.map((c) => ({ cidr: c.cidr, identity: c.identity })));
      this.cidrStored = cidrKey;
    }
    return this.statsLog('policy applied', started, upserts, deletes);
  }

  /**
   * The incremental path for workload changes: `upsert` were added or changed identity or named ports
   * (already in the store), `remove` were deleted from the store. Identities that the store no longer
   * has leave the state; new ones join it. Falls back to a full apply before the first one.
   */
  endpointsUpdate(change: EndpointsChange): PolicyApplyStats {
    return stepsRun(this.endpointsUpdateSteps(change));
  }

  /** endpointsUpdate in slices (agent/policy/slices.ts), under the agent's mutex. */
  endpointsUpdateSliced(change: EndpointsChange): Promise<PolicyApplyStats> {
    return stepsRunSliced(this.endpointsUpdateSteps(change));
  }

  private *endpointsUpdateSteps(change: EndpointsChange): Steps<PolicyApplyStats> {
    const state = this.state;
    if (!state) return yield* this.applySteps();
    try {
      return yield* this.updateSteps(state, change);
    } catch (err) {
      // Never keep a state that may be half updated: the next change rebuilds it from the store.
      this.state = undefined;
      throw err;
    }
  }

  private *updateSteps(state: PolicyState, change: EndpointsChange): Steps<PolicyApplyStats> {
    const started = performance.now();
    this.prepared = undefined;
    const gone = new Set<number>(change.released);
    for (const rec of change.remove ?? []) {
      const old = state.identityOf(rec.endpointId);
      if (old !== undefined) gone.add(old);
      state.endpointRemove(rec.endpointId);
    }
    for (const rec of change.upsert ?? []) {
      const old = state.identityOf(rec.endpointId);
      if (old !== undefined && old !== rec.identity) gone.add(old);
      if (!state.hasIdentity(rec.identity)) {
        const labels = this.store.identityLabels(rec.identity);
        if (labels) state.identitySet(rec.identity, labels);
      }
      state.endpointSet(localEndpoint(rec));
    }
    for (const id of gone) if (state.hasIdentity(id) && !this.store.identityLabels(id) && !this.remote.has(id)) state.identitySet(id, undefined);
    const changes = yield* state.flushSteps();
    this.map.roomCheck(changes, change.upsert);
    const { upserts, deletes } = yield* this.map.writeSteps(changes);
    return this.statsLog('policy updated', started, upserts, deletes);
  }

  /**
   * Cluster mode: identities of other nodes' workloads join (labels) or leave (undefined) the policy
   * universe, and the endpoints whose rules select them get the difference written. Under the
   * agent's mutex, as every change of desired state. An identity this host's store holds keeps the
   * store's labels (the same number means the same labels cluster-wide).
   */
  remoteIdentitiesUpdate(changes: ReadonlyMap<number, readonly string[] | undefined>): Promise<PolicyApplyStats | undefined> {
    for (const [id, labels] of changes) {
      if (labels) this.remote.set(id, labels);
      else this.remote.delete(id);
    }
    const state = this.state;
    if (!state) return Promise.resolve(undefined); // the next full build takes identities() as they are now
    return stepsRunSliced(this.remoteUpdateSteps(state, changes)).catch((err: unknown) => {
      this.state = undefined;
      throw err;
    });
  }

  private *remoteUpdateSteps(state: PolicyState, changes: ReadonlyMap<number, readonly string[] | undefined>): Steps<PolicyApplyStats> {
    const started = performance.now();
    this.prepared = undefined;
    for (const [id, labels] of changes) {
      if (this.store.identityLabels(id)) continue;
      state.identitySet(id, labels);
    }
    const changed = yield* state.flushSteps();
    this.map.roomCheck(changed, undefined);
    const { upserts, deletes } = yield* this.map.writeSteps(changed);
    return this.statsLog('policy updated for remote identities', started, upserts, deletes);
  }

  private statsLog(msg: string, started: number, upserts: number, deletes: number): PolicyApplyStats {
    const stats = {
      endpoints: this.state?.size ?? this.map.endpoints,
      entries: this.map.entries,
      upserts,
      deletes,
      cidrIdentities: this.state?.cidrIdentities.length ?? 0,
      ms: +(performance.now() - started).toFixed(1),
    };
    this.log.debug(stats, msg);
    this.onWritten();
    return stats;
  }

  /** Writes the desired local ipcache (ipcache-sync.ts). */
  ipcacheSync(compiled: CompiledPolicy | undefined = this.state?.compiled()): void {
    const hosts = hostDestinations();
    stepsRun(ipcacheSyncSteps(this.kernel, this.store, compiled, this.ipcacheExtra(compiled), hosts));
    this.hostsSynced = hosts.join();
  }

  /**
   * This host's part of the ipcache now, as the sync writes it (ipcache-sync.ts): the writer of other
   * nodes' entries asks it which keys it must leave, and what to write back when one of its entries goes.
   */
  ipcacheLocal(): IpcacheLocalView {
    const compiled = this.state?.compiled();
    return ipcacheLocalView(this.store, compiled, () => this.ipcacheExtra(compiled), hostDestinations());
  }

  /**
   * Writes the local ipcache again if the host's prefixes changed since it was last written (an address
   * came or went: agent/host-address-watch.ts), so new ones are host at once and those of a removed
   * address go. Under the agent's mutex. Returns whether it wrote.
   */
  hostDestinationsFollow(): boolean {
    const hosts = hostDestinations();
    if (hosts.join() === this.hostsSynced) return false;
    const compiled = this.current().compiled();
    stepsRun(ipcacheSyncSteps(this.kernel, this.store, compiled, this.ipcacheExtra(compiled), hosts));
    this.hostsSynced = hosts.join();
    return true;
  }

  /** The compiled state the datapath enforces (the DNS proxy's query verdicts read it). */
  compiled(): CompiledPolicy {
    return this.current().compiled();
  }

  private current(): PolicyState {
    return (this.state ??= this.stateBuild(this.policies));
  }

  endpointPolicy(endpointId: number): { policy: EndpointPolicy | undefined; text: string } {
    const state = this.current();
    const policy = state.endpoint(endpointId);
    return { policy, text: policy ? endpointPolicyFormat(policy, state.compiled().identities) : '' };
  }

  trace(from: TracePeer, to: TracePeer, protocol: string | number, port: number): { result: TraceResult; identities: Map<number, string[]> } {
    const learned = [...this.ipcacheExtra(this.current().compiled())].map(([cidr, identity]) => ({ cidr, identity }));
    return workloadTrace(this.current(), this.store, this.remoteAddressResolve, from, to, protocol, port, learned);
  }

  /** Policy map entries currently written for all endpoints (for metrics). */
  entryCount(): number {
    return this.map.entries;
  }
}
