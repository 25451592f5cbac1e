import { networkInterfaces } from 'node:os';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Config } from '../config.js';
import { cidrParse } from '../ipam.js';
import { rtnlHost } from '../../netkit/socket.js';
import { nodeCidrClaim } from './node-cidr.js';
import { nodeMetricsRegister } from './node-metrics.js';
import { NodeRegistry, nodeNameProblem, type NodeSink } from './node-registry.js';
import { NodeRoutes } from './node-routes.js';
import type { ClusterSession } from './session.js';

/** A global IPv6 address of the interface that carries `nodeIP` (the default of cluster.nodeIPv6). */
export function nodeIpv6Default(nodeIP: string, ifaces = networkInterfaces()): string | undefined {
  const iface = Object.values(ifaces).find((l) => l?.some((a) => a.address === nodeIP));
  return iface?.find((a) => a.family === 'IPv6' && !a.internal && !a.address.toLowerCase().startsWith('fe80:'))?.address;
}

/** This host as a node of the cluster: its CIDRs, its entry and the other nodes, its routes to them. */
export interface NodeMembership {
  /** This node's allocation CIDRs in the cluster pools: the local IPAM's pools in cluster mode. */
  ipam: { ipv4Pool: string; ipv6Pool: string };
  nodes: NodeRegistry;
  routes: NodeRoutes | undefined;
  metricsRegister(registry: Registry): void;
  /** Stops following; deletes this node's entry (the routes stay for the next start). */
  close(): Promise<void>;
}

/**
 * Joins the cluster as a node: refuses a node name another live host holds, claims this node's IPv4
 * and IPv6 CIDRs, writes its entry and starts following the others (and routing to them).
 */
export async function nodeJoin(
  session: ClusterSession,
  cluster: NonNullable<Config['cluster']>,
  host: Pick<Config, 'nodeName' | 'ipam'>,
  nodeIP: string,
  log: Logger,
): Promise<NodeMembership> {
  const nameProblem = nodeNameProblem(host.nodeName);
  if (nameProblem) throw new Error(`nodeName: ${nameProblem} (in cluster mode it is the node's key in etcd)`);
  const nodeIPv6 = cluster.nodeIPv6 ?? (nodeIP.includes(':') ? undefined : nodeIpv6Default(nodeIP));
  const nodesLog = log.child({ component: 'cluster-nodes' });
  const pools = { 4: cidrParse(host.ipam.ipv4Pool), 6: cidrParse(host.ipam.ipv6Pool) } as const;
  const claim = (family: 4 | 6) =>
    nodeCidrClaim(session, { cluster: cluster.name, nodeName: host.nodeName, pool: pools[family], maskSize: family === 4 ? cluster.ipam.ipv4MaskSize : cluster.ipam.ipv6MaskSize, poolKey: `ipam.ipv${family}Pool` }, nodesLog);
  const self = { name: host.nodeName, cluster: cluster.name, clusterId: cluster.id, addresses: [nodeIP, ...(nodeIPv6 && nodeIPv6 !== nodeIP ? [nodeIPv6] : [])], ipv4Cidr: pools[4], ipv6Cidr: pools[6] };
  const nodes = new NodeRegistry(session, { self, pools }, nodesLog);
  // Before the claims: a second host under this name would take this node's CIDRs.
  await nodes.nameCheck();
  self.ipv4Cidr = await claim(4);
  self.ipv6Cidr = await claim(6);
  const ipam = { ipv4Pool: self.ipv4Cidr.text, ipv6Pool: self.ipv6Cidr.text };
  const routes = cluster.autoDirectNodeRoutes ? new NodeRoutes(rtnlHost(), log.child({ component: 'cluster-routes' })) : undefined;
  const sink: NodeSink = routes ?? { apply: () => undefined };
  await nodes.start(sink);
  log.info({ node: host.nodeName, addresses: self.addresses, ipv4Cidr: ipam.ipv4Pool, ipv6Cidr: ipam.ipv6Pool, leaseTTLSeconds: cluster.leaseTTLSeconds, routes: !!routes }, 'cluster node registered; workloads get addresses from its CIDRs');
  return {
    ipam,
    nodes,
    routes,
    metricsRegister: (registry) => nodeMetricsRegister(registry, nodes, routes),
    close: async () => {
      await routes?.close();
      await nodes.close();
    },
  };
}
