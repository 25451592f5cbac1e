// CONTRACT STUB — the netkit/ helper replaces the implementations; the exported names and types are
// what agent/ codes against. Keep them (extend freely).
export type DeviceMode = 'netkit' | 'netkit-l2' | 'veth';

/** Gateway addresses the workload routes through; the host side of each pair answers for them. */
export const GATEWAY_V4 = '169.254.1.1';
export const GATEWAY_V6 = 'fe80::1';

export interface KernelFeatures {
  kernelRelease: string;
  /** Real create-and-delete probe of a netkit pair. */
  netkit: boolean;
  netkitDetail: string;
  tcx: boolean;
  tcClsact: boolean;
}

export interface EndpointDeviceSpec {
  /** Host-side interface name, at most 15 bytes. */
  hostIfname: string;
  /** IFLA_IFALIAS of the host side, e.g. `kitnet:default/web`; identifies kitnet's links. */
  alias: string;
  /** Path of an existing network namespace (`/var/run/netns/X`, `/proc/PID/ns/net`). */
  netnsPath: string;
  /** Name of the peer inside the namespace (default `eth0`). */
  peerIfname: string;
  mode: DeviceMode;
  ipv4: string;
  ipv6: string;
  mtu?: number;
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
}

export interface KitnetLink {
  ifname: string;
  ifindex: number;
  alias: string;
}

export declare function featuresProbe(): Promise<KernelFeatures>;
export declare function endpointDeviceCreate(spec: EndpointDeviceSpec): Promise<EndpointDevice>;
export declare function endpointDeviceDelete(hostIfname: string): Promise<boolean>;
export declare function endpointDeviceObserve(spec: EndpointDeviceSpec): Promise<EndpointDevice | undefined>;
export declare function kitnetLinksList(): Promise<KitnetLink[]>;
