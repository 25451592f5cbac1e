import type { Logger } from 'pino';
import type { KernelOps } from './kernel-ops.js';
import type { LinkMonitor } from '../netkit/index.js';
import { hostAddressesListedSet } from './policy/host-destinations.js';

/** Address events within this window are handled once (a device coming up brings several). */
const SETTLE_MS = 200;

/**
 * Keeps the host's destinations in the ipcache (agent/policy/host-destinations.ts: its addresses,
 * their broadcast and anycast addresses) in step with the addresses the host has while the agent runs:
 * an address added by hand, by DHCP or SLAAC on an uplink, or removed, is announced by the kernel
 * (RTNLGRP_IPV4_IFADDR / RTNLGRP_IPV6_IFADDR); the addresses are then listed again (a netlink dump:
 * every device, running or not) and `follow` (PolicyEngine.hostDestinationsFollow) writes the ipcache
 * again, under the agent's mutex, if the set of host prefixes changed. Also once at start. Workload
 * devices' link-local addresses come and go with workloads but change nothing (fe80::/10 is one entry).
 */
export class HostAddressWatch {
  private monitor: LinkMonitor | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly kernel: Pick<KernelOps, 'addressChangesWatch' | 'hostAddressesList'>,
    private readonly follow: () => boolean,
    private readonly exclusive: <T>(fn: () => Promise<T>) => Promise<T>,
    private readonly log: Logger,
  ) {}

  /** Lists the host's addresses for the first ipcache write of the start (before start()). */
  async prime(): Promise<void> {
    await this.list();
  }

  private async list(): Promise<void> {
    // every address, on running devices or not (node:os leaves the latter out)
    hostAddressesListedSet(await this.kernel.hostAddressesList().catch((err: unknown) => {
      this.log.warn({ err }, 'cannot list the host\'s addresses; the ipcache follows those node:os reports');
      return undefined;
    }));
  }

  start(): void {
    this.monitor = this.kernel.addressChangesWatch(() => this.schedule());
    this.schedule(); // what changed between the start's ipcache sync and now
  }

  private schedule(): void {
    if (this.timer || !this.monitor) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.exclusive(async () => {
        if (!this.monitor) return false; // stopped meanwhile
        await this.list();
        return this.monitor ? this.follow() : false;
      })
        .then((wrote) => {
          if (wrote) this.log.info('host addresses changed; their ipcache entries follow');
        })
        .catch((err: unknown) => this.log.warn({ err }, 'host addresses changed but the ipcache could not follow; tried again at the next change'));
    }, SETTLE_MS);
    this.timer.unref();
  }

  stop(): void {
    this.monitor?.close();
    this.monitor = undefined;
    hostAddressesListedSet(undefined);
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
