/**
 * What a compile resolves peers against: every identity with its parsed labels, the workload
 * addresses NetworkPolicy ipBlocks select by, and the per-section peer resolution (entities, CIDR
 * peers, label selectors) that the compiler (compile.ts) and the incremental compiler share.
 */
import { CLUSTER_LABEL } from '../../common/labels.js';
import { reservedIdentityLabels, ReservedIdentity } from '../identity/reserved.js';
import type { Cidr } from '../ipam.js';
import { IDENTITY_RANGE_IPBLOCK_FLAG } from '../../bpf/layout.gen.js';
import { fqdnCidrIdentities, fqdnEntityIdentities, isFqdnIdentity } from './fqdn-identities.js';
import { CidrPeerIndex, IPBLOCK_VIEW_PREFIX, cidrPeerIdentities, hostPrefix } from './cidr.js';
import { CLUSTER_RESERVED, isLabelDerived } from './entities.js';
import { identityLabelParse, selectorMatches } from './selector.js';
import type { ParsedLabel } from './selector.js';
import type { CidrIdentity, CidrPeer, EntityName, IpcacheEntry, Peer, RuleSection, Selector } from './types.js';

/** Whether labels name a cluster other than `local` (a peer cluster's identity); never without a local name. */
export function labelsOfAnotherCluster(labels: readonly ParsedLabel[], local: string | undefined): boolean {
  if (local === undefined) return false;
  for (const l of labels) if (l.key === CLUSTER_LABEL) return l.value !== local;
  return false;
}

/**
 * A peer selector matching these labels, with Cilium's policy-default-local-cluster: a selector that
 * does not name the cluster label selects only this cluster's identities.
 */
export function selectorSelects(sel: Selector, labels: readonly ParsedLabel[], local: string | undefined): boolean {
  if (!selectorMatches(sel, labels)) return false;
  return !labelsOfAnotherCluster(labels, local) || sel.requirements.some((r) => r.key === CLUSTER_LABEL);
}

/**
 * All identities with parsed labels, and lookups over them. Mutable for the incremental compiler
 * (incremental.ts): identities come and go, and cached peer resolutions are patched in place.
 */
export class Universe {
  readonly labels = new Map<number, ParsedLabel[]>();
  readonly raw = new Map<number, string[]>();
  /**
   * The FQDN identities (the DNS proxy's) of `raw`: the only ones CIDR peers and the world entities
   * select besides the CIDR identities, looked at once per CIDR peer (a few, where `raw` holds a
   * CIDR identity per policy prefix: tens of thousands).
   */
  private readonly fqdn = new Map<number, string[]>();
  /** The identities of the ipBlock view (cidr.ts, ipBlockView), by the identity they flag. */
  private readonly ipBlockIds = new Map<number, number>();
  constructor(
    identities: ReadonlyMap<number, readonly string[]>,
    readonly cidrIds: readonly CidrIdentity[],
    readonly ipBlocks: readonly IpcacheEntry[] = [],
    /** CompileOptions.localCluster. */
    readonly localCluster?: string,
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
      this.fqdn.delete(b.identity);
    }
  }
  add(id: number, l: readonly string[]): void {
    const raw = [...l];
    this.raw.set(id, raw);
    this.labels.set(id, l.map(identityLabelParse));
    if (isFqdnIdentity(id, raw)) this.fqdn.set(id, raw);
    else this.fqdn.delete(id);
  }
  remove(id: number): void {
    this.raw.delete(id);
    this.labels.delete(id);
    this.fqdn.delete(id);
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
        return [R.world, R['world-ipv4'], R['world-ipv6'], ...this.cidrIds.map((c) => c.identity), ...fqdnEntityIdentities(this.fqdn, e)];
      case 'world-ipv4':
      case 'world-ipv6': {
        const v6 = e === 'world-ipv6';
        return [R[e], ...this.cidrIds.filter((c) => c.cidr.includes(':') === v6).map((c) => c.identity), ...fqdnEntityIdentities(this.fqdn, e)];
      }
      case 'cluster':
        // Cilium's cluster entity: this cluster's identities (k8s:io.cilium.k8s.policy.cluster=<its name>), no peer's
        return [...CLUSTER_RESERVED, ...[...this.labels].filter(([id, l]) => isLabelDerived(id) && !labelsOfAnotherCluster(l, this.localCluster)).map(([id]) => id)];
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
        const ids = [...cidrIds, ...fqdnCidrIdentities(this.fqdn, cidrIds, this.cidrIds)];
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
        for (const [id, l] of this.labels) if (selectorSelects(p.selector, l, this.localCluster)) out.push(id);
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
export function sectionSelectsLabelIdentity(s: RuleSection, id: number, labels: readonly ParsedLabel[], localCluster?: string): boolean {
  if (s.peers === 'all') return true;
  for (const p of s.peers) {
    if (p.kind === 'selector' && (p.selector.requirements.length === 0 || selectorSelects(p.selector, labels, localCluster))) return true;
    if (p.kind === 'entity' && (p.entity === 'all' || (p.entity === 'cluster' && isLabelDerived(id) && !labelsOfAnotherCluster(labels, localCluster)))) return true;
  }
  return false;
}

/** Whether a section has an egress named port (its entries depend on the peers' named ports). */
export function sectionHasEgressNamedPort(s: RuleSection): boolean {
  return s.direction === 'egress' && s.ports !== 'all' && s.ports.some((m) => typeof m.port === 'string');
}
