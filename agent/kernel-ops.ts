import type { KitnetDatapath } from '../bpf/index.js';
import type {
  EndpointDevice, EndpointDeviceSpec, HostAddress, KernelFeatures, KitnetLink, LinkGone, LinkMonitor, NetnsId, NetnsSurvey, TapAdoptSpec, TapAdopted,
  VmPlumbing, VmPlumbingSpec,
} from '../netkit/index.js';

/**
 * Everything the agent asks of the kernel, in one narrow interface: the agent's logic can be unit
 * tested against a fake, and the root integration tests run it against the real netkit/ and bpf/.
 */
export interface KernelOps {
  features(): Promise<KernelFeatures>;
  netnsValidate(path: string): Promise<void>;
  /** Which namespace the path is, its interfaces and default routes (throws as netnsValidate). */
  netnsSurvey(path: string): Promise<NetnsSurvey>;
  /** Which namespace the path is now; undefined when it is none (gone, not nsfs). */
  netnsId(path: string): Promise<NetnsId | undefined>;
  /** The agent's own network namespace and PID 1's (undefined when unreadable): never a workload's. */
  netnsReserved(): { agent: NetnsId; init: NetnsId | undefined };
  deviceDelete(hostIfname: string): Promise<boolean>;
  /** The endpoint as the kernel has it, with what differs from the spec; undefined when its host side is missing. */
  deviceObserve(spec: EndpointDeviceSpec): Promise<EndpointDevice | undefined>;
  /** Adopts the endpoint as it is, fixing what differs from the spec; creates it when the pair is missing. */
  deviceRepair(spec: EndpointDeviceSpec): Promise<EndpointDevice>;
  linksList(): Promise<KitnetLink[]>;
  /**
   * Lets traffic through a pair made closed, once its programs are attached: netkit's peer policy to
   * forward, a veth's host side up with its routes (idempotent).
   */
  deviceOpen(spec: EndpointDeviceSpec): Promise<void>;
  /**
   * Closes an open pair as it is made (netkit's policies to drop, a veth's host side down without its
   * routes), before programs that went missing are attached again (idempotent).
   */
  deviceClose(spec: EndpointDeviceSpec): Promise<void>;
  /**
   * Reports links removed from the host namespace (a workload's namespace or process went away); when
   * the kernel dropped events, every link present instead (`onResync`).
   */
  linkRemovalsWatch(onGone: (link: LinkGone) => void, onResync: (present: ReadonlySet<string>) => void): LinkMonitor;
  /**
   * Reports that an address of the host namespace, or a route of its local table, came or went (or
   * that such events were lost).
   */
  addressChangesWatch(onChange: () => void): LinkMonitor;
  /** Every address of the host namespace, running device or not. */
  hostAddressesList(): Promise<HostAddress[]>;
  /** What the host namespace's local table delivers locally (local, broadcast, anycast, multicast), `addr/len`. */
  hostLocalDeliveryList(): Promise<string[]>;
  /** kind vm: the VM's namespace (an owned one is created when missing). */
  vmNetnsEnsure(spec: VmPlumbingSpec): Promise<{ created: boolean }>;
  /** kind vm: tap + bridge in the VM's namespace, peer and tap enslaved (idempotent). */
  vmPlumbingCreate(spec: VmPlumbingSpec): Promise<VmPlumbing>;
  vmPlumbingObserve(spec: VmPlumbingSpec): Promise<VmPlumbing | undefined>;
  /** kind vm: removes tap and bridge, and the namespace when kitnet made it. */
  vmPlumbingDelete(spec: VmPlumbingSpec): Promise<void>;
  /** kind tap: host routes through an existing tap (the device itself is left alone): the tap's open. */
  tapAdopt(spec: TapAdoptSpec): Promise<TapAdopted>;
  tapObserve(spec: TapAdoptSpec): Promise<TapAdopted | undefined>;
  tapRelease(spec: TapAdoptSpec): Promise<void>;
  readonly datapath: KitnetDatapath;
}
