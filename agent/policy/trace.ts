/**
 * Offline policy verdicts, computed from the same compiled state the datapath uses and with the same
 * lookups (see map-key.ts): the egress check at the source endpoint (if local) and the ingress check at
 * the destination endpoint (if local). Peers given by address resolve through an ipcache-like LPM
 * (workload entries supplied by the caller, then the compiled CIDR entries, else world-ipv4/-ipv6).
 */
import { addressParse, cidrParse } from '../ipam.js';
import { ReservedIdentity } from '../identity/reserved.js';
import { IDENTITY_RANGE_LABEL_FIRST, IDENTITY_RANGE_LOCAL_FLAG } from '../../bpf/layout.gen.js';
import { LpmTable, policyEntriesEncode, policyLookupKeyEncode } from './map-key.js';
import { protocolNumber } from './ports.js';
import type { CompiledPolicy, Direction, EndpointPolicy, IpcacheEntry, PolicyEntry } from './types.js';

export type TracePeer = { endpointId: number } | { identity: number } | { ip: string };

export interface TraceQuery {
  from: TracePeer;
  to: TracePeer;
  /** Number or name (TCP, UDP, SCTP, ICMP, ICMPv6). */
  protocol: number | string;
  /** Destination port; for ICMP/ICMPv6 the ICMP type. */
  port: number;
}

export interface TraceOptions {
  /** Resolves an address first (e.g. workload addresses -> identity and local endpoint). */
  resolveIp?: (ip: string) => { identity: number; endpointId?: number } | undefined;
  /** Extra ipcache entries (workloads, nodes), consulted together with the compiled CIDR entries. */
  ipcache?: readonly IpcacheEntry[];
}

export type SideReason = 'allowed' | 'not-enforced' | 'explicit-deny' | 'default-deny';

export interface TraceSide {
  endpointId: number;
  direction: Direction;
  remoteIdentity: number;
  verdict: 'ALLOWED' | 'DENIED';
  reason: SideReason;
  /** Hubble drop reason: 181 POLICY_DENY (explicit deny), 133 POLICY_DENIED (default deny). */
  dropReason?: 133 | 181;
  /** The entry that decided (undefined for default deny). */
  entry?: PolicyEntry;
  rules: string[];
  /** Results of the two map lookups: (remote identity) and (identity 0). */
  lookups: { identity: PolicyEntry | undefined; any: PolicyEntry | undefined };
  /**
   * When both missed and the remote is a workload address: the third lookup, with the identity the
   * address has in the ipBlock view (the NetworkPolicy ipBlock prefix covering it), as the datapath
   * does it (bpf/include/policy.h, policy_check_ipblock).
   */
  ipBlock?: { address: string; cidr: string; identity: number; entry: PolicyEntry | undefined };
}

export interface TraceResult {
  verdict: 'ALLOWED' | 'DENIED';
  srcIdentity: number;
  dstIdentity: number;
  egress?: TraceSide;
  ingress?: TraceSide;
  /** Source and destination are one workload: the traffic stays on its loopback, no policy applies. */
  loopback?: boolean;
  /** Explanations: which CIDR rule selected a workload address, or why one covering it did not. */
  notes?: string[];
}

interface Resolved {
  identity: number;
  endpoint?: EndpointPolicy;
}

const tables = new WeakMap<CompiledPolicy, Map<number, LpmTable<PolicyEntry>>>();

function tableFor(state: CompiledPolicy, ep: EndpointPolicy): LpmTable<PolicyEntry> {
  let perState = tables.get(state);
  if (!perState) tables.set(state, (perState = new Map()));
  let t = perState.get(ep.endpointId);
  if (!t) {
    t = new LpmTable<PolicyEntry>();
    for (const { key, entry } of policyEntriesEncode(ep.endpointId, ep.entries)) t.insert(key, entry);
    perState.set(ep.endpointId, t);
  }
  return t;
}

/** Longest-prefix ipcache lookup as the datapath does it (unknown -> world-ipv4 / world-ipv6). */
export function ipcacheLookup(entries: readonly IpcacheEntry[], ip: string): number {
  const id = ipcacheLookupOrUndefined(entries, ip);
  if (id !== undefined) return id;
  return ip.includes(':') ? ReservedIdentity['world-ipv6'] : ReservedIdentity['world-ipv4'];
}

/** Longest-prefix lookup over entries; undefined when none covers the address. */
function ipcacheLookupOrUndefined(entries: readonly IpcacheEntry[], ip: string): number | undefined {
  const a = addressParse(ip);
  const bits = a.family === 4 ? 32 : 128;
  let best: { len: number; identity: number } | undefined;
  for (const e of entries) {
    const c = cidrParse(e.cidr);
    if (c.family !== a.family) continue;
    const shift = BigInt(bits - c.prefixLength);
    if (a.value >> shift !== c.network >> shift) continue;
    if (!best || c.prefixLength > best.len) best = { len: c.prefixLength, identity: e.identity };
  }
  return best?.identity;
}

function resolve(state: CompiledPolicy, p: TracePeer, opts: TraceOptions): Resolved {
  if ('endpointId' in p) {
    const endpoint = state.endpoints.find((e) => e.endpointId === p.endpointId);
    if (!endpoint) throw new Error(`no local endpoint ${p.endpointId} in the compiled state`);
    return { identity: endpoint.identity, endpoint };
  }
  if ('identity' in p) return { identity: p.identity };
  const r = opts.resolveIp?.(p.ip);
  if (r) {
    const endpoint = r.endpointId !== undefined ? state.endpoints.find((e) => e.endpointId === r.endpointId) : undefined;
    return endpoint ? { identity: r.identity, endpoint } : { identity: r.identity };
  }
  return { identity: ipcacheLookup([...(opts.ipcache ?? []), ...state.ipcache], p.ip) };
}

/** One side's decision, exactly as the datapath's two lookups decide it. */
export function policyDecide(state: CompiledPolicy, ep: EndpointPolicy, direction: Direction, remoteIdentity: number, protocol: number, port: number): TraceSide {
  const t = tableFor(state, ep);
  const a = t.lookup(policyLookupKeyEncode(ep.endpointId, remoteIdentity, direction, protocol, port));
  const b = t.lookup(policyLookupKeyEncode(ep.endpointId, 0, direction, protocol, port));
  const base = { endpointId: ep.endpointId, direction, remoteIdentity, lookups: { identity: a, any: b } };
  const deny = a?.deny ? a : b?.deny ? b : undefined;
  if (deny) return { ...base, verdict: 'DENIED', reason: 'explicit-deny', dropReason: 181, entry: deny, rules: deny.rules };
  const allow = a ?? b;
  if (allow) {
    const rules = [...new Set([...(a?.rules ?? []), ...(b?.rules ?? [])])];
    // When the direction is not enforced, the wildcard lookup always lands on the allow-all entry.
    const reason: SideReason = b?.implicit === 'not-enforced' ? 'not-enforced' : 'allowed';
    return { ...base, verdict: 'ALLOWED', reason, entry: allow, rules };
  }
  return { ...base, verdict: 'DENIED', reason: 'default-deny', dropReason: 133, rules: [] };
}

/** A workload (label-derived) identity, local or remote: what the datapath asks the ipBlock view for. */
function isWorkloadIdentity(id: number): boolean {
  return id >= IDENTITY_RANGE_LABEL_FIRST && id < IDENTITY_RANGE_LOCAL_FLAG;
}

/**
 * The datapath's third lookup (policy_check_ipblock): after a default deny against a workload address,
 * the identity the address has in the ipBlock view decides, if an entry for it exists.
 */
export function ipBlockDecide(state: CompiledPolicy, side: TraceSide, address: string, protocol: number, port: number): TraceSide {
  if (side.reason !== 'default-deny' || !isWorkloadIdentity(side.remoteIdentity) || state.ipBlocks.length === 0) return side;
  const identity = ipcacheLookupOrUndefined(state.ipBlocks, address);
  if (identity === undefined) return side;
  const ep = state.endpoints.find((e) => e.endpointId === side.endpointId)!;
  const entry = tableFor(state, ep).lookup(policyLookupKeyEncode(ep.endpointId, identity, side.direction, protocol, port));
  const cidr = state.ipBlocks.find((b) => b.identity === identity)!.cidr;
  const ipBlock = { address, cidr, identity, entry };
  if (!entry) return { ...side, ipBlock };
  if (entry.deny) return { ...side, ipBlock, reason: 'explicit-deny', dropReason: 181, entry, rules: entry.rules };
  const { dropReason: _unused, ...allowed } = side;
  return { ...allowed, ipBlock, verdict: 'ALLOWED', reason: 'allowed', entry, rules: entry.rules };
}

export function policyTrace(state: CompiledPolicy, query: TraceQuery, opts: TraceOptions = {}): TraceResult {
  const protocol = protocolNumber(query.protocol);
  const src = resolve(state, query.from, opts);
  const dst = resolve(state, query.to, opts);
  const out: TraceResult = { verdict: 'ALLOWED', srcIdentity: src.identity, dstIdentity: dst.identity };
  if (src.endpoint) out.egress = policyDecide(state, src.endpoint, 'egress', dst.identity, protocol, query.port);
  if (dst.endpoint) out.ingress = policyDecide(state, dst.endpoint, 'ingress', src.identity, protocol, query.port);
  // A remote given by address is judged per address, as packets are (ipBlock view).
  if (out.egress && 'ip' in query.to) out.egress = ipBlockDecide(state, out.egress, query.to.ip, protocol, query.port);
  if (out.ingress && 'ip' in query.from) out.ingress = ipBlockDecide(state, out.ingress, query.from.ip, protocol, query.port);
  if (out.egress?.verdict === 'DENIED' || out.ingress?.verdict === 'DENIED') out.verdict = 'DENIED';
  return out;
}
