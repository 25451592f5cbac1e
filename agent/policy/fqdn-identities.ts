/**
 * What the policies ask of the DNS proxy (issue #17): the toFQDNs selectors whose identities it hands
 * out, and the endpoints whose DNS the datapath must steer to it.
 *
 * Selected endpoints: those an egress allow section with toFQDNs peers or `rules.dns` applies to (the
 * rule's subject selects the workload's identity labels), as Cilium redirects the DNS of endpoints
 * with a DNS rule. A toFQDNs rule selects nothing before a lookup was seen, so it is the rule's subject
 * that counts, not the compiled entries.
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
  if (sectionFqdnSelectors(s).length > 0) return true;
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
