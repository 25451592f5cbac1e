import type { ClusterNode } from './backend.js';

/**
 * Where another node's Hubble server listens: its node address with this node's TCP port (one
 * `hubble.listen` port across the cluster, as Cilium's 4244 on every node). undefined where this node
 * has no TCP listener (the port is then unknown) or the node has no address.
 */
export function peerAddress(node: ClusterNode, ownAddress: string): string | undefined {
  if (ownAddress.startsWith('unix://')) return undefined;
  const port = ownAddress.slice(ownAddress.lastIndexOf(':') + 1);
  if (!/^\d+$/.test(port)) return undefined;
  if (node.ipv4) return `${node.ipv4}:${port}`;
  if (node.ipv6) return `[${node.ipv6}]:${port}`;
  return undefined;
}
