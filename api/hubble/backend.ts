import type { Agent } from '../../agent/agent.js';
import { KITNET_VERSION } from '../../agent/agent.js';
import type { HubbleFlowRecord } from '../../agent/flows/hubble.js';
import type { FlowPipeline } from '../../agent/flows/pipeline.js';
import type { PeerNode } from '../../agent/cluster/node-registry.js';
import { policyAttribution, type PolicyFields } from './attribution.js';

/** Flow fields the gRPC API adds to the pipeline's flow: the deciding policy, the interface's name. */
export type FlowExtras = PolicyFields & { interfaceName?: string };

/** What the Hubble services read from the running agent: the same flow pipeline as GET /v1/flows. */
export interface HubbleBackend {
  nodeName: string;
  version: string;
  flows: Pick<FlowPipeline, 'ring' | 'on' | 'off' | 'lostRecord' | 'enrich'>;
  /** Namespaces with workloads or namespace objects, sorted. */
  namespaces(): string[];
  extras?(r: HubbleFlowRecord): FlowExtras | undefined;
  /** Cluster mode: the other nodes (name, node addresses) and their changes. */
  clusterNodes?: {
    list(): readonly ClusterNode[];
    follow(fn: (changed: readonly ClusterNode[], gone: readonly string[]) => void): () => void;
  };
}

/** Another node of the cluster as the Hubble services name it. */
export interface ClusterNode {
  name: string;
  ipv4?: string;
  ipv6?: string;
}

/** Host-side interface names by ifindex, from the workloads; looked up again (at most once a second) for an unknown index. */
function interfaceNames(agent: Agent): (index: number) => string | undefined {
  let names = new Map<number, string>();
  let refreshedAt = -Infinity;
  return (index) => {
    const known = names.get(index);
    if (known !== undefined || performance.now() - refreshedAt < 1000) return known;
    refreshedAt = performance.now();
    names = new Map(agent.workloadList().flatMap((w) => (w.interfaces.host.ifindex ? [[w.interfaces.host.ifindex, w.interfaces.host.name] as const] : [])));
    return names.get(index);
  };
}

/**
 * A flow's extras, one object per (policy answer, interface name): the attribution cache shares its
 * answers between flows, and so does this (the encoder never changes them), where a spread per flow
 * made an object for each.
 */
function extrasShared(): (p: PolicyFields | undefined, interfaceName: string | undefined) => FlowExtras | undefined {
  const byAnswer = new WeakMap<PolicyFields, Map<string, FlowExtras>>();
  const nameOnly = new Map<string, FlowExtras>();
  return (p, interfaceName) => {
    if (!interfaceName) return p;
    if (!p) {
      let e = nameOnly.get(interfaceName);
      if (!e) {
        // names of devices long gone do not pile up
        if (nameOnly.size >= 4096) nameOnly.clear();
        nameOnly.set(interfaceName, (e = { interfaceName }));
      }
      return e;
    }
    let byName = byAnswer.get(p);
    if (!byName) byAnswer.set(p, (byName = new Map()));
    let e = byName.get(interfaceName);
    if (!e) byName.set(interfaceName, (e = { ...p, interfaceName }));
    return e;
  };
}

const clusterNode = (p: PeerNode): ClusterNode => ({ name: p.name, ...(p.ipv4 ? { ipv4: p.ipv4 } : {}), ...(p.ipv6 ? { ipv6: p.ipv6 } : {}) });

export function hubbleBackendOf(agent: Agent, nodeName: string): HubbleBackend {
  const cluster = agent.cluster;
  const policies = policyAttribution((from, to, protocol, port) => agent.policyEngine.trace(from, to, protocol, port).result);
  const ifname = interfaceNames(agent);
  const extrasOf = extrasShared();
  return {
    nodeName,
    version: KITNET_VERSION,
    flows: agent.flows,
    namespaces: () => [...new Set([...agent.workloadList().map((w) => w.namespace), ...agent.namespaceList().map((n) => n.name)])].sort(),
    ...(cluster?.nodePeers && cluster.nodesFollow
      ? { clusterNodes: { list: () => cluster.nodePeers!().map(clusterNode), follow: (fn) => cluster.nodesFollow!((changed, gone) => fn(changed.map(clusterNode), gone)) } }
      : {}),
    extras: (r) => {
      const p = policies(r);
      // the event's ifindex where there is one: reading r.flow would build the JSON flow the encoder avoids
      const index = (r as { event?: { ifindex?: number } }).event?.ifindex ?? r.flow.interface?.index;
      return extrasOf(p, index ? ifname(index) : undefined);
    },
  };
}
