import { hostDestinations, HostDestinationSet } from '../policy/host-destinations.js';

/** How long a reading of the host's destinations is reused (remote entries come in bursts). */
const MAX_AGE_MS = 1000;

/** Whether an address is one this host's stack takes as its own. */
export interface HostAddressTest {
  has(address: string): boolean;
}

/**
 * This host's own destinations (agent/policy/host-destinations.ts: every address of every device,
 * with carrier or not, the subnet broadcasts and anycast addresses, loopback prefixes, link-local and
 * multicast) and the node addresses it is known by in the cluster, read again when older than a
 * second. A remote ipcache entry never takes one: they are this host's ipcache entries (reserved:host).
 */
export function hostAddressesRecent(nodeAddresses: readonly string[], destinations: () => string[] = hostDestinations): () => HostAddressTest {
  let cached: { at: number; set: HostDestinationSet } | undefined;
  return () => {
    const now = performance.now();
    if (cached && now - cached.at <= MAX_AGE_MS) return cached.set;
    const nodes = nodeAddresses.map((a) => `${a}/${a.includes(':') ? 128 : 32}`);
    cached = { at: now, set: new HostDestinationSet([...destinations(), ...nodes]) };
    return cached.set;
  };
}
