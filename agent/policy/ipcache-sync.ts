/**
 * The local part of the BPF ipcache, as policy needs it: workload addresses (their identities), host
 * addresses (reserved host), the CIDR identities of the policies and the ipBlock view (cidr.ts,
 * ipBlockView). Anything else local is removed; remote-host entries (cluster mode) are kept.
 */
import { networkInterfaces } from 'node:os';
import { ReservedIdentity } from '../identity/reserved.js';
import type { KernelOps } from '../kernel-ops.js';
import type { Store } from '../store/store.js';
import { IPBLOCK_VIEW_PREFIX } from './cidr.js';
import type { CompiledPolicy } from './index.js';
import { STEP, type Steps } from './slices.js';

/** Addresses of the host's own interfaces: traffic from them carries the reserved host identity. */
export function hostAddresses(): string[] {
  const out: string[] = [];
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) {
      if (a.family === 'IPv6' && a.address.startsWith('fe80')) continue;
      out.push(`${a.address}/${a.family === 'IPv4' ? 32 : 128}`);
    }
  }
  return out;
}

/** Writes the desired local ipcache, with a yield point every STEP writes. */
export function* ipcacheSyncSteps(
  kernel: KernelOps,
  store: Store,
  compiled: CompiledPolicy | undefined,
  extra: Iterable<readonly [cidr: string, identity: number]> = [],
): Steps<void> {
  const dp = kernel.datapath;
  const desired = new Map<string, number>();
  for (const cidr of hostAddresses()) desired.set(cidr, ReservedIdentity.host);
  for (const c of compiled?.ipcache ?? []) desired.set(c.cidr, c.identity);
  for (const c of compiled?.ipBlocks ?? []) desired.set(`${IPBLOCK_VIEW_PREFIX}${c.cidr}`, c.identity);
  for (const [cidr, identity] of extra) desired.set(cidr, identity);
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
