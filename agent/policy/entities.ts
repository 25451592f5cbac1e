/**
 * Cilium's entities (pkg/policy/api/entity.go) in terms of identities:
 * - all: every identity (the wildcard, identity 0 in the policy map)
 * - world: reserved world, world-ipv4, world-ipv6 and every CIDR identity (they carry reserved:world);
 *   world-ipv4 / world-ipv6: the family's reserved identity and CIDR identities of that family
 * - cluster: every label-derived identity plus host, remote-node, init, ingress, health, unmanaged,
 *   kube-apiserver (upstream selects them by the cluster-name label; kitnet has one cluster)
 * - host, remote-node, init, health, unmanaged, kube-apiserver, ingress: that reserved identity
 * - none: nothing
 */
import { IDENTITY_MIN, LOCAL_IDENTITY_FLAG, ReservedIdentity } from '../identity/reserved.js';
import type { EntityName } from './types.js';

export const ENTITY_NAMES = [
  'all',
  'world',
  'world-ipv4',
  'world-ipv6',
  'cluster',
  'host',
  'remote-node',
  'init',
  'health',
  'unmanaged',
  'kube-apiserver',
  'ingress',
  'none',
] as const satisfies readonly EntityName[];

export const CLUSTER_RESERVED: readonly number[] = [
  ReservedIdentity.host,
  ReservedIdentity['remote-node'],
  ReservedIdentity.init,
  ReservedIdentity.ingress,
  ReservedIdentity.health,
  ReservedIdentity.unmanaged,
  ReservedIdentity['kube-apiserver'],
];

/** Cilium's global identities: this host's (256-65535) and a cluster's (id<<16 ...), below the node-local bit. */
export function isLabelDerived(id: number): boolean {
  return id >= IDENTITY_MIN && id < LOCAL_IDENTITY_FLAG;
}
