import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import type { Logger } from 'pino';
import { KernelError, UnsupportedFeatureError, isMapFull } from '../common/kernel-error.js';
import { KitnetError } from '../common/errors.js';
import type { DeviceMode, EndpointDeviceSpec, TapAdoptSpec, VmPlumbingSpec } from '../netkit/index.js';
import type { NetnsId } from '../netkit/index.js';
import { macDerive, netnsIdEqual, netnsPathOf, vmNetnsNameFor } from '../netkit/index.js';
import type { Config } from './config.js';
import { IdentityAllocator, IdentityExhaustedError, lowestFree } from './identity/allocator.js';
import { workloadLabelKeyForbidden, type Label } from '../common/labels.js';
import type { ClusterServices } from './cluster/index.js';
import { ClusterIdentityError, ClusterIdentityExhaustedError } from './cluster/identity-allocator.js';
import { IpamError, Pool } from './ipam.js';
import type { KernelOps } from './kernel-ops.js';
import { WorkloadGoneError, type Reconciler } from './reconciler.js';
import type { WorkloadController } from './reconcile/controller.js';
import type { Store, StoreTx, TransactionOptions } from './store/store.js';
import type { WorkloadMode, WorkloadRecord, WorkloadSpec } from './store/types.js';
import type { Mutex } from './mutex.js';
import type { PolicyEngine } from './policy/engine.js';
import { workloadRegistrationObserve } from './metrics.js';

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

const ENDPOINT_ID_MAX = 65535;

/** Host-side interface name: stable for a workload, at most 15 bytes, recognisable as kitnet's. */
export function hostIfnameFor(namespace: string, name: string): string {
  return `kn${createHash('sha256').update(`${namespace}/${name}`).digest('hex').slice(0, 11)}`;
}

/**
 * The link group (IFLA_GROUP) that marks this agent instance's devices: derived from its state
 * directory, so a demo or test agent never sweeps the devices of the host's real agent.
 */
export function linkGroupFor(config: Config): number {
  const h = createHash('sha256').update(resolve(config.stateDir)).digest().readUInt32BE(0);
  return (h % 0x7ffffffe) + 1;
}

export function deviceSpecFor(rec: WorkloadRecord, config: Config): EndpointDeviceSpec {
  if (rec.mode === 'tap') throw new Error(`workload ${rec.spec.namespace}/${rec.spec.name} adopts a tap and has no pair`);
  return {
    group: linkGroupFor(config),
    hostIfname: rec.hostIfname,
    alias: `kitnet:${rec.spec.namespace}/${rec.spec.name}`,
    netnsPath: rec.spec.netns,
    peerIfname: rec.spec.interface,
    mode: rec.mode,
    ipv4: rec.ipv4,
    ipv6: rec.ipv6,
    ...(config.datapath.mtu ? { mtu: config.datapath.mtu } : {}),
    // kind vm: the peer is a bridge port; the host side gets a fixed MAC (the guest's gateway
    // neighbour entry stays valid when the pair is re-created)
    ...(rec.spec.kind === 'vm' ? { peerL3: false, hostMac: macDerive(`${rec.hostIfname}/host`) } : {}),
  };
}

/** Default names inside a VM's namespace. */
export const VM_TAP = 'tap0';
export const VM_BRIDGE = 'br0';
export const VM_UPLINK = 'uplink0';

/** kind vm: the plumbing inside the VM's namespace. */
export function vmSpecFor(rec: WorkloadRecord, config: Config): VmPlumbingSpec {
  const vm = rec.spec.vm;
  if (rec.spec.kind !== 'vm' || !vm) throw new Error(`workload ${rec.spec.namespace}/${rec.spec.name} is not a vm`);
  return {
    netnsPath: rec.spec.netns,
    ...(vm.netnsOwnedName !== undefined ? { netnsOwnedName: vm.netnsOwnedName } : {}),
    peerIfname: rec.spec.interface,
    tap: vm.tap,
    bridge: vm.bridge,
    ...(config.datapath.mtu ? { mtu: config.datapath.mtu } : {}),
  };
}

/** kind tap: the adopted device. */
export function tapSpecFor(rec: WorkloadRecord): TapAdoptSpec {
  if (rec.spec.kind !== 'tap' || !rec.spec.tap) throw new Error(`workload ${rec.spec.namespace}/${rec.spec.name} is not a tap`);
  return { device: rec.spec.tap.device, ipv4: rec.ipv4, ipv6: rec.ipv6 };
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

/** Maps errors from lower layers to catalogue errors a client can act on. */
export function errorToKitnet(err: unknown, context: string): KitnetError {
  if (err instanceof KitnetError) return err;
  if (err instanceof IpamError) {
    const code = {
      BAD_ADDRESS: 'AGENT_ERR_IPAM_BAD_ADDRESS',
      OUT_OF_POOL: 'AGENT_ERR_IPAM_OUT_OF_POOL',
      ADDRESS_TAKEN: 'AGENT_ERR_IPAM_ADDRESS_TAKEN',
      POOL_EXHAUSTED: 'AGENT_ERR_IPAM_POOL_EXHAUSTED',
    } as const;
    return new KitnetError(code[err.code], err.message, { cause: err });
  }
  if (err instanceof WorkloadGoneError) return new KitnetError('AGENT_ERR_WORKLOAD_NETNS', `${context}: ${err.message}`, { field: 'netns', cause: err });
  if (err instanceof IdentityExhaustedError || err instanceof ClusterIdentityExhaustedError) return new KitnetError('AGENT_ERR_IDENTITY_EXHAUSTED', err.message, { cause: err });
  if (err instanceof ClusterIdentityError) return new KitnetError('AGENT_ERR_CLUSTER_UNAVAILABLE', `${context}: ${err.message}`, { cause: err });
  if (err instanceof UnsupportedFeatureError) {
    // netkit is asked for with `mode`; everything else the kernel may lack (tun for VMs) comes with `kind`
    return new KitnetError('AGENT_ERR_DATAPATH_UNSUPPORTED', `${context}: ${err.message}`, { field: err.feature === 'netkit' ? 'mode' : 'kind', cause: err });
  }
  if (err instanceof KernelError) {
    // Kernel refusals caused by the request itself: a route kitnet needs is taken in the namespace
    // (its own default route), or the interface name is.
    if (err.errnoName === 'EEXIST' && err.device?.netns && err.op === 'RTM_NEWROUTE') {
      return new KitnetError('AGENT_ERR_WORKLOAD_NETNS_ROUTES', `${context}: ${err.message}`, { field: 'netns', cause: err });
    }
    if (err.errnoName === 'EEXIST' && err.device?.netns) {
      return new KitnetError('AGENT_ERR_WORKLOAD_INTERFACE', `${context}: ${err.message}`, { field: 'interface', cause: err });
    }
    if (isMapFull(err)) return new KitnetError('AGENT_ERR_MAP_FULL', `${context}: ${err.message}; the registration was rolled back`, { cause: err });
    return new KitnetError('AGENT_ERR_KERNEL', `${context}: ${err.message}`, { cause: err });
  }
  return new KitnetError('AGENT_ERR_INTERNAL', `${context}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

/**
 * Registration and removal of workloads. Desired state goes to the store first (state `pending`),
 * then the first reconcile runs at once and its result is the answer; a failure of that attempt
 * rolls both back so bad input or a kernel refusal leaves nothing behind. Later failures stay with
 * the reconcile loop, which retries. Mutations are serialised: the kernel work of one workload never interleaves
 * with another's, and allocation sees a consistent store.
 */
export class WorkloadService {
  private readonly identities: IdentityAllocator;
  private readonly pool4: Pool;
  private readonly pool6: Pool;
  /**
   * Which workload uses which network namespace, by nsfs id and by path: built from the store on
   * first use, then kept up to date by register and remove (one stat per registration, not one per
   * workload).
   */
  private netnsUsers: NetnsUsers | undefined;

  constructor(
    private readonly store: Store,
    private readonly config: Config,
    private readonly kernel: KernelOps,
    private readonly reconciler: Reconciler,
    private readonly log: Logger,
    /** Shared with every other service that changes desired state, so changes never interleave. */
    private readonly mutex: Mutex,
    private readonly policy: PolicyEngine,
    private readonly controller: WorkloadController,
    /** Cluster mode: identity numbers come from etcd, addresses go to its ipcache (agent/cluster/). */
    private readonly cluster?: ClusterServices,
  ) {
    const ids = cluster?.identities;
    this.identities = new IdentityAllocator(ids && { extraLabels: ids.extraLabels, numbers: () => ids.numbers() });
    this.pool4 = new Pool(config.ipam.ipv4Pool);
    this.pool6 = new Pool(config.ipam.ipv6Pool);
  }

  list(namespace?: string): WorkloadRecord[] {
    return this.store.workloadList(namespace);
  }

  get(namespace: string, name: string): WorkloadRecord {
    const rec = this.store.workloadGet(namespace, name);
    if (!rec) throw new KitnetError('AGENT_ERR_WORKLOAD_NOT_FOUND', `workload ${namespace}/${name} is not registered`);
    return rec;
  }

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
   * A store transaction that may create identities for `labelSets`: in cluster mode their numbers are
   * reserved in etcd first (the transaction itself never waits on the network), and what it did not
   * use is given back after.
   */
  private async identityTransaction<T>(labelSets: Label[][], fn: (tx: StoreTx) => T, opts?: TransactionOptions): Promise<T> {
    const ids = this.cluster?.identities;
    if (!ids) return this.store.transaction(fn, opts);
    try {
      await ids.reserve(this.store, labelSets);
    } catch (err) {
      // 503 (etcd out of reach) or 409 (range exhausted) for every caller: register, relabel, namespace labels.
      throw err instanceof ClusterIdentityError ? errorToKitnet(err, 'cluster identity') : err;
    }
    try {
      return await this.store.transaction(fn, opts);
    } finally {
      await ids.settle(this.store);
    }
  }

  /**
   * Cluster mode: the workloads' addresses in the cluster ipcache. A failure is logged, not the
   * caller's: the workload works on this host, and the entries are written again at the next start.
   */
  async ipcachePublish(records: readonly WorkloadRecord[], how: 'publish' | 'withdraw' = 'publish'): Promise<void> {
    const ipcache = this.cluster?.ipcache;
    if (!ipcache) return;
    for (const rec of records) {
      await ipcache[how](rec).catch((err: unknown) =>
        this.log.warn({ err, workload: `${rec.spec.namespace}/${rec.spec.name}`, identity: rec.identity }, `cannot ${how} the workload's addresses in the cluster ipcache`),
      );
    }
  }

  /** Cluster mode: identities the store released give back this host's etcd reference. */
  private async identitiesReleased(ids: readonly number[]): Promise<void> {
    await this.cluster?.identities.release(ids);
  }

  /** `caller` defaults to admin: the API passes who asks; the agent's own callers are trusted. */
  register(input: WorkloadCreateInput, caller: RegisterCaller = { admin: true }): Promise<WorkloadRecord> {
    return this.mutex.run(() => this.registerLocked(input, caller));
  }

  private async registerLocked(input: WorkloadCreateInput, caller: RegisterCaller): Promise<WorkloadRecord> {
    const started = performance.now();
    const ref = `${input.namespace}/${input.name}`;
    if (this.store.workloadGet(input.namespace, input.name)) {
      throw new KitnetError('AGENT_ERR_WORKLOAD_EXISTS', `workload ${ref} is already registered`, { field: 'name' });
    }
    const kindSpec = await this.kindSpecResolve(input, caller);
    const mode = await this.modeResolve(input.mode, input.kind);

    const spec: WorkloadSpec = {
      name: input.name,
      namespace: input.namespace,
      kind: input.kind,
      labels: input.labels,
      netns: kindSpec.netns,
      requestedMode: input.mode,
      interface: input.interface ?? (input.kind === 'vm' ? VM_UPLINK : input.kind === 'tap' ? input.device! : this.config.datapath.workloadIfname),
      ...(input.ports?.length ? { ports: input.ports } : {}),
      ...(kindSpec.vm ? { vm: kindSpec.vm } : {}),
      ...(kindSpec.tap ? { tap: kindSpec.tap } : {}),
      ...(input.addressing === 'static' ? { addressing: 'static' as const } : {}),
    };
    let rec: WorkloadRecord;
    try {
      // kind netns: not durable on its own (no fsync); the client has not been answered yet, and the
      // commit of state "ready" below syncs the log with this row in it. A power loss in between loses
      // the row but not the store's consistency, and the next start removes everything the kernel got
      // for it as orphans (the pair with its routes, pinned links, map entries). Kinds vm and tap also
      // make things the orphan sweep does not know (a VM namespace, routes via an adopted tap).
      const labelSets = [this.identities.labels(input.labels, input.namespace, this.store.namespaceGet(input.namespace)?.labels)];
      rec = await this.identityTransaction(labelSets, (tx) => {
        const used = tx.usedAddresses();
        const ipv4 = input.ipv4 ? this.pool4.check(input.ipv4, used.ipv4, 'ipv4') : this.pool4.allocate(used.ipv4, 'ipv4');
        const ipv6 = input.ipv6 ? this.pool6.check(input.ipv6, used.ipv6, 'ipv6') : this.pool6.allocate(used.ipv6, 'ipv6');
        const identity = this.identities.acquire(tx, input.labels, input.namespace, tx.namespaceGet(input.namespace)?.labels);
        const endpointId = lowestFree(tx.usedEndpointIds(), 1, ENDPOINT_ID_MAX);
        if (endpointId === undefined) throw new KitnetError('AGENT_ERR_INTERNAL', 'no free endpoint id left');
        return tx.workloadInsert({
          spec,
          mode,
          endpointId,
          identity,
          ipv4,
          ipv6,
          hostIfname: input.kind === 'tap' ? input.device! : hostIfnameFor(input.namespace, input.name),
        });
      }, { durable: input.kind !== 'netns' });
    } catch (err) {
      throw errorToKitnet(err, `workload ${ref}`);
    }

    const log = this.log.child({ workload: ref, device: rec.hostIfname, identity: rec.identity });
    try {
      // Policy first (entries are keyed by endpoint id, so they can precede the device): the programs
      // attached by the converge must find the endpoint's entries. Incremental: the endpoint's own
      // entries, and those of endpoints whose rules select its identity if that identity is new.
      await this.policy.endpointsUpdateSliced({ upsert: [rec] });
      // the first attempt of the reconcile loop, answered here: it writes state "ready"
      await this.controller.reconcileLocked(rec, { registering: true });
    } catch (err) {
      log.warn({ err }, 'registration failed; rolling back');
      await this.reconciler.workloadTeardown(rec).catch((e: unknown) => log.error({ err: e }, 'rollback teardown failed'));
      const released = await this.store.transaction((tx) => {
        tx.workloadDelete(input.namespace, input.name);
        return tx.identitiesReleaseUnused();
      });
      await this.identitiesReleased(released);
      // The policy map may already hold entries for the half-made endpoint and for peers of its identity.
      try {
        await this.policy.endpointsUpdateSliced({ remove: [rec] });
      } catch (e) {
        log.error({ err: e }, 'policy update after rollback failed');
      }
      workloadRegistrationObserve((performance.now() - started) / 1000, 'failure', mode);
      throw errorToKitnet(err, `registering workload ${ref}`);
    }
    const done = this.store.workloadGet(input.namespace, input.name)!;
    if (input.kind !== 'tap' && this.netnsUsers) {
      netnsUsersSet(this.netnsUsers, ref, done.spec.netns, kindSpec.netnsId ?? (await this.kernel.netnsId(done.spec.netns)));
    }
    log.info(
      { mode: done.mode, ipv4: done.ipv4, ipv6: done.ipv6, ifindex: done.observed?.hostIfindex, ms: +(performance.now() - started).toFixed(1) },
      'workload registered',
    );
    workloadRegistrationObserve((performance.now() - started) / 1000, 'success', done.mode);
    await this.ipcachePublish([done]);
    return done;
  }

  /**
   * The kind-specific part of the spec: namespace path (validated and admitted, or chosen), vm
   * plumbing, tap device; `netnsId` of an existing namespace the workload goes into.
   */
  private async kindSpecResolve(input: WorkloadCreateInput, caller: RegisterCaller): Promise<Pick<WorkloadSpec, 'netns' | 'vm' | 'tap'> & { netnsId?: NetnsId }> {
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

  private netnsUsersRemove(ref: string): void {
    const keys = this.netnsUsers?.byRef.get(ref);
    if (!this.netnsUsers || !keys) return;
    if (keys.id !== undefined && this.netnsUsers.byId.get(keys.id) === ref) this.netnsUsers.byId.delete(keys.id);
    if (this.netnsUsers.byPath.get(keys.path) === ref) this.netnsUsers.byPath.delete(keys.path);
    this.netnsUsers.byRef.delete(ref);
  }

  remove(namespace: string, name: string): Promise<WorkloadRecord> {
    return this.mutex.run(() => this.removeLocked(namespace, name));
  }

  /** remove, with the lock already held (the reconcile loop removes workloads whose namespace is gone). */
  async removeLocked(namespace: string, name: string): Promise<WorkloadRecord> {
    const rec = this.get(namespace, name);
    const log = this.log.child({ workload: `${namespace}/${name}`, device: rec.hostIfname, identity: rec.identity });
    await this.reconciler.workloadTeardown(rec);
    const released = await this.store.transaction((tx) => {
      tx.workloadDelete(namespace, name);
      return tx.identitiesReleaseUnused();
    });
    await this.identitiesReleased(released);
    await this.ipcachePublish([rec], 'withdraw');
    await this.policy.endpointsUpdateSliced({ remove: [rec] });
    this.netnsUsersRemove(`${namespace}/${name}`);
    log.info({ releasedIdentities: released }, 'workload removed');
    return rec;
  }

  /** Reconciles one workload now (its device was damaged from outside); no-op if it is gone. */
  repair(namespace: string, name: string): Promise<void> {
    return this.controller.reconcileNow(namespace, name);
  }

  /** Replaces a workload's labels: new identity, updated maps, policy updated for whom it concerns. */
  labelsSet(namespace: string, name: string, labels: Record<string, string>): Promise<WorkloadRecord> {
    return this.mutex.run(async () => {
      const rec = this.get(namespace, name);
      // The old identity is kept until policy took the new one, so a refusal can go back to it.
      const updated = await this.identitiesRederive([{ ...rec, spec: { ...rec.spec, labels } }], false);
      try {
        await this.policy.endpointsUpdateSliced({ upsert: updated });
      } catch (err) {
        // Refused (the policy map has no room for the new identity's entries) or failed: back to the
        // old labels and identity, in the store, the endpoint maps and policy.
        const restored = await this.identitiesRederive([rec]);
        await this.policy.endpointsUpdateSliced({ upsert: restored }).catch((e: unknown) =>
          this.log.error({ err: e, workload: `${namespace}/${name}` }, 'policy update after a refused relabel failed'));
        throw errorToKitnet(err, `relabelling workload ${namespace}/${name}`);
      }
      await this.identitiesReleaseUnused();
      return updated[0]!;
    });
  }

  /**
   * Releases the identities no workload uses any more (kept by `identitiesRederive(.., false)` until
   * policy took the new ones) and drops their policy entries. Runs under the caller's lock.
   */
  async identitiesReleaseUnused(): Promise<void> {
    const released = await this.store.transaction((tx) => tx.identitiesReleaseUnused());
    await this.identitiesReleased(released);
    if (released.length) await this.policy.endpointsUpdateSliced({ released });
  }

  /**
   * Recomputes the identities of the given workloads (after a label or namespace-label change),
   * writes the new numbers to the endpoint map and ipcache, and releases identities left unused.
   * Runs under the caller's lock; the caller updates policy afterwards (and, with `releaseUnused`
   * false, releases the identities left unused once it has). Established connections
   * that remain allowed keep flowing: conntrack entries are not touched.
   */
  async identitiesRederive(records: WorkloadRecord[], releaseUnused = true): Promise<WorkloadRecord[]> {
    const labelSets = records.map((rec) => this.identities.labels(rec.spec.labels, rec.spec.namespace, this.store.namespaceGet(rec.spec.namespace)?.labels));
    const { changed, released } = await this.identityTransaction(labelSets, (tx) => {
      const out: WorkloadRecord[] = [];
      for (const rec of records) {
        const nsLabels = tx.namespaceGet(rec.spec.namespace)?.labels;
        const identity = this.identities.acquire(tx, rec.spec.labels, rec.spec.namespace, nsLabels);
        tx.workloadUpdate(rec.spec.namespace, rec.spec.name, rec.spec, identity);
        out.push(tx.workloadGet(rec.spec.namespace, rec.spec.name)!);
      }
      return { changed: out, released: releaseUnused ? tx.identitiesReleaseUnused() : [] };
    });
    await this.identitiesReleased(released);
    for (const rec of changed) this.reconciler.endpointMapsWrite(rec);
    await this.ipcachePublish(changed);
    return changed;
  }

  /**
   * Workloads stored before the labels kitnet derives were refused may still carry them, and their
   * stored identity with them (a forged namespace label). Re-derives their identities, which ignore
   * those labels, and updates policy. Runs at start, under the caller's lock, after the restore.
   */
  async forgedLabelsScrub(): Promise<WorkloadRecord[]> {
    const forged = this.store.workloadList().filter((r) => Object.keys(r.spec.labels).some((k) => workloadLabelKeyForbidden(k) !== undefined));
    if (forged.length === 0) return [];
    for (const r of forged) {
      this.log.warn({ workload: `${r.spec.namespace}/${r.spec.name}`, labels: Object.keys(r.spec.labels).filter((k) => workloadLabelKeyForbidden(k)) },
        'workload carries labels kitnet derives itself (stored before they were refused); its identity no longer includes them');
    }
    const updated = await this.identitiesRederive(forged);
    await this.policy.endpointsUpdateSliced({ upsert: updated });
    return updated;
  }

  /** Runs fn while no registration or removal is in progress (startup sync, shutdown). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.mutex.run(fn);
  }
}
