/** Human-readable forms of compiled entries and traces (for `kitnet workload policy` and `policy trace`). */
import { ReservedIdentity } from '../identity/reserved.js';
import { policyKeyEncode } from './map-key.js';
import { protocolName } from './ports.js';
import { STEP, stepsRun, type Steps } from './slices.js';
import type { TraceResult, TraceSide } from './trace.js';
import type { EndpointPolicy, PolicyEntry } from './types.js';

export type IdentityNames = ReadonlyMap<number, readonly string[]>;

export function identityFormat(id: number, identities?: IdentityNames): string {
  if (id === 0) return 'any';
  const labels = identities?.get(id);
  if (!labels || labels.length === 0) return String(id);
  const shown = id <= ReservedIdentity['world-ipv6'] ? labels : labels.filter((l) => !l.startsWith('k8s:io.cilium.k8s.namespace.labels.'));
  return `${id} (${shown.join(',')})`;
}

export function portFormat(e: Pick<PolicyEntry, 'protocol' | 'port' | 'portPrefixLen'>): string {
  if (e.protocol === 0) return 'any';
  const proto = protocolName(e.protocol);
  const icmp = e.protocol === 1 || e.protocol === 58;
  if (e.portPrefixLen === 0) return `${proto}/*`;
  if (e.portPrefixLen === 16) return icmp ? `${proto} type ${e.port}` : `${proto}/${e.port}`;
  const hi = e.port + 2 ** (16 - e.portPrefixLen) - 1;
  return `${proto}/${e.port}-${hi}`;
}

/** One line per entry: `ingress  allow  from 301 (k8s:app=client,...)  TCP/80  <- rule refs`. */
export function policyEntryFormat(e: PolicyEntry, identities?: IdentityNames): string {
  const peer = `${e.direction === 'ingress' ? 'from' : 'to'} ${identityFormat(e.identity, identities)}`;
  return `${e.direction.padEnd(7)} ${e.deny ? 'DENY ' : 'allow'} ${peer}  ${portFormat(e)}  <- ${e.rules.join('; ')}`;
}

export function endpointPolicyFormat(p: EndpointPolicy, identities?: IdentityNames): string {
  const head = `endpoint ${p.endpointId} identity ${identityFormat(p.identity, identities)}: ingress ${p.ingressEnforced ? 'enforced' : 'not enforced'}, egress ${p.egressEnforced ? 'enforced' : 'not enforced'}, ${p.entries.length} entries`;
  return [head, ...p.entries.map((e) => `  ${policyEntryFormat(e, identities)}`)].join('\n');
}

function sideFormat(s: TraceSide): string {
  const what = {
    allowed: 'allowed',
    'not-enforced': 'allowed (no policy enforces this direction)',
    'explicit-deny': 'DENIED by a deny rule (POLICY_DENY 181)',
    'default-deny': 'DENIED by default deny: no rule allows it (POLICY_DENIED 133)',
  }[s.reason];
  const rules = s.rules.length ? `\n    ${s.rules.join('\n    ')}` : '';
  const b = s.ipBlock;
  const byAddress = b
    ? `\n    by address: no entry for the workload's identity, so ${b.address} was judged as NetworkPolicy ipBlocks see it, inside ${b.cidr}${b.entry ? '' : ', which no ipBlock of the rules here selects (an except, or not covered)'}`
    : '';
  return `  ${s.direction} at endpoint ${s.endpointId}: ${what}${byAddress}${rules}`;
}

export function policyTraceFormat(r: TraceResult, identities?: IdentityNames): string {
  const lines = [
    `verdict: ${r.verdict}`,
    `  source identity ${identityFormat(r.srcIdentity, identities)}`,
    `  destination identity ${identityFormat(r.dstIdentity, identities)}`,
  ];
  if (r.egress) lines.push(sideFormat(r.egress));
  if (r.ingress) lines.push(sideFormat(r.ingress));
  if (!r.egress && !r.ingress && !r.loopback) lines.push('  neither side is a local endpoint: no policy applies here');
  else if (!r.loopback) lines.push(CONNTRACK_NOTE[r.verdict]);
  for (const n of r.notes ?? []) lines.push(`  note: ${n}`);
  return lines.join('\n');
}

/** What the verdict means for connections that already exist (bpf/include/conntrack.h). */
const CONNTRACK_NOTE: Record<TraceResult['verdict'], string> = {
  ALLOWED:
    'conntrack: the verdict holds for new and established connections alike: packets source -> destination are checked until the connection sees a reply, and again after any policy or identity change; replies (and ICMP errors about the connection) pass without policy',
  DENIED:
    'conntrack: the verdict holds for new and established connections alike: an established connection source -> destination is checked again after the policy or identity change that denies it and its packets this way are dropped from the next one on; its replies still pass',
};

/**
 * The identity of an entry's map key within one endpoint, as text: equal exactly when the encoded
 * keys are (the port is masked to its prefix; no protocol means prefix 72 whatever the port fields).
 * Invalid entries throw as policyKeyEncode does.
 */
export function policyEntryKey(endpointId: number, e: Pick<PolicyEntry, 'direction' | 'identity' | 'protocol' | 'port' | 'portPrefixLen'>): string {
  if (e.protocol === 0 && (e.port !== 0 || e.portPrefixLen !== 0)) policyKeyEncode({ endpointId, ...e }); // throws the encoder's error
  if (!(e.portPrefixLen >= 0 && e.portPrefixLen <= 16)) policyKeyEncode({ endpointId, ...e });
  const mask = e.portPrefixLen === 0 ? 0 : (0xffff << (16 - e.portPrefixLen)) & 0xffff;
  return `${e.direction === 'ingress' ? 'i' : 'e'}${e.identity}/${e.protocol}/${e.port & mask}/${e.portPrefixLen}`;
}

export interface PolicyMapOp {
  op: 'upsert' | 'delete';
  entry: PolicyEntry;
}

/**
 * The map operations that turn `before` into `after` for one endpoint (entries compared by their
 * encoded key and verdict; unchanged entries are never touched, so unrelated traffic is undisturbed).
 * `ops` is the safe order: upsert denies, delete stale allows, upsert allows, delete stale denies.
 * While it runs, the map never allows a packet that neither the old nor the new state allows (first
 * only what the old state allows, then only what the new one does); new connections may briefly be
 * dropped instead (fail closed). Established connections are checked again once the write is done (the
 * datapath's policy revision, bpf/include/conntrack.h); one that a check catches in the middle of it
 * loses that packet at worst: a drop leaves its conntrack entry as it was.
 */
export function policyEntriesDiff(
  endpointId: number,
  before: readonly PolicyEntry[],
  after: readonly PolicyEntry[],
): { upserts: PolicyEntry[]; deletes: PolicyEntry[]; ops: PolicyMapOp[] } {
  return stepsRun(policyEntriesDiffSteps(endpointId, before, after));
}

/** policyEntriesDiff in steps (./slices.ts). */
export function* policyEntriesDiffSteps(
  endpointId: number,
  before: readonly PolicyEntry[],
  after: readonly PolicyEntry[],
): Steps<{ upserts: PolicyEntry[]; deletes: PolicyEntry[]; ops: PolicyMapOp[] }> {
  let work = 0;
  const old = new Map<string, PolicyEntry>();
  for (const e of before) {
    old.set(policyEntryKey(endpointId, e), e);
    if (++work % STEP === 0) yield;
  }
  const now = new Map<string, PolicyEntry>();
  for (const e of after) {
    now.set(policyEntryKey(endpointId, e), e);
    if (++work % STEP === 0) yield;
  }
  const upserts: PolicyEntry[] = [];
  const deletes: PolicyEntry[] = [];
  for (const [k, e] of now) {
    if (old.get(k)?.deny !== e.deny) upserts.push(e);
    if (++work % STEP === 0) yield;
  }
  for (const [k, e] of old) {
    if (!now.has(k)) deletes.push(e);
    if (++work % STEP === 0) yield;
  }
  const ops: PolicyMapOp[] = [];
  for (const entry of upserts) if (entry.deny) ops.push({ op: 'upsert', entry });
  for (const entry of deletes) if (!entry.deny) ops.push({ op: 'delete', entry });
  for (const entry of upserts) if (!entry.deny) ops.push({ op: 'upsert', entry });
  for (const entry of deletes) if (entry.deny) ops.push({ op: 'delete', entry });
  return { upserts, deletes, ops };
}
