import type { Logger } from 'pino';
import type { KernelOps } from './kernel-ops.js';
import type { LinkMonitor } from '../netkit/index.js';
import { hostDestinationsListedSet } from './policy/host-destinations.js';

/** Address events within this window are handled once (a device coming up brings several). */
const SETTLE_MS = 200;

/**
 * Keeps the host's destinations in the ipcache (agent/policy/host-destinations.ts: its addresses, and
 * what its local routing table delivers locally: broadcast, anycast, local prefixes) in step with the
 * host while the agent runs: an address added by hand, by DHCP or SLAAC on an uplink, or removed, and a
 * local-table route that came or went (the kernel's own, as when IPv6 forwarding is switched on, or
 * `ip route add local 198.51.100.0/24 dev lo`) is announced by the kernel (RTNLGRP_IPV4_IFADDR /
 * RTNLGRP_IPV6_IFADDR, RTNLGRP_IPV4_ROUTE / RTNLGRP_IPV6_ROUTE of table 255); addresses and local table
 * are then listed again (netlink dumps: every device, running or not) and `follow`
 * (PolicyEngine.hostDestinationsFollow) writes the ipcache again, under the agent's mutex, if the set of
 * host prefixes changed. Also once at start. Workload devices' link-local addresses and their local
 * routes come and go with workloads but change nothing (fe80::/10 and ff00::/8 are one entry each).
 */
export class HostAddressWatch {
  private monitor: LinkMonitor | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly kernel: Pick<KernelOps, 'addressChangesWatch' | 'hostAddressesList' | 'hostLocalDeliveryList'>,
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
    const [addresses, localDelivery] = await Promise.all([
      this.kernel.hostAddressesList().catch((err: unknown) => {
        this.log.warn({ err }, 'cannot list the host\'s addresses; the ipcache follows those node:os reports');
        return undefined;
      }),
      this.kernel.hostLocalDeliveryList().catch((err: unknown) => {
        this.log.warn({ err }, 'cannot read the host\'s local routing table; its broadcast, anycast and local prefixes are left out of the host entries');
        return [];
      }),
    ]);
    hostDestinationsListedSet(addresses ? { addresses, localDelivery } : undefined);
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
    hostDestinationsListedSet(undefined);
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
