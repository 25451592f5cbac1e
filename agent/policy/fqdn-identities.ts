/**
 * What the policies ask of the DNS proxy (issue #17): the toFQDNs selectors whose identities it hands
 * out, and the endpoints whose DNS the datapath must steer to it.
 *
 * Selected endpoints: those an egress allow section with `rules.dns` applies to (the rule's subject
 * selects the workload's identity labels), as Cilium redirects to its DNS proxy only the DNS of
 * endpoints with an L7 DNS rule: a toFQDNs rule alone learns nothing, in Cilium and here. It is the
 * rule's subject that counts, not the compiled entries (a DNS rule to a resolver not yet known still
 * selects).
 */
import type { FqdnSelector } from './fqdn.js';
import { selectorMatchesStrings } from './selector.js';
import type { ParsedPolicy, RuleSection } from './types.js';

/** The FQDN selector a `fqdn` label key names (`matchName:api.example.com.`), or undefined. */
export function fqdnSelectorFromKey(key: string): FqdnSelector | undefined {
  if (key.startsWith('matchName:')) return { matchName: key.slice('matchName:'.length) };
  if (key.startsWith('matchPattern:')) return { matchPattern: key.slice('matchPattern:'.length) };
  return undefined;
}

function sectionFqdnSelectors(s: RuleSection): FqdnSelector[] {
  if (s.peers === 'all') return [];
  const out: FqdnSelector[] = [];
  for (const p of s.peers) {
    if (p.kind !== 'selector') continue;
    for (const r of p.selector.requirements) {
      const f = r.source === 'fqdn' ? fqdnSelectorFromKey(r.key) : undefined;
      if (f) out.push(f);
    }
  }
  return out;
}

function sectionNeedsDns(s: RuleSection): boolean {
  if (s.direction !== 'egress' || s.deny) return false;
  return s.ports !== 'all' && s.ports.some((m) => (m.dns?.length ?? 0) > 0);
}

/** Every toFQDNs selector of the policies (duplicates removed by their label). */
export function fqdnSelectorsOf(policies: readonly ParsedPolicy[]): FqdnSelector[] {
  const seen = new Map<string, FqdnSelector>();
  for (const p of policies) for (const r of p.rules) for (const s of r.sections) for (const f of sectionFqdnSelectors(s)) seen.set(JSON.stringify(f), f);
  return [...seen.values()];
}

/** The endpoints (by id) whose DNS goes through the proxy. */
export function dnsSelectedEndpoints(
  policies: readonly ParsedPolicy[],
  endpoints: ReadonlyArray<{ endpointId: number; labels: readonly string[] }>,
): Set<number> {
  const out = new Set<number>();
  const subjects = policies.flatMap((p) => p.rules.filter((r) => r.sections.some(sectionNeedsDns)).map((r) => r.subject));
  if (subjects.length === 0) return out;
  for (const ep of endpoints) if (subjects.some((s) => selectorMatchesStrings(s, ep.labels))) out.add(ep.endpointId);
  return out;
}

/** FQDN identities' bits (agent/dns/fqdn-cache.ts: node-local flag | upper half of the range); ipBlock ids have bit 25. */
const FQDN_BITS = (1 << 24) | (1 << 23);
const IPBLOCK_BIT = 1 << 25;

/** Whether an identity is one the DNS proxy made: checked by number first. */
export function isFqdnIdentity(id: number, raw: readonly string[]): boolean {
  return (id & (FQDN_BITS | IPBLOCK_BIT)) === FQDN_BITS && raw.some((l) => l.startsWith('fqdn:'));
}

/**
 * The FQDN identities an entity selects, as Cilium selects them by their reserved:world labels:
 * `world` all of them, `world-ipv4` / `world-ipv6` those of the family.
 */
export function fqdnEntityIdentities(raw: ReadonlyMap<number, readonly string[]>, entity: 'world' | 'world-ipv4' | 'world-ipv6'): number[] {
  const out: number[] = [];
  for (const [id, l] of raw) if (isFqdnIdentity(id, l) && l.includes(`reserved:${entity}`)) out.push(id);
  return out;
}

/** Each CIDR identity list as a map prefix -> identity, built once per list (compile() makes a new one). */
const byCidrs = new WeakMap<ReadonlyArray<{ identity: number; cidr: string }>, Map<string, number>>();
function cidrIdentityByText(cidrIds: ReadonlyArray<{ identity: number; cidr: string }>): Map<string, number> {
  let m = byCidrs.get(cidrIds);
  if (!m) byCidrs.set(cidrIds, (m = new Map(cidrIds.map((c) => [c.cidr, c.identity]))));
  return m;
}

/**
 * The FQDN identities a CIDR peer selects, given the identities `selected` it selects among the CIDR
 * identities: an FQDN identity carries `cidr:P` for the longest policy prefix P covering its
 * addresses (agent/dns/steering.ts), and the peer selects it exactly when it selects P's identity (the
 * nesting argument of cidr.ts); without a covering prefix, when the peer covers the whole family.
 * Only FQDN identities count: `raw` may hold every identity, but called once per CIDR peer it should
 * be the FQDN identities alone (Universe.fqdn), or 30,000 CIDR peers cost 30,000 x every identity.
 */
export function fqdnCidrIdentities(
  raw: ReadonlyMap<number, readonly string[]>,
  selected: readonly number[],
  cidrIds: ReadonlyArray<{ identity: number; cidr: string }>,
): number[] {
  const out: number[] = [];
  let sel: Set<number> | undefined;
  let byCidr: Map<string, number> | undefined;
  for (const [id, l] of raw) {
    if (!isFqdnIdentity(id, l)) continue;
    sel ??= new Set(selected);
    byCidr ??= cidrIdentityByText(cidrIds);
    const cover = l.find((x) => x.startsWith('cidr:'));
    if (cover) {
      const cid = byCidr.get(cover.slice('cidr:'.length));
      if (cid !== undefined && sel.has(cid)) out.push(id);
    } else if (sel.has(l.includes('reserved:world-ipv6') ? 10 : 9)) {
      out.push(id);
    }
  }
  return out;
}
