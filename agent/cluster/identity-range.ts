/**
 * The identity numbers a cluster allocates from (Cilium pkg/identity/numericidentity.go): cluster id N
 * owns N<<16 ... ((N+1)<<16)-1, so clusters in one ClusterMesh never collide. Reserved identities
 * (1-10) and node-local ones (bit 24) are never in etcd.
 */
export interface IdentityRange {
  min: number;
  max: number;
}

export const CLUSTER_ID_SHIFT = 16;

export function clusterIdentityRange(clusterId: number): IdentityRange {
  if (!Number.isInteger(clusterId) || clusterId < 1 || clusterId > 255) throw new RangeError(`cluster id ${clusterId} is not in 1-255`);
  return { min: clusterId << CLUSTER_ID_SHIFT, max: ((clusterId + 1) << CLUSTER_ID_SHIFT) - 1 };
}

export function inRange(range: IdentityRange, id: number): boolean {
  return Number.isInteger(id) && id >= range.min && id <= range.max;
}
