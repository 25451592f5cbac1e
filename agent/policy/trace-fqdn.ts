/**
 * `policy trace --to-fqdn NAME` (issue #17): what the agent knows about a name from what the DNS proxy
 * learned, and what a source workload may do with it. Pure: the caller hands in the compiled policy,
 * the learned addresses and the proxy's facts (agent/dns/steering.ts), so this answers from exactly
 * the state the datapath and the proxy use, and never looks the name up itself.
 *
 * Three answers:
 * - the addresses the name has now (TTL left; an expired address is still listed while a tracked
 *   connection keeps it), the identity the ipcache gives each and the toFQDNs selectors behind it;
 * - the verdict for the source to each address: on the port and protocol when given (the datapath's
 *   two lookups, trace.ts), otherwise every egress entry that covers the address's identity;
 * - whether the source may look the name up: the proxy's own query verdict (agent/dns/verdict.ts) for
 *   the resolver given, or for every resolver the source's egress entries allow on port 53.
 */
import { dnsQueryVerdict } from '../dns/verdict.js';
export { fqdnNameNormalize, fqdnNameProblem } from './trace-fqdn-name.js';
import { fqdnMatcher, fqdnSelectorLabel } from './fqdn.js';
import type { FqdnSelector } from './fqdn.js';
import { identityFormat, portFormat } from './format.js';
import type { IdentityNames } from './format.js';
import { ipcacheLookup, policyDecide } from './trace.js';
import type { TraceSide } from './trace.js';
import type { CompiledPolicy, EndpointPolicy, IpcacheEntry, RuleSection } from './types.js';

/** What the DNS service (agent/dns/steering.ts) tells a trace. */
export interface FqdnTraceFacts {
  /** The proxy listens and the datapath steers to it. */
  proxy: boolean;
  steered(endpointId: number): boolean;
  learned(name: string): Array<{ address: string; expiresAt: number }>;
  /** The learned addresses' ipcache entries, as written. */
  ipcache(): IpcacheEntry[];
  /** The identity the datapath gives a resolver's address (what the query verdict judges). */
  resolverIdentity(address: string): number;
}

export interface FqdnTraceInput {
  /** Normalised (fqdnNameNormalize). */
  name: string;
  state: CompiledPolicy;
  /** Section refs -> sections of the policies in force (agent/dns/verdict.ts, sectionIndex). */
  sections: ReadonlyMap<string, RuleSection>;
  source: EndpointPolicy;
  /** What the proxy learned for the name (agent/dns/fqdn-cache.ts). */
  learned: ReadonlyArray<{ address: string; expiresAt: number }>;
  nowMs: number;
  /** The proxy's ipcache entries (learned addresses -> FQDN identities); the compiled ones are in `state`. */
  ipcache: readonly IpcacheEntry[];
  /** The policies' toFQDNs selectors. */
  selectors: readonly FqdnSelector[];
  /** Whether the proxy runs, and whether the source's DNS is steered to it. */
  proxy: boolean;
  steered: boolean;
  /** The resolver the lookup would go to, when the caller named one. */
  resolver?: { address: string; identity: number } | undefined;
  /** Port and protocol number of the connection, when given. */
  port?: number | undefined;
  protocol?: number | undefined;
}

export interface FqdnTracePort {
  /** As `workload policy` shows it: TCP/443, UDP/*, any. */
  port: string;
  verdict: 'ALLOWED' | 'DENIED';
  rules: string[];
}

export interface FqdnTraceAddress {
  address: string;
  /** Seconds until the TTL runs out (0 once it has). */
  ttlSeconds: number;
  /** Past its TTL, kept because a tracked connection still uses it. */
  expired: boolean;
  identity: number;
  verdict: 'ALLOWED' | 'DENIED';
  /** With a port: the egress decision at the source. */
  egress?: TraceSide;
  /** Without a port: every egress entry at the source covering the address's identity. */
  ports?: FqdnTracePort[];
}

export interface FqdnTraceLookup {
  /** The resolver's address, or its identity's description when not named. */
  resolver: string;
  identity: number;
  protocol: 'UDP' | 'TCP';
  allowed: boolean;
  /** The allowing section, or for a refusal the policy (or default deny) that decided. */
  rule: string;
  /** Every name is allowed (a rule without DNS rules selects this resolver on port 53). */
  wildcard?: boolean;
}

export interface FqdnTraceResult {
  name: string;
  /** ALLOWED: every learned address is; DENIED: some is not; UNKNOWN: nothing learned yet. */
  verdict: 'ALLOWED' | 'DENIED' | 'UNKNOWN';
  /** The toFQDNs selectors (as identity labels) that match the name. */
  selectors: string[];
  addresses: FqdnTraceAddress[];
  /** The connection judged (TCP/443), when a port was given. */
  connection?: string;
  dns: { proxy: boolean; steered: boolean; lookups: FqdnTraceLookup[] };
}

const DNS_PORT = 53;

function entryCoversPort(e: { protocol: number; port: number; portPrefixLen: number }, protocol: number, port: number): boolean {
  if (e.protocol !== 0 && e.protocol !== protocol) return false;
  const shift = 16 - e.portPrefixLen;
  return e.portPrefixLen === 0 || e.port >> shift === port >> shift;
}

function addressPorts(source: EndpointPolicy, identity: number): FqdnTracePort[] {
  const out: FqdnTracePort[] = [];
  for (const e of source.entries) {
    if (e.direction !== 'egress' || (e.identity !== identity && e.identity !== 0)) continue;
    const rules = e.implicit === 'not-enforced' ? ['egress not enforced'] : e.rules;
    out.push({ port: portFormat(e), verdict: e.deny ? 'DENIED' : 'ALLOWED', rules });
  }
  return out;
}

/** The resolvers to judge a lookup against: the one named, else each identity the source may send DNS to. */
function resolversOf(input: FqdnTraceInput, protocol: number): Array<{ resolver: string; identity: number }> {
  if (input.resolver) return [{ resolver: input.resolver.address, identity: input.resolver.identity }];
  const ids = new Set<number>();
  for (const e of input.source.entries) {
    if (e.direction === 'egress' && !e.deny && !e.implicit && entryCoversPort(e, protocol, DNS_PORT)) ids.add(e.identity);
  }
  return [...ids].sort((a, b) => a - b).map((identity) => ({ resolver: identity === 0 ? 'any resolver' : `resolvers of identity ${identity}`, identity }));
}

export function fqdnTrace(input: FqdnTraceInput): FqdnTraceResult {
  const { name, state, source, nowMs } = input;
  const selectors = [...new Set(input.selectors.filter((s) => fqdnMatcher(s)(name)).map(fqdnSelectorLabel))].sort();
  const ipcache = [...input.ipcache, ...state.ipcache];
  const addresses: FqdnTraceAddress[] = [...input.learned]
    .sort((a, b) => a.address.localeCompare(b.address))
    .map(({ address, expiresAt }) => {
      const identity = ipcacheLookup(ipcache, address);
      const base = { address, ttlSeconds: Math.max(0, Math.ceil((expiresAt - nowMs) / 1000)), expired: expiresAt <= nowMs, identity };
      if (input.port !== undefined && input.protocol !== undefined) {
        const egress = policyDecide(state, source, 'egress', identity, input.protocol, input.port);
        return { ...base, verdict: egress.verdict, egress };
      }
      const ports = addressPorts(source, identity);
      return { ...base, verdict: ports.some((p) => p.verdict === 'ALLOWED') ? 'ALLOWED' : 'DENIED', ports };
    });
  const verdict = addresses.length === 0 ? 'UNKNOWN' : addresses.every((a) => a.verdict === 'ALLOWED') ? 'ALLOWED' : 'DENIED';
  const lookups: FqdnTraceLookup[] = [];
  if (input.proxy && input.steered) {
    for (const [protocol, pname] of [[17, 'UDP'], [6, 'TCP']] as const) {
      for (const r of resolversOf(input, protocol)) {
        const v = dnsQueryVerdict(state, input.sections, source, r.identity, protocol, DNS_PORT, name);
        lookups.push({ ...r, protocol: pname, allowed: v.allowed, rule: v.rule, ...(v.wildcard ? { wildcard: true } : {}) });
      }
    }
  }
  const connection = input.port !== undefined && input.protocol !== undefined ? portFormat({ protocol: input.protocol, port: input.port, portPrefixLen: 16 }) : undefined;
  return { name, verdict, selectors, addresses, ...(connection ? { connection } : {}), dns: { proxy: input.proxy, steered: input.steered, lookups } };
}

function lookupLine(l: FqdnTraceLookup, protocols: string, identity: string): string {
  const to = l.resolver.startsWith('resolvers of identity') ? `resolvers of identity ${identity}` : l.identity === 0 ? l.resolver : `${l.resolver} (identity ${identity})`;
  if (l.allowed) return `${protocols} to ${to}: allowed${l.wildcard ? ' (every name: the rule has no DNS rules)' : ''}, by ${l.rule}`;
  return `${protocols} to ${to}: REFUSED by the proxy, decided by ${l.rule}`;
}

/** The answer as text: addresses, then the lookup question, then the verdict. */
export function fqdnTraceFormat(r: FqdnTraceResult, identities: IdentityNames, source: string): string {
  const lines = [`${r.name} from ${source}`];
  if (r.addresses.length === 0) {
    lines.push(`  no addresses learned for ${r.name} yet; the first lookup by a selected workload will learn them`);
  } else {
    lines.push(`  learned addresses (${r.addresses.length}):`);
    for (const a of r.addresses) {
      const ttl = a.expired ? 'TTL expired, kept while a tracked connection uses it' : `TTL ${a.ttlSeconds} s left`;
      lines.push(`    ${a.address}  ${ttl}  identity ${identityFormat(a.identity, identities)}`);
      if (a.egress) {
        const why = a.egress.reason === 'not-enforced' ? 'allowed (egress not enforced)' : a.egress.reason === 'allowed' ? 'allowed' : a.egress.reason === 'explicit-deny' ? 'DENIED by a deny rule (POLICY_DENY 181)' : 'DENIED by default deny: no rule allows it (POLICY_DENIED 133)';
        lines.push(`      ${r.connection}: ${why}${a.egress.rules.length ? ` <- ${a.egress.rules.join('; ')}` : ''}`);
      } else if (a.ports && a.ports.length > 0) {
        for (const p of a.ports) lines.push(`      ${p.verdict === 'ALLOWED' ? 'allow' : 'DENY '} ${p.port}  <- ${p.rules.join('; ')}`);
      } else {
        lines.push('      no egress entry covers this identity: every port is DENIED (default deny)');
      }
    }
  }
  lines.push(r.selectors.length ? `  toFQDNs selectors matching the name: ${r.selectors.join(', ')}` : '  no toFQDNs selector matches the name: its addresses get no FQDN identity (they stay world, or a CIDR rule\'s)');
  lines.push(`  DNS lookup of ${r.name}:`);
  if (!r.dns.proxy) lines.push('    the DNS proxy is off (dns.proxy.enabled: false): no lookup is judged by DNS rules and nothing is learned');
  else if (!r.dns.steered) lines.push(`    ${source}'s DNS is not steered to the proxy (no rule with rules.dns selects it): its lookups are judged by L3/L4 policy only and teach nothing`);
  else if (r.dns.lookups.length === 0) lines.push('    no rule allows DNS (port 53) to any resolver: every lookup is REFUSED by the proxy');
  else {
    const done = new Set<FqdnTraceLookup>();
    for (const l of r.dns.lookups) {
      if (done.has(l)) continue;
      const twin = r.dns.lookups.find((o) => o !== l && o.identity === l.identity && o.resolver === l.resolver && o.allowed === l.allowed && o.rule === l.rule);
      if (twin) done.add(twin);
      lines.push(`    ${lookupLine(l, twin ? 'UDP and TCP' : l.protocol, identityFormat(l.identity, identities))}`);
    }
  }
  const on = r.connection ? `on ${r.connection}` : 'on some port';
  lines.push(
    r.verdict === 'UNKNOWN'
      ? 'verdict: UNKNOWN (no learned address to judge)'
      : `verdict: ${r.verdict} (${r.verdict === 'ALLOWED' ? 'every' : 'not every'} learned address is allowed ${on})`,
  );
  return lines.join('\n');
}
