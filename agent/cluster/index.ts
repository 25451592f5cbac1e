import { networkInterfaces } from 'node:os';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { EtcdTlsPrepared } from '../config-preflight.js';
import { ClusterIdentities } from './cluster-identities.js';
import { etcdClientCreate, etcdTlsExplain } from './etcd-client.js';
import { ClusterIdentityAllocator } from './identity-allocator.js';
import { IDENTITY_GC_INTERVAL_MS, IdentityGc } from './identity-gc.js';
import { clusterIdentityRange } from './identity-range.js';
import { ClusterSession } from './session.js';

import { IpcachePublisher } from './ipcache-publisher.js';
import { IpcacheWatcher, peerNodeBinding, remoteIdentityLabels } from './ipcache-watcher.js';
import { cidrParse, type Cidr } from '../ipam.js';
import { hostAddressesRecent, type HostAddressTest } from './host-addresses.js';
import { SharedNamespaces, type NamespaceHost } from './shared-namespaces.js';
import { SharedPolicies, type PolicyHost } from './shared-policy.js';
import { nodeJoin, type NodeMembership } from './node-join.js';
import type { NodeSink, PeerNode } from './node-registry.js';
import type { ClusterStatusOn } from '../../common/schemas/cluster.js';
import { MeshMarkers, type SyncedPrefix } from './mesh-markers.js';
import { PeerCluster, type PeerContext } from './peers.js';
import { clusterStatusRead, type ClusterCounts } from './status.js';

export { ClusterIdentities } from './cluster-identities.js';
export { IpcachePublisher } from './ipcache-publisher.js';
export { IpcacheWatcher } from './ipcache-watcher.js';
export { RemoteIpcache } from './remote-ipcache.js';
export { SharedNamespaces } from './shared-namespaces.js';
export { SharedPolicies, sharedMetricsRegister } from './shared-policy.js';

/** What the agent's services use in cluster mode. */
export interface ClusterServices {
  identities: ClusterIdentities;
  ipcache: IpcachePublisher;
  /**
   * A follower of other nodes' ipcache entries, which judges them against this host's pools (this
   * node's CIDRs), the cluster's pools, this host's addresses and the CIDRs of the node each names.
   */
  ipcacheWatcher(localPools: readonly Cidr[]): IpcacheWatcher;
  /** The cluster's pools (ipam.ipv4Pool / ipv6Pool as configured), which node CIDRs are carved from. */
  pools: readonly Cidr[];
  /** This host's own addresses (interfaces and node addresses), canonical, fresh within a second. */
  hostAddresses: () => HostAddressTest;
  /** The labels of a cluster identity from its `id/<n>` key, or why they are refused. */
  identityLabels(id: number): Promise<string[] | { reason: string } | undefined>;
  /** Policies and namespace labels shared through etcd, applied on this host through the hosts given. */
  shared?(hosts: { policies: PolicyHost; namespaces: NamespaceHost }): { policies: SharedPolicies; namespaces: SharedNamespaces };
  /** The ClusterMesh sync canary of a prefix: this node's share of it is in etcd. */
  markSynced(prefix: SyncedPrefix): Promise<void>;
  /** The configured peer clusters (cluster.peers), not started yet. */
  peersCreate(ctx: PeerContext): PeerCluster[];
  status(counts: ClusterCounts, peers: readonly PeerCluster[]): Promise<ClusterStatusOn>;
  /** This host's address in the cluster. */
  nodeIP: string;
  /** The cluster's other nodes (node-registry.ts), and a way to hear of their changes; returns the unsubscribe. */
  nodePeers?(): PeerNode[];
  nodesFollow?(fn: NodeSink['apply']): () => void;
}

/** This host's address in the cluster when cluster.nodeIP is not set: its first global IPv4, else IPv6. */
export function nodeIpDefault(ifaces = networkInterfaces()): string | undefined {
  const all = Object.values(ifaces).flatMap((l) => l ?? []).filter((a) => !a.internal);
  return all.find((a) => a.family === 'IPv4')?.address ?? all.find((a) => a.family === 'IPv6' && !a.address.toLowerCase().startsWith('fe80:'))?.address;
}

export interface ClusterMode extends ClusterServices, Omit<NodeMembership, 'close'> {
  /** Stops the keepalives; this node's keys expire with its lease (a restart takes them again). */
  close(): Promise<void>;
}

/** Connects to the cluster's etcd and opens this node's session (leases). */
export async function clusterOpen(
  cluster: NonNullable<Config['cluster']>,
  tls: EtcdTlsPrepared | undefined,
  log: Logger,
  host: Pick<Config, 'nodeName' | 'ipam'>,
  peerTls: ReadonlyMap<string, EtcdTlsPrepared> = new Map(),
): Promise<ClusterMode> {
  const nodeIP = cluster.nodeIP ?? nodeIpDefault();
  if (!nodeIP) throw new Error('cluster.nodeIP: this host has no global address to be known by in the cluster; set cluster.nodeIP');
  const client = etcdClientCreate(cluster.etcd, tls);
  let session: ClusterSession;
  try {
    session = await ClusterSession.open(client, log.child({ component: 'cluster' }), cluster.leaseTTLSeconds);
  } catch (err) {
    client.close();
    const tlsProblem = etcdTlsExplain(err, cluster.etcd);
    throw new Error(tlsProblem ?? `cluster.etcd: cannot open a session with etcd at ${cluster.etcd.endpoints.join(', ')}: ${(err as Error).message}`, { cause: err });
  }
  // This node's CIDRs, entry and routes (node-join.ts).
  const node = await nodeJoin(session, cluster, host, nodeIP, log).catch(async (err: unknown) => {
    await session.close();
    throw err;
  });
  const range = clusterIdentityRange(cluster.id);
  const allocator = new ClusterIdentityAllocator(session, { range, nodeSuffix: nodeIP, log: log.child({ component: 'cluster-identity' }) });
  log.info({ cluster: cluster.name, clusterId: cluster.id, nodeIP, identityRange: `${range.min}-${range.max}` }, 'cluster mode: identities shared through etcd');
  const gcLog = log.child({ component: 'cluster-identity-gc' });
  const gc = new IdentityGc(session, range, gcLog);
  const markers = new MeshMarkers(session, { name: cluster.name, id: cluster.id, heartbeatMs: cluster.heartbeatSeconds * 1000 }, log.child({ component: 'cluster-mesh' }));
  try {
    await markers.start();
    // nodeJoin wrote this node's entry: its share of the nodes prefix is in etcd.
    await markers.markSynced('nodes');
  } catch (err) {
    markers.close();
    await node.close();
    await session.close();
    throw new Error(`cluster.etcd: cannot write the ClusterMesh keys (cilium/cluster-config, cilium/.heartbeat): ${(err as Error).message}`, { cause: err });
  }
  const ipcache = new IpcachePublisher(session, nodeIP, log.child({ component: 'cluster-ipcache' }));
  const pools = [cidrParse(host.ipam.ipv4Pool), cidrParse(host.ipam.ipv6Pool)];
  const hostAddresses = hostAddressesRecent([nodeIP, ...(cluster.nodeIPv6 ? [cluster.nodeIPv6] : [])]);
  const gcTimer = setInterval(() => void gc.round().catch((err: unknown) => gcLog.warn({ err }, 'identity garbage collection round failed; next round retries')), IDENTITY_GC_INTERVAL_MS).unref();
  return {
    identities: new ClusterIdentities(allocator, cluster.name, range, log.child({ component: 'cluster-identity' })),
    ipcache,
    ipcacheWatcher: (localPools) =>
      new IpcacheWatcher(session, { nodeIP, range, localPools, clusterPools: pools, hostAddresses, nodes: () => node.nodes.peers().map(peerNodeBinding), nodesChanged: (fn) => node.nodes.subscribe(() => fn()) }, log.child({ component: 'cluster-ipcache-watch' })),
    pools,
    hostAddresses,
    identityLabels: (id) => remoteIdentityLabels(session, id, cluster.name),
    shared: (hosts) => ({
      policies: new SharedPolicies(session.client, hosts.policies, log.child({ component: 'cluster-policy' })),
      namespaces: new SharedNamespaces(session.client, hosts.namespaces, log.child({ component: 'cluster-namespace' })),
    }),
    markSynced: (prefix) => markers.markSynced(prefix),
    peersCreate: (ctx) => cluster.peers.map((p) => new PeerCluster(p, peerTls.get(p.name), ctx, log.child({ component: 'cluster-peer', peer: p.name }))),
    status: (counts, peers) =>
      clusterStatusRead({ cluster: { name: cluster.name, id: cluster.id, endpoints: cluster.etcd.endpoints }, nodeIP, range, session, markers, log }, counts, peers),
    nodeIP,
    nodePeers: () => node.nodes.peers(),
    nodesFollow: (fn) => node.nodes.subscribe(fn),
    ipam: node.ipam,
    nodes: node.nodes,
    routes: node.routes,
    metricsRegister: node.metricsRegister,
    close: async () => {
      clearInterval(gcTimer);
      ipcache.close();
      markers.close();
      await node.close();
      await session.close();
    },
  };
}
