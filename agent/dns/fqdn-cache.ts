/**
 * What the DNS proxy learned (name -> addresses with expiry) and the node-local identities it gives
 * those addresses (issue #17). Pure state: the engine wiring (ipcache writes, recompiles) comes with
 * the datapath steering.
 *
 * Cilium's model: every toFQDNs selector is a label `fqdn:<selector>`; an address carries the labels of
 * all selectors matching any name that resolved to it, plus `reserved:world` (and world-ipv4/-ipv6), and
 * the identity is that label set's, node-local (bit 24). kitnet allocates them in the upper half of the
 * node-local range (FQDN_IDENTITY_BASE), apart from the CIDR identities counted from its bottom.
 * TTLs: an address expires at the latest expiry any answer gave it; an expired address stays while a
 * tracked connection still uses it (Cilium keeps them for conntrack, too); at most
 * `maxAddressesPerName` per name (Cilium's default 1000), the ones expiring soonest dropped first.
 */
import { ipv4Number } from '../flows/directory.js';
import { LOCAL_IDENTITY_FLAG } from '../identity/reserved.js';
import { fqdnMatcher, fqdnSelectorLabel } from '../policy/fqdn.js';
import type { FqdnMatcher, FqdnSelector } from '../policy/fqdn.js';

/** FQDN identities: LOCAL_IDENTITY_FLAG | FQDN_IDENTITY_OFFSET | n, n from 1. */
export const FQDN_IDENTITY_OFFSET = 1 << 23;
export const FQDN_IDENTITY_BASE = LOCAL_IDENTITY_FLAG | FQDN_IDENTITY_OFFSET;
const FQDN_IDENTITY_MAX = (1 << 23) - 1;

export interface FqdnCacheOptions {
  maxAddressesPerName?: number;
  /**
   * Names kept per address (dns.proxy.maxNamesPerIP): beyond it a new name is not associated with
   * the address (the answer is still released). A workload resolving random names of a wildcard it
   * controls to one address would otherwise grow the address's name set without end.
   */
  maxNamesPerAddress?: number;
}

/** Whom a learned address counts against: a workload's endpoint id (or a client address the proxy could not name). */
export type DnsAddressOwner = number | string;

/** The cache as JSON, for restoring after an agent restart. */
export interface FqdnCacheSnapshot {
  names: Array<{ name: string; addresses: Array<{ address: string; expiresAt: number; owner?: DnsAddressOwner | undefined }> }>;
}

export class FqdnCache {
  private readonly byName = new Map<string, Map<string, number>>();
  /** address -> names that resolved to it (the label set of an address is theirs). */
  private readonly byAddress = new Map<string, Set<string>>();
  private readonly maxPerName: number;
  private readonly maxNamesPerAddress: number;
  /** New names an address at maxNamesPerAddress did not take (the agent's metrics). */
  namesRefused = 0;
  /** address -> sorted names, for flows (namesByAddress); an address's entry is redone on the first lookup after its names changed. */
  private readonly flowNames = new Map<string, readonly string[]>();
  /** The same for IPv4 addresses by number (ipv4Number), so flows look them up without formatting. */
  private readonly flowNamesV4 = new Map<number, readonly string[]>();
  /**
   * Addresses whose names changed since the flows' index was last brought up to date. Only these are
   * redone: rebuilding the whole index after every new name cost each flow after it the whole cache
   * (a workload resolving many new names, with traffic between the answers, made that quadratic).
   */
  private readonly flowDirty = new Set<string>();
  /**
   * Who brought each address in (the workload whose answer first had it, when learn() was told) and
   * how many addresses each holds: the proxy's limit per workload (dns.proxy.maxLearnedAddressesPerWorkload).
   * An address counts against its first learner until it leaves the cache.
   */
  private readonly ownerOf = new Map<string, DnsAddressOwner>();
  /** Addresses dropped from a name to keep it within maxAddressesPerName, so far. */
  evictions = 0;
  private readonly owned = new Map<DnsAddressOwner, number>();

  constructor(opts: FqdnCacheOptions = {}) {
    this.maxPerName = opts.maxAddressesPerName ?? 1000;
    this.maxNamesPerAddress = opts.maxNamesPerAddress ?? 1000;
  }

  /**
   * Records an answer: `addresses` of `name` valid for `ttlSeconds` from `nowMs`. Returns whether the
   * name gained an address (an answer that only moves expiries changes no label set and no flow name).
   */
  learn(name: string, addresses: readonly string[], ttlSeconds: number, nowMs: number, owner?: DnsAddressOwner): boolean {
    let m = this.byName.get(name);
    if (!m) this.byName.set(name, (m = new Map()));
    const until = nowMs + ttlSeconds * 1000;
    let grew = false;
    for (const a of addresses) {
      const before = m.get(a);
      if (before === undefined) {
        if ((this.byAddress.get(a)?.size ?? 0) >= this.maxNamesPerAddress) {
          this.namesRefused++;
          continue;
        }
        grew = true;
        if (this.nameAdd(a, name) && owner !== undefined) this.own(a, owner);
      }
      m.set(a, Math.max(before ?? 0, until));
    }
    if (m.size === 0) {
      this.byName.delete(name);
      return false;
    }
    // An answer that only moves expiries leaves the flows' name index as it is (nameAdd/nameDelete mark
    // what changed).
    if (m.size > this.maxPerName) {
      const soonest = [...m.entries()].sort((x, y) => x[1] - y[1]).slice(0, m.size - this.maxPerName);
      for (const [a] of soonest) {
        m.delete(a);
        this.nameDelete(a, name);
      }
      this.evictions += soonest.length;
    }
    return grew;
  }

  /**
   * Drops expired addresses that no tracked connection uses; returns whether anything changed (then
   * the identities and the ipcache need recomputing).
   */
  expire(nowMs: number, inUse: (address: string) => boolean): boolean {
    let changed = false;
    for (const [name, m] of this.byName) {
      for (const [a, until] of m) {
        if (until <= nowMs && !inUse(a)) {
          m.delete(a);
          this.nameDelete(a, name);
          changed = true;
        }
      }
      if (m.size === 0) this.byName.delete(name);
    }
    return changed;
  }

  /** When `name`'s `address` expires (ms, wall clock), if kept. */
  expiresAt(name: string, address: string): number | undefined {
    return this.byName.get(name)?.get(address);
  }

  /** Whether `name` resolved to `address` (and it is still kept). */
  has(name: string, address: string): boolean {
    return this.byName.get(name)?.has(address) ?? false;
  }

  addresses(name: string): string[] {
    return [...(this.byName.get(name)?.keys() ?? [])];
  }

  /** A name's addresses with their expiry (ms), for `policy trace --to-fqdn`. */
  entries(name: string): Array<{ address: string; expiresAt: number }> {
    return [...(this.byName.get(name) ?? [])].map(([address, expiresAt]) => ({ address, expiresAt }));
  }

  /** Distinct addresses kept (each is an ipcache entry when a selector matches one of its names). */
  get addressCount(): number {
    return this.byAddress.size;
  }

  /** How many of `addresses` the cache does not hold yet (each counted once). */
  unknownAmong(addresses: readonly string[]): number {
    if (addresses.length > 16) return [...new Set(addresses)].filter((a) => !this.byAddress.has(a)).length;
    let n = 0;
    for (let i = 0; i < addresses.length; i++) {
      const a = addresses[i]!;
      if (!this.byAddress.has(a) && addresses.indexOf(a) === i) n++;
    }
    return n;
  }

  /** Addresses counted against `owner` (brought in by its answers and still kept). */
  ownedBy(owner: DnsAddressOwner): number {
    return this.owned.get(owner) ?? 0;
  }

  /** Everyone holding a share of the learned addresses. */
  owners(): DnsAddressOwner[] {
    return [...this.owned.keys()];
  }

  /**
   * `owner` (a workload that left) holds no share any more: its addresses stay until they expire,
   * counted against nobody.
   */
  ownerRelease(owner: DnsAddressOwner): void {
    if (!this.owned.delete(owner)) return;
    for (const [address, o] of this.ownerOf) if (o === owner) this.ownerOf.delete(address);
  }

  private own(address: string, owner: DnsAddressOwner): void {
    this.ownerOf.set(address, owner);
    this.owned.set(owner, (this.owned.get(owner) ?? 0) + 1);
  }

  /** Returns whether the address is new to the cache. */
  private nameAdd(address: string, name: string): boolean {
    let names = this.byAddress.get(address);
    const fresh = !names;
    if (!names) this.byAddress.set(address, (names = new Set()));
    names.add(name);
    this.flowDirty.add(address);
    return fresh;
  }

  private nameDelete(address: string, name: string): void {
    const names = this.byAddress.get(address);
    if (!names?.delete(name)) return;
    if (names.size === 0) {
      this.byAddress.delete(address);
      const owner = this.ownerOf.get(address);
      if (owner !== undefined) {
        this.ownerOf.delete(address);
        const left = this.owned.get(owner)! - 1;
        if (left > 0) this.owned.set(owner, left);
        else this.owned.delete(owner);
      }
    }
    this.flowDirty.add(address);
  }

  /** Names that resolved to `address` (for `destination_names` on flows and `policy trace --to-fqdn`). */
  namesOf(address: string): string[] {
    return [...(this.byAddress.get(address) ?? [])];
  }

  /**
   * namesOf for the flow hot path (`source_names` / `destination_names`): a map lookup, undefined for
   * an address no answer gave; the array is shared between flows and never mutated.
   */
  namesByAddress(address: string): readonly string[] | undefined {
    if (this.byName.size === 0) return undefined;
    if (this.flowDirty.size) this.flowIndexUpdate();
    return this.flowNames.get(address);
  }

  /** namesByAddress for an IPv4 address given as ipv4Number's number. */
  namesByIpv4(address: number): readonly string[] | undefined {
    if (this.byName.size === 0) return undefined;
    if (this.flowDirty.size) this.flowIndexUpdate();
    return this.flowNamesV4.get(address);
  }

  /** Redoes the index entries of the addresses whose names changed (new arrays: flows keep the old ones). */
  private flowIndexUpdate(): void {
    for (const a of this.flowDirty) {
      const set = this.byAddress.get(a);
      const v4 = a.includes(':') ? undefined : ipv4Number(a);
      if (!set) {
        this.flowNames.delete(a);
        if (v4 !== undefined) this.flowNamesV4.delete(v4);
        continue;
      }
      const names = [...set].sort();
      this.flowNames.set(a, names);
      if (v4 !== undefined) this.flowNamesV4.set(v4, names);
    }
    this.flowDirty.clear();
  }

  /** Whether no name is known (flows then skip the lookup). */
  get empty(): boolean {
    return this.byName.size === 0;
  }

  snapshot(): FqdnCacheSnapshot {
    return { names: [...this.snapshotNames()] };
  }

  /**
   * The snapshot's names one at a time, read as they are taken: a reader that takes them over several
   * turns of the event loop gets each name as it is then (names learned meanwhile come last).
   */
  *snapshotNames(): Generator<FqdnCacheSnapshot['names'][number]> {
    for (const [name, m] of this.byName) {
      yield {
        name,
        addresses: [...m].map(([address, expiresAt]) => {
          const owner = this.ownerOf.get(address);
          return owner === undefined ? { address, expiresAt } : { address, expiresAt, owner };
        }),
      };
    }
  }

  static restore(s: FqdnCacheSnapshot, opts: FqdnCacheOptions = {}): FqdnCache {
    const c = new FqdnCache(opts);
    for (const n of s.names) {
      // A name may come twice (a file written while it expired and was learned again): one entry, the later expiry of each address.
      const m = c.byName.get(n.name) ?? new Map<string, number>();
      for (const a of n.addresses) {
        if (!m.has(a.address) && (c.byAddress.get(a.address)?.size ?? 0) >= c.maxNamesPerAddress) continue;
        m.set(a.address, Math.max(m.get(a.address) ?? 0, a.expiresAt));
        if (c.nameAdd(a.address, n.name) && a.owner !== undefined) c.own(a.address, a.owner);
      }
      if (m.size > 0) c.byName.set(n.name, m);
    }
    return c;
  }

  /**
   * The identity of every learned address that some selector matches: label set -> identity (kept from
   * `previous` where it exists, else the lowest free number), and address -> identity for the ipcache.
   * Addresses no selector matches get nothing (they stay world).
   */
  identities(selectors: readonly FqdnSelector[], previous?: ReadonlyMap<string, number>, coverOf?: (address: string) => string | undefined): FqdnIdentities {
    const matchers = fqdnLabelMatchers(selectors);
    const labelsOf = new Map<string, Set<string>>();
    for (const [name, m] of this.byName) {
      const hits = matchers.filter((x) => x.match(name)).map((x) => x.label);
      if (hits.length === 0) continue;
      for (const a of m.keys()) {
        let set = labelsOf.get(a);
        if (!set) labelsOf.set(a, (set = new Set()));
        for (const h of hits) set.add(h);
      }
    }
    // The longest policy prefix covering the address stays one of its labels (`cidr:P`): CIDR rules
    // naming P or a wider prefix keep selecting it (agent/policy/fqdn-identities.ts, fqdnCidrIdentities).
    const keyOf = (a: string, set: Set<string>) => identityLabelsOf(a, set, coverOf);
    const byKey = new Map<string, string[]>();
    const addressKey = new Map<string, string>();
    const selectorsOf = new Map<string, readonly string[]>();
    const interned = new Map<string, readonly string[]>();
    for (const [a, set] of labelsOf) {
      const labels = keyOf(a, set);
      const key = labels.join(';');
      byKey.set(key, labels);
      addressKey.set(a, key);
      const sel = [...set].sort();
      const selKey = sel.join(';');
      selectorsOf.set(a, interned.get(selKey) ?? (interned.set(selKey, sel), sel));
    }
    const used = new Set<number>();
    const idOf = new Map<string, number>();
    for (const key of byKey.keys()) {
      const prev = previous?.get(key);
      if (prev !== undefined && (prev & FQDN_IDENTITY_BASE) === FQDN_IDENTITY_BASE && !used.has(prev)) {
        used.add(prev);
        idOf.set(key, prev);
      }
    }
    let n = 1;
    for (const key of [...byKey.keys()].sort()) {
      if (idOf.has(key)) continue;
      while (used.has(FQDN_IDENTITY_BASE | n)) n++;
      if (n > FQDN_IDENTITY_MAX) throw new RangeError('out of node-local FQDN identities');
      used.add(FQDN_IDENTITY_BASE | n);
      idOf.set(key, FQDN_IDENTITY_BASE | n);
    }
    const identities = new Map<number, string[]>();
    for (const [key, labels] of byKey) identities.set(idOf.get(key)!, labels);
    const ipcache = [...addressKey].map(([address, key]) => ({ cidr: fqdnAddressCidr(address), identity: idOf.get(key)! }));
    return { identities, ipcache, keys: idOf, selectorsOf };
  }

  /**
   * identities() for a few addresses that just gained names (`added`: address -> its new names; labels
   * only grow then): the identity each has now, numbers taken from `ids` (new label sets get the
   * lowest free number and are added to `ids` and to `added`). Costs what the new names cost: an
   * address's other names are not matched again (its selector labels so far are in `ids.selectorsOf`),
   * so an answer costs the same whatever number of names its addresses have. The same labels give the
   * same identity as a full identities() with `ids.keys` as `previous`.
   */
  identitiesAdd(addedNames: ReadonlyMap<string, ReadonlySet<string>>, matchers: readonly FqdnLabelMatcher[], ids: FqdnIdentities, coverOf?: (address: string) => string | undefined): FqdnIdentitiesAdded {
    const added = new Map<number, string[]>();
    const ipcache: Array<{ cidr: string; identity: number }> = [];
    for (const [a, names] of addedNames) {
      const before = ids.selectorsOf.get(a);
      const hits = new Set<string>(before);
      for (const name of names) {
        // A name the cache did not take (an address at maxNamesPerAddress) brings no label.
        if (!this.byName.get(name)?.has(a)) continue;
        for (const m of matchers) if (m.match(name)) hits.add(m.label);
      }
      if (hits.size === 0) continue;
      if (hits.size !== before?.length) ids.selectorsOf.set(a, [...hits].sort());
      const labels = identityLabelsOf(a, hits, coverOf);
      const key = labels.join(';');
      let id = ids.keys.get(key);
      if (id === undefined) {
        let n = 1;
        while (ids.identities.has(FQDN_IDENTITY_BASE | n)) n++;
        if (n > FQDN_IDENTITY_MAX) throw new RangeError('out of node-local FQDN identities');
        id = FQDN_IDENTITY_BASE | n;
        ids.keys.set(key, id);
        ids.identities.set(id, labels);
        added.set(id, labels);
      }
      ipcache.push({ cidr: fqdnAddressCidr(a), identity: id });
    }
    return { added, ipcache };
  }
}

export interface FqdnLabelMatcher {
  label: string;
  match: FqdnMatcher;
}

/** One matcher per distinct selector label. */
export function fqdnLabelMatchers(selectors: readonly FqdnSelector[]): FqdnLabelMatcher[] {
  const matchers: FqdnLabelMatcher[] = [];
  const seen = new Set<string>();
  for (const s of selectors) {
    const label = fqdnSelectorLabel(s);
    if (!seen.has(label)) {
      seen.add(label);
      matchers.push({ label, match: fqdnMatcher(s) });
    }
  }
  return matchers;
}

/** The ipcache prefix of a learned address. */
export function fqdnAddressCidr(address: string): string {
  return `${address}/${address.includes(':') ? 128 : 32}`;
}

/** The labels of an address's identity: its selectors' labels, the covering policy prefix, world. */
function identityLabelsOf(a: string, selectorLabels: ReadonlySet<string>, coverOf?: (address: string) => string | undefined): string[] {
  const cover = coverOf?.(a);
  return [...selectorLabels].sort().concat(cover ? [`cidr:${cover}`] : [], 'reserved:world', a.includes(':') ? 'reserved:world-ipv6' : 'reserved:world-ipv4');
}

export interface FqdnIdentitiesAdded {
  /** Identities (label sets) no address had before. */
  added: Map<number, string[]>;
  /** The ipcache entry each address should have (addresses no selector matches: none). */
  ipcache: Array<{ cidr: string; identity: number }>;
}

export interface FqdnIdentities {
  identities: Map<number, string[]>;
  ipcache: Array<{ cidr: string; identity: number }>;
  /** label-set key -> identity: `previous` for the next call, so identities stay stable. */
  keys: Map<string, number>;
  /** address -> the labels of the selectors matching its names (sorted): where identitiesAdd goes on from. */
  selectorsOf: Map<string, readonly string[]>;
}
