/**
 * CIDR peers as local CIDR identities.
 *
 * Every prefix a policy names (main CIDRs and their `except` prefixes alike) gets its own CIDR identity
 * (LOCAL_IDENTITY_FLAG | n) and an ipcache entry prefix -> identity. The ipcache LPM lookup of an address
 * then yields the identity of the LONGEST named prefix containing it (unless a more specific workload or
 * node entry exists, which wins: CIDR rules do not select cluster endpoints, as upstream). A rule
 * `C except E1..En` selects exactly the CIDR identities of prefixes P with P ⊆ C and P ⊄ Ei for all i:
 * for an address a with longest named prefix P, a ∈ C ⟺ P ⊆ C and a ∈ Ei ⟺ P ⊆ Ei, because all named
 * prefixes containing a are nested. Addresses outside every named prefix resolve to world-ipv4/-ipv6,
 * which stand for 0.0.0.0/0 and ::/0 (so /0 CIDRs need no entry of their own and select them).
 * IPv4 and IPv6 prefixes never overlap (the ipcache key carries the family).
 */
import { cidrParse } from '../ipam.js';
import type { Cidr } from '../ipam.js';
import { LOCAL_IDENTITY_FLAG, ReservedIdentity } from '../identity/reserved.js';
import { IDENTITY_RANGE_IPBLOCK_FLAG } from '../../bpf/layout.gen.js';
import type { CidrIdentity, IpcacheEntry, ParsedPolicy } from './types.js';

const parsed = new Map<string, Cidr>();
/** cidrParse with a cache (policies name the same prefixes over and over). */
export function cidrParsed(text: string): Cidr {
  let c = parsed.get(text);
  if (!c) {
    if (parsed.size > 100_000) parsed.clear();
    parsed.set(text, (c = cidrParse(text)));
  }
  return c;
}

/** A bare address as its host prefix (/32, /128). */
export function hostPrefix(ip: string): Cidr {
  return cidrParsed(`${ip}/${ip.includes(':') ? 128 : 32}`);
}

/** Whether a CIDR peer (`cidr` minus `except`) covers an address given as its host prefix. */
export function blockCovers(peer: { cidr: string; except: readonly string[] }, addr: Cidr): boolean {
  return cidrContainsCidr(cidrParsed(peer.cidr), addr) && !peer.except.some((e) => cidrContainsCidr(cidrParsed(e), addr));
}

/**
 * CIDR peers indexed by prefix, to test many addresses against many peers: an address is covered when
 * one of its own prefixes, at a length some peer has, is a peer's CIDR and none of that peer's
 * excepts contains it. Cost per address: one map lookup per distinct prefix length, not per peer.
 */
export class CidrPeerIndex {
  private readonly byPrefix = new Map<string, Array<{ except: readonly string[] }>>();
  private readonly lengths: Record<4 | 6, number[]> = { 4: [], 6: [] };
  constructor(peers: ReadonlyArray<{ cidr: string; except: readonly string[] }>) {
    const lens = { 4: new Set<number>(), 6: new Set<number>() };
    for (const p of peers) {
      const c = cidrParsed(p.cidr);
      const key = prefixKey(c.family, c.network, c.prefixLength);
      const list = this.byPrefix.get(key);
      if (list) list.push(p);
      else this.byPrefix.set(key, [p]);
      lens[c.family].add(c.prefixLength);
    }
    this.lengths = { 4: [...lens[4]], 6: [...lens[6]] };
  }

  covers(addr: Cidr): boolean {
    for (const len of this.lengths[addr.family]) {
      const peers = this.byPrefix.get(prefixKey(addr.family, addr.network, len));
      if (peers?.some((p) => !p.except.some((e) => cidrContainsCidr(cidrParsed(e), addr)))) return true;
    }
    return false;
  }
}

function prefixKey(family: 4 | 6, network: bigint, len: number): string {
  const shift = BigInt((family === 4 ? 32 : 128) - len);
  return `${family}|${(network >> shift) << shift}|${len}`;
}

export function cidrContainsCidr(outer: Cidr, inner: Cidr): boolean {
  if (outer.family !== inner.family || inner.prefixLength < outer.prefixLength) return false;
  const bits = BigInt((outer.family === 4 ? 32 : 128) - outer.prefixLength);
  return inner.network >> bits === outer.network >> bits;
}

function cidrCompare(a: Cidr, b: Cidr): number {
  if (a.family !== b.family) return a.family - b.family;
  if (a.network !== b.network) return a.network < b.network ? -1 : 1;
  return a.prefixLength - b.prefixLength;
}

/** All prefixes the policies name, canonical, without /0 (those are the world identities). */
export function policyCidrs(policies: readonly ParsedPolicy[]): Cidr[] {
  const byText = new Map<string, Cidr>();
  for (const p of policies) {
    for (const r of p.rules) {
      for (const s of r.sections) {
        if (s.peers === 'all') continue;
        for (const peer of s.peers) {
          if (peer.kind !== 'cidr') continue;
          for (const text of [peer.cidr, ...peer.except]) {
            const c = cidrParse(text);
            if (c.prefixLength > 0) byText.set(c.text, c);
          }
        }
      }
    }
  }
  return [...byText.values()].sort(cidrCompare);
}

/**
 * Allocates CIDR identities deterministically: prefixes keep the number they had in `previous`; new
 * prefixes, in sorted order (IPv4 first, then by address and length), take the lowest free numbers.
 */
export function cidrIdentitiesAllocate(cidrs: readonly Cidr[], previous?: ReadonlyMap<string, number>): CidrIdentity[] {
  const used = new Set<number>();
  const out: CidrIdentity[] = [];
  const pending: Cidr[] = [];
  for (const c of cidrs) {
    const prev = previous?.get(c.text);
    if (prev !== undefined && (prev & LOCAL_IDENTITY_FLAG) !== 0 && !used.has(prev)) {
      used.add(prev);
      out.push({ identity: prev, cidr: c.text, labels: cidrIdentityLabels(c) });
    } else {
      pending.push(c);
    }
  }
  let n = 1;
  for (const c of pending) {
    while (used.has(LOCAL_IDENTITY_FLAG | n)) n++;
    const id = LOCAL_IDENTITY_FLAG | n;
    used.add(id);
    out.push({ identity: id, cidr: c.text, labels: cidrIdentityLabels(c) });
  }
  return out.sort((a, b) => cidrCompare(cidrParse(a.cidr), cidrParse(b.cidr)));
}

export function cidrIdentityLabels(c: Cidr): string[] {
  return [`cidr:${c.text}`, 'reserved:world', c.family === 4 ? 'reserved:world-ipv4' : 'reserved:world-ipv6'];
}

interface IndexedCidr {
  cidr: Cidr;
  identity: number;
}

/** The CIDR identities parsed and in address order, once per identity list (compile() makes a new one). */
const indexes = new WeakMap<readonly CidrIdentity[], IndexedCidr[]>();
function cidrIndex(cidrIds: readonly CidrIdentity[]): IndexedCidr[] {
  let index = indexes.get(cidrIds);
  if (!index) {
    index = cidrIds.map((ci) => ({ cidr: cidrParsed(ci.cidr), identity: ci.identity })).sort((a, b) => cidrCompare(a.cidr, b.cidr));
    indexes.set(cidrIds, index);
  }
  return index;
}

/**
 * The identities a CIDR peer (`cidr` minus `except`) selects among the CIDR identities, plus the world
 * identities when the peer covers a whole family.
 *
 * In address order the prefixes inside C are one run: those whose network lies in C's address range
 * (and are not shorter than C). A binary search finds the run's start, so a policy with N CIDR peers
 * over N CIDR identities costs N log N, not N^2 (30,000 fromCIDR peers took minutes before).
 */
export function cidrPeerIdentities(cidr: string, except: readonly string[], cidrIds: readonly CidrIdentity[]): number[] {
  const c = cidrParse(cidr);
  const ex = except.map((e) => cidrParse(e));
  const index = cidrIndex(cidrIds);
  const out: number[] = [];
  const end = c.network + (1n << BigInt((c.family === 4 ? 32 : 128) - c.prefixLength));
  let lo = 0;
  let hi = index.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const m = index[mid]!.cidr;
    if (m.family < c.family || (m.family === c.family && m.network < c.network)) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < index.length; i++) {
    const p = index[i]!.cidr;
    if (p.family !== c.family || p.network >= end) break;
    if (p.prefixLength >= c.prefixLength && !ex.some((e) => cidrContainsCidr(e, p))) out.push(index[i]!.identity);
  }
  if (c.prefixLength === 0 && !ex.some((e) => e.prefixLength === 0)) {
    out.push(ReservedIdentity.world, c.family === 4 ? ReservedIdentity['world-ipv4'] : ReservedIdentity['world-ipv6']);
  }
  return out;
}

/** How the ipcache keys of the ipBlock view are written (bpf/maps/ipcache.ts): `ipblock:` + the prefix. */
export const IPBLOCK_VIEW_PREFIX = 'ipblock:';

/**
 * The ipBlock view of the ipcache: every prefix a Kubernetes NetworkPolicy ipBlock names (main and
 * `except`, /0 included) -> its identity flagged IDENTITY_RANGE_IPBLOCK_FLAG (a /0 flags world-ipv4 /
 * world-ipv6). The datapath asks it for a workload address when the identity-keyed lookups found no
 * entry (bpf/include/policy.h), and the ipBlock peers select those flagged identities (Universe.peer):
 * per address and per family, by the same nesting argument as the CIDR identities above, within the
 * ipBlock prefixes alone. CiliumNetworkPolicy CIDR rules add nothing here (they never select workloads).
 */
export function ipBlockView(policies: readonly ParsedPolicy[], cidrIds: readonly CidrIdentity[]): IpcacheEntry[] {
  const byCidr = new Map(cidrIds.map((c) => [c.cidr, c.identity]));
  const out = new Map<string, number>();
  for (const p of policies) {
    for (const r of p.rules) {
      for (const s of r.sections) {
        if (s.peers === 'all') continue;
        for (const peer of s.peers) {
          if (peer.kind !== 'cidr' || !peer.selectsWorkloads) continue;
          for (const text of [peer.cidr, ...peer.except]) {
            const c = cidrParsed(text);
            const base = c.prefixLength === 0 ? (c.family === 4 ? ReservedIdentity['world-ipv4'] : ReservedIdentity['world-ipv6']) : byCidr.get(c.text);
            if (base !== undefined) out.set(c.text, ipBlockIdentity(base));
          }
        }
      }
    }
  }
  return [...out].sort((a, b) => cidrCompare(cidrParsed(a[0]), cidrParsed(b[0]))).map(([cidr, identity]) => ({ cidr, identity }));
}

/** The ipBlock-view identity of a CIDR (or world-ipv4/-ipv6) identity. */
export function ipBlockIdentity(base: number): number {
  return (base | IDENTITY_RANGE_IPBLOCK_FLAG) >>> 0;
}

/** Whether an identity is one of the ipBlock view (flagged). */
export function isIpBlockIdentity(id: number): boolean {
  return (id & IDENTITY_RANGE_IPBLOCK_FLAG) !== 0;
}
