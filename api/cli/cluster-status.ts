import type { ClusterStatus } from '../../common/schemas/cluster.js';
import { table } from '../../common/format.js';

const age = (a: { ageSeconds: number } | null) => (a ? `${a.ageSeconds}s ago` : 'never');

/** `kitnet cluster status` as text: the cluster, this node's standing in etcd, nodes, counts, peers. */
export function clusterStatusText(s: ClusterStatus): string {
  if (s.mode === 'off') return s.message;
  const rows: Array<[string, string]> = [
    ['Cluster', `${s.name} (id ${s.id}, identities ${s.identityRange.min}-${s.identityRange.max})`],
    ['Node IP', s.nodeIP],
    ['etcd', `${s.etcd.state} ${s.etcd.endpoints.join(', ')}${s.etcd.lastError ? ` (${s.etcd.lastError})` : ''}`],
    ['Lease', s.lease ? `${s.lease.id} (TTL ${s.lease.ttlSeconds}s of ${s.lease.grantedTtlSeconds}s left)` : 'unknown (etcd does not answer)'],
    ['Heartbeat', `written ${age(s.heartbeat)}`],
    ['Synced', Object.entries(s.canaries).map(([p, at]) => `${p.replace(/^cilium\/state\//, '')} ${at ?? 'not yet'}`).join(', ')],
    ['Identities', `${s.identities.local} local, ${s.identities.remote} remote`],
    ['IP cache', `${s.ipcache.local} local, ${s.ipcache.remote} remote`],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  const out = rows.map(([k, v]) => `${`${k}:`.padEnd(w + 2)}${v}`);
  const nodeRows = (nodes: typeof s.nodes) => nodes.map((n) => [n.name, n.addresses.map((a) => `${a.ip} (${a.type})`).join(' ') || '-', [n.ipv4AllocCIDR, n.ipv6AllocCIDR].filter(Boolean).join(' ') || '-']);
  out.push('', `Nodes (${s.nodes.length}):`);
  if (s.nodes.length) out.push(table(['NAME', 'ADDRESSES', 'POD CIDRS'], nodeRows(s.nodes)));
  out.push('', `Peers (${s.peers.length}):`);
  if (s.peers.length) {
    out.push(
      table(
        ['NAME', 'ID', 'STATE', 'HEARTBEAT', 'IDENTITIES', 'IPCACHE', 'NODES', 'IGNORED', 'ENDPOINTS'],
        s.peers.map((p) => [
          p.name,
          p.id,
          p.state + (p.lastError ? ` (${p.lastError})` : ''),
          age(p.heartbeat),
          p.identities,
          p.ipcacheEntries,
          p.nodes.length,
          `${p.ignored.identities}/${p.ignored.ipcache}/${p.ignored.nodes}`,
          p.endpoints.join(','),
        ]),
      ),
    );
  }
  return out.join('\n');
}
