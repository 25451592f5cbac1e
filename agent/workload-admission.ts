/**
 * Admission of a registration request before anything is stored: the device mode the kernel can
 * give, and the kind-specific spec (a namespace that may hold a workload, a VM namespace of its own,
 * a tap device nobody uses). Keeps the index of which workload uses which network namespace.
 */
import { KitnetError } from '../common/errors.js';
import type { DeviceMode, NetnsId } from '../netkit/index.js';
import { macDerive, netnsIdEqual, netnsPathOf, vmNetnsNameFor } from '../netkit/index.js';
import type { KernelOps } from './kernel-ops.js';
import type { Store } from './store/store.js';
import type { WorkloadMode, WorkloadSpec } from './store/types.js';
import { hostIfnameFor, VM_BRIDGE, VM_TAP } from './workload-specs.js';

export interface WorkloadCreateInput {
  name: string;
  namespace: string;
  kind: 'netns' | 'vm' | 'tap';
  labels: Record<string, string>;
  netns?: string | undefined;
  device?: string | undefined;
  mac?: string | undefined;
  ipv4?: string | undefined;
  ipv6?: string | undefined;
  mode: 'auto' | 'veth' | 'netkit';
  interface?: string | undefined;
  ports?: Array<{ name: string; port: number; protocol: 'TCP' | 'UDP' | 'SCTP' }> | undefined;
  /** kinds vm and tap: `static` turns DHCP for the guest off. */
  addressing?: 'dhcp' | 'static' | undefined;
}

/** Who asks for a registration, as far as the agent's checks care. */
export interface RegisterCaller {
  /** An admin may put a workload in a namespace that holds interfaces kitnet did not make. */
  admin: boolean;
}

const netnsKey = (id: NetnsId): string => `${id.dev}:${id.ino}`;

/** Workload refs by namespace id and by path, and each ref's keys (so removal costs no scan). */
interface NetnsUsers {
  byId: Map<string, string>;
  byPath: Map<string, string>;
  byRef: Map<string, { id: string | undefined; path: string }>;
}

function netnsUsersSet(users: NetnsUsers, ref: string, path: string, id: NetnsId | undefined): void {
  const key = id ? netnsKey(id) : undefined;
  if (key !== undefined) users.byId.set(key, ref);
  users.byPath.set(path, ref);
  users.byRef.set(ref, { id: key, path });
}

export class WorkloadAdmission {
  /**
   * Which workload uses which network namespace, by nsfs id and by path: built from the store on
   * first use, then kept up to date by register and remove (one stat per registration, not one per
   * workload).
   */
  private netnsUsers: NetnsUsers | undefined;

  constructor(
    private readonly store: Store,
    private readonly kernel: KernelOps,
  ) {}

  async modeResolve(requested: WorkloadCreateInput['mode'], kind: WorkloadCreateInput['kind'] = 'netns'): Promise<WorkloadMode> {
    if (kind === 'tap') return 'tap';
    const mode = await this.pairModeResolve(requested);
    // a VM needs Ethernet frames on its link: netkit in L2 mode
    return kind === 'vm' && mode === 'netkit' ? 'netkit-l2' : mode;
  }

  private async pairModeResolve(requested: WorkloadCreateInput['mode']): Promise<DeviceMode> {
    const f = await this.kernel.features();
    if (requested === 'netkit' || (requested === 'auto' && f.netkit)) {
      if (!f.netkit) {
        throw new KitnetError(
          'AGENT_ERR_DATAPATH_UNSUPPORTED',
          `mode "netkit" needs Linux >= 6.7 with CONFIG_NETKIT; this kernel (${f.kernelRelease}) has none (${f.netkitDetail}). Use mode "veth" or "auto".`,
          { field: 'mode' },
        );
      }
      return 'netkit';
    }
    if (!f.tcx) {
      throw new KitnetError(
        'AGENT_ERR_DATAPATH_UNSUPPORTED',
        `mode "veth" needs tcx (Linux >= 6.6) to attach programs; this kernel is ${f.kernelRelease}`,
        { field: 'mode' },
      );
    }
    return 'veth';
  }

  /**
   * The kind-specific part of the spec: namespace path (validated and admitted, or chosen), vm
   * plumbing, tap device; `netnsId` of an existing namespace the workload goes into.
   */
  async kindSpecResolve(input: WorkloadCreateInput, caller: RegisterCaller): Promise<Pick<WorkloadSpec, 'netns' | 'vm' | 'tap'> & { netnsId?: NetnsId }> {
    if (input.kind === 'tap') {
      const device = input.device!;
      let tap;
      try {
        tap = await this.kernel.tapObserve({ device, ipv4: '0.0.0.0', ipv6: '::' });
        if (!tap) throw new Error(`device ${device} does not exist in the host namespace`);
        if (tap.problems.some((p) => p.includes('not a tap'))) throw new Error(`device ${device} is not a tap/vnet device`);
      } catch (err) {
        throw new KitnetError('AGENT_ERR_WORKLOAD_DEVICE', (err as Error).message, { field: 'device' });
      }
      // by name and by ifindex: the device may have been renamed since it was adopted
      const ifindex = tap.ifindex;
      const user = this.store.workloadList().find((w) => w.hostIfname === device || (w.spec.kind === 'tap' && w.observed?.hostIfindex === ifindex));
      if (user) {
        throw new KitnetError('AGENT_ERR_WORKLOAD_DEVICE_IN_USE', `device ${device} is already used by workload ${user.spec.namespace}/${user.spec.name}`, { field: 'device' });
      }
      return { netns: '', tap: { device, mac: input.mac!.toLowerCase() } };
    }
    if (input.kind === 'vm') {
      const hostIfname = hostIfnameFor(input.namespace, input.name);
      const vm = { tap: VM_TAP, bridge: VM_BRIDGE, mac: input.mac?.toLowerCase() ?? macDerive(`${hostIfname}/guest`) };
      if (input.netns !== undefined) {
        // the VM's peer is a bridge port: kitnet sets no routes in an adopted VM namespace
        const netnsId = await this.netnsAdmit(input.netns, caller, { routes: false });
        return { netns: input.netns, vm, netnsId };
      }
      const owned = vmNetnsNameFor(input.namespace, input.name);
      const path = netnsPathOf(owned);
      if (await this.kernel.netnsValidate(path).then(() => true, () => false)) {
        throw new KitnetError('AGENT_ERR_WORKLOAD_NETNS',
          `netns: ${path} already exists but kitnet did not make it for this workload; pass it as "netns" to adopt it, or delete it (ip netns del ${owned})`,
          { field: 'netns' });
      }
      return { netns: path, vm: { netnsOwnedName: owned, ...vm } };
    }
    const netnsId = await this.netnsAdmit(input.netns!, caller, { routes: true });
    return { netns: input.netns!, netnsId };
  }

  /**
   * May a workload go into the namespace at `path`? Never the agent's own or PID 1's (compared by
   * nsfs device and inode, whatever the path says), never one another workload uses; one that holds
   * interfaces kitnet did not make only for an admin; and, where kitnet sets default routes, none
   * may be there already (kitnet never replaces a route it did not make). Returns the namespace id.
   */
  private async netnsAdmit(path: string, caller: RegisterCaller, opts: { routes: boolean }): Promise<NetnsId> {
    const reserved = this.kernel.netnsReserved();
    let survey;
    try {
      survey = await this.kernel.netnsSurvey(path);
    } catch (err) {
      throw new KitnetError('AGENT_ERR_WORKLOAD_NETNS', `netns: ${(err as Error).message}`, { field: 'netns', cause: err });
    }
    if (netnsIdEqual(survey.id, reserved.agent) || netnsIdEqual(survey.id, reserved.init)) {
      const whose = netnsIdEqual(survey.id, reserved.init) ? "PID 1's network namespace (the host's)" : "the agent's own network namespace";
      throw new KitnetError('AGENT_ERR_WORKLOAD_NETNS_HOST',
        `netns: ${path} is ${whose}; kitnet never puts a workload there (its routes and devices are the host's)`, { field: 'netns' });
    }
    if (survey.id.cookie === undefined) {
      // the cookie is what binds the workload to this namespace for good (agent/reconciler.ts)
      throw new KitnetError('AGENT_ERR_WORKLOAD_NETNS',
        `netns: cannot read the cookie of the network namespace at ${path} (SO_NETNS_COOKIE, Linux >= 5.14), which kitnet binds the workload to`, { field: 'netns' });
    }
    const users = await this.netnsUsersGet();
    const user = users.byId.get(netnsKey(survey.id)) ?? users.byPath.get(path);
    if (user) {
      throw new KitnetError('AGENT_ERR_WORKLOAD_NETNS_IN_USE', `netns: ${path} is already used by workload ${user}; a namespace holds one workload`, { field: 'netns' });
    }
    const foreign = survey.links.filter((l) => l.ifname !== 'lo');
    if (foreign.length > 0 && !caller.admin) {
      const names = foreign.slice(0, 8).map((l) => `${l.ifname}${l.kind ? ` (${l.kind})` : ''}`).join(', ');
      throw new KitnetError('AGENT_ERR_WORKLOAD_NETNS_FOREIGN',
        `netns: ${path} holds interfaces kitnet did not make (${names}${foreign.length > 8 ? ', ...' : ''}); only an admin may register a workload in it`,
        { field: 'netns' });
    }
    if (opts.routes && survey.defaultRoutes.length > 0) {
      throw new KitnetError('AGENT_ERR_WORKLOAD_NETNS_ROUTES',
        `netns: ${path} already has a default route (${survey.defaultRoutes.join('; ')}) that kitnet did not make; kitnet never replaces routes: remove it or use a namespace of its own`,
        { field: 'netns' });
    }
    return survey.id;
  }

  private async netnsUsersGet(): Promise<NetnsUsers> {
    if (this.netnsUsers) return this.netnsUsers;
    const users: NetnsUsers = { byId: new Map(), byPath: new Map(), byRef: new Map() };
    for (const w of this.store.workloadList()) {
      if (w.spec.kind === 'tap' || !w.spec.netns) continue;
      netnsUsersSet(users, `${w.spec.namespace}/${w.spec.name}`, w.spec.netns, await this.kernel.netnsId(w.spec.netns));
    }
    return (this.netnsUsers = users);
  }

  netnsUsersRemove(ref: string): void {
    const keys = this.netnsUsers?.byRef.get(ref);
    if (!this.netnsUsers || !keys) return;
    if (keys.id !== undefined && this.netnsUsers.byId.get(keys.id) === ref) this.netnsUsers.byId.delete(keys.id);
    if (this.netnsUsers.byPath.get(keys.path) === ref) this.netnsUsers.byPath.delete(keys.path);
    this.netnsUsers.byRef.delete(ref);
  }

  /** A registration went into `path` (`id`, when admission surveyed it): the index learns it, if built. */
  async netnsUserAdd(ref: string, path: string, id: NetnsId | undefined): Promise<void> {
    if (this.netnsUsers) netnsUsersSet(this.netnsUsers, ref, path, id ?? (await this.kernel.netnsId(path)));
  }
}
