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
import { ReservedIdentity } from '../identity/reserved.js';
import type { CompileMeter } from './budget.js';
import { cidrIdentitiesAllocate, ipBlockView, policyCidrs } from './cidr.js';
import { RawEntries, covers, entryCompare, groupResolve, namedPortKeys, portsOfMatch } from './entries.js';
import { selectorMatches } from './selector.js';
import { STEP, stepsRun, type Steps } from './slices.js';
import { Universe } from './universe.js';
import type { CompiledPolicy, CompileInput, Direction, EndpointPolicy, LocalEndpoint, NamedPort, PolicyEntry, PolicyRule, PortMatch, RuleSection } from './types.js';

export const IMPLICIT_RULES = {
  'not-enforced': (d: Direction) => `(no policy enforces ${d} on this endpoint: allow all)`,
  'allow-localhost': () => '(allow-localhost: the host may always reach local endpoints)',
} as const;

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
  const u = new Universe(input.identities, cidrIds, ipBlocks, input.options?.localCluster);
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
