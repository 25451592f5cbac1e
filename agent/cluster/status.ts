import type { Logger } from 'pino';
import type { ClusterStatusOn } from '../../common/schemas/cluster.js';
import type { IdentityRange } from './identity-range.js';
import { SYNCED_PREFIXES, type MeshMarkers, type SyncedPrefix } from './mesh-markers.js';
import { NODES_PREFIX, nodeSummaryParse, type NodeSummary } from './peer-formats.js';
import type { PeerCluster } from './peers.js';
import type { ClusterSession } from './session.js';

/** How long a status read waits for etcd: status must answer while etcd is down. */
const STATUS_DEADLINE_MS = 2000;

export const CLUSTER_MODE_OFF = 'cluster mode off: this host is a single-host kitnet (no `cluster` in its config); see README "Cluster"';

/** What the agent counts for the status (its store and remote ipcache). */
export interface ClusterCounts {
  identities: { local: number; remote: number };
  ipcache: { local: number; remote: number };
}

export interface ClusterStatusSource {
  cluster: { name: string; id: number; endpoints: string[] };
  nodeIP: string;
  range: IdentityRange;
  session: ClusterSession;
  markers: MeshMarkers;
  log: Logger;
}

/**
 * Cluster mode's status: what etcd says now (lease, nodes; each read bounded, so the answer comes
 * while etcd is down, saying so) and what this agent holds.
 */
export async function clusterStatusRead(src: ClusterStatusSource, counts: ClusterCounts, peers: readonly PeerCluster[]): Promise<ClusterStatusOn> {
  const { client } = src.session;
  const deadline = () => ({ deadline: Date.now() + STATUS_DEADLINE_MS });
  let lastError: string | null = null;
  let lease: ClusterStatusOn['lease'] = null;
  const nodes: NodeSummary[] = [];
  try {
    const leaseId = await Promise.race([src.session.nodeLeaseId(), new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no lease granted yet')), STATUS_DEADLINE_MS).unref())]);
    const ttl = await client.leaseClient.leaseTimeToLive({ ID: leaseId }, deadline());
    lease = { id: leaseId, ttlSeconds: Number(ttl.TTL), grantedTtlSeconds: Number(ttl.grantedTTL) };
    const res = await client.getAll().prefix(`${NODES_PREFIX}/${src.cluster.name}/`).options(deadline()).exec();
    for (const kv of res.kvs) {
      const n = nodeSummaryParse(kv.key.toString('utf8'), kv.value.toString('utf8'));
      if ('reason' in n) src.log.debug({ key: kv.key.toString('utf8').slice(0, 200), reason: n.reason }, 'cluster node key not shown in status');
      else nodes.push(n);
    }
  } catch (err) {
    lastError = (err as Error).message;
  }
  const beat = src.markers.lastHeartbeat;
  const synced = src.markers.synced();
  return {
    mode: 'on',
    name: src.cluster.name,
    id: src.cluster.id,
    identityRange: src.range,
    nodeIP: src.nodeIP,
    etcd: { endpoints: src.cluster.endpoints, state: lastError ? 'unreachable' : 'connected', lastError },
    lease,
    heartbeat: beat ? { at: beat.toISOString(), ageSeconds: Math.max(0, Math.round((Date.now() - beat.getTime()) / 1000)) } : null,
    canaries: Object.fromEntries((Object.keys(SYNCED_PREFIXES) as SyncedPrefix[]).map((p) => [SYNCED_PREFIXES[p], synced.get(p) ?? null])),
    nodes: nodes.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    identities: counts.identities,
    ipcache: counts.ipcache,
    peers: await Promise.all(peers.map((p) => p.status())),
  };
}
