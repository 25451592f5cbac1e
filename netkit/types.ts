// The types agent/ codes against (re-exported by index.ts).
export type DeviceMode = 'netkit' | 'netkit-l2' | 'veth';

/**
 * Gateway addresses the workload routes through; the host side of each pair answers for them. The
 * datapath's ARP / neighbour responder has its own copy (tools/gen/bpf-layout.ts, GATEWAY_IPV4/6):
 * netkit/ does not import bpf/, and test/unit/layering.test.ts checks that the two agree.
 */
export const GATEWAY_V4 = '169.254.1.1';
export const GATEWAY_V6 = 'fe80::1';

/** Every link kitnet creates carries an IFLA_IFALIAS starting with this. */
export const KITNET_ALIAS_PREFIX = 'kitnet:';

export interface KernelFeatures {
  kernelRelease: string;
  /** Real create-and-delete probe of a netkit pair. */
  netkit: boolean;
  netkitDetail: string;
  tcx: boolean;
  /** How tcx was decided (BPF_TCX_INGRESS in the kernel's BTF, or the kernel version). */
  tcxDetail?: string;
  tcClsact: boolean;
  tcClsactDetail?: string;
}

export interface EndpointDeviceSpec {
  /** Host-side interface name, at most 15 bytes. */
  hostIfname: string;
  /** IFLA_IFALIAS of the host side, e.g. `kitnet:default/web`; identifies kitnet's links. */
  alias: string;
  /** Path of an existing network namespace (`/var/run/netns/X`, `/proc/PID/ns/net`). */
  netnsPath: string;
  /** The namespace the path must still be (nsfs device, inode and cookie): another one there is refused. */
  netnsId?: { dev: number; ino: number; cookie?: string; boot?: string };
  /** Name of the peer inside the namespace (default `eth0`). */
  peerIfname: string;
  mode: DeviceMode;
  ipv4: string;
  ipv6: string;
  mtu?: number;
  /**
   * false: the peer is a bridge port (kind: vm), configured only to be up, with no addresses, routes,
   * neighbours or IPv6 of its own: the guest behind it owns the addresses. Default true.
   */
  peerL3?: boolean;
  /**
   * IFLA_GROUP of the host side: marks which agent instance owns the link, so one agent's orphan
   * sweep never touches another's devices (`ip link show group N`). 0 = the default group.
   */
  group?: number;
  /** netkit-l2 (and optionally veth): fixed MAC of the host side; default derived from hostIfname. */
  hostMac?: string;
  /** netkit-l2 (and optionally veth): fixed MAC of the peer; default derived from hostIfname. */
  peerMac?: string;
  /** netkit: both default policies at creation; default 'drop' (blackhole both ways until endpointDeviceOpen). */
  peerPolicy?: 'forward' | 'drop';
  /** netkit: only sent when set (IFLA_NETKIT_SCRUB / PEER_SCRUB need a newer kernel). */
  scrub?: 'none' | 'default';
  peerScrub?: 'none' | 'default';
  /** netkit: only sent when set (IFLA_NETKIT_HEADROOM / TAILROOM need a newer kernel). */
  headroom?: number;
  tailroom?: number;
}

export interface EndpointDevice {
  mode: DeviceMode;
  hostIfname: string;
  hostIfindex: number;
  hostMac: string;
  peerIfname: string;
  peerIfindex: number;
  peerMac: string;
  netnsPath: string;
  /** netkit only: the peer's current default policy (the workload's packets out). */
  peerPolicy?: 'forward' | 'drop';
  /** netkit only: the primary's current default policy (the host's packets into the workload). */
  policy?: 'forward' | 'drop';
  /**
   * No packet crosses the pair yet, either way, until endpointDeviceOpen: it is made so, to be opened
   * once the programs are attached. netkit: a default policy is drop (peer or primary); veth: the host side is down.
   */
  closed?: boolean;
  /**
   * From endpointDeviceObserve: what differs from the spec (empty = present and correct). Each entry
   * is one human-readable finding, e.g. `route default via 169.254.1.1 missing in netns`.
   */
  problems?: string[];
}

export interface KitnetLink {
  ifname: string;
  ifindex: number;
  alias: string;
  /** IFLA_GROUP: the agent instance that owns the link (see EndpointDeviceSpec.group). */
  group: number;
}
