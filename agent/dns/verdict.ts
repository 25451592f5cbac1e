/**
 * Which names a workload may look up (Cilium `rules.dns`), from the compiled policy: what the DNS
 * proxy asks for each query (issue #17; not used by the agent until the steering lands).
 *
 * Cilium's semantics: the query must first pass L3/L4 policy (egress from the workload to the
 * resolver's identity on 53/proto), judged by the same lookups as the datapath. Then every allow rule
 * section that selects the resolver on that port counts: one with DNS rules allows the names they
 * match; one without any (an L3-only rule, a port-wildcard rule, or port 53 without `rules`) allows
 * every name, as Cilium adds such rules to the DNS port's filter as L7 wildcards
 * (pkg/policy: wildcardL3L4Rules). The sections are found through the endpoint's map entries for
 * that identity (or any) whose key covers the port, so they are exactly the ones the compiler derived.
 * Not yet: a port given by name that resolves to 53 counts for nothing here (refuses names Cilium would
 * allow); to do before the gate opens.
 */
import { fqdnMatcher, fqdnNormalize } from '../policy/fqdn.js';
import type { FqdnMatcher, FqdnSelector } from '../policy/fqdn.js';
import { policyDecide } from '../policy/trace.js';
import { PROTO_ANY_L4 } from '../policy/types.js';
import type { CompiledPolicy, EndpointPolicy, PolicyRule, PortMatch, RuleSection } from '../policy/types.js';

const ANY_L4 = new Set([6, 17, 132]);

export interface DnsQueryVerdict {
  allowed: boolean;
  /** The allowing section, or for a refusal what decided it. */
  rule: string;
  /** Every name allowed (a rule without DNS rules selects the resolver on this port). */
  wildcard?: boolean;
}

const matchers = new WeakMap<PortMatch, FqdnMatcher[]>();
function portMatchers(m: PortMatch): FqdnMatcher[] {
  let out = matchers.get(m);
  if (!out) matchers.set(m, (out = (m.dns ?? []).map(fqdnMatcher)));
  return out;
}

function portCovers(m: PortMatch, protocol: number, port: number): boolean {
  const protoOk = m.protocol === 0 || m.protocol === protocol || (m.protocol === PROTO_ANY_L4 && ANY_L4.has(protocol));
  if (!protoOk || typeof m.port !== 'number') return false;
  if (m.port === 0) return true;
  return m.endPort !== undefined ? m.port <= port && port <= m.endPort : m.port === port;
}

function entryCovers(e: { protocol: number; port: number; portPrefixLen: number }, protocol: number, port: number): boolean {
  if (e.protocol !== 0 && e.protocol !== protocol) return false;
  const shift = 16 - e.portPrefixLen;
  return e.portPrefixLen === 0 || e.port >> shift === port >> shift;
}

/** Section refs -> sections, for the rules in force. */
export function sectionIndex(rules: readonly PolicyRule[]): Map<string, RuleSection> {
  const out = new Map<string, RuleSection>();
  for (const r of rules) for (const s of r.sections) out.set(s.ref, s);
  return out;
}

/**
 * What decides the queries from one endpoint to one resolver identity on one protocol and port,
 * whatever the name: a verdict for every name, or the allowing sections' DNS matchers in the order they
 * are tried. Computed once per (endpoint, resolver, protocol, port) and policy state (the DNS proxy
 * keeps it); a name then costs its matchers only.
 */
export type DnsQueryPlan =
  | { fixed: DnsQueryVerdict }
  | { steps: Array<{ ref: string; matchers: FqdnMatcher[]; selectors: readonly FqdnSelector[] }>; fallback?: DnsQueryVerdict };

export function dnsQueryPlan(
  state: CompiledPolicy,
  sections: ReadonlyMap<string, RuleSection>,
  ep: EndpointPolicy,
  resolverIdentity: number,
  protocol: number,
  port: number,
): DnsQueryPlan {
  const side = policyDecide(state, ep, 'egress', resolverIdentity, protocol, port);
  if (side.verdict === 'DENIED') return { fixed: { allowed: false, rule: side.rules.join(', ') || 'default deny (no rule allows the resolver)' } };
  if (side.reason === 'not-enforced') return { fixed: { allowed: true, rule: 'egress not enforced', wildcard: true } };
  const refs = new Set<string>();
  for (const e of ep.entries) {
    if (e.direction !== 'egress' || e.deny || e.implicit) continue;
    if (e.identity !== resolverIdentity && e.identity !== 0) continue;
    if (entryCovers(e, protocol, port)) for (const r of e.rules) refs.add(r);
  }
  // The sections in the order they are tried; the first that allows every name ends the list.
  const steps: Array<{ ref: string; matchers: FqdnMatcher[]; selectors: readonly FqdnSelector[] }> = [];
  for (const ref of [...refs].sort()) {
    const s = sections.get(ref);
    if (!s) continue;
    if (s.ports === 'all') return steps.length ? { steps, fallback: { allowed: true, rule: ref, wildcard: true } } : { fixed: { allowed: true, rule: ref, wildcard: true } };
    for (const m of s.ports) {
      if (!portCovers(m, protocol, port)) continue;
      if (!m.dns || m.dns.length === 0) return steps.length ? { steps, fallback: { allowed: true, rule: ref, wildcard: true } } : { fixed: { allowed: true, rule: ref, wildcard: true } };
      steps.push({ ref, matchers: portMatchers(m), selectors: m.dns });
    }
  }
  return { steps };
}

const planNames = new WeakMap<DnsQueryPlan, string | undefined>();

/**
 * Every name a plan allows, as the DNS fast path's thread matches them (bpf/native/src/dnsfast.c,
 * plan_allows): lines of `w` (every name), `n<matchName>` or `p<matchPattern>`, normalised as fqdn.ts
 * compares them; undefined for a plan that allows no name. Made once per plan.
 */
export function dnsPlanNames(plan: DnsQueryPlan): string | undefined {
  if (planNames.has(plan)) return planNames.get(plan);
  let out: string | undefined;
  if ('fixed' in plan) out = plan.fixed.allowed ? 'w' : undefined;
  else if (plan.fallback?.allowed) out = 'w';
  else {
    const lines = plan.steps.flatMap((s) => s.selectors.map((sel) => (sel.matchName ? `n${fqdnNormalize(sel.matchName)}` : `p${fqdnNormalize(sel.matchPattern ?? '')}`)));
    out = lines.length ? [...new Set(lines)].join('\n') : undefined;
  }
  planNames.set(plan, out);
  return out;
}

/** A plan's verdict for one name (lower case, no trailing dot). */
export function dnsPlanVerdict(plan: DnsQueryPlan, name: string): DnsQueryVerdict {
  if ('fixed' in plan) return plan.fixed;
  for (const { ref, matchers } of plan.steps) if (matchers.some((match) => match(name))) return { allowed: true, rule: ref };
  return plan.fallback ?? { allowed: false, rule: plan.steps[0]?.ref || 'no DNS rule allows the name' };
}

/**
 * The verdict for a query of `name` (lower case, no trailing dot) from endpoint `ep` to a resolver of
 * identity `resolverIdentity`, over `protocol` (17 or 6) to port `port` (53).
 */
export function dnsQueryVerdict(
  state: CompiledPolicy,
  sections: ReadonlyMap<string, RuleSection>,
  ep: EndpointPolicy,
  resolverIdentity: number,
  protocol: number,
  port: number,
  name: string,
): DnsQueryVerdict {
  return dnsPlanVerdict(dnsQueryPlan(state, sections, ep, resolverIdentity, protocol, port), name);
}
