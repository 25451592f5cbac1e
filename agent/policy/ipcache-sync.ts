/**
 * The local part of the BPF ipcache, as policy needs it: workload addresses (their identities), every
 * destination the host delivers locally (reserved host: host-destinations.ts), the CIDR identities of
 * the policies and the ipBlock view (cidr.ts, ipBlockView). Anything else local is removed;
 * remote-host entries (cluster mode) are kept, and win over a policy CIDR or learned address.
 */
import { ReservedIdentity } from '../identity/reserved.js';
import type { KernelOps } from '../kernel-ops.js';
import type { Store } from '../store/store.js';
import { IPBLOCK_VIEW_PREFIX } from './cidr.js';
import type { CompiledPolicy } from './index.js';
import { HostDestinationSet, hostDestinations } from './host-destinations.js';
import { STEP, type Steps } from './slices.js';

/** This host's part of the ipcache as a writer of other nodes' entries sees it. */
export interface IpcacheLocalView {
  /**
   * Whether a key is this host's own whatever another node says (one of its workloads' addresses, a
   * host destination or a prefix inside one): no remote entry ever takes it.
   */
  owns(cidr: string): boolean;
  /** What this host wants at a key (a policy CIDR's or a learned address's identity), if anything. */
  wish(cidr: string): number | undefined;
}

/**
 * The one place that says who holds a key. This host's own keys (owns) are its own. A policy CIDR or
 * a learned address is only a wish for a key: another node's workload entry (host field not 0) at the
 * same key keeps it, as in Cilium, where a pod's identity from the kvstore wins over the CIDR identity
 * a policy generates for the prefix (the more specific identity; a CIDR rule never selects a
 * workload). The host's prefixes (`hosts`) win over a policy CIDR or a learned FQDN address of the
 * same prefix, and a longer one inside them (`toCIDR: 224.0.0.251/32`, a DNS answer of fe80::1) is
 * written as host too: otherwise the LPM lookup would give it the other identity.
 */
export function ipcacheLocalView(
  store: Pick<Store, 'workloadList'>,
  compiled: CompiledPolicy | undefined,
  extra: () => Iterable<readonly [cidr: string, identity: number]>,
  hosts: readonly string[],
): IpcacheLocalView & { desired(): Map<string, number> } {
  const host = new HostDestinationSet(hosts);
  const workloads = new Map<string, number>();
  for (const w of store.workloadList()) {
    workloads.set(`${w.ipv4}/32`, w.identity);
    workloads.set(`${w.ipv6}/128`, w.identity);
  }
  let desired: Map<string, number> | undefined;
  const build = () => {
    const d = new Map<string, number>();
    const other = (cidr: string, identity: number) => d.set(cidr, host.has(cidr) ? ReservedIdentity.host : identity);
    for (const c of compiled?.ipcache ?? []) other(c.cidr, c.identity);
    for (const c of compiled?.ipBlocks ?? []) d.set(`${IPBLOCK_VIEW_PREFIX}${c.cidr}`, c.identity);
    for (const [cidr, identity] of extra()) other(cidr, identity);
    for (const cidr of hosts) d.set(cidr, ReservedIdentity.host);
    for (const [cidr, identity] of workloads) d.set(cidr, identity);
    return d;
  };
  return {
    owns: (cidr) => workloads.has(cidr) || host.has(cidr),
    // Built once, and only when asked: the remote writer needs it only when a remote entry goes.
    wish: (cidr) => (desired ??= build()).get(cidr),
    desired: () => (desired ??= build()),
  };
}

/**
 * Writes the desired local ipcache (ipcacheLocalView), with a yield point every STEP writes. A key
 * another node's workload holds (cluster mode) is left to it unless this host owns it: the remote
 * writer (agent/cluster/remote-ipcache.ts) asks the same view, so neither writes over the other in
 * turn, and it writes this host's wish back when the remote entry goes.
 */
export function* ipcacheSyncSteps(
  kernel: KernelOps,
  store: Store,
  compiled: CompiledPolicy | undefined,
  extra: Iterable<readonly [cidr: string, identity: number]> = [],
  hosts: readonly string[] = hostDestinations(),
): Steps<void> {
  const dp = kernel.datapath;
  const view = ipcacheLocalView(store, compiled, () => extra, hosts);
  const desired = view.desired();
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
    if (cur && cur.hostId !== 0 && !view.owns(cidr)) continue;
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
