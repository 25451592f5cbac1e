import type { FlowEvent } from '../../bpf/index.js';
import type { TracePeer, TraceResult } from '../../agent/policy/trace.js';
import { policyFromRuleRef, type HubbleFlowRecord, type PolicyMessage } from '../../agent/flows/hubble.js';

// Moved beside the flow types (the DNS proxy's L7 flows name policies too); kept importable from here.
export { policyFromRuleRef, type PolicyMessage };

export type PolicyFields = Partial<Record<'ingress_allowed_by' | 'egress_allowed_by' | 'ingress_denied_by' | 'egress_denied_by', PolicyMessage[]>>;

/** The agent's offline verdict (PolicyEngine.trace): the same compiled state and lookups as the datapath. */
export type PolicyTrace = (from: TracePeer, to: TracePeer, protocol: number, port: number) => TraceResult;

const CACHE_TTL_MS = 2000;
const CACHE_MAX = 16_384;

/**
 * Which policy allowed or denied a flow, as Hubble's `*_allowed_by` / `*_denied_by`. The datapath's
 * event says only the verdict, so the agent asks its policy engine the same question for the
 * endpoint's side of the flow (ingress at the receiving endpoint, egress at the sending one). Replies
 * pass on conntrack and default-deny drops have no rule: those carry no attribution, as in Cilium.
 * Answers are kept for 2 s per (endpoint, direction, peer identity, protocol, port), so a policy change
 * shows within that time and a busy follower costs a map lookup per flow.
 */
export function policyAttribution(trace: PolicyTrace): (r: HubbleFlowRecord) => PolicyFields | undefined {
  const cache = new Map<string, { at: number; fields: PolicyFields | undefined }>();
  return (r) => {
    const ev = (r as { event?: FlowEvent }).event;
    if (!ev || ev.isReply || !ev.endpointId || ev.family === 0) return undefined;
    const denied = ev.verdict === 'DROPPED';
    if (denied && ev.dropReason !== 181) return undefined;
    const ingress = ev.direction === 'INGRESS';
    const remote = ingress ? ev.srcIdentity : ev.dstIdentity;
    const port = ev.protocol === 1 || ev.protocol === 58 ? ev.icmpType : ev.dstPort;
    const key = `${ev.endpointId}/${ev.direction}/${remote}/${ev.protocol}/${port}/${denied}`;
    const now = performance.now();
    const hit = cache.get(key);
    if (hit && now - hit.at < CACHE_TTL_MS) return hit.fields;
    let fields: PolicyFields | undefined;
    try {
      const self: TracePeer = { endpointId: ev.endpointId };
      const peer: TracePeer = { identity: remote };
      const result = ingress ? trace(peer, self, ev.protocol, port) : trace(self, peer, ev.protocol, port);
      const side = ingress ? result.ingress : result.egress;
      const want = denied ? 'explicit-deny' : 'allowed';
      if (side && side.reason === want) {
        const seen = new Set<string>();
        const policies = side.rules.map(policyFromRuleRef).filter((p): p is PolicyMessage => {
          if (!p || seen.has(`${p.kind}/${p.namespace}/${p.name}`)) return false;
          seen.add(`${p.kind}/${p.namespace}/${p.name}`);
          return true;
        });
        if (policies.length) fields = { [`${ingress ? 'ingress' : 'egress'}_${denied ? 'denied' : 'allowed'}_by`]: policies };
      }
    } catch {
      // an endpoint gone meanwhile, or an identity the engine does not know: no attribution
    }
    if (cache.size >= CACHE_MAX) cache.clear();
    cache.set(key, { at: now, fields });
    return fields;
  };
}
