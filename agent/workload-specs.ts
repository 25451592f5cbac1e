/**
 * What the kernel gets for a workload record: the host-side name and link group that mark it as this
 * agent's, and the specs of its device pair, VM plumbing or adopted tap.
 */
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import type { EndpointDeviceSpec, TapAdoptSpec, VmPlumbingSpec } from '../netkit/index.js';
import { macDerive } from '../netkit/index.js';
import type { Config } from './config.js';
import type { WorkloadRecord } from './store/types.js';

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
    ...(rec.spec.netnsId ? { netnsId: rec.spec.netnsId } : {}),
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
    ...(rec.spec.netnsId ? { netnsId: rec.spec.netnsId } : {}),
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
