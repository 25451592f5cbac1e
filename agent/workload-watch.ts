import type { Logger } from 'pino';
import type { KernelOps } from './kernel-ops.js';
import type { LinkMonitor } from '../netkit/index.js';
import type { Store } from './store/store.js';
import type { WorkloadService } from './workloads.js';

/** Events for one device within this window are handled once. */
const SETTLE_MS = 100;

/**
 * Notices workloads whose devices vanish without the agent removing them. Deleting a network
 * namespace (or ending the process that held it) destroys the workload side of the pair and with it
 * the host side, which the kernel announces on RTNLGRP_LINK. The watcher then decides, level-based:
 * namespace gone -> remove the workload and everything kitnet made for it; namespace still there
 * (someone deleted the link) -> converge it again.
 */
export class WorkloadWatch {
  private monitor: LinkMonitor | undefined;
  private readonly pending = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly store: Store,
    private readonly kernel: KernelOps,
    private readonly workloads: WorkloadService,
    private readonly log: Logger,
    private readonly onChange: () => void,
  ) {}

  start(): void {
    this.monitor = this.kernel.linkRemovalsWatch(
      ({ ifname }) => this.schedule(ifname),
      (present) => {
        // Events were lost: every workload whose device is not there now gets the same check.
        const missing = this.store.workloadList().filter((w) => w.state === 'ready' && !present.has(w.hostIfname)).map((w) => w.hostIfname);
        this.log.warn({ missing: missing.length }, 'link events were lost (netlink buffer overflow); compared all workload devices with the kernel');
        for (const ifname of missing) this.schedule(ifname);
      },
    );
  }

  private schedule(ifname: string): void {
    if (this.pending.has(ifname)) return;
    const t = setTimeout(() => {
      this.pending.delete(ifname);
      void this.check(ifname);
    }, SETTLE_MS);
    this.pending.set(ifname, t);
  }

  stop(): void {
    this.monitor?.close();
    for (const t of this.pending.values()) clearTimeout(t);
    this.pending.clear();
  }

  private async check(ifname: string): Promise<void> {
    const rec = this.store.workloadList().find((w) => w.hostIfname === ifname);
    if (!rec) return; // not ours, or already removed through the API
    const ref = `${rec.spec.namespace}/${rec.spec.name}`;
    const log = this.log.child({ workload: ref, device: ifname, identity: rec.identity });
    try {
      if (rec.spec.kind === 'tap') {
        // an adopted tap is the hypervisor's: gone means the VM is gone (kitnet never re-creates it)
        log.warn("the workload's tap device is gone; removing the workload");
        await this.workloads.remove(rec.spec.namespace, rec.spec.name);
        return;
      }
      let namespaceAlive = true;
      try {
        await this.kernel.netnsValidate(rec.spec.netns);
      } catch {
        namespaceAlive = false;
      }
      if (!namespaceAlive) {
        log.warn({ netns: rec.spec.netns }, "workload's network namespace is gone; removing the workload");
        await this.workloads.remove(rec.spec.namespace, rec.spec.name);
      } else {
        log.warn('workload device was removed from outside kitnet; recreating it');
        await this.workloads.repair(rec.spec.namespace, rec.spec.name);
      }
    } catch (err) {
      log.error({ err }, 'handling a vanished workload device failed');
    } finally {
      this.onChange();
    }
  }
}
