/**
 * `policy trace` against the agent's current policy state: trace peers given as workloads or
 * addresses are resolved through the store (and, in cluster mode, other nodes' addresses), and the
 * verdict is annotated where it depends on a workload's addresses (NetworkPolicy ipBlocks) or where no
 * datapath is involved at all (a workload talking to itself).
 */
import { KitnetError } from '../../common/errors.js';
import { ReservedIdentity } from '../identity/reserved.js';
import type { Store } from '../store/store.js';
import type { WorkloadRecord } from '../store/types.js';
import { policyTrace, type TracePeer, type TraceResult, type TraceSide } from './index.js';
import type { PolicyState } from './incremental.js';
import type { IpcacheEntry } from './types.js';
import { HostDestinationSet, hostDestinations } from './host-destinations.js';

export function workloadTrace(
  policyState: PolicyState,
  store: Store,
  remoteAddressResolve: (ip: string) => number | undefined,
  from: TracePeer,
  to: TracePeer,
  protocol: string | number,
  port: number,
  /** Local ipcache entries beyond the compiled ones (the DNS proxy's learned addresses). */
  ipcache: readonly IpcacheEntry[] = [],
): { result: TraceResult; identities: Map<number, string[]> } {
  const state = policyState.compiled();
  const workloads = store.workloadList();
  const byIp = new Map<string, { identity: number; endpointId: number }>();
  for (const w of workloads) {
    byIp.set(w.ipv4, { identity: w.identity, endpointId: w.endpointId });
    byIp.set(w.ipv6, { identity: w.identity, endpointId: w.endpointId });
  }
  // every destination the host delivers locally (its addresses, broadcasts, link-local, multicast)
  const hostIps = new HostDestinationSet(hostDestinations());
  let result: TraceResult;
  try {
    result = policyTrace(state, { from, to, protocol, port }, {
      ipcache,
      resolveIp: (ip) => {
        const remote = byIp.has(ip) || hostIps.has(ip) ? undefined : remoteAddressResolve(ip);
        return byIp.get(ip) ?? (hostIps.has(ip) ? { identity: ReservedIdentity.host } : remote !== undefined ? { identity: remote } : undefined);
      },
    });
  } catch (err) {
    throw new KitnetError('AGENT_ERR_TRACE_PEER', (err as Error).message, { cause: err });
  }
  const byEp = new Map(workloads.map((w) => [w.endpointId, w]));
  // The workload a trace peer is, and the addresses the trace stands for.
  const workloadOf = (p: TracePeer): { w: WorkloadRecord; ips: string[] } | undefined => {
    if ('endpointId' in p) {
      const w = byEp.get(p.endpointId);
      return w && { w, ips: [w.ipv4, w.ipv6] };
    }
    if ('ip' in p) {
      const hit = byIp.get(p.ip);
      const w = hit && byEp.get(hit.endpointId);
      return w && { w, ips: [p.ip] };
    }
    return undefined;
  };
  const src = workloadOf(from);
  const dst = workloadOf(to);
  if (src && dst && src.w.endpointId === dst.w.endpointId) {
    const name = `${src.w.spec.namespace}/${src.w.spec.name}`;
    return {
      result: {
        verdict: 'ALLOWED',
        srcIdentity: result.srcIdentity,
        dstIdentity: result.dstIdentity,
        loopback: true,
        notes: [`source and destination are the same workload ${name}: traffic to its own address stays on its loopback inside its namespace and never reaches the datapath, so no policy applies`],
      },
      identities: state.identities,
    };
  }
  const notes: string[] = [];
  const remote = (side: TraceSide, peer: { w: WorkloadRecord; ips: string[] } | undefined) => {
    if (!peer) return;
    const r = { identity: peer.w.identity, name: `${peer.w.spec.namespace}/${peer.w.spec.name}`, ips: peer.ips };
    notes.push(...policyState.cidrNotes(side.endpointId, side.direction, r));
  };
  if (result.egress) remote(result.egress, dst);
  if (result.ingress) remote(result.ingress, src);
  if (notes.length) result.notes = notes;
  return { result, identities: state.identities };
}
