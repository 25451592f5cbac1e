import { networkInterfaces } from 'node:os';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { EtcdTlsPrepared } from '../config-preflight.js';
import { ClusterIdentities } from './cluster-identities.js';
import { etcdClientCreate } from './etcd-client.js';
import { ClusterIdentityAllocator } from './identity-allocator.js';
import { IDENTITY_GC_INTERVAL_MS, IdentityGc } from './identity-gc.js';
import { clusterIdentityRange } from './identity-range.js';
import { ClusterSession } from './session.js';

import { IpcachePublisher } from './ipcache-publisher.js';
import { IpcacheWatcher, remoteIdentityLabels } from './ipcache-watcher.js';
import { cidrParse, type Cidr } from '../ipam.js';
import type { Registry } from 'prom-client';
import { rtnlHost } from '../../netkit/socket.js';
import { nodeCidrClaim } from './node-cidr.js';
import { nodeMetricsRegister } from './node-metrics.js';
import { NodeRegistry, nodeNameProblem, type NodeSink } from './node-registry.js';
import { NodeRoutes } from './node-routes.js';

export { ClusterIdentities } from './cluster-identities.js';
export { IpcachePublisher } from './ipcache-publisher.js';
export { IpcacheWatcher } from './ipcache-watcher.js';
export { RemoteIpcache } from './remote-ipcache.js';

/** What the agent's services use in cluster mode. */
export interface ClusterServices {
  identities: ClusterIdentities;
  ipcache: IpcachePublisher;
  /** A follower of other nodes' ipcache entries, which judges them against this host's pools. */
  ipcacheWatcher(localPools: readonly Cidr[]): IpcacheWatcher;
  /** The labels of a cluster identity from its `id/<n>` key. */
  identityLabels(id: number): Promise<string[] | undefined>;
}

/** This host's address in the cluster when cluster.nodeIP is not set: its first global IPv4, else IPv6. */
export function nodeIpDefault(ifaces = networkInterfaces()): string | undefined {
  const all = Object.values(ifaces).flatMap((l) => l ?? []).filter((a) => !a.internal);
  return all.find((a) => a.family === 'IPv4')?.address ?? all.find((a) => a.family === 'IPv6' && !a.address.toLowerCase().startsWith('fe80:'))?.address;
}

/** A global IPv6 address of the interface that carries `nodeIP` (the default of cluster.nodeIPv6). */
export function nodeIpv6Default(nodeIP: string, ifaces = networkInterfaces()): string | undefined {
  const iface = Object.values(ifaces).find((l) => l?.some((a) => a.address === nodeIP));
  return iface?.find((a) => a.family === 'IPv6' && !a.internal && !a.address.toLowerCase().startsWith('fe80:'))?.address;
}

export interface ClusterMode extends ClusterServices {
  nodeIP: string;
  /** This node's allocation CIDRs in the cluster pools: the local IPAM's pools in cluster mode. */
  ipam: { ipv4Pool: string; ipv6Pool: string };
  nodes: NodeRegistry;
  routes: NodeRoutes | undefined;
  metricsRegister(registry: Registry): void;
  /** Stops the keepalives; this node's keys expire with its lease (a restart takes them again). */
  close(): Promise<void>;
}

/** Connects to the cluster's etcd and opens this node's session (leases). */
export async function clusterOpen(
  cluster: NonNullable<Config['cluster']>,
  tls: EtcdTlsPrepared | undefined,
  log: Logger,
  host: Pick<Config, 'nodeName' | 'ipam'>,
): Promise<ClusterMode> {
  const nodeIP = cluster.nodeIP ?? nodeIpDefault();
  if (!nodeIP) throw new Error('cluster.nodeIP: this host has no global address to be known by in the cluster; set cluster.nodeIP');
  const nameProblem = nodeNameProblem(host.nodeName);
  if (nameProblem) throw new Error(`nodeName: ${nameProblem} (in cluster mode it is the node's key in etcd)`);
  const nodeIPv6 = cluster.nodeIPv6 ?? (nodeIP.includes(':') ? undefined : nodeIpv6Default(nodeIP));
  const client = etcdClientCreate(cluster.etcd, tls);
  let session: ClusterSession;
  try {
    session = await ClusterSession.open(client, log.child({ component: 'cluster' }), cluster.leaseTTLSeconds);
  } catch (err) {
    client.close();
    throw new Error(`cluster.etcd: cannot open a session with etcd at ${cluster.etcd.endpoints.join(', ')}: ${(err as Error).message}`, { cause: err });
  }
  const nodesLog = log.child({ component: 'cluster-nodes' });
  let nodes: NodeRegistry;
  let routes: NodeRoutes | undefined;
  let ipam: ClusterMode['ipam'];
  try {
    const pools = { 4: cidrParse(host.ipam.ipv4Pool), 6: cidrParse(host.ipam.ipv6Pool) } as const;
    const claim = (family: 4 | 6) =>
      nodeCidrClaim(session, { cluster: cluster.name, nodeName: host.nodeName, pool: pools[family], maskSize: family === 4 ? cluster.ipam.ipv4MaskSize : cluster.ipam.ipv6MaskSize, poolKey: `ipam.ipv${family}Pool` }, nodesLog);
    const self = { name: host.nodeName, cluster: cluster.name, clusterId: cluster.id, addresses: [nodeIP, ...(nodeIPv6 && nodeIPv6 !== nodeIP ? [nodeIPv6] : [])], ipv4Cidr: pools[4], ipv6Cidr: pools[6] };
    nodes = new NodeRegistry(session, { self, pools }, nodesLog);
    // Before the claims: a second host under this name would take this node's CIDRs.
    await nodes.nameCheck();
    self.ipv4Cidr = await claim(4);
    self.ipv6Cidr = await claim(6);
    ipam = { ipv4Pool: self.ipv4Cidr.text, ipv6Pool: self.ipv6Cidr.text };
    routes = cluster.autoDirectNodeRoutes ? new NodeRoutes(rtnlHost(), log.child({ component: 'cluster-routes' })) : undefined;
    const sink: NodeSink = routes ?? { apply: () => undefined };
    await nodes.start(sink);
    log.info({ node: host.nodeName, addresses: self.addresses, ipv4Cidr: ipam.ipv4Pool, ipv6Cidr: ipam.ipv6Pool, leaseTTLSeconds: cluster.leaseTTLSeconds, routes: !!routes }, 'cluster node registered; workloads get addresses from its CIDRs');
  } catch (err) {
    await session.close();
    throw err;
  }
  const range = clusterIdentityRange(cluster.id);
  const allocator = new ClusterIdentityAllocator(session, { range, nodeSuffix: nodeIP, log: log.child({ component: 'cluster-identity' }) });
  log.info({ cluster: cluster.name, clusterId: cluster.id, nodeIP, identityRange: `${range.min}-${range.max}` }, 'cluster mode: identities shared through etcd');
  const gcLog = log.child({ component: 'cluster-identity-gc' });
  const gc = new IdentityGc(session, range, gcLog);
  const gcTimer = setInterval(() => void gc.round().catch((err: unknown) => gcLog.warn({ err }, 'identity garbage collection round failed; next round retries')), IDENTITY_GC_INTERVAL_MS).unref();
  return {
    identities: new ClusterIdentities(allocator, cluster.name, range, log.child({ component: 'cluster-identity' })),
    ipcache: new IpcachePublisher(session, nodeIP, log.child({ component: 'cluster-ipcache' })),
    ipcacheWatcher: (localPools) => new IpcacheWatcher(session, { nodeIP, range, localPools }, log.child({ component: 'cluster-ipcache-watch' })),
    identityLabels: (id) => remoteIdentityLabels(session, id),
    nodeIP,
    ipam,
    nodes,
    routes,
    metricsRegister: (registry) => nodeMetricsRegister(registry, nodes, routes),
    close: async () => {
      clearInterval(gcTimer);
      await routes?.close();
      await nodes.close();
      await session.close();
    },
  };
}
