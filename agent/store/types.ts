import type { DeviceMode } from '../../netkit/index.js';

/** What was asked for: written before the kernel is touched. */
export interface WorkloadSpec {
  name: string;
  namespace: string;
  kind: 'netns' | 'vm' | 'tap';
  labels: Record<string, string>;
  /** netns, vm: the namespace path (vm: the VM's namespace); tap: '' (the host namespace). */
  netns: string;
  /**
   * The namespace the workload was registered into, when it was adopted rather than made by kitnet:
   * the path may later name another namespace (a /proc/PID path after the PID is reused, a bind mount
   * replaced), and the workload's device, addresses and identity never follow it there. The cookie
   * decides (SO_NETNS_COOKIE with the boot id: the kernel gives a freed namespace's nsfs inode number
   * to the next namespace made, never its cookie); device and inode tell a replacement fast. Records
   * of releases before the cookie have device and inode only: the first reconcile binds them to the
   * cookie when their device pair proves the namespace, and removes them otherwise. Absent in records
   * of releases before any id (only the host's and the agent's namespaces are refused for those).
   */
  netnsId?: { dev: number; ino: number; cookie?: string; boot?: string };
  /** Requested mode: `auto` resolves at registration and the resolved mode is stored in `mode`. */
  requestedMode: 'auto' | 'veth' | 'netkit';
  interface: string;
  /** Named ports the workload serves, for policies that name ports. */
  ports?: Array<{ name: string; port: number; protocol: 'TCP' | 'UDP' | 'SCTP' }>;
  /** kind vm: the plumbing inside the VM's namespace. */
  vm?: {
    /** The /var/run/netns name when kitnet made the namespace (deleted with the workload); absent = adopted. */
    netnsOwnedName?: string;
    tap: string;
    bridge: string;
    /** The guest NIC's MAC. */
    mac: string;
  };
  /** kind tap: the adopted host device and the guest's MAC. */
  tap?: { device: string; mac: string };
  /** kinds vm and tap: `static` = no DHCP for the guest (absent = dhcp). */
  addressing?: 'static';
}

/** What a workload's row says about its device: a pair mode, or an adopted tap. */
export type WorkloadMode = DeviceMode | 'tap';

export type WorkloadState = 'pending' | 'ready' | 'error';

/** One row: desired state plus what the agent allocated for it. */
export interface WorkloadRecord {
  spec: WorkloadSpec;
  mode: WorkloadMode;
  endpointId: number;
  identity: number;
  ipv4: string;
  ipv6: string;
  hostIfname: string;
  state: WorkloadState;
  /** Last observed kernel facts (ifindex, MACs), refreshed by the reconciler. */
  observed: { hostIfindex: number; hostMac: string; peerIfindex: number; peerMac: string } | null;
  error: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface IdentityRecord {
  id: number;
  labels: string[];
  labelsKey: string;
  references: number;
  createdAt: string;
}

export interface NamespaceRecord {
  name: string;
  labels: Record<string, string>;
  createdAt: string;
  updatedAt: string;
}

export interface PolicyRecord {
  kind: string;
  namespace: string;
  name: string;
  document: Record<string, unknown>;
  createdAt: string;
  updatedAt: string;
}

/** A workload as registration writes it: spec plus what was allocated for it (state starts `pending`). */
export interface NewWorkload {
  spec: WorkloadSpec;
  mode: WorkloadMode;
  endpointId: number;
  identity: number;
  ipv4: string;
  ipv6: string;
  hostIfname: string;
}
