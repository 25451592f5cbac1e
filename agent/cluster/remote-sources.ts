import type { Logger } from 'pino';
import type { ClusterStatus } from '../../common/schemas/cluster.js';
import type { Config } from '../config.js';
import { cidrParse } from '../ipam.js';
import type { KernelOps } from '../kernel-ops.js';
import type { PolicyEngine } from '../policy/engine.js';
import type { Store } from '../store/store.js';
import { inRange, type IdentityRange } from './identity-range.js';
import type { ClusterServices } from './index.js';
import type { IpcacheWatcher } from './ipcache-watcher.js';
import type { PeerCluster } from './peers.js';
import { IpcacheOwners, RemoteIpcache, type RemoteIpcacheTarget } from './remote-ipcache.js';
import { CLUSTER_MODE_OFF } from './status.js';

/**
 * Where this host's remote ipcache entries come from in cluster mode: the cluster's other nodes (the
 * ipcache watch) and each peer cluster (read-only). Each source adopts only the pinned entries of its
 * own identity range, so a restart does not drop another source's. They share the BPF ipcache through
 * one IpcacheOwners: an address has one holder (this cluster's entry before a peer's, else the first).
 */
export interface RemoteSources {
  ipcache: RemoteIpcache;
  watcher: IpcacheWatcher;
  peers: PeerCluster[];
}

export function remoteSourcesCreate(ctx: {
  cluster: ClusterServices;
  config: Config;
  store: Store;
  kernel: KernelOps;
  policyEngine: PolicyEngine;
  exclusive: RemoteIpcacheTarget['exclusive'];
  log: Logger;
}): RemoteSources {
  const { cluster, config, policyEngine } = ctx;
  const dp = ctx.kernel.datapath;
  // One BPF ipcache for every source: one holder per address (this cluster's before a peer's).
  const owners = new IpcacheOwners();
  const target = (identityLabels: RemoteIpcacheTarget['identityLabels'], range: IdentityRange, name: string, rank = 1): RemoteIpcacheTarget => ({
    exclusive: ctx.exclusive,
    owners: { table: owners, rank, name },
    local: () => policyEngine.ipcacheLocal(),
    ipcacheUpsert: (cidr, entry) => dp.ipcacheUpsert(cidr, entry),
    ipcacheDelete: (cidr) => dp.ipcacheDelete(cidr),
    ipcacheRemoteList: () => dp.ipcacheList().flatMap(([cidr, e]) => (e.hostId !== 0 && !cidr.startsWith('ipblock:') && inRange(range, e.identity) ? [[cidr, e.identity, e.hostId] as [string, number, number]] : [])),
    identityLabels,
    remoteIdentitiesUpdate: (changes) => policyEngine.remoteIdentitiesUpdate(changes),
  });
  const ipcache = new RemoteIpcache(target((id) => cluster.identityLabels(id), cluster.identities.range, 'this cluster', 0), ctx.log.child({ component: 'cluster-ipcache-watch' }));
  const localPools = [cidrParse(config.ipam.ipv4Pool), cidrParse(config.ipam.ipv6Pool)];
  const peers = cluster.peersCreate({ nodeIP: cluster.nodeIP, clusterPools: cluster.pools, hostAddresses: cluster.hostAddresses, target });
  policyEngine.remoteAddressResolve = (ip) => ipcache.identityOf(ip) ?? peers.map((p) => p.ipcache.identityOf(ip)).find((id) => id !== undefined);
  return { ipcache, watcher: cluster.ipcacheWatcher(localPools), peers };
}

/** A remote identity's labels from whichever source has it (the flow directory names remote peers with them). */
export function remoteLabelsOf(remote: RemoteSources, id: number): string[] | undefined {
  return remote.ipcache.labelsOf(id) ?? remote.peers.map((p) => p.ipcache.labelsOf(id)).find((l) => l !== undefined);
}

/**
 * Pinned remote entries of no range followed any more (a peer removed from the config): nobody
 * adopts them, so they go before the first lists.
 */
export function remoteOrphansDrop(cluster: ClusterServices, remote: RemoteSources, kernel: KernelOps, log: Logger): void {
  const ranges = [cluster.identities.range, ...remote.peers.map((p) => p.range)];
  const dp = kernel.datapath;
  for (const [cidr, e] of dp.ipcacheList()) {
    if (e.hostId === 0 || cidr.startsWith('ipblock:') || ranges.some((r) => inRange(r, e.identity))) continue;
    dp.ipcacheDelete(cidr);
    log.info({ cidr, identity: e.identity }, 'remote ipcache entry of a cluster no longer followed removed');
  }
}

/** Remote ipcache entries (this cluster's other nodes and the peers) and values ignored, for metrics. */
export function remoteCounts(remote: RemoteSources): { remote: number; ignored: number } {
  let count = remote.ipcache.size();
  let ignored = remote.watcher.ignored + remote.ipcache.identitiesIgnored;
  for (const p of remote.peers) {
    const c = p.counts();
    count += c.remote;
    ignored += c.ignored;
  }
  return { remote: count, ignored };
}

/** GET /v1/cluster: cluster mode's state, or that it is off. */
export async function clusterStatusOf(cluster: ClusterServices | undefined, remote: RemoteSources | undefined, store: Store): Promise<ClusterStatus> {
  if (!cluster || !remote) return { mode: 'off', message: CLUSTER_MODE_OFF };
  const range = cluster.identities.range;
  const records = store.workloadList();
  return cluster.status(
    {
      identities: { local: store.identityList().filter((i) => inRange(range, i.id)).length, remote: remote.ipcache.identityCount() + remote.peers.reduce((n, p) => n + p.ipcache.identityCount(), 0) },
      ipcache: { local: records.reduce((n, w) => n + (w.ipv4 ? 1 : 0) + (w.ipv6 ? 1 : 0), 0), remote: remoteCounts(remote).remote },
    },
    remote.peers,
  );
}
