/** Cilium's reserved identities (pkg/identity/numericidentity.go); the numbers are ABI. */
export const ReservedIdentity = {
  unknown: 0,
  host: 1,
  world: 2,
  unmanaged: 3,
  health: 4,
  init: 5,
  'remote-node': 6,
  'kube-apiserver': 7,
  ingress: 8,
  'world-ipv4': 9,
  'world-ipv6': 10,
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
