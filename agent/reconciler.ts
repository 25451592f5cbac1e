import type { Logger } from 'pino';
import { LINK_ROLES, linkIsCurrent, linkIsOnDevice, type AttachKind } from '../bpf/index.js';
import { netnsBindingCheck, netnsIdEqual, type NetnsId } from '../netkit/index.js';
import type { Config } from './config.js';
import type { KernelOps } from './kernel-ops.js';
import type { Store } from './store/store.js';
import type { WorkloadRecord } from './store/types.js';
import { deviceSpecFor, linkGroupFor, tapSpecFor, vmSpecFor } from './workload-specs.js';
import type { PolicyEngine } from './policy/engine.js';
import { endpointInfoFor, reconcilePlan, type ObservedDevice, type ObservedWorkload, type ReconcileAction } from './reconcile/plan.js';

export type Observed = NonNullable<WorkloadRecord['observed']>;

function attachKindFor(rec: WorkloadRecord): AttachKind {
  return rec.mode === 'veth' || rec.mode === 'tap' ? 'tcx' : 'netkit';
}

/** A plan asked for the workload's removal where the caller cannot remove it (registration, a direct converge). */
export class WorkloadGoneError extends Error {
  override name = 'WorkloadGoneError';
}

/**
 * Observes and changes the kernel for workloads: `workloadObserve` reads what is there,
 * `reconcilePlan` (agent/reconcile/plan.ts) says what to do, `actionsApply` does it. Every step is
 * idempotent, so the same path serves first registration, agent restart, repair after a crash and
 * the reconcile loop's retries and resyncs.
 */
export class Reconciler {
  constructor(
    private readonly store: Store,
    private readonly config: Config,
    private readonly kernel: KernelOps,
    private readonly log: Logger,
    private readonly policy: PolicyEngine,
  ) {}

  /** Endpoint and ipcache entries of a workload whose device exists (identity or address changes). */
  endpointMapsWrite(rec: WorkloadRecord, device?: { hostIfindex: number; peerMac: string; hostMac?: string }): void {
    const ifindex = device?.hostIfindex ?? rec.observed?.hostIfindex;
    const peerMac = device?.peerMac ?? rec.observed?.peerMac;
    const hostMac = device?.hostMac ?? rec.observed?.hostMac ?? '';
    const dp = this.kernel.datapath;
    if (ifindex !== undefined && (peerMac !== undefined || rec.spec.vm || rec.spec.tap)) {
      dp.endpointUpsert(ifindex, endpointInfoFor(rec, { peerMac: peerMac ?? '', hostMac }));
    }
    dp.ipcacheUpsert(`${rec.ipv4}/32`, { identity: rec.identity, hostId: 0 });
    dp.ipcacheUpsert(`${rec.ipv6}/128`, { identity: rec.identity, hostId: 0 });
  }

  /** What the kernel has for the workload: namespace, device, plumbing, endpoint entry, programs. */
  async workloadObserve(rec: WorkloadRecord): Promise<ObservedWorkload> {
    const dp = this.kernel.datapath;
    let netns = true;
    let netnsReplaced: string | undefined;
    let device: ObservedDevice | undefined;
    let vmPlumbing: ObservedWorkload['vmPlumbing'];
    if (rec.spec.kind === 'tap') {
      const tap = await this.kernel.tapObserve(tapSpecFor(rec));
      if (tap) device = { hostIfindex: tap.ifindex, hostMac: tap.mac, peerMac: rec.spec.tap!.mac, peerIfindex: 0, problems: tap.problems, closed: tap.closed };
    } else {
      ({ netns, replaced: netnsReplaced } = await this.netnsObserve(rec));
      // nothing of the workload's is looked for in someone else's namespace
      if (netnsReplaced) return { netns, netnsReplaced, device: undefined, endpoint: undefined, attached: false, judged: false };
      const d = await this.kernel.deviceObserve(deviceSpecFor(rec, this.config));
      if (d) {
        device = {
          hostIfindex: d.hostIfindex, hostMac: d.hostMac, peerMac: d.peerMac, peerIfindex: d.peerIfindex, problems: d.problems ?? [],
          closed: d.closed ?? false,
        };
      }
      if (rec.spec.kind === 'vm' && netns) {
        const p = await this.kernel.vmPlumbingObserve(vmSpecFor(rec, this.config));
        vmPlumbing = p && { problems: p.problems };
      }
    }
    const kind = attachKindFor(rec);
    const links = dp.linkInfo(rec.hostIfname);
    const progs = dp.progIds();
    // netkit's peer link reports the peer's ifindex, not the host side's it was created on
    const target = device && { ifindex: device.hostIfindex, peerIfindex: device.peerIfindex };
    const attached = target !== undefined && LINK_ROLES.every((role) => {
      const l = links[role];
      return l !== undefined && linkIsCurrent(l, kind, role, target, progs);
    });
    // an earlier release's programs still judge (an upgrade swaps them in place, atomically)
    const judged = attached || (target !== undefined && LINK_ROLES.every((role) => {
      const l = links[role];
      return l !== undefined && linkIsOnDevice(l, kind, role, target);
    }));
    return {
      netns, ...(netnsReplaced ? { netnsReplaced } : {}), device, ...(rec.spec.kind === 'vm' ? { vmPlumbing } : {}),
      endpoint: device && dp.endpointGet(device.hostIfindex), attached, judged,
    };
  }

  /**
   * Whether the workload's namespace is still there: its path names a network namespace, and the one it
   * was registered into (spec.netnsId; a /proc/PID path names another process's after the PID is
   * reused, a bind mount may be replaced), never the host's or the agent's own. The one registered
   * into is told by its cookie, not its inode: a freed namespace's inode number is given to the next
   * namespace made (by anyone: an unprivileged user namespace suffices), so a reused PID can come with
   * a namespace of the same inode. After a reboot no cookie matches (`boot` differs): every namespace
   * registered into is gone. A namespace kitnet made for a VM is kitnet's own name under
   * /var/run/netns (only root writes there): it is only checked to exist, and made again at a restore.
   */
  private async netnsObserve(rec: WorkloadRecord): Promise<{ netns: boolean; replaced?: string }> {
    const path = rec.spec.netns;
    if (rec.spec.vm?.netnsOwnedName !== undefined) return { netns: await this.kernel.netnsValidate(path).then(() => true, () => false) };
    const id = await this.kernel.netnsId(path);
    if (!id) return { netns: false };
    const reserved = this.kernel.netnsReserved();
    const whose = netnsIdEqual(id, reserved.init) ? "the host's (PID 1's)" : netnsIdEqual(id, reserved.agent) ? "the agent's own" : undefined;
    if (whose) return { netns: false, replaced: `its network namespace path ${path} now names ${whose} network namespace: the one it was registered into is gone` };
    const was = rec.spec.netnsId;
    if (!was) return { netns: true };
    const check = netnsBindingCheck(path, was, id);
    // neither kept nor removed on a cookie that could not be read: the reconcile loop tries again
    if (check && 'unknown' in check) throw new Error(check.unknown);
    if (check) return { netns: false, replaced: check.replaced };
    if (was.cookie === undefined) return this.netnsLegacyBind(rec, was, id);
    return { netns: true };
  }

  /**
   * A record of a release before the cookie, whose device and inode match now: the inode may be
   * another namespace's that got the freed number. The workload's device pair proves it: a pair goes
   * with its peer's namespace, and two namespaces alive at once never share an inode, so a host side
   * still there whose peer is in the namespace at the path means this is the namespace it was made in.
   * Then the cookie is stored and decides from now on. Without the pair (its namespace died while the
   * agent was down, the host rebooted, the device was deleted) nothing tells it from a newer namespace
   * given the same inode: the workload goes, and is registered again if it is wanted.
   */
  private async netnsLegacyBind(rec: WorkloadRecord, was: NetnsId, id: NetnsId): Promise<{ netns: boolean; replaced?: string }> {
    const path = rec.spec.netns;
    if (id.cookie === undefined || id.boot === undefined) {
      throw new Error(`cannot read the cookie of the network namespace at ${path} (SO_NETNS_COOKIE, Linux >= 5.14) to bind the workload to it`);
    }
    const d = await this.kernel.deviceObserve(deviceSpecFor(rec, this.config));
    if (!d || d.peerIfindex <= 0 || (d.problems ?? []).some((p) => p.includes('is not the peer of'))) {
      return {
        netns: false,
        replaced: `its network namespace path ${path} names a namespace of the nsfs inode it was registered into (${was.dev}:${was.ino}), but the workload was registered by a release ` +
          'that kept no namespace cookie and its device pair is gone, so that namespace cannot be told from a newer one given the same inode: it is treated as gone',
      };
    }
    // the record read again inside the write: a relabel since the observation began is kept
    const bound = await this.store.transaction((tx) => {
      const cur = tx.workloadGet(rec.spec.namespace, rec.spec.name);
      const curId = cur?.spec.netnsId;
      if (!cur || !curId || curId.cookie !== undefined || curId.dev !== was.dev || curId.ino !== was.ino) return false;
      tx.workloadUpdate(cur.spec.namespace, cur.spec.name, { ...cur.spec, netnsId: { dev: id.dev, ino: id.ino, cookie: id.cookie, boot: id.boot } }, cur.identity);
      return true;
    });
    if (bound) this.log.info({ workload: `${rec.spec.namespace}/${rec.spec.name}`, netns: path, cookie: id.cookie }, 'workload of an older release bound to its network namespace cookie (its device pair is in that namespace)');
    return { netns: true };
  }

  /**
   * Runs a plan's actions in order; returns the device facts the status keeps. A `workloadRemove`
   * action is the caller's (it needs the store and the agent's lock): here it is an error.
   */
  async actionsApply(rec: WorkloadRecord, observed: ObservedWorkload, actions: readonly ReconcileAction[]): Promise<Observed> {
    const dp = this.kernel.datapath;
    let device = observed.device;
    for (const a of actions) {
      switch (a.op) {
        case 'workloadRemove':
          throw new WorkloadGoneError(`workload ${rec.spec.namespace}/${rec.spec.name}: ${a.reason}`);
        case 'deviceClose': {
          const d = deviceOrThrow(rec, device);
          // an adopted tap closes without its routes to the guest, which opening it adds again
          if (rec.spec.kind === 'tap') await this.kernel.tapRelease(tapSpecFor(rec));
          else await this.kernel.deviceClose(deviceSpecFor(rec, this.config));
          device = { ...d, closed: true };
          break;
        }
        case 'vmNetnsEnsure':
          await this.kernel.vmNetnsEnsure(vmSpecFor(rec, this.config));
          break;
        case 'deviceRepair': {
          // Adopt what exists and fix what differs: a crash between creating the pair and configuring
          // it leaves a device without addresses or routes, which must not count as converged.
          const d = await this.kernel.deviceRepair(deviceSpecFor(rec, this.config));
          device = { hostIfindex: d.hostIfindex, hostMac: d.hostMac, peerMac: d.peerMac, peerIfindex: d.peerIfindex, problems: [], closed: d.closed ?? false };
          break;
        }
        case 'vmPlumbingCreate':
          await this.kernel.vmPlumbingCreate(vmSpecFor(rec, this.config));
          break;
        case 'tapAdopt': {
          const t = await this.kernel.tapAdopt(tapSpecFor(rec));
          device = { hostIfindex: t.ifindex, hostMac: t.mac, peerMac: rec.spec.tap!.mac, peerIfindex: 0, problems: [], closed: t.closed };
          break;
        }
        case 'endpointMapsWrite': {
          const d = deviceOrThrow(rec, device);
          // A recreated device has a new ifindex: the entry under the old one would only leak.
          const oldIfindex = rec.observed?.hostIfindex;
          if (oldIfindex !== undefined && oldIfindex !== d.hostIfindex) dp.endpointDelete(oldIfindex);
          this.endpointMapsWrite(rec, d);
          break;
        }
        case 'attach': {
          const d = deviceOrThrow(rec, device);
          await dp.attach({ ifname: rec.hostIfname, ifindex: d.hostIfindex, peerIfindex: d.peerIfindex, kind: attachKindFor(rec) });
          break;
        }
        case 'deviceOpen': {
          const d = deviceOrThrow(rec, device);
          // an adopted tap opens with its routes, which adopting it adds
          if (rec.spec.kind === 'tap') await this.kernel.tapAdopt(tapSpecFor(rec));
          else await this.kernel.deviceOpen(deviceSpecFor(rec, this.config));
          device = { ...d, closed: false };
          break;
        }
      }
    }
    const d = deviceOrThrow(rec, device);
    return { hostIfindex: d.hostIfindex, hostMac: d.hostMac, peerIfindex: d.peerIfindex, peerMac: d.peerMac };
  }

  /** Observe, plan, apply: one reconcile of a workload that must stay (a plan to remove it throws). */
  async workloadConverge(rec: WorkloadRecord, opts: { makeOwnedNetns?: boolean } = {}): Promise<Observed> {
    const observed = await this.workloadObserve(rec);
    return this.actionsApply(rec, observed, reconcilePlan(rec, observed, opts));
  }

  /**
   * Removes everything a workload has in the kernel; tolerant of parts already gone. The endpoint entry
   * goes first and the programs last: without its entry the programs drop everything on the device,
   * so nothing passes unjudged while the device is still there (detached first, it passed everything
   * until it was deleted).
   */
  async workloadTeardown(rec: WorkloadRecord): Promise<void> {
    const dp = this.kernel.datapath;
    for (const [ifindex, info] of dp.endpointList()) {
      if (info.endpointId === rec.endpointId || ifindex === rec.observed?.hostIfindex) dp.endpointDelete(ifindex);
    }
    if (rec.spec.kind === 'tap') {
      await this.kernel.tapRelease(tapSpecFor(rec)); // the device stays: it is the hypervisor's
    } else {
      await this.kernel.deviceDelete(rec.hostIfname); // its links go with it; their pins stay
    }
    await dp.detach(rec.hostIfname);
    dp.ipcacheDelete(`${rec.ipv4}/32`);
    dp.ipcacheDelete(`${rec.ipv6}/128`);
    if (rec.spec.kind === 'vm') await this.kernel.vmPlumbingDelete(vmSpecFor(rec, this.config));
  }

  /**
   * Startup: bring every stored workload back to its desired state (adopting what is pinned), then
   * remove what the store does not know: links, pinned links, endpoint and ipcache entries left by a
   * crash between kernel work and the store write.
   */
  async syncAll(
    onProgress?: (done: number, total: number) => void,
    /**
     * Restores one workload and writes its status (the reconcile loop's attempt, which also schedules
     * retries); undefined when the workload was removed. Default: converge and write the status.
     */
    restore?: (rec: WorkloadRecord) => Promise<Observed | undefined>,
  ): Promise<{ converged: number; failed: number; orphans: number }> {
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
        let observed: Observed | undefined;
        if (restore) {
          observed = await restore(rec);
        } else {
          observed = await this.workloadConverge(rec, { makeOwnedNetns: true });
          this.store.workloadStatusSet(rec.spec.namespace, rec.spec.name, { state: 'ready', observed, error: null });
        }
        if (observed) liveIfindexes.add(observed.hostIfindex);
        converged++;
      } catch (err) {
        failed++;
        log.error({ err }, 'workload could not be restored; it stays registered in state "error" and is tried again');
        if (!restore) this.store.workloadStatusSet(rec.spec.namespace, rec.spec.name, { state: 'error', observed: rec.observed, error: (err as Error).message });
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

function deviceOrThrow(rec: WorkloadRecord, device: ObservedDevice | undefined): ObservedDevice {
  if (!device) throw new Error(`workload ${rec.spec.namespace}/${rec.spec.name}: device ${rec.hostIfname} does not exist`);
  return device;
}
