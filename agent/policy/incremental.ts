/**
 * The incremental policy compiler: the same result as policyCompile (compile.ts) for the current
 * policies, identities and endpoints, kept up to date as endpoints and identities come and go,
 * recompiling only what a change can affect.
 *
 * Endpoints with the same identity and named ports share one compiled "class" (their entries are
 * equal). What a class's entries depend on, and so what makes it recompile:
 * - its identity's labels (which rules select it): the class is new, or its identity appeared;
 * - the identities its sections' peers select: an identity appeared or went away that one of its
 *   sections selects (a label selector matching the identity's labels, or the `cluster` entity);
 *   peers 'all' (identity 0) do not depend on the identity set;
 * - the named ports of remote identities, for egress rules that name a port: a peer identity's
 *   named ports changed (or any identity's, for a section whose peers are 'all');
 * - the workload addresses of remote identities, for NetworkPolicy ipBlock peers (an identity is
 *   selected when its workloads' addresses are all covered, Universe.blockSelects): an endpoint came,
 *   went, changed identity or addresses, and the selection of its (old or new) identity flipped.
 * CIDR identities depend only on the policies: a policy change builds a new state.
 *
 * So a registration whose identity already exists compiles at most its own class (usually nothing:
 * an endpoint of an existing class reuses its entries); a new identity additionally recompiles the
 * classes whose sections select it. Entries arrays are shared between the endpoints of a class and
 * must be treated as immutable.
 */
import type { CompileMeter } from './budget.js';
import { classCompileSteps, endpointClassKey, type ClassContext } from './compile.js';
import { sectionBlocks, sectionHasEgressNamedPort, sectionSelectsLabelIdentity, Universe } from './universe.js';
import { blockCovers, cidrContainsCidr, cidrIdentitiesAllocate, cidrParsed, hostPrefix, ipBlockView, policyCidrs } from './cidr.js';
import { isLabelDerived } from './entities.js';
import { identityLabelParse } from './selector.js';
import { STEP, stepsRun, type Steps } from './slices.js';
import type { CidrIdentity, CompiledPolicy, CompileOptions, Direction, EndpointPolicy, IpcacheEntry, LocalEndpoint, NamedPort, ParsedPolicy, PolicyEntry, RuleSection } from './types.js';

interface PolicyClass {
  key: string;
  identity: number;
  namedPorts: NamedPort[];
  members: Set<number>;
  /** Compiled entries (endpointId of the template is meaningless); undefined until first compiled. */
  policy: EndpointPolicy | undefined;
  /** The rule sections that select the class (from the last compile). */
  sections: RuleSection[];
}

/** One endpoint whose entries changed: before (undefined = new endpoint) and after (undefined = removed). */
export interface EndpointPolicyChange {
  endpointId: number;
  before: EndpointPolicy | undefined;
  after: EndpointPolicy | undefined;
}

export interface PolicyStateInput {
  policies: readonly ParsedPolicy[];
  /** Known identities (label-derived and remote; reserved ones are always known) -> labels. */
  identities: ReadonlyMap<number, readonly string[]>;
  endpoints: readonly LocalEndpoint[];
  options?: CompileOptions;
  /** Bounds the initial compile by the maps' room (budget.ts); later incremental changes are not metered. */
  meter?: CompileMeter | undefined;
}

function entriesEqual(a: readonly PolicyEntry[], b: readonly PolicyEntry[]): boolean {
  if (a === b) return true;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (
      x.direction !== y.direction || x.identity !== y.identity || x.protocol !== y.protocol || x.port !== y.port ||
      x.portPrefixLen !== y.portPrefixLen || x.deny !== y.deny || x.implicit !== y.implicit || x.rules.length !== y.rules.length
    ) return false;
    for (let j = 0; j < x.rules.length; j++) if (x.rules[j] !== y.rules[j]) return false;
  }
  return true;
}

function policyEqual(a: EndpointPolicy, b: EndpointPolicy): boolean {
  return a.ingressEnforced === b.ingressEnforced && a.egressEnforced === b.egressEnforced && entriesEqual(a.entries, b.entries);
}

export class PolicyState {
  readonly cidrIdentities: CidrIdentity[];
  /** The ipBlock view of the ipcache (cidr.ts, ipBlockView): depends only on the policies. */
  readonly ipBlocks: IpcacheEntry[];
  private readonly u: Universe;
  private readonly ctx: ClassContext;
  private readonly classes = new Map<string, PolicyClass>();
  private readonly byEndpoint = new Map<number, { ep: LocalEndpoint; cls: PolicyClass }>();
  /** Each endpoint's entries as of the last flush. */
  private readonly current = new Map<number, EndpointPolicy>();
  /** Classes that use a section (to find what a changed section affects). */
  private readonly sectionUsers = new Map<RuleSection, Set<PolicyClass>>();
  private readonly egressNamedSections: RuleSection[];
  /** Named ports per identity and endpoint: the remote named ports of egress rules. */
  private readonly namedByIdentity = new Map<number, Map<number, readonly NamedPort[]>>();
  private readonly namedFlat = new Map<number, NamedPort[]>();
  private namedIds: number[] | undefined;
  // Pending changes, resolved by flush().
  private readonly dirty = new Set<PolicyClass>();
  private readonly moved = new Set<number>();
  private readonly namedChanged = new Set<number>();
  private snapshot: CompiledPolicy | undefined;

  /**
   * `compileNow` false: the endpoints are added but not compiled; the caller runs `initialSteps()` to
   * the end before using the state (PolicyEngine does, in slices).
   */
  constructor(input: PolicyStateInput, compileNow = true) {
    const cidrs = policyCidrs(input.policies);
    input.meter?.cidrIdentities(cidrs.length);
    this.cidrIdentities = cidrIdentitiesAllocate(cidrs, input.options?.previousCidrIdentities);
    this.ipBlocks = ipBlockView(input.policies, this.cidrIdentities);
    input.meter?.cidrIdentities(cidrs.length + this.ipBlocks.length);
    this.u = new Universe(input.identities, this.cidrIdentities, this.ipBlocks, input.options?.localCluster);
    const rules = input.policies.flatMap((p) => p.rules);
    this.ctx = {
      u: this.u,
      rules,
      remoteNamed: (id) => this.remoteNamed(id),
      remoteNamedIds: () => (this.namedIds ??= [...this.namedFlat.keys()].filter((id) => this.namedFlat.get(id)!.length > 0).sort((a, b) => a - b)),
      allowLocalhost: input.options?.allowLocalhost ?? true,
      meter: input.meter,
    };
    this.egressNamedSections = rules.flatMap((r) => r.sections).filter(sectionHasEgressNamedPort);
    for (const ep of input.endpoints) this.endpointSet(ep);
    if (compileNow) stepsRun(this.initialSteps());
  }

  /** The first compile of every endpoint, metered (then the meter is dropped). */
  *initialSteps(): Steps<void> {
    yield* this.flushSteps();
    this.ctx.meter = undefined;
  }

  private remoteNamed(id: number): readonly NamedPort[] {
    return this.namedFlat.get(id) ?? [];
  }

  hasIdentity(id: number): boolean {
    return this.u.labels.has(id);
  }

  identityOf(endpointId: number): number | undefined {
    return this.byEndpoint.get(endpointId)?.ep.identity;
  }

  /** Adds an identity, or removes it (labels undefined). Replacing labels of a known id is remove + add. */
  identitySet(id: number, labels: readonly string[] | undefined): void {
    const had = this.u.raw.get(id);
    if (had === undefined && labels === undefined) return;
    if (had !== undefined && labels !== undefined && had.length === labels.length && had.every((l, i) => l === labels[i])) return;
    if (had !== undefined) this.identityChange(id, had, false);
    if (labels !== undefined) this.identityChange(id, labels, true);
  }

  private identityChange(id: number, labels: readonly string[], add: boolean): void {
    this.snapshot = undefined;
    if (add) this.u.add(id, labels);
    else this.u.remove(id);
    for (const cls of this.classes.values()) if (cls.identity === id) this.dirty.add(cls);
    if (!isLabelDerived(id)) {
      // Reserved and CIDR identities are selected by entities and CIDR peers too: resolve everything again.
      this.u.peerCache.clear();
      for (const cls of this.classes.values()) this.dirty.add(cls);
      return;
    }
    const parsed = labels.map(identityLabelParse);
    for (const [s, cached] of this.u.peerCache) {
      if (cached === 'all') continue;
      if (!sectionSelectsLabelIdentity(s, id, parsed, this.u.localCluster)) {
        // Not by label; an ipBlock may select it by its workloads' addresses.
        if (sectionBlocks(s).length > 0) this.blockSelectionUpdate(s, cached, id);
        continue;
      }
      const next = add ? [...new Set([...cached, id])].sort((a, b) => a - b) : cached.filter((x) => x !== id);
      this.u.peerCache.set(s, next);
      for (const cls of this.sectionUsers.get(s) ?? []) this.dirty.add(cls);
    }
  }

  /** Brings a section's cached peers in line with whether its ipBlocks select the identity now. */
  private blockSelectionUpdate(s: RuleSection, cached: number[], id: number): void {
    const want = this.u.blockSelects(s, id);
    if (want === cached.includes(id)) return;
    this.u.peerCache.set(s, want ? [...cached, id].sort((a, b) => a - b) : cached.filter((x) => x !== id));
    for (const cls of this.sectionUsers.get(s) ?? []) this.dirty.add(cls);
  }

  /** An identity's workload addresses changed: re-decide the ipBlock sections (label selection is unaffected). */
  private addressesChanged(id: number): void {
    this.snapshot = undefined;
    for (const [s, cached] of this.u.peerCache) {
      if (cached === 'all' || sectionBlocks(s).length === 0) continue;
      if (sectionSelectsLabelIdentity(s, id, this.u.labels.get(id) ?? [], this.u.localCluster)) continue;
      this.blockSelectionUpdate(s, cached, id);
    }
  }

  /** Adds an endpoint or changes its identity / named ports. */
  endpointSet(ep: LocalEndpoint): void {
    const key = endpointClassKey(ep);
    const prev = this.byEndpoint.get(ep.endpointId);
    const addresses = [...(ep.addresses ?? [])];
    if (prev && prev.cls.key === key) {
      // Same entries for the endpoint itself; its addresses may still decide what ipBlocks select.
      prev.ep = { ...prev.ep, addresses };
      if (this.u.addressesSet(ep.identity, ep.endpointId, addresses)) this.addressesChanged(ep.identity);
      return;
    }
    if (prev) this.endpointRemove(ep.endpointId);
    this.snapshot = undefined;
    const namedPorts = [...(ep.namedPorts ?? [])];
    let cls = this.classes.get(key);
    if (!cls) {
      cls = { key, identity: ep.identity, namedPorts, members: new Set(), policy: undefined, sections: [] };
      this.classes.set(key, cls);
      this.dirty.add(cls);
    }
    cls.members.add(ep.endpointId);
    this.byEndpoint.set(ep.endpointId, { ep: { endpointId: ep.endpointId, identity: ep.identity, namedPorts, addresses }, cls });
    this.moved.add(ep.endpointId);
    this.namedSet(ep.identity, ep.endpointId, namedPorts);
    if (this.u.addressesSet(ep.identity, ep.endpointId, addresses)) this.addressesChanged(ep.identity);
  }

  endpointRemove(endpointId: number): void {
    const prev = this.byEndpoint.get(endpointId);
    if (!prev) return;
    this.snapshot = undefined;
    this.byEndpoint.delete(endpointId);
    this.moved.add(endpointId);
    prev.cls.members.delete(endpointId);
    if (prev.cls.members.size === 0) this.classDrop(prev.cls);
    this.namedSet(prev.ep.identity, endpointId, undefined);
    if (this.u.addressesSet(prev.ep.identity, endpointId, undefined)) this.addressesChanged(prev.ep.identity);
  }

  private classDrop(cls: PolicyClass): void {
    this.classes.delete(cls.key);
    this.dirty.delete(cls);
    for (const s of cls.sections) this.sectionUsers.get(s)?.delete(cls);
  }

  /** Every endpoint's entry in the remote named-port table, even without ports (as the full compile builds it). */
  private namedSet(identity: number, endpointId: number, ports: readonly NamedPort[] | undefined): void {
    let m = this.namedByIdentity.get(identity);
    const before = this.namedFlat.get(identity);
    if (ports === undefined) {
      if (!m?.delete(endpointId)) return;
      if (m.size === 0) this.namedByIdentity.delete(identity);
    } else {
      if (!m) this.namedByIdentity.set(identity, (m = new Map()));
      m.set(endpointId, ports);
    }
    const flat = m && m.size > 0 ? [...m.values()].flat() : undefined;
    if (flat) this.namedFlat.set(identity, flat);
    else this.namedFlat.delete(identity);
    const beforeLen = before?.length ?? 0;
    if (beforeLen !== (flat?.length ?? 0) || (beforeLen > 0 && JSON.stringify(before) !== JSON.stringify(flat))) {
      this.namedChanged.add(identity);
      this.namedIds = undefined;
    }
  }

  /**
   * Recompiles what the changes since the last flush affect; returns the endpoints whose entries (or
   * enforcement) changed, were added or were removed.
   */
  flush(): EndpointPolicyChange[] {
    return stepsRun(this.flushSteps());
  }

  /**
   * flush in steps (./slices.ts). Recompiling yields; the endpoints' entries as `endpoint()` and
   * `compiled()` read them change at the end, at once.
   */
  *flushSteps(): Steps<EndpointPolicyChange[]> {
    if (this.namedChanged.size > 0) {
      for (const s of this.egressNamedSections) {
        const peers = this.u.peers(s);
        if (peers !== 'all' && !peers.some((id) => this.namedChanged.has(id))) continue;
        for (const cls of this.sectionUsers.get(s) ?? []) this.dirty.add(cls);
      }
      this.namedChanged.clear();
    }
    const changedClasses = new Set<PolicyClass>();
    let work = 0;
    for (const cls of this.dirty) {
      const first = cls.members.values().next();
      if (first.done) continue;
      // many small classes: a yield point every STEP entries compiled (a large class yields inside)
      if (work >= STEP) {
        work = 0;
        yield;
      }
      const { policy, sections } = yield* classCompileSteps(this.ctx, { endpointId: first.value, identity: cls.identity, namedPorts: cls.namedPorts });
      for (const s of cls.sections) this.sectionUsers.get(s)?.delete(cls);
      for (const s of sections) {
        let users = this.sectionUsers.get(s);
        if (!users) this.sectionUsers.set(s, (users = new Set()));
        users.add(cls);
      }
      cls.sections = sections;
      work += policy.entries.length + sections.length;
      this.ctx.meter?.classEntries(policy.entries.length * cls.members.size, sections[0]?.ref ?? `endpoints of identity ${cls.identity}`);
      if (cls.policy && policyEqual(cls.policy, policy)) continue;
      cls.policy = policy;
      changedClasses.add(cls);
    }
    this.dirty.clear();

    const out: EndpointPolicyChange[] = [];
    const emit = (endpointId: number) => {
      const before = this.current.get(endpointId);
      const cls = this.byEndpoint.get(endpointId)?.cls;
      let after: EndpointPolicy | undefined;
      if (cls?.policy) {
        after = before && before.entries === cls.policy.entries && before.ingressEnforced === cls.policy.ingressEnforced && before.egressEnforced === cls.policy.egressEnforced
          ? before
          : { ...cls.policy, endpointId };
      }
      if (after === before) return;
      if (after) this.current.set(endpointId, after);
      else this.current.delete(endpointId);
      out.push({ endpointId, before, after });
    };
    const seen = new Set<number>();
    for (const id of this.moved) {
      seen.add(id);
      emit(id);
    }
    this.moved.clear();
    for (const cls of changedClasses) {
      for (const id of cls.members) if (!seen.has(id)) emit(id);
    }
    if (out.length) this.snapshot = undefined;
    return out;
  }

  /**
   * For `policy trace`: what the CIDR rules that select an endpoint (in one direction) make of a remote
   * workload's addresses: which rule selects it, or why a rule covering the address does not.
   */
  cidrNotes(endpointId: number, direction: Direction, remote: { identity: number; name: string; ips: readonly string[] }): string[] {
    const cls = this.byEndpoint.get(endpointId)?.cls;
    const notes = new Set<string>();
    for (const s of cls?.sections ?? []) {
      if (s.direction !== direction || s.peers === 'all') continue;
      for (const p of s.peers) {
        if (p.kind !== 'cidr') continue;
        for (const ip of remote.ips) {
          const a = hostPrefix(ip);
          if (!cidrContainsCidr(cidrParsed(p.cidr), a)) continue;
          const what = `${ip} is workload ${remote.name}`;
          if (!p.selectsWorkloads) {
            notes.add(`${what}; CIDR rules of a ${s.ref.split(' ')[0]} do not select workloads (${s.ref}: ${p.cidr})`);
          } else if (!blockCovers(p, a)) {
            notes.add(`${what}, in the except list of ${s.ref} (ipBlock ${p.cidr} except ${p.except.join(', ')})`);
          } else {
            const left = this.u.blockUncovered(s, remote.identity) ?? [];
            notes.add(
              left.length === 0
                ? `${what}; ${s.ref} selects it by ipBlock ${p.cidr}`
                : `${what}; ${s.ref} selects this address by ipBlock ${p.cidr}, per address: not ${left.join(', ')} (of workloads with identity ${remote.identity}), which its ipBlocks do not cover`,
            );
          }
        }
      }
    }
    return [...notes];
  }

  /** The entries of one endpoint as of the last flush. */
  endpoint(endpointId: number): EndpointPolicy | undefined {
    return this.current.get(endpointId);
  }

  /** Endpoints in the state. */
  get size(): number {
    return this.current.size;
  }

  endpointIds(): IterableIterator<number> {
    return this.current.keys();
  }

  /** The state as policyCompile returns it (endpoints in ascending id order; entries shared, read-only). */
  compiled(): CompiledPolicy {
    return (this.snapshot ??= {
      endpoints: [...this.current.values()].sort((a, b) => a.endpointId - b.endpointId),
      cidrIdentities: this.cidrIdentities,
      ipcache: this.cidrIdentities.map((c) => ({ cidr: c.cidr, identity: c.identity })),
      ipBlocks: this.ipBlocks,
      identities: new Map(this.u.raw),
    });
  }
}
