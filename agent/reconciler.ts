import type { Logger } from 'pino';
import type { AttachKind } from '../bpf/index.js';
import type { Config } from './config.js';
import type { KernelOps } from './kernel-ops.js';
import type { SqliteStore } from './store/sqlite-store.js';
import type { WorkloadRecord } from './store/types.js';
import { deviceSpecFor, linkGroupFor, tapSpecFor, vmSpecFor } from './workloads.js';
import type { PolicyEngine } from './policy/engine.js';
import { EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC } from '../bpf/layout.gen.js';

export type Observed = NonNullable<WorkloadRecord['observed']>;

function attachKindFor(rec: WorkloadRecord): AttachKind {
  return rec.mode === 'veth' || rec.mode === 'tap' ? 'tcx' : 'netkit';
}

/** The MAC the workload sends from: the guest NIC's for kinds vm and tap, else the peer's. */
function workloadMacFor(rec: WorkloadRecord): string | undefined {
  return rec.spec.vm?.mac ?? rec.spec.tap?.mac;
}

/**
 * Converges the kernel to the store. Every step is idempotent: an existing correct device is kept,
 * pinned links are adopted, map entries are overwritten with the same values. So the same code path
 * serves first registration, agent restart and repair after a crash.
 */
export class Reconciler {
  constructor(
    private readonly store: SqliteStore,
    private readonly config: Config,
    private readonly kernel: KernelOps,
    private readonly log: Logger,
    private readonly policy: PolicyEngine,
  ) {}

  /** Endpoint and ipcache entries of a workload whose device exists (identity or address changes). */
  endpointMapsWrite(rec: WorkloadRecord, device?: { hostIfindex: number; peerMac: string; hostMac?: string }): void {
    const ifindex = device?.hostIfindex ?? rec.observed?.hostIfindex;
    const mac = workloadMacFor(rec) ?? device?.peerMac ?? rec.observed?.peerMac;
    // The datapath answers the workload's ARP / neighbour solicitations for the gateways with the
    // host side's MAC, so guests that resolve their gateway (VMs, flushed caches) keep working.
    const hostMac = rec.mode === 'netkit' ? undefined : (device?.hostMac ?? rec.observed?.hostMac);
    const dp = this.kernel.datapath;
    if (ifindex !== undefined && mac !== undefined) {
      // Anti-spoofing: a workload may only send from its own addresses (and MAC, where frames carry one).
      const flags = EP_F_ENFORCE_SRC_IP | (rec.mode === 'netkit' ? 0 : EP_F_ENFORCE_SRC_MAC);
      dp.endpointUpsert(ifindex, {
        endpointId: rec.endpointId,
        identity: rec.identity,
        ipv4: rec.ipv4,
        ipv6: rec.ipv6,
        mac,
        flags,
        ...(hostMac ? { hostMac } : {}),
      });
    }
    dp.ipcacheUpsert(`${rec.ipv4}/32`, { identity: rec.identity, hostId: 0 });
    dp.ipcacheUpsert(`${rec.ipv6}/128`, { identity: rec.identity, hostId: 0 });
  }

  /**
   * Device, maps, policy, programs, in that order: the programs only see traffic once the endpoint and
   * its policy entries are in place (an endpoint without entries would drop everything).
   */
  async workloadConverge(rec: WorkloadRecord, opts: { policy?: boolean } = {}): Promise<Observed> {
    if (rec.spec.kind === 'tap') return this.tapConverge(rec, opts);
    const spec = deviceSpecFor(rec, this.config);
    // kind vm: the VM's namespace first (kitnet may have to make it), the pair's peer goes in there
    if (rec.spec.kind === 'vm') await this.kernel.vmNetnsEnsure(vmSpecFor(rec, this.config));
    // Adopt what exists and fix what differs: a crash between creating the pair and configuring it
    // leaves a device without addresses or routes, which must not count as converged.
    const device = await this.kernel.deviceRepair(spec);
    if (rec.spec.kind === 'vm') {
      const vmSpec = vmSpecFor(rec, this.config);
      const plumbing = await this.kernel.vmPlumbingObserve(vmSpec);
      if (!plumbing || plumbing.problems.length > 0) await this.kernel.vmPlumbingCreate(vmSpec);
    }
    const dp = this.kernel.datapath;
    // A recreated device has a new ifindex: the entry under the old one would only leak.
    const oldIfindex = rec.observed?.hostIfindex;
    if (oldIfindex !== undefined && oldIfindex !== device.hostIfindex) dp.endpointDelete(oldIfindex);
    this.endpointMapsWrite(rec, device);
    if (opts.policy !== false) this.policy.apply();
    await dp.attach({ ifname: device.hostIfname, ifindex: device.hostIfindex, kind: attachKindFor(rec) });
    await this.kernel.devicePolicyOpen(device);
    return { hostIfindex: device.hostIfindex, hostMac: device.hostMac, peerIfindex: device.peerIfindex, peerMac: device.peerMac };
  }

  /**
   * kind tap: the device is the hypervisor's; kitnet only routes to the guest through it, writes the
   * maps and attaches its programs with tcx.
   */
  private async tapConverge(rec: WorkloadRecord, opts: { policy?: boolean }): Promise<Observed> {
    const spec = tapSpecFor(rec);
    let tap = await this.kernel.tapObserve(spec);
    if (!tap) throw new Error(`device ${spec.device} does not exist in the host namespace (VM stopped?)`);
    if (tap.problems.length > 0) tap = await this.kernel.tapAdopt(spec);
    const dp = this.kernel.datapath;
    const oldIfindex = rec.observed?.hostIfindex;
    if (oldIfindex !== undefined && oldIfindex !== tap.ifindex) dp.endpointDelete(oldIfindex);
    const observed: Observed = { hostIfindex: tap.ifindex, hostMac: tap.mac, peerIfindex: 0, peerMac: rec.spec.tap!.mac };
    this.endpointMapsWrite(rec, { hostIfindex: tap.ifindex, peerMac: rec.spec.tap!.mac, hostMac: tap.mac });
    if (opts.policy !== false) this.policy.apply();
    await dp.attach({ ifname: spec.device, ifindex: tap.ifindex, kind: 'tcx' });
    return observed;
  }

  /** Removes everything a workload has in the kernel; tolerant of parts already gone. */
  async workloadTeardown(rec: WorkloadRecord): Promise<void> {
    const dp = this.kernel.datapath;
    await dp.detach(rec.hostIfname);
    for (const [ifindex, info] of dp.endpointList()) {
      if (info.endpointId === rec.endpointId || ifindex === rec.observed?.hostIfindex) dp.endpointDelete(ifindex);
    }
    dp.ipcacheDelete(`${rec.ipv4}/32`);
    dp.ipcacheDelete(`${rec.ipv6}/128`);
    if (rec.spec.kind === 'tap') {
      await this.kernel.tapRelease(tapSpecFor(rec)); // the device stays: it is the hypervisor's
      return;
    }
    await this.kernel.deviceDelete(rec.hostIfname);
    if (rec.spec.kind === 'vm') await this.kernel.vmPlumbingDelete(vmSpecFor(rec, this.config));
  }

  /**
   * Startup: bring every stored workload back to its desired state (adopting what is pinned), then
   * remove what the store does not know: links, pinned links, endpoint and ipcache entries left by a
   * crash between kernel work and the store write.
   */
  async syncAll(onProgress?: (done: number, total: number) => void): Promise<{ converged: number; failed: number; orphans: number }> {
    const records = this.store.workloadList();
    // Policy for every stored endpoint first (one compile), so each converge below can attach at once.
    this.policy.load();
    await this.policy.applySliced();
    let converged = 0;
    let failed = 0;
    const liveIfindexes = new Set<number>();
    for (const rec of records) {
      const log = this.log.child({ workload: `${rec.spec.namespace}/${rec.spec.name}`, device: rec.hostIfname, identity: rec.identity });
      try {
        const observed = await this.workloadConverge(rec, { policy: false });
        liveIfindexes.add(observed.hostIfindex);
        this.store.workloadStateSet(rec.spec.namespace, rec.spec.name, 'ready', observed);
        converged++;
      } catch (err) {
        failed++;
        log.error({ err }, 'workload could not be restored; it stays registered in state "error"');
        this.store.workloadStateSet(rec.spec.namespace, rec.spec.name, 'error', rec.observed, (err as Error).message);
      }
      onProgress?.(converged + failed, records.length);
    }

    let orphans = 0;
    const known = new Set(records.map((r) => r.hostIfname));
    const dp = this.kernel.datapath;
    const group = linkGroupFor(this.config);
    for (const link of await this.kernel.linksList()) {
      // Only this instance's devices: other agents (a demo, a test) keep theirs.
      if (known.has(link.ifname) || link.group !== group) continue;
      this.log.warn({ device: link.ifname, alias: link.alias }, 'removing orphaned kitnet link');
      await this.kernel.deviceDelete(link.ifname);
      orphans++;
    }
    for (const ifname of await dp.attachedList()) {
      if (known.has(ifname)) continue;
      this.log.warn({ device: ifname }, 'removing orphaned pinned links');
      await dp.detach(ifname);
      orphans++;
    }
    const failedIfindexes = new Set(records.filter((r) => r.observed).map((r) => r.observed!.hostIfindex));
    for (const [ifindex] of dp.endpointList()) {
      if (liveIfindexes.has(ifindex) || failedIfindexes.has(ifindex)) continue;
      dp.endpointDelete(ifindex);
      orphans++;
    }
    // Ipcache: workload, host and policy CIDR entries are desired; the rest is swept.
    this.policy.ipcacheSync();
    return { converged, failed, orphans };
  }
}
