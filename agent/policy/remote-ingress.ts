/**
 * The ingress verdict of an endpoint that is not on this host, for a sender of this host: what another
 * node of this cluster decides for a packet from `from` to its workload of identity `identity`. The
 * nodes of one kitnet cluster share their policies (agent/cluster/shared-policy.ts) and identities,
 * so the class that identity's endpoints compile to there is compiled here from the same policies and
 * judged with the datapath's lookups (trace.ts). For the DNS proxy (agent/dns/steering.ts), which
 * must not carry a workload's query, as the host, to a resolver that would not admit the workload.
 *
 * What this host does not know counts against the sender, never for it: the remote endpoint's named
 * ports (an ingress rule naming a port admits nothing here) and other workloads' addresses (a
 * NetworkPolicy ipBlock selects a whole identity only by the addresses known here; the sender's own
 * address is judged per address, as the datapath does).
 */
import { IDENTITY_RANGE_IPBLOCK_FLAG } from '../../bpf/layout.gen.js';
import { CLUSTER_LABEL } from '../../common/labels.js';
import { classCompile, type ClassContext } from './compile.js';
import { identityLabelParse } from './selector.js';
import { ipBlockDecide, policyDecide, type TraceSide } from './trace.js';
import { Universe } from './universe.js';
import type { CompiledPolicy, EndpointPolicy, ParsedPolicy } from './types.js';

interface PerState {
  policies: readonly ParsedPolicy[];
  ctx: ClassContext;
  /** Per identity: its class's entries, in a state of their own (trace.ts keys its lookup tables by state and endpoint id). */
  classes: Map<number, { state: CompiledPolicy; policy: EndpointPolicy }>;
}

const perState = new WeakMap<CompiledPolicy, PerState>();

/** The endpoint id the compiled class carries: in a state of its own, it meets no local endpoint's table. */
const REMOTE_ENDPOINT_ID = 0;

/**
 * The ingress side for a packet from `from` (a local workload's identity and the address it sends
 * from) to an endpoint of `identity` on another node of this cluster (`localCluster`); undefined when
 * the identity is unknown here or not this cluster's (a peer cluster's policies are not this one's).
 */
export function remoteIngressDecide(
  state: CompiledPolicy,
  policies: readonly ParsedPolicy[],
  localCluster: string | undefined,
  identity: number,
  from: { identity: number; address: string },
  protocol: number,
  port: number,
): TraceSide | undefined {
  const labels = state.identities.get(identity);
  if (!labels || localCluster === undefined || !labels.map(identityLabelParse).some((l) => l.key === CLUSTER_LABEL && l.value === localCluster)) return undefined;
  let s = perState.get(state);
  if (!s || s.policies !== policies) {
    // The ipBlock view's identities are named in `identities` but never selected by labels (universe.ts).
    const identities = new Map([...state.identities].filter(([id]) => (id & IDENTITY_RANGE_IPBLOCK_FLAG) === 0));
    const u = new Universe(identities, state.cidrIdentities, state.ipBlocks, localCluster);
    const ctx: ClassContext = { u, rules: policies.flatMap((p) => p.rules), remoteNamed: () => [], remoteNamedIds: () => [], allowLocalhost: true };
    perState.set(state, (s = { policies, ctx, classes: new Map() }));
  }
  let c = s.classes.get(identity);
  if (!c) {
    const policy = classCompile(s.ctx, { endpointId: REMOTE_ENDPOINT_ID, identity, namedPorts: [], addresses: [] }).policy;
    s.classes.set(identity, (c = { state: { ...state, endpoints: [policy] }, policy }));
  }
  return ipBlockDecide(c.state, policyDecide(c.state, c.policy, 'ingress', from.identity, protocol, port), from.address, protocol, port);
}
