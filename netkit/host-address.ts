// Host-local service addresses: an address on the host's loopback (ifindex 1), reachable from every
// workload through the routing the host already does for them, and from nowhere else unless another
// host routes to it. The DNS proxy listens on such addresses (agent/dns/steering.ts).
import { addressAdd, addressList } from './address.js';
import { rtnlHost } from './socket.js';

const LOOPBACK_IFINDEX = 1;

/** Puts `ip` (/32 or /128) on the host's loopback unless it is there (another agent may share it). */
export async function hostLoopbackAddressEnsure(ip: string): Promise<void> {
  const nl = rtnlHost();
  const have = await addressList(nl, LOOPBACK_IFINDEX);
  if (have.some((a) => a.address === ip)) return;
  await addressAdd(nl, LOOPBACK_IFINDEX, ip, ip.includes(':') ? 128 : 32, { replace: true, ifname: 'lo' });
}
