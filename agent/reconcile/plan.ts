// The pure half of the reconcile loop: what the kernel should get, from what the store wants and what
// the kernel has. No I/O here; agent/reconciler.ts observes and applies, agent/reconcile/controller.ts
// decides when.
import type { EndpointInfo } from '../../bpf/index.js';
import { EP_F_DHCP_TO_HOST, EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC } from '../../bpf/layout.gen.js';
import { dhcpServedKind } from '../addressing/dhcp4-server.js';
import type { WorkloadRecord } from '../store/types.js';

/** A workload's device as the kernel has it: the pair's host side (netns, vm) or the adopted tap. */
export interface ObservedDevice {
  hostIfindex: number;
  hostMac: string;
  /** The workload side's MAC (the peer's; kind tap: the guest's). */
  peerMac: string;
  peerIfindex: number;
  /** What differs from the spec (empty: present and correct). */
  problems: readonly string[];
  /**
   * Nothing crosses the device yet (it is made so until its programs are attached; an open failed or
   * the agent stopped before it): netkit's peer policy is drop, a veth's host side is down, an adopted
   * tap has no routes to its guest.
   */
  closed: boolean;
}

/** What the kernel has for one workload. */
export interface ObservedWorkload {
  /** The workload's network namespace exists (kind tap: always true, it lives in the host's). */
  netns: boolean;
  /**
   * Its path names a namespace other than the one the workload was registered into (or the host's or
   * the agent's own): that one is gone, and nothing of the workload's may go into this one.
   */
  netnsReplaced?: string;
  /** undefined: the host side (or the tap) does not exist. */
  device: ObservedDevice | undefined;
  /** kind vm: tap and bridge in the VM's namespace (undefined: missing). */
  vmPlumbing?: { problems: readonly string[] } | undefined;
  /** The `endpoints` entry under the device's ifindex. */
  endpoint: EndpointInfo | undefined;
  /** Both programs are attached through pinned links on the device, and they are the loaded ones. */
  attached: boolean;
  /**
   * Both links are live on the device, with the loaded programs or earlier ones (an upgraded agent's
   * first look): its traffic is judged. false: a direction passes unjudged (links detached, their pins
   * removed), so an open device is closed before the programs are attached again.
   */
  judged: boolean;
}

export type ReconcileAction =
  /** Its namespace (or its tap) is gone: the workload goes, with everything kitnet made for it. */
  | { op: 'workloadRemove'; reason: string }
  /** kind vm: make the VM's namespace again (kitnet made it; a reboot empties /var/run/netns). */
  | { op: 'vmNetnsEnsure' }
  /** Create the pair, or fix what differs (re-created when the pair itself is wrong). */
  | { op: 'deviceRepair'; reason: string }
  /** kind vm: tap and bridge in the VM's namespace, peer and tap enslaved. */
  | { op: 'vmPlumbingCreate'; reason: string }
  /** kind tap: checked again (a device that is no tap is refused). */
  | { op: 'tapAdopt'; reason: string }
  /** Endpoint and ipcache entries; an entry under an earlier ifindex of the workload goes. */
  | { op: 'endpointMapsWrite'; reason: string }
  /**
   * Hold traffic back again, as at creation, on an open device whose programs are missing (first of
   * all): nothing crosses it unjudged until `attach` and `deviceOpen` have run.
   */
  | { op: 'deviceClose'; reason: string }
  | { op: 'attach' }
  /**
   * Let traffic through, now that the programs and the endpoint entry are in place: netkit's
   * policies (primary and peer) to forward, a veth's host side up with its routes, an adopted tap's routes.
   */
  | { op: 'deviceOpen' };

/** The MAC the workload sends from: the guest NIC's for kinds vm and tap, else the peer's. */
function workloadMacFor(rec: WorkloadRecord): string | undefined {
  return rec.spec.vm?.mac ?? rec.spec.tap?.mac;
}

/** The `endpoints` entry a workload needs on its device. */
export function endpointInfoFor(rec: WorkloadRecord, device: Pick<ObservedDevice, 'peerMac' | 'hostMac'>): EndpointInfo {
  // The datapath answers the workload's ARP / neighbour solicitations for the gateways with the
  // host side's MAC, so guests that resolve their gateway (VMs, flushed caches) keep working.
  const hostMac = rec.mode === 'netkit' ? undefined : device.hostMac;
  return {
    endpointId: rec.endpointId,
    identity: rec.identity,
    ipv4: rec.ipv4,
    ipv6: rec.ipv6,
    mac: workloadMacFor(rec) ?? device.peerMac,
    // Anti-spoofing: a workload may only send from its own addresses (and MAC, where frames carry one).
    // On a netkit pair the datapath runs before the host side sees a frame: the guest's first DHCP
    // broadcasts (from 0.0.0.0) are handed to the agent's packet socket there instead of dropped.
    flags: EP_F_ENFORCE_SRC_IP | (rec.mode === 'netkit' ? 0 : EP_F_ENFORCE_SRC_MAC) |
      (rec.mode === 'netkit-l2' && dhcpServedKind(rec) ? EP_F_DHCP_TO_HOST : 0),
    ...(hostMac ? { hostMac } : {}),
  };
}

/**
 * A MAC as the `endpoints` map gives it back: all zeros reads as '' there, and a netkit L3 peer's
 * MAC is all zeros (it has none), so the two must compare equal or the entry is rewritten on every
 * resync.
 */
function macKey(mac: string | undefined): string {
  const m = (mac ?? '').toLowerCase();
  return /^00(:00){5}$/.test(m) ? '' : m;
}

function endpointDiffers(want: EndpointInfo, have: EndpointInfo | undefined): string | undefined {
  if (!have) return 'endpoint entry missing';
  if (have.endpointId !== want.endpointId) return `endpoint entry is endpoint ${have.endpointId}, want ${want.endpointId}`;
  if (have.identity !== want.identity) return `endpoint entry has identity ${have.identity}, want ${want.identity}`;
  if (have.flags !== want.flags) return `endpoint entry flags ${have.flags}, want ${want.flags}`;
  if (macKey(have.mac) !== macKey(want.mac)) return `endpoint entry MAC ${have.mac || 'none'}, want ${want.mac}`;
  if (macKey(have.hostMac) !== macKey(want.hostMac)) return `endpoint entry host MAC ${have.hostMac ?? 'none'}, want ${want.hostMac ?? 'none'}`;
  return undefined;
}

/**
 * The actions that take the kernel from `observed` to what `desired` asks for, in the order they must
 * run: device (closed first when it is open without its programs; made or left closed), maps, programs,
 * then the device opens: no packet crosses before the programs and the endpoint entry they judge by are
 * in place. Empty when nothing differs. `makeOwnedNetns`: a namespace kitnet makes
 * for a VM is made when missing (at registration, and at restore after a reboot emptied
 * /var/run/netns); at any other time a vanished namespace means the VM is gone.
 */
export function reconcilePlan(desired: WorkloadRecord, observed: ObservedWorkload, opts: { makeOwnedNetns?: boolean } = {}): ReconcileAction[] {
  const { spec } = desired;
  if (spec.kind === 'tap' && !observed.device) {
    // an adopted tap is the hypervisor's: gone means the VM is gone (kitnet never re-creates it)
    return [{ op: 'workloadRemove', reason: `its tap device ${spec.tap?.device ?? desired.hostIfname} is gone` }];
  }
  const ownedNetns = spec.kind === 'vm' && spec.vm?.netnsOwnedName !== undefined;
  if (spec.kind !== 'tap' && !observed.netns && !(ownedNetns && opts.makeOwnedNetns)) {
    return [{ op: 'workloadRemove', reason: observed.netnsReplaced ?? `its network namespace ${spec.netns} is gone` }];
  }

  const actions: ReconcileAction[] = [];
  const device = observed.device;
  // An open device without its programs lets traffic through unjudged: closed before anything else is
  // done to it (a repair that fails must not leave it open; one in place keeps it closed, one that
  // makes it again makes it closed), opened once they are attached.
  const unjudged = device !== undefined && !device.closed && !observed.judged;
  if (unjudged) actions.push({ op: 'deviceClose', reason: 'open without its programs' });
  /** The device is (or may be) made again: everything on it follows. */
  let remade = false;
  if (spec.kind === 'tap') {
    if (device!.problems.length > 0) actions.push({ op: 'tapAdopt', reason: device!.problems.join('; ') });
  } else {
    if (!observed.netns) actions.push({ op: 'vmNetnsEnsure' });
    if (!device || device.problems.length > 0) {
      actions.push({ op: 'deviceRepair', reason: device ? device.problems.join('; ') : `device ${desired.hostIfname} missing` });
      remade = true;
    }
    if (spec.kind === 'vm') {
      const problems = observed.vmPlumbing ? observed.vmPlumbing.problems : ['tap and bridge missing'];
      if (remade || problems.length > 0) actions.push({ op: 'vmPlumbingCreate', reason: remade ? 'the pair is new' : problems.join('; ') });
    }
  }

  const staleIfindex = desired.observed && device && desired.observed.hostIfindex !== device.hostIfindex ? desired.observed.hostIfindex : undefined;
  const entryProblem = remade || !device
    ? 'the device is new'
    : staleIfindex !== undefined
      ? `the device was ifindex ${staleIfindex}, now ${device.hostIfindex}`
      : endpointDiffers(endpointInfoFor(desired, device), observed.endpoint);
  if (entryProblem) actions.push({ op: 'endpointMapsWrite', reason: entryProblem });
  if (remade || !observed.attached) actions.push({ op: 'attach' });
  if (remade || unjudged || device?.closed) actions.push({ op: 'deviceOpen' });
  return actions;
}
