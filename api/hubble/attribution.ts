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
const PEER_BITS = 2 ** 26;
const ENDPOINT_LIMIT = 2 ** 27;

interface Answer {
  at: number;
  fields: PolicyFields | undefined;
}

/**
 * The attribution answers, keyed by two numbers rather than a string made for every flow: (endpoint,
 * peer identity) and (protocol, port, direction, verdict). Endpoint ids and identities beyond what the
 * first number holds (u32 on the wire; kitnet assigns far smaller ones) take a string key.
 */
class AnswerCache {
  private readonly byEndpointPeer = new Map<number, Map<number, Answer>>();
  private readonly other = new Map<string, Answer>();
  /** Entries held (an answer renewed after its 2 s replaces its entry). */
  private size = 0;

  get(endpointId: number, peer: number, kind: number): Answer | undefined {
    if (endpointId < ENDPOINT_LIMIT && peer < PEER_BITS) return this.byEndpointPeer.get(endpointId * PEER_BITS + peer)?.get(kind);
    return this.other.get(`${endpointId}/${peer}/${kind}`);
  }

  set(endpointId: number, peer: number, kind: number, answer: Answer): void {
    if (this.size >= CACHE_MAX) {
      this.byEndpointPeer.clear();
      this.other.clear();
      this.size = 0;
    }
    if (endpointId < ENDPOINT_LIMIT && peer < PEER_BITS) {
      const key = endpointId * PEER_BITS + peer;
      let kinds = this.byEndpointPeer.get(key);
      if (!kinds) this.byEndpointPeer.set(key, (kinds = new Map()));
      if (!kinds.has(kind)) this.size++;
      kinds.set(kind, answer);
      return;
    }
    const key = `${endpointId}/${peer}/${kind}`;
    if (!this.other.has(key)) this.size++;
    this.other.set(key, answer);
  }
}

/**
 * Which policy allowed or denied a flow, as Hubble's `*_allowed_by` / `*_denied_by`. The datapath's
 * event says only the verdict, so the agent asks its policy engine the same question for the
 * endpoint's side of the flow (ingress at the receiving endpoint, egress at the sending one). Replies
 * pass on conntrack and default-deny drops have no rule: those carry no attribution, as in Cilium.
 * Answers are kept for 2 s per (endpoint, direction, peer identity, protocol, port), so a policy change
 * shows within that time and a busy follower costs a map lookup per flow.
 */
export function policyAttribution(trace: PolicyTrace): (r: HubbleFlowRecord) => PolicyFields | undefined {
  const cache = new AnswerCache();
  return (r) => {
    const ev = (r as { event?: FlowEvent }).event;
    if (!ev || ev.isReply || !ev.endpointId || ev.family === 0) return undefined;
    const denied = ev.verdict === 'DROPPED';
    if (denied && ev.dropReason !== 181) return undefined;
    const ingress = ev.direction === 'INGRESS';
    const remote = ingress ? ev.srcIdentity : ev.dstIdentity;
    const port = ev.protocol === 1 || ev.protocol === 58 ? ev.icmpType : ev.dstPort;
    // protocol (8 bits), port or ICMP type (16), direction, verdict
    const kind = ((ev.protocol * 65_536 + port) * 2 + (ingress ? 1 : 0)) * 2 + (denied ? 1 : 0);
    const now = performance.now();
    const hit = cache.get(ev.endpointId, remote, kind);
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
    cache.set(ev.endpointId, remote, kind, { at: now, fields });
    return fields;
  };
}
