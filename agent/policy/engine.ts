import { networkInterfaces } from 'node:os';
import type { Logger } from 'pino';
import { KitnetError } from '../../common/errors.js';
import { ReservedIdentity, reservedIdentityLabels } from '../identity/reserved.js';
import type { KernelOps } from '../kernel-ops.js';
import {
  endpointPolicyFormat,
  policiesFromObjects,
  policyEntriesDiffSteps,
  policyKeyDecode,
  policyTrace,
  policyValueDecode,
  type CompiledPolicy,
  type EndpointPolicy,
  type LocalEndpoint,
  type ParsedPolicy,
  type PolicyEntry,
  type PolicyMapOp,
  type TracePeer,
  type TraceResult,
  type TraceSide,
} from './index.js';
import { CompileMeter, PolicyCapacityError, type CompileBudget } from './budget.js';
import { IPBLOCK_VIEW_PREFIX } from './cidr.js';
import { PolicyState, type EndpointPolicyChange } from './incremental.js';
import { STEP, stepsRun, stepsRunSliced, type Steps } from './slices.js';
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

/** Addresses of the host's own interfaces: traffic from them carries the reserved host identity. */
function hostAddresses(): string[] {
  const out: string[] = [];
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) {
      if (a.family === 'IPv6' && a.address.startsWith('fe80')) continue;
      out.push(`${a.address}/${a.family === 'IPv4' ? 32 : 128}`);
    }
  }
  return out;
}

const NO_ENTRIES: readonly PolicyEntry[] = [];

/** The map operations turning `before` into `after`, computed once per distinct pair of (shared) arrays. */
class DiffMemo {
  private readonly m = new Map<readonly PolicyEntry[], Map<readonly PolicyEntry[], PolicyMapOp[]>>();
  *ops(before: readonly PolicyEntry[], after: readonly PolicyEntry[]): Steps<PolicyMapOp[]> {
    if (before === after) return [];
    let byAfter = this.m.get(before);
    if (!byAfter) this.m.set(before, (byAfter = new Map()));
    let ops = byAfter.get(after);
    if (!ops) byAfter.set(after, (ops = (yield* policyEntriesDiffSteps(0, before, after)).ops));
    return ops;
  }
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
  /** Entries in the kernel map, per endpoint, as last written (or read back at start). */
  private inMap = new Map<number, readonly PolicyEntry[]>();
  private inMapEntries = 0;
  /** The CIDR ipcache entries last written (undefined until the first apply syncs everything). */
  private cidrKeyApplied: string | undefined;
  /** The CIDR identities last stored. */
  private cidrStored: string | undefined;
  /** Cluster mode: identities other nodes allocated, referenced by remote ipcache entries (labels as stored). */
  private readonly remote = new Map<number, readonly string[]>();
  /** Cluster mode: the identity of another node's workload address (for `policy trace`). */
  remoteAddressResolve: (ip: string) => number | undefined = () => undefined;
  /** Further local ipcache entries the sweep keeps (the DNS proxy's learned addresses: agent/dns/steering.ts). */
  ipcacheExtra: () => Iterable<readonly [cidr: string, identity: number]> = () => [];
  /** Called after every write of policy entries (the DNS steering follows which endpoints need it). */
  onWritten: () => void = () => undefined;

  constructor(
    private readonly store: Store,
    private readonly kernel: KernelOps,
    private readonly log: Logger,
  ) {}

  /** Loads stored policies (validated when they were applied) and what the kernel map holds. */
  load(): void {
    this.cidrKeyApplied = undefined;
    this.cidrStored = undefined;
    this.state = undefined;
    this.prepared = undefined;
    this.policies = policiesFromObjects(this.store.policyList().map((p) => p.document));
    const inMap = new Map<number, PolicyEntry[]>();
    for (const { key, value } of this.kernel.datapath.policyList()) {
      const k = policyKeyDecode(key);
      const portPrefixLen = k.protocol === 0 ? 0 : Math.max(0, k.prefixLen - 80);
      const entry: PolicyEntry = {
        direction: k.direction,
        identity: k.identity,
        protocol: k.protocol,
        port: k.port,
        portPrefixLen,
        deny: policyValueDecode(value).deny,
        rules: [],
      };
      const list = inMap.get(k.endpointId) ?? [];
      list.push(entry);
      inMap.set(k.endpointId, list);
    }
    this.inMap = inMap;
    this.inMapEntries = [...inMap.values()].reduce((n, l) => n + l.length, 0);
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
        options: { previousCidrIdentities: this.store.cidrIdentities() },
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
   * ipcache less the entries of workloads, host addresses and remote nodes.
   */
  budget(): CompileBudget {
    const dp = this.kernel.datapath;
    const capacity = dp.mapCapacity();
    let taken = hostAddresses().length + 2 * this.store.workloadList().length;
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
    for (const id of this.inMap.keys()) if (!state.endpoint(id)) changes.push({ endpointId: id, before: undefined, after: undefined });
    // CIDR identities first, so a new allow never refers to an address that still maps to world.
    // The full sweep (host addresses, a dump of the map) runs only when the CIDR set changed: a
    // workload's own entries are written by the reconciler, and the sweep is O(map) per call.
    const cidrKey = [...state.cidrIdentities, ...state.ipBlocks].map((c) => `${c.cidr}=${c.identity}`).sort().join(',');
    if (cidrKey !== this.cidrKeyApplied) {
      yield* this.ipcacheSyncSteps(state.compiled());
      this.cidrKeyApplied = cidrKey;
    }
    let written: { upserts: number; deletes: number };
    try {
      written = yield* this.writeSteps(changes);
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
    this.roomCheck(changes, change);
    const { upserts, deletes } = yield* this.writeSteps(changes);
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
    this.roomCheck(changed, {});
    const { upserts, deletes } = yield* this.writeSteps(changed);
    return this.statsLog('policy updated for remote identities', started, upserts, deletes);
  }

  /**
   * Refuses (AGENT_ERR_POLICY_CAPACITY) an incremental change whose entries would not fit the policy
   * map, before anything is written: the entries the changed endpoints hold after it, less those they
   * hold now, on top of what the map holds (the agent's own count: it writes every entry).
   */
  private roomCheck(changes: readonly EndpointPolicyChange[], change: EndpointsChange): void {
    let growth = 0;
    let largest: EndpointPolicyChange | undefined;
    for (const c of changes) {
      const n = c.after?.entries.length ?? 0;
      growth += n - (this.inMap.get(c.endpointId)?.length ?? 0);
      if (n > (largest?.after?.entries.length ?? 0)) largest = c;
    }
    const capacity = this.kernel.datapath.mapCapacity().policy;
    if (growth <= 0 || this.inMapEntries + growth <= capacity) return;
    const names = [...(change.upsert ?? [])].map((w) => `${w.spec.namespace}/${w.spec.name}`);
    const who = names.length === 1 ? `workload ${names[0]}` : `workloads ${names.join(', ')}`;
    const rules = largest?.after?.entries.flatMap((e) => e.rules).filter((r, i, a) => a.indexOf(r) === i).slice(0, 3) ?? [];
    throw new PolicyCapacityError(
      `${who} would add ${growth} policy map entries (${changes.length} endpoint(s) change; endpoint ${largest?.endpointId} alone holds ${largest?.after?.entries.length}${rules.length ? `, from ${rules.join('; ')}` : ''}), but the policy map holds ${this.inMapEntries} of ${capacity} (limit: policy max_entries ${capacity}); nothing was changed. Remove workloads or policies that select them, narrow their peers x ports, or raise POLICY_MAP_MAX in tools/gen/bpf-layout.ts`,
    );
  }

  /**
   * Writes each changed endpoint's difference; `inMap` follows what reached the kernel. Large
   * differences go in batches of STEP ops with a yield point between them: the ops are in the safe
   * order (policyEntriesDiff), and every prefix of it is safe, so the datapath may run in between.
   */
  private *writeSteps(changes: readonly EndpointPolicyChange[]): Steps<{ upserts: number; deletes: number }> {
    const dp = this.kernel.datapath;
    const memo = new DiffMemo();
    let upserts = 0;
    let deletes = 0;
    // Endpoints that lose entries first: near a full map, what they free makes room for those that grow
    // (and a change that only shrinks, such as a policy delete, never needs room at all).
    const growth = (c: EndpointPolicyChange) => (c.after?.entries.length ?? 0) - (this.inMap.get(c.endpointId)?.length ?? 0);
    const ordered = changes.some((c) => growth(c) > 0) ? [...changes].sort((a, b) => growth(a) - growth(b)) : changes;
    for (const { endpointId, after } of ordered) {
      const before = this.inMap.get(endpointId) ?? NO_ENTRIES;
      const next = after?.entries ?? NO_ENTRIES;
      const ops = yield* memo.ops(before, next);
      for (let i = 0; i < ops.length; i += STEP) {
        if (i > 0) yield;
        try {
          dp.policyApply(endpointId, ops.length <= STEP ? ops : ops.slice(i, i + STEP));
        } catch (err) {
          // Part of the ops may have been written: read back what the kernel holds for this endpoint.
          this.inMapSet(endpointId, dp.policyList(endpointId).map((e) => ({ ...e, rules: [] })));
          throw err;
        }
      }
      for (const o of ops) if (o.op === 'upsert') upserts++; else deletes++;
      this.inMapSet(endpointId, next.length > 0 ? next : undefined);
    }
    return { upserts, deletes };
  }

  private inMapSet(endpointId: number, entries: readonly PolicyEntry[] | undefined): void {
    this.inMapEntries -= this.inMap.get(endpointId)?.length ?? 0;
    if (entries) {
      this.inMap.set(endpointId, entries);
      this.inMapEntries += entries.length;
    } else {
      this.inMap.delete(endpointId);
    }
  }

  private statsLog(msg: string, started: number, upserts: number, deletes: number): PolicyApplyStats {
    const stats = {
      endpoints: this.state?.size ?? this.inMap.size,
      entries: this.inMapEntries,
      upserts,
      deletes,
      cidrIdentities: this.state?.cidrIdentities.length ?? 0,
      ms: +(performance.now() - started).toFixed(1),
    };
    this.log.debug(stats, msg);
    this.onWritten();
    return stats;
  }

  /**
   * Desired ipcache: workload addresses (their identities), host addresses (reserved host), the
   * CIDR identities of the policies and the ipBlock view (cidr.ts, ipBlockView). Anything else local is removed; remote-host entries are kept.
   */
  ipcacheSync(compiled: CompiledPolicy | undefined = this.state?.compiled()): void {
    stepsRun(this.ipcacheSyncSteps(compiled));
  }

  private *ipcacheSyncSteps(compiled: CompiledPolicy | undefined): Steps<void> {
    const dp = this.kernel.datapath;
    const desired = new Map<string, number>();
    for (const cidr of hostAddresses()) desired.set(cidr, ReservedIdentity.host);
    for (const c of compiled?.ipcache ?? []) desired.set(c.cidr, c.identity);
    for (const c of compiled?.ipBlocks ?? []) desired.set(`${IPBLOCK_VIEW_PREFIX}${c.cidr}`, c.identity);
    for (const [cidr, identity] of this.ipcacheExtra()) desired.set(cidr, identity);
    for (const w of this.store.workloadList()) {
      desired.set(`${w.ipv4}/32`, w.identity);
      desired.set(`${w.ipv6}/128`, w.identity);
    }
    const present = new Map(dp.ipcacheList());
    const stale = [...present].filter(([cidr, entry]) => entry.hostId === 0 && !desired.has(cidr)).map(([cidr]) => cidr);
    const added = [...desired.keys()].filter((cidr) => !present.has(cidr)).length;
    // Normally new entries first (an address never falls back to a wider prefix mid-change); when the
    // map cannot hold old and new at once, the stale ones go first to make the room.
    const roomy = present.size + added <= dp.mapCapacity().ipcache;
    let work = 0;
    if (!roomy) {
      for (const cidr of stale) {
        dp.ipcacheDelete(cidr);
        if (++work % STEP === 0) yield;
      }
    }
    for (const [cidr, identity] of desired) {
      const cur = present.get(cidr);
      if (!cur || cur.identity !== identity || cur.hostId !== 0) dp.ipcacheUpsert(cidr, { identity, hostId: 0 });
      if (++work % STEP === 0) yield;
    }
    if (roomy) {
      for (const cidr of stale) {
        dp.ipcacheDelete(cidr);
        if (++work % STEP === 0) yield;
      }
    }
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
    const state = this.current().compiled();
    const workloads = this.store.workloadList();
    const byIp = new Map<string, { identity: number; endpointId: number }>();
    for (const w of workloads) {
      byIp.set(w.ipv4, { identity: w.identity, endpointId: w.endpointId });
      byIp.set(w.ipv6, { identity: w.identity, endpointId: w.endpointId });
    }
    const hostIps = new Set(hostAddresses().map((c) => c.split('/')[0]!));
    let result: TraceResult;
    try {
      result = policyTrace(state, { from, to, protocol, port }, {
        resolveIp: (ip) => {
          const remote = byIp.has(ip) || hostIps.has(ip) ? undefined : this.remoteAddressResolve(ip);
          return byIp.get(ip) ?? (hostIps.has(ip) ? { identity: ReservedIdentity.host } : remote !== undefined ? { identity: remote } : undefined);
        },
      });
    } catch (err) {
      throw new KitnetError('AGENT_ERR_TRACE_PEER', (err as Error).message, { cause: err });
    }
    const byEp = new Map(workloads.map((w) => [w.endpointId, w]));
    // The workload a trace peer is, and the addresses the trace stands for.
    const workloadOf = (p: TracePeer): { w: WorkloadRecord; ips: string[] } | undefined => {
      if ('endpointId' in p) {
        const w = byEp.get(p.endpointId);
        return w && { w, ips: [w.ipv4, w.ipv6] };
      }
      if ('ip' in p) {
        const hit = byIp.get(p.ip);
        const w = hit && byEp.get(hit.endpointId);
        return w && { w, ips: [p.ip] };
      }
      return undefined;
    };
    const src = workloadOf(from);
    const dst = workloadOf(to);
    if (src && dst && src.w.endpointId === dst.w.endpointId) {
      const name = `${src.w.spec.namespace}/${src.w.spec.name}`;
      return {
        result: {
          verdict: 'ALLOWED',
          srcIdentity: result.srcIdentity,
          dstIdentity: result.dstIdentity,
          loopback: true,
          notes: [`source and destination are the same workload ${name}: traffic to its own address stays on its loopback inside its namespace and never reaches the datapath, so no policy applies`],
        },
        identities: state.identities,
      };
    }
    const notes: string[] = [];
    const policyState = this.current();
    const remote = (side: TraceSide, peer: { w: WorkloadRecord; ips: string[] } | undefined) => {
      if (!peer) return;
      const r = { identity: peer.w.identity, name: `${peer.w.spec.namespace}/${peer.w.spec.name}`, ips: peer.ips };
      notes.push(...policyState.cidrNotes(side.endpointId, side.direction, r));
    };
    if (result.egress) remote(result.egress, dst);
    if (result.ingress) remote(result.ingress, src);
    if (notes.length) result.notes = notes;
    return { result, identities: state.identities };
  }

  /** Policy map entries currently written for all endpoints (for metrics). */
  entryCount(): number {
    return this.inMapEntries;
  }
}
