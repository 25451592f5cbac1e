import { networkInterfaces } from 'node:os';
import { addressParse } from '../ipam.js';

/** How long a read of the host's interface addresses is reused (remote entries come in bursts). */
const MAX_AGE_MS = 1000;

/**
 * This host's own addresses (every interface's, and the node addresses it is known by in the
 * cluster), canonical, read again when older than a second. A remote ipcache entry never takes one:
 * they are this host's ipcache entries (reserved:host).
 */
export function hostAddressesRecent(nodeAddresses: readonly string[], ifaces: () => ReturnType<typeof networkInterfaces> = networkInterfaces): () => ReadonlySet<string> {
  let cached: { at: number; set: Set<string> } | undefined;
  return () => {
    const now = performance.now();
    if (cached && now - cached.at <= MAX_AGE_MS) return cached.set;
    const set = new Set<string>();
    const texts = [...nodeAddresses, ...Object.values(ifaces()).flatMap((l) => (l ?? []).map((a) => a.address))];
    for (const text of texts) {
      try {
        set.add(addressParse(text.replace(/%.*$/, '')).text);
      } catch {
        // not an address: nothing to protect
      }
    }
    cached = { at: now, set };
    return set;
  };
}
