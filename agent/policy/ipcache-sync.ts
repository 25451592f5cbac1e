/**
 * The local part of the BPF ipcache, as policy needs it: workload addresses (their identities), every
 * destination the host delivers locally (reserved host: host-destinations.ts), the CIDR identities of
 * the policies and the ipBlock view (cidr.ts, ipBlockView). Anything else local is removed;
 * remote-host entries (cluster mode) are kept.
 */
import { ReservedIdentity } from '../identity/reserved.js';
import type { KernelOps } from '../kernel-ops.js';
import type { Store } from '../store/store.js';
import { IPBLOCK_VIEW_PREFIX } from './cidr.js';
import type { CompiledPolicy } from './index.js';
import { HostDestinationSet, hostDestinations } from './host-destinations.js';
import { STEP, type Steps } from './slices.js';

/**
 * Writes the desired local ipcache, with a yield point every STEP writes. The host's prefixes
 * (`hosts`, read from the kernel now by default) win over a policy CIDR or a learned FQDN address of
 * the same prefix, and a longer one inside them (`toCIDR: 224.0.0.251/32`, a DNS answer of fe80::1)
 * is written as host too: otherwise the LPM lookup would give it the other identity.
 */
export function* ipcacheSyncSteps(
  kernel: KernelOps,
  store: Store,
  compiled: CompiledPolicy | undefined,
  extra: Iterable<readonly [cidr: string, identity: number]> = [],
  hosts: readonly string[] = hostDestinations(),
): Steps<void> {
  const dp = kernel.datapath;
  const desired = new Map<string, number>();
  const host = new HostDestinationSet(hosts);
  const other = (cidr: string, identity: number) => desired.set(cidr, host.has(cidr) ? ReservedIdentity.host : identity);
  for (const c of compiled?.ipcache ?? []) other(c.cidr, c.identity);
  for (const c of compiled?.ipBlocks ?? []) desired.set(`${IPBLOCK_VIEW_PREFIX}${c.cidr}`, c.identity);
  for (const [cidr, identity] of extra) other(cidr, identity);
  for (const cidr of hosts) desired.set(cidr, ReservedIdentity.host);
  for (const w of store.workloadList()) {
    desired.set(`${w.ipv4}/32`, w.identity);
    desired.set(`${w.ipv6}/128`, w.identity);
  }
  const present = new Map(dp.ipcacheList());
  const stale = [...present].filter(([cidr, entry]) => entry.hostId === 0 && !desired.has(cidr)).map(([cidr]) => cidr);
  const added = [...desired.keys()].filter((cidr) => !present.has(cidr)).length;
  // Normally new entries first (an address never falls back to a wider prefix mid-change); when the
  // map cannot hold old and new at once, the stale ones go first to make the room.
  const roomy = present.size + added <= dp.mapCapacity().ipcache;
  let work = 0;
  if (!roomy) {
    for (const cidr of stale) {
      dp.ipcacheDelete(cidr);
      if (++work % STEP === 0) yield;
    }
  }
  for (const [cidr, identity] of desired) {
    const cur = present.get(cidr);
    if (!cur || cur.identity !== identity || cur.hostId !== 0) dp.ipcacheUpsert(cidr, { identity, hostId: 0 });
    if (++work % STEP === 0) yield;
  }
  if (roomy) {
    for (const cidr of stale) {
      dp.ipcacheDelete(cidr);
      if (++work % STEP === 0) yield;
    }
  }
}
