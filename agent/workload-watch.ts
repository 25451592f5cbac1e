import type { Logger } from 'pino';
import type { KernelOps } from './kernel-ops.js';
import type { LinkMonitor } from '../netkit/index.js';
import type { WorkloadController } from './reconcile/controller.js';
import type { Store } from './store/store.js';

/** Events for one device within this window are handled once. */
const SETTLE_MS = 100;

/**
 * Notices workloads whose devices vanish without the agent removing them, and only enqueues them for
 * the reconcile loop. Deleting a network namespace (or ending the process that held it) destroys the
 * workload side of the pair and with it the host side, which the kernel announces on RTNLGRP_LINK;
 * the loop then decides, level-based (agent/reconcile/plan.ts): namespace gone -> remove the workload
 * and everything kitnet made for it; namespace still there (someone deleted the link) -> make it again.
 */
export class WorkloadWatch {
  private monitor: LinkMonitor | undefined;

  constructor(
    private readonly store: Store,
    private readonly kernel: KernelOps,
    private readonly controller: Pick<WorkloadController, 'enqueueAfter'>,
    private readonly log: Logger,
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
    const rec = this.store.workloadList().find((w) => w.hostIfname === ifname);
    if (!rec) return; // not ours, or already removed through the API
    this.controller.enqueueAfter(rec.spec.namespace, rec.spec.name, SETTLE_MS);
  }

  stop(): void {
    this.monitor?.close();
  }
}
