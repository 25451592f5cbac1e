/**
 * The policy compiler: parsed policies + known identities + local endpoints -> per-endpoint policy map
 * entries (see map-key.ts for the layout and the datapath's lookup) and the CIDR identities they need.
 *
 * Semantics (upstream Cilium / Kubernetes):
 * - A rule selects an endpoint by its identity's labels. An endpoint is enforced (default-deny) in a
 *   direction when a selecting rule has a section in that direction with default-deny enabled
 *   (CNP: `enableDefaultDeny`, default on; NP: per policyTypes). Otherwise that direction gets an
 *   allow-all entry (identity 0, any protocol), which explicit deny entries still override.
 * - Allows are additive; denies win over allows.
 * - With allowLocalhost (default, as upstream in Kubernetes mode), the host may reach its endpoints.
 *
 * Datapath contract: for a packet, look up (endpoint, direction, remote identity, protocol, port) and
 * (endpoint, direction, 0, protocol, port) in the LPM map; deny if either result is a deny entry, else
 * allow if either result exists, else drop (default deny). The compiler resolves overlaps so that this
 * two-lookup rule gives the upstream answer: within one (direction, identity) group it keeps a deny
 * entry only if no shorter deny covers it and an allow entry only if no shorter entry covers it at all
 * (an allow under a deny would hide the deny from the longest-prefix match; an allow under an allow is
 * redundant). Identity-specific entries covered by an identity-0 entry of the same verdict are dropped.
 */
import { reservedIdentityLabels, ReservedIdentity } from '../identity/reserved.js';
import type { Cidr } from '../ipam.js';
import type { CompileMeter } from './budget.js';
import { IDENTITY_RANGE_IPBLOCK_FLAG } from '../../bpf/layout.gen.js';
import { fqdnCidrIdentities, fqdnEntityIdentities } from './fqdn-identities.js';
import { CidrPeerIndex, IPBLOCK_VIEW_PREFIX, cidrIdentitiesAllocate, cidrPeerIdentities, hostPrefix, ipBlockView, policyCidrs } from './cidr.js';
import { CLUSTER_RESERVED, isLabelDerived } from './entities.js';
import { ANY_L4_PROTOCOLS, portRangePrefixes, protocolNumber } from './ports.js';
import { identityLabelParse, selectorMatches } from './selector.js';
import { STEP, stepsRun, type Steps } from './slices.js';
import type { ParsedLabel } from './selector.js';
import { PROTO_ANY_L4 } from './types.js';
import type {
  CidrIdentity,
  CidrPeer,
  CompiledPolicy,
  CompileInput,
  Direction,
  EndpointPolicy,
  EntityName,
  IpcacheEntry,
  LocalEndpoint,
  NamedPort,
  Peer,
  PolicyEntry,
  PolicyRule,
  PortMatch,
  RuleSection,
} from './types.js';

export const IMPLICIT_RULES = {
  'not-enforced': (d: Direction) => `(no policy enforces ${d} on this endpoint: allow all)`,
  'allow-localhost': () => '(allow-localhost: the host may always reach local endpoints)',
} as const;

/**
 * All identities with parsed labels, and lookups over them. Mutable for the incremental compiler
 * (incremental.ts): identities come and go, and cached peer resolutions are patched in place.
 */
export class Universe {
  readonly labels = new Map<number, ParsedLabel[]>();
  readonly raw = new Map<number, string[]>();
  /** The identities of the ipBlock view (cidr.ts, ipBlockView), by the identity they flag. */
  private readonly ipBlockIds = new Map<number, number>();
  constructor(
    identities: ReadonlyMap<number, readonly string[]>,
    readonly cidrIds: readonly CidrIdentity[],
    readonly ipBlocks: readonly IpcacheEntry[] = [],
  ) {
    for (const id of Object.values(ReservedIdentity)) {
      if (id !== 0) this.add(id, reservedIdentityLabels(id));
    }
    for (const [id, l] of identities) if (id !== 0) this.add(id, [...l]);
    for (const c of cidrIds) this.add(c.identity, c.labels);
    for (const b of ipBlocks) {
      this.ipBlockIds.set(b.identity & ~IDENTITY_RANGE_IPBLOCK_FLAG, b.identity);
      // named in traces and `workload policy`, but never selected by labels (not in `labels`)
      this.raw.set(b.identity, [`${IPBLOCK_VIEW_PREFIX}${b.cidr}`]);
    }
  }
  add(id: number, l: readonly string[]): void {
    this.raw.set(id, [...l]);
    this.labels.set(id, l.map(identityLabelParse));
  }
  remove(id: number): void {
    this.raw.delete(id);
    this.labels.delete(id);
  }

  /** Workload addresses per identity and endpoint: what NetworkPolicy ipBlock peers select. */
  readonly addresses = new Map<number, Map<number, Cidr[]>>();

  /** Sets (undefined: removes) one endpoint's addresses; true when its identity's address set changed. */
  addressesSet(identity: number, endpointId: number, addrs: readonly string[] | undefined): boolean {
    let byEp = this.addresses.get(identity);
    const before = byEp?.get(endpointId);
    if (!addrs || addrs.length === 0) {
      if (!before) return false;
      byEp!.delete(endpointId);
      if (byEp!.size === 0) this.addresses.delete(identity);
      return true;
    }
    const next = addrs.map(hostPrefix);
    if (before && before.length === next.length && before.every((c, i) => c.text === next[i]!.text)) return false;
    if (!byEp) this.addresses.set(identity, (byEp = new Map()));
    byEp.set(endpointId, next);
    return true;
  }

  /**
   * The addresses of workloads with this identity that the section's workload-selecting CIDR peers
   * (NetworkPolicy ipBlock) leave out; undefined when the section has no such peer or the identity no
   * workload address.
   */
  blockUncovered(s: RuleSection, id: number, firstOnly = false): string[] | undefined {
    const byEp = this.addresses.get(id);
    if (sectionBlocks(s).length === 0 || !byEp || !isLabelDerived(id) || !this.labels.has(id)) return undefined;
    const index = sectionBlockIndex(s);
    const out: string[] = [];
    for (const addrs of byEp.values()) {
      for (const a of addrs) {
        if (index.covers(a)) continue;
        out.push(a.text.slice(0, a.text.indexOf('/')));
        if (firstOnly) return out;
      }
    }
    return out;
  }

  /**
   * Whether the section's ipBlock peers select a workload identity. Kubernetes selects by address, but
   * the policy map is keyed by identity: an entry for the identity admits every address of every
   * workload that has it (both families; workloads with equal labels share one identity). So the
   * identity is selected only when the section's ipBlocks cover ALL those addresses, net of `except`:
   * then every packet the entry admits has an address Kubernetes admits. A partly covered identity is
   * not selected (fail closed; `policy trace` names the addresses left out).
   */
  blockSelects(s: RuleSection, id: number): boolean {
    return this.blockUncovered(s, id, true)?.length === 0;
  }

  entity(e: EntityName): number[] | 'all' {
    const R = ReservedIdentity;
    switch (e) {
      case 'all':
        return 'all';
      case 'none':
        return [];
      case 'world':
        return [R.world, R['world-ipv4'], R['world-ipv6'], ...this.cidrIds.map((c) => c.identity), ...fqdnEntityIdentities(this.raw, e)];
      case 'world-ipv4':
      case 'world-ipv6': {
        const v6 = e === 'world-ipv6';
        return [R[e], ...this.cidrIds.filter((c) => c.cidr.includes(':') === v6).map((c) => c.identity), ...fqdnEntityIdentities(this.raw, e)];
      }
      case 'cluster':
        return [...CLUSTER_RESERVED, ...[...this.labels.keys()].filter(isLabelDerived)];
      default:
        return [R[e]];
    }
  }

  peer(p: Peer): number[] | 'all' {
    switch (p.kind) {
      case 'entity':
        return this.entity(p.entity);
      case 'cidr': {
        const cidrIds = cidrPeerIdentities(p.cidr, p.except, this.cidrIds);
        const ids = [...cidrIds, ...fqdnCidrIdentities(this.raw, cidrIds, this.cidrIds)];
        if (!p.selectsWorkloads) return ids;
        // NetworkPolicy ipBlock: also the workload addresses it covers, per address (the ipBlock view)
        const flagged: number[] = [];
        for (const id of ids) {
          const f = this.ipBlockIds.get(id);
          if (f !== undefined) flagged.push(f);
        }
        return flagged.length ? [...ids, ...flagged] : ids;
      }
      case 'selector': {
        if (p.selector.requirements.length === 0) return 'all';
        const out: number[] = [];
        for (const [id, l] of this.labels) if (selectorMatches(p.selector, l)) out.push(id);
        return out;
      }
    }
  }

  /** Resolved peers per section; incremental.ts patches entries when identities come and go. */
  readonly peerCache = new Map<RuleSection, number[] | 'all'>();

  /** Identity 0 ('all') or the sorted, de-duplicated identities the section's peers select. */
  peers(s: RuleSection): number[] | 'all' {
    let r = this.peerCache.get(s);
    if (!r) this.peerCache.set(s, (r = this.peersResolve(s)));
    return r;
  }

  private peersResolve(s: RuleSection): number[] | 'all' {
    if (s.peers === 'all') return 'all';
    const ids = new Set<number>();
    for (const p of s.peers) {
      const r = this.peer(p);
      if (r === 'all') return 'all';
      r.forEach((i) => ids.add(i));
    }
    if (sectionBlocks(s).length > 0) for (const id of this.addresses.keys()) if (this.blockSelects(s, id)) ids.add(id);
    return [...ids].sort((a, b) => a - b);
  }
}

const blockIndexes = new WeakMap<RuleSection, CidrPeerIndex>();
function sectionBlockIndex(s: RuleSection): CidrPeerIndex {
  let ix = blockIndexes.get(s);
  if (!ix) blockIndexes.set(s, (ix = new CidrPeerIndex(sectionBlocks(s))));
  return ix;
}

const blocksOf = new WeakMap<RuleSection, CidrPeer[]>();
/** The section's CIDR peers that select workload addresses too (NetworkPolicy ipBlock). */
export function sectionBlocks(s: RuleSection): CidrPeer[] {
  let b = blocksOf.get(s);
  if (!b) blocksOf.set(s, (b = s.peers === 'all' ? [] : s.peers.filter((p): p is CidrPeer => p.kind === 'cidr' && p.selectsWorkloads === true)));
  return b;
}

/**
 * Whether a section whose peers are not 'all' selects a label-derived identity with these labels.
 * By label, only selector peers and the `cluster` entity can select them (entities name reserved
 * identities, CIDR peers CIDR identities); NetworkPolicy ipBlocks select them by their workloads'
 * addresses (Universe.blockSelects), which this does not look at.
 */
export function sectionSelectsLabelIdentity(s: RuleSection, id: number, labels: readonly ParsedLabel[]): boolean {
  if (s.peers === 'all') return true;
  for (const p of s.peers) {
    if (p.kind === 'selector' && (p.selector.requirements.length === 0 || selectorMatches(p.selector, labels))) return true;
    if (p.kind === 'entity' && (p.entity === 'all' || (p.entity === 'cluster' && isLabelDerived(id)))) return true;
  }
  return false;
}

/** Whether a section has an egress named port (its entries depend on the peers' named ports). */
export function sectionHasEgressNamedPort(s: RuleSection): boolean {
  return s.direction === 'egress' && s.ports !== 'all' && s.ports.some((m) => typeof m.port === 'string');
}

interface L4Key {
  protocol: number;
  port: number;
  portPrefixLen: number;
}

function portsOfMatch(m: PortMatch & { port: number }): L4Key[] {
  const protos = m.protocol === PROTO_ANY_L4 ? [...ANY_L4_PROTOCOLS] : [m.protocol];
  let prefixes: Array<{ port: number; prefixLen: number }>;
  if (m.endPort !== undefined) prefixes = portRangePrefixes(m.port, m.endPort);
  else if (m.port === 0) prefixes = [{ port: 0, prefixLen: 0 }];
  else prefixes = [{ port: m.port, prefixLen: 16 }];
  return protos.flatMap((protocol) => prefixes.map((p) => ({ protocol, port: p.port, portPrefixLen: p.prefixLen })));
}

function namedPortKeys(m: PortMatch & { port: string }, named: readonly NamedPort[]): L4Key[] {
  const out: L4Key[] = [];
  for (const np of named) {
    if (np.name !== m.port) continue;
    let proto: number;
    try {
      proto = protocolNumber(np.protocol);
    } catch {
      continue;
    }
    const ok = m.protocol === PROTO_ANY_L4 ? (ANY_L4_PROTOCOLS as readonly number[]).includes(proto) : m.protocol === proto;
    if (ok) out.push({ protocol: proto, port: np.port, portPrefixLen: 16 });
  }
  return out;
}

interface Acc {
  k: L4Key;
  allow: Set<string>;
  deny: Set<string>;
}

/** Raw (unresolved) entries of one endpoint: direction -> identity -> l4 key -> rule refs. */
class RawEntries {
  readonly m = new Map<Direction, Map<number, Map<string, Acc>>>();
  /** Adds made so far: the compile yields every STEP of them. */
  count = 0;
  /** Whether a yield point was reached (call after an add). */
  due(): boolean {
    return this.count % STEP === 0;
  }
  add(direction: Direction, identity: number, k: L4Key, deny: boolean, ref: string): void {
    this.count++;
    let byId = this.m.get(direction);
    if (!byId) this.m.set(direction, (byId = new Map()));
    let byKey = byId.get(identity);
    if (!byKey) byId.set(identity, (byKey = new Map()));
    const key = `${k.protocol}/${k.port}/${k.portPrefixLen}`;
    let acc = byKey.get(key);
    if (!acc) byKey.set(key, (acc = { k, allow: new Set(), deny: new Set() }));
    (deny ? acc.deny : acc.allow).add(ref);
  }
}

/** The 24-bit (protocol, port) space position of an entry: value and prefix length. */
function bits(e: { protocol: number; port: number; portPrefixLen: number }): { v: number; len: number } {
  return { v: (e.protocol << 16) | e.port, len: e.protocol === 0 ? 0 : 8 + e.portPrefixLen };
}

/** Whether a covers b (a is b or a shorter prefix containing b). */
function covers(a: PolicyEntry, b: PolicyEntry): boolean {
  const A = bits(a);
  const B = bits(b);
  if (A.len > B.len) return false;
  if (A.len === 0) return true;
  const shift = 24 - A.len;
  return A.v >>> shift === B.v >>> shift;
}

function entryCompare(a: PolicyEntry, b: PolicyEntry): number {
  return (
    (a.direction === b.direction ? 0 : a.direction === 'ingress' ? -1 : 1) ||
    a.identity - b.identity ||
    a.protocol - b.protocol ||
    a.port - b.port ||
    a.portPrefixLen - b.portPrefixLen
  );
}

/** Resolves one (direction, identity) group so that longest-prefix match gives deny-wins semantics. */
function groupResolve(direction: Direction, identity: number, byKey: Map<string, Acc>, implicit: Map<string, PolicyEntry['implicit']>): PolicyEntry[] {
  const entries: Array<{ e: PolicyEntry; len: number; v: number }> = [];
  for (const [key, acc] of byKey) {
    const { protocol, port, portPrefixLen } = acc.k;
    const deny = acc.deny.size > 0;
    const refs = deny ? acc.deny : acc.allow;
    const rules = refs.size === 1 ? [...refs] : [...refs].sort();
    const e: PolicyEntry = { direction, identity, protocol, port, portPrefixLen, deny, rules };
    const imp = implicit.size ? implicit.get(`${direction}/${identity}/${key}`) : undefined;
    if (imp && !deny) e.implicit = imp;
    const b = bits(e);
    entries.push({ e, len: b.len, v: b.v });
  }
  if (entries.length === 1) return [entries[0]!.e];
  entries.sort((a, b) => a.len - b.len || a.v - b.v);
  const kept: typeof entries = [];
  for (const x of entries) {
    let drop = false;
    for (const k of kept) {
      if (k.len > x.len) continue;
      const covered = k.len === 0 || k.v >>> (24 - k.len) === x.v >>> (24 - k.len);
      // a deny is redundant under a deny; an allow is redundant (or would hide a deny) under anything
      if (covered && (!x.e.deny || k.e.deny)) {
        drop = true;
        break;
      }
    }
    if (!drop) kept.push(x);
  }
  return kept.map((x) => x.e);
}

function* endpointCompileSteps(
  ep: LocalEndpoint,
  sections: Array<{ s: RuleSection }>,
  enforced: Record<Direction, boolean>,
  u: Universe,
  remoteNamed: (identity: number) => readonly NamedPort[],
  remoteNamedIds: () => number[],
  allowLocalhost: boolean,
): Steps<EndpointPolicy> {
  const raw = new RawEntries();
  const implicit = new Map<string, PolicyEntry['implicit']>();
  for (const { s } of sections) {
    const ids = u.peers(s);
    if (ids !== 'all' && ids.length === 0) continue;
    if (s.ports === 'all') {
      for (const id of ids === 'all' ? [0] : ids) {
        raw.add(s.direction, id, { protocol: 0, port: 0, portPrefixLen: 0 }, s.deny, s.ref);
        if (raw.due()) yield;
      }
      continue;
    }
    for (const m of s.ports) {
      if (typeof m.port === 'number') {
        const keys = portsOfMatch(m as PortMatch & { port: number });
        for (const id of ids === 'all' ? [0] : ids) {
          for (const k of keys) {
            raw.add(s.direction, id, k, s.deny, s.ref);
            if (raw.due()) yield;
          }
        }
      } else if (s.direction === 'ingress') {
        // Named port at ingress: the port of this (destination) endpoint.
        const keys = namedPortKeys(m as PortMatch & { port: string }, ep.namedPorts ?? []);
        for (const id of ids === 'all' ? [0] : ids) {
          for (const k of keys) {
            raw.add(s.direction, id, k, s.deny, s.ref);
            if (raw.due()) yield;
          }
        }
      } else {
        // Named port at egress: the port each destination identity declares under that name.
        for (const id of ids === 'all' ? remoteNamedIds() : ids) {
          for (const k of namedPortKeys(m as PortMatch & { port: string }, remoteNamed(id))) {
            raw.add(s.direction, id, k, s.deny, s.ref);
            if (raw.due()) yield;
          }
        }
      }
    }
  }
  for (const d of ['ingress', 'egress'] as const) {
    if (!enforced[d]) {
      raw.add(d, 0, { protocol: 0, port: 0, portPrefixLen: 0 }, false, IMPLICIT_RULES['not-enforced'](d));
      implicit.set(`${d}/0/0/0/0`, 'not-enforced');
    }
  }
  if (allowLocalhost && enforced.ingress) {
    raw.add('ingress', ReservedIdentity.host, { protocol: 0, port: 0, portPrefixLen: 0 }, false, IMPLICIT_RULES['allow-localhost']());
    implicit.set(`ingress/${ReservedIdentity.host}/0/0/0`, 'allow-localhost');
  }

  const entries: PolicyEntry[] = [];
  let resolved = 0;
  for (const [direction, byId] of raw.m) {
    const wild = byId.get(0) ? groupResolve(direction, 0, byId.get(0)!, implicit) : [];
    entries.push(...wild);
    for (const [identity, byKey] of byId) {
      if (identity === 0) continue;
      // a yield point every STEP raw entries resolved (a group is resolved at once)
      if (Math.floor(resolved / STEP) !== Math.floor((resolved += byKey.size) / STEP)) yield;
      for (const e of groupResolve(direction, identity, byKey, implicit)) {
        // Covered by a wildcard-identity entry with the same verdict: the second lookup decides anyway.
        if (wild.some((w) => w.deny === e.deny && covers(w, e))) continue;
        entries.push(e);
      }
    }
  }
  yield;
  entries.sort(entryCompare);
  return { endpointId: ep.endpointId, identity: ep.identity, ingressEnforced: enforced.ingress, egressEnforced: enforced.egress, entries };
}

/** The compile context shared by every endpoint of one compile (or of one incremental state). */
export interface ClassContext {
  u: Universe;
  rules: readonly PolicyRule[];
  remoteNamed: (identity: number) => readonly NamedPort[];
  remoteNamedIds: () => number[];
  allowLocalhost: boolean;
  /** Counts what the compile would write and refuses beyond the maps' room (budget.ts); absent: unbounded. */
  meter?: CompileMeter | undefined;
}

/**
 * Entries of an endpoint with this identity and these named ports (all endpoints that share both get
 * the same entries), and the rule sections that select it.
 */
export function classCompile(ctx: ClassContext, ep: LocalEndpoint): { policy: EndpointPolicy; sections: RuleSection[] } {
  return stepsRun(classCompileSteps(ctx, ep));
}

/** classCompile in steps (./slices.ts). */
export function* classCompileSteps(ctx: ClassContext, ep: LocalEndpoint): Steps<{ policy: EndpointPolicy; sections: RuleSection[] }> {
  const labels = ctx.u.labels.get(ep.identity) ?? [];
  const enforced: Record<Direction, boolean> = { ingress: false, egress: false };
  const sections: Array<{ s: RuleSection }> = [];
  for (const r of ctx.rules) {
    if (!selectorMatches(r.subject, labels)) continue;
    for (const s of r.sections) {
      sections.push({ s });
      if (r.defaultDeny[s.direction]) enforced[s.direction] = true;
    }
  }
  if (ctx.meter) {
    let pairs = 0;
    for (const { s } of sections) ctx.meter.sectionPairs((pairs += sectionPairCount(ctx, s, ep)), s.ref);
  }
  const policy = yield* endpointCompileSteps(ep, sections, enforced, ctx.u, ctx.remoteNamed, ctx.remoteNamedIds, ctx.allowLocalhost);
  return { policy, sections: sections.map((x) => x.s) };
}

/** The (identity x port key) pairs a section adds to one endpoint before overlaps merge: what compiling it costs. */
function sectionPairCount(ctx: ClassContext, s: RuleSection, ep: LocalEndpoint): number {
  const ids = ctx.u.peers(s);
  const idCount = ids === 'all' ? 1 : ids.length;
  if (s.ports === 'all') return idCount;
  let n = 0;
  for (const m of s.ports) {
    if (typeof m.port === 'number') n += idCount * portsOfMatch(m as PortMatch & { port: number }).length;
    else if (s.direction === 'ingress') n += idCount * namedPortKeys(m as PortMatch & { port: string }, ep.namedPorts ?? []).length;
    else n += ids === 'all' ? ctx.remoteNamedIds().length : idCount;
  }
  return n;
}

export function policyCompile(input: CompileInput): CompiledPolicy {
  const cidrIds = cidrIdentitiesAllocate(policyCidrs(input.policies), input.options?.previousCidrIdentities);
  const ipBlocks = ipBlockView(input.policies, cidrIds);
  const u = new Universe(input.identities, cidrIds, ipBlocks);
  for (const ep of input.endpoints) u.addressesSet(ep.identity, ep.endpointId, ep.addresses);
  const rn = input.remoteNamedPorts;
  const remoteNamed = (id: number): readonly NamedPort[] => (!rn ? [] : typeof rn === 'function' ? rn(id) : (rn.get(id) ?? []));
  let namedIds: number[] | undefined;
  const remoteNamedIds = () =>
    (namedIds ??= (!rn ? [] : typeof rn === 'function' ? [...u.labels.keys()] : [...rn.keys()]).filter((id) => remoteNamed(id).length > 0).sort((a, b) => a - b));
  const ctx: ClassContext = {
    u,
    rules: input.policies.flatMap((p) => p.rules),
    remoteNamed,
    remoteNamedIds,
    allowLocalhost: input.options?.allowLocalhost ?? true,
  };

  // Endpoints with the same identity and named ports get the same entries.
  const memo = new Map<string, EndpointPolicy>();
  const endpoints = input.endpoints.map((ep) => {
    const memoKey = endpointClassKey(ep);
    const same = memo.get(memoKey);
    if (same) return { ...same, endpointId: ep.endpointId, entries: same.entries.map((e) => ({ ...e, rules: [...e.rules] })) };
    const out = classCompile(ctx, ep).policy;
    memo.set(memoKey, out);
    return out;
  });

  return {
    endpoints,
    cidrIdentities: cidrIds,
    ipcache: cidrIds.map((c) => ({ cidr: c.cidr, identity: c.identity })),
    ipBlocks,
    identities: new Map(u.raw),
  };
}

/** Endpoints with equal keys get equal entries: same identity, same named ports. */
export function endpointClassKey(ep: LocalEndpoint): string {
  return `${ep.identity}|${JSON.stringify(ep.namedPorts ?? [])}`;
}
