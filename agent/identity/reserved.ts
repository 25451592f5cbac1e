import * as L from '../../bpf/layout.gen.js';

/**
 * Cilium's reserved identities (pkg/identity/numericidentity.go), by their label names. The numbers
 * are ABI and come from the one generated list the datapath is compiled against.
 */
export const ReservedIdentity = {
  unknown: L.IDENTITY_UNKNOWN,
  host: L.IDENTITY_HOST,
  world: L.IDENTITY_WORLD,
  unmanaged: L.IDENTITY_UNMANAGED,
  health: L.IDENTITY_HEALTH,
  init: L.IDENTITY_INIT,
  'remote-node': L.IDENTITY_REMOTE_NODE,
  'kube-apiserver': L.IDENTITY_KUBE_APISERVER,
  ingress: L.IDENTITY_INGRESS,
  'world-ipv4': L.IDENTITY_WORLD_IPV4,
  'world-ipv6': L.IDENTITY_WORLD_IPV6,
} as const;

export type ReservedIdentityName = keyof typeof ReservedIdentity;

/** Label-derived, cluster-local identities. */
export const IDENTITY_MIN = 256;
export const IDENTITY_MAX = 65535;
/** CIDR identities are node-local and flagged with this bit. */
export const LOCAL_IDENTITY_FLAG = 1 << 24;

const byNumber = new Map<number, string>(Object.entries(ReservedIdentity).map(([k, v]) => [v, k]));

export function reservedIdentityName(id: number): string | undefined {
  return byNumber.get(id);
}

/** Labels of a reserved identity, as Hubble prints them (`reserved:world`). */
export function reservedIdentityLabels(id: number): string[] {
  const name = byNumber.get(id);
  return name ? [`reserved:${name}`] : [];
}
