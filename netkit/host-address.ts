// Host-local service addresses: an address on the host's loopback (ifindex 1), reachable from every
// workload through the routing the host already does for them, and from nowhere else unless another
// host routes to it. The DNS proxy listens on such addresses (agent/dns/steering.ts). And the host's
// addresses as a whole, and what its local table delivers to it, for the ipcache's host entries
// (agent/policy/host-destinations.ts).
import { addressAdd, addressList } from './address.js';
import { localDeliveryPrefixes } from './route.js';
import { rtnlHost } from './socket.js';

const LOOPBACK_IFINDEX = 1;

/** Puts `ip` (/32 or /128) on the host's loopback unless it is there (another agent may share it). */
export async function hostLoopbackAddressEnsure(ip: string): Promise<void> {
  const nl = rtnlHost();
  const have = await addressList(nl, LOOPBACK_IFINDEX);
  if (have.some((a) => a.address === ip)) return;
  await addressAdd(nl, LOOPBACK_IFINDEX, ip, ip.includes(':') ? 128 : 32, { replace: true, ifname: 'lo' });
}

export interface HostAddress {
  /** The address with its prefix length, e.g. `192.0.2.1/24`. */
  cidr: string;
  /** On the loopback device (ifindex 1 in every namespace). */
  loopback: boolean;
}

/**
 * Every address of the host namespace, whatever the state of its device: node:os (getifaddrs through
 * libuv) leaves out devices that are not running, e.g. a bridge without ports or an uplink without
 * carrier, whose addresses the host still receives on.
 */
export async function hostAddressesList(): Promise<HostAddress[]> {
  return (await addressList(rtnlHost())).map((a) => ({ cidr: `${a.address}/${a.prefixlen}`, loopback: a.ifindex === LOOPBACK_IFINDEX }));
}

/** The host namespace's local deliveries: route.ts localDeliveryPrefixes. */
export async function hostLocalDeliveryList(): Promise<string[]> {
  return localDeliveryPrefixes(rtnlHost());
}
