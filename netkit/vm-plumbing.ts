// VM plumbing: what a hypervisor needs around a workload pair, inside the VM's network namespace
// (kind: vm), and the host-side handling of an adopted tap/vnet device (kind: tap).
//
//   host ns:   [host side of the pair]  <- programs attach here, /32 and /128 routes point here
//   VM netns:  [peer] --- br0 (bridge) --- tap0  <- qemu opens tap0 (ip netns exec NS qemu ... ifname=tap0)
//
// The peer, the bridge and the tap carry no addresses and have IPv6 disabled, so the only frames that
// leave the namespace are the guest's own (its MAC is the endpoint's MAC for anti-spoofing).
// The bridge is created with rtnetlink; the tap needs /dev/net/tun ioctls (TUNSETIFF + TUNSETPERSIST)
// that Node cannot issue, so it is made with iproute2 entered into the namespace (nsenter --net).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { isErrno, UnsupportedFeatureError } from '../common/kernel-error.js';
import { attr, ifinfomsg, message, messageAttrs, nest, readU32, str, u32, u8 } from './attrs.js';
import { EndpointSpecError, ifnameValidate } from './errors.js';
import type { LinkInfo } from './link.js';
import { linkDelete, linkGet, linkSet } from './link.js';
import { netnsCreate, netnsDelete, netnsIdExpect, netnsNameValidate, netnsPathId, netnsPathOf, netnsPathValidate, type NetnsId } from './netns.js';
import { hostRoutesPresent, routeAdd, routeMessage } from './route.js';
import type { Rtnl } from './socket.js';
import { withNetns } from './netns-pool.js';
import { rtnlHost } from './socket.js';
import { hostSideSysctlsApply, sysctlIfname } from './sysctl.js';
import {
  IFINFOMSG_LEN, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MTU, IFLA_IFNAME, NLM_F_ACK,
  NLM_F_CREATE, NLM_F_EXCL, RTM_DELROUTE, RTM_GETLINK, RTM_NEWLINK,
} from './uapi.js';

const execFileP = promisify(execFile);

// linux/if_link.h
const IFLA_MASTER = 10;
const IFLA_BR_FORWARD_DELAY = 1;
const IFLA_BR_STP_STATE = 5;
const IFLA_BR_MCAST_SNOOPING = 23;

export interface VmPlumbingSpec {
  /** Path of the VM's network namespace. */
  netnsPath: string;
  /** Set when kitnet made the namespace (a name under /var/run/netns): created if missing, deleted on removal. */
  netnsOwnedName?: string;
  /** An adopted namespace: the one the path must still be (another one there is never touched). */
  netnsId?: NetnsId;
  /** The pair's peer inside the namespace (made by endpointDeviceCreate with peerL3: false). */
  peerIfname: string;
  /** The tap device the hypervisor opens (default tap0). */
  tap: string;
  /** The bridge joining peer and tap (default br0). */
  bridge: string;
  mtu?: number;
}

export interface VmPlumbing {
  netnsPath: string;
  tapIfindex: number;
  bridgeIfindex: number;
  /** From vmPlumbingObserve: what differs from the spec (empty = present and correct). */
  problems: string[];
}

/** A stable namespace name for a VM workload: readable when short, hashed to stay within limits. */
export function vmNetnsNameFor(namespace: string, name: string): string {
  const plain = `kitnet-vm-${namespace}-${name}`;
  if (plain.length <= 48) return plain;
  const h = createHash('sha256').update(`${namespace}/${name}`).digest('hex').slice(0, 10);
  return `kitnet-vm-${`${namespace}-${name}`.slice(0, 32)}-${h}`;
}

function specValidate(spec: VmPlumbingSpec): void {
  ifnameValidate('tap', spec.tap);
  ifnameValidate('bridge', spec.bridge);
  ifnameValidate('peerIfname', spec.peerIfname);
  if (new Set([spec.tap, spec.bridge, spec.peerIfname]).size !== 3) {
    throw new EndpointSpecError('tap', `tap (${spec.tap}), bridge (${spec.bridge}) and peer (${spec.peerIfname}) need distinct names`);
  }
  if (spec.netnsOwnedName !== undefined) {
    netnsNameValidate(spec.netnsOwnedName);
    if (netnsPathOf(spec.netnsOwnedName) !== spec.netnsPath) {
      throw new EndpointSpecError('netns', `an owned namespace ${spec.netnsOwnedName} must live at ${netnsPathOf(spec.netnsOwnedName)}`);
    }
  }
}

/**
 * The VM's namespace exists afterwards: an owned one is created when missing (true = created now);
 * an adopted one must already exist. Returns the namespace inode.
 */
export async function vmNetnsEnsure(spec: VmPlumbingSpec): Promise<{ created: boolean; inode: number }> {
  specValidate(spec);
  try {
    return { created: false, inode: await netnsPathValidate(spec.netnsPath) };
  } catch (err) {
    if (spec.netnsOwnedName === undefined) throw err;
  }
  // an empty mount point left by a crashed `ip netns add` makes `add` fail: clear it first
  await netnsDelete(spec.netnsOwnedName).catch(() => false);
  await netnsCreate(spec.netnsOwnedName);
  return { created: true, inode: await netnsPathValidate(spec.netnsPath) };
}

/** IFLA_MASTER of a link (0 = none). */
async function masterOf(nl: Rtnl, ifindex: number): Promise<number> {
  try {
    const msgs = await nl.request(RTM_GETLINK, 0, message(ifinfomsg({ index: ifindex })), { ifindex });
    const m = msgs.find((x) => x.type === RTM_NEWLINK);
    const a = m ? messageAttrs(m.data, IFINFOMSG_LEN).get(IFLA_MASTER) : undefined;
    return a ? readU32(a) : 0;
  } catch (err) {
    if (isErrno(err, 'ENODEV')) return 0;
    throw err;
  }
}

async function noIpv6(nl: Rtnl, ifname: string): Promise<void> {
  try {
    await nl.sysctlWrite(`net/ipv6/conf/${sysctlIfname(ifname)}/disable_ipv6`, '1');
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOENT') throw err; // IPv6 off altogether: nothing to do
  }
}

async function bridgeEnsure(nl: Rtnl, spec: VmPlumbingSpec): Promise<LinkInfo> {
  const have = await linkGet(nl, spec.bridge);
  if (have && have.kind !== 'bridge') {
    throw new EndpointSpecError('bridge', `${spec.bridge} in ${spec.netnsPath} is a ${have.kind || 'plain'} device, not a bridge`);
  }
  if (!have) {
    const attrs = [attr(IFLA_IFNAME, str(spec.bridge))];
    if (spec.mtu !== undefined) attrs.push(attr(IFLA_MTU, u32(spec.mtu)));
    attrs.push(nest(IFLA_LINKINFO, [
      attr(IFLA_INFO_KIND, str('bridge')),
      // no STP (two ports, no loops), forwarding at once, no multicast snooping (ND must flood)
      nest(IFLA_INFO_DATA, [attr(IFLA_BR_STP_STATE, u32(0)), attr(IFLA_BR_FORWARD_DELAY, u32(0)), attr(IFLA_BR_MCAST_SNOOPING, u8(0))]),
    ]));
    await nl.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK, message(ifinfomsg(), attrs), { name: spec.bridge });
  }
  await noIpv6(nl, spec.bridge);
  const br = (await linkGet(nl, spec.bridge))!;
  if (!br.up) await linkSet(nl, { name: spec.bridge, ifindex: br.ifindex }, { up: true });
  return br;
}

async function tapEnsure(nl: Rtnl, spec: VmPlumbingSpec): Promise<LinkInfo> {
  let tap = await linkGet(nl, spec.tap);
  if (tap && tap.kind !== 'tun') {
    throw new EndpointSpecError('tap', `${spec.tap} in ${spec.netnsPath} is a ${tap.kind || 'plain'} device, not a tap`);
  }
  if (!tap) {
    await tunDeviceEnsure();
    try {
      await execFileP('nsenter', [`--net=${spec.netnsPath}`, 'ip', 'tuntap', 'add', 'dev', spec.tap, 'mode', 'tap'], { timeout: 10_000 });
    } catch (err) {
      const e = err as { stderr?: string; message?: string };
      throw new Error(`creating tap ${spec.tap} in ${spec.netnsPath} (ip tuntap add) failed: ${(e.stderr ?? e.message ?? '').trim()}`, { cause: err });
    }
    tap = await linkGet(nl, spec.tap);
    if (!tap) throw new Error(`tap ${spec.tap} vanished right after it was created in ${spec.netnsPath}`);
  }
  await noIpv6(nl, spec.tap);
  return tap;
}

const TUN_DEVICE = '/dev/net/tun';

/**
 * `ip tuntap add` opens /dev/net/tun. Without udev's static nodes (minimal hosts, containers, the lab
 * VM) the node only appears once the tun module is loaded, and opening a missing node gives a bare
 * ENOENT: load the module once, or say what is missing.
 */
async function tunDeviceEnsure(): Promise<void> {
  if (existsSync(TUN_DEVICE)) return;
  await execFileP('modprobe', ['tun'], { timeout: 10_000 }).catch(() => undefined);
  if (!existsSync(TUN_DEVICE)) {
    throw new UnsupportedFeatureError('tap devices', `the tun driver: ${TUN_DEVICE} is missing and \`modprobe tun\` did not provide it (CONFIG_TUN)`);
  }
}

async function portEnsure(nl: Rtnl, port: LinkInfo, bridge: LinkInfo, mtu: number | undefined): Promise<void> {
  const master = await masterOf(nl, port.ifindex);
  const extra = master === bridge.ifindex ? [] : [attr(IFLA_MASTER, u32(bridge.ifindex))];
  const mtuChange = mtu !== undefined && port.mtu !== mtu ? mtu : undefined;
  if (extra.length || !port.up || mtuChange !== undefined) {
    await linkSet(nl, { name: port.ifname, ifindex: port.ifindex }, { up: true, mtu: mtuChange, extra });
  }
}

/**
 * Makes (or repairs) tap and bridge inside the VM namespace and enslaves the peer and the tap; all
 * up. Idempotent: existing correct pieces are kept. The peer must exist (made with the pair).
 */
export async function vmPlumbingCreate(spec: VmPlumbingSpec): Promise<VmPlumbing> {
  specValidate(spec);
  const id = await netnsPathId(spec.netnsPath);
  netnsIdExpect(spec.netnsPath, spec.netnsId, id);
  return withNetns(spec.netnsPath, async (nl) => {
    const lo = await linkGet(nl, 'lo');
    if (lo && !lo.up) await linkSet(nl, { name: 'lo', ifindex: lo.ifindex }, { up: true });
    const peer = await linkGet(nl, spec.peerIfname);
    if (!peer) throw new EndpointSpecError('interface', `the pair's peer ${spec.peerIfname} is missing in ${spec.netnsPath}`);
    const bridge = await bridgeEnsure(nl, spec);
    const tap = await tapEnsure(nl, spec);
    await portEnsure(nl, peer, bridge, spec.mtu);
    await portEnsure(nl, tap, bridge, spec.mtu);
    return { netnsPath: spec.netnsPath, tapIfindex: tap.ifindex, bridgeIfindex: bridge.ifindex, problems: [] };
  }, id.ino);
}

/** What the kernel has: undefined if the namespace is gone; otherwise the pieces and their problems. */
export async function vmPlumbingObserve(spec: VmPlumbingSpec): Promise<VmPlumbing | undefined> {
  specValidate(spec);
  let inode: number;
  try {
    const id = await netnsPathId(spec.netnsPath);
    netnsIdExpect(spec.netnsPath, spec.netnsId, id);
    inode = id.ino;
  } catch {
    return undefined;
  }
  return withNetns(spec.netnsPath, async (nl) => {
    const problems: string[] = [];
    const bridge = await linkGet(nl, spec.bridge);
    const tap = await linkGet(nl, spec.tap);
    const peer = await linkGet(nl, spec.peerIfname);
    if (!bridge || bridge.kind !== 'bridge') problems.push(`bridge ${spec.bridge} missing in ${spec.netnsPath}`);
    else if (!bridge.up) problems.push(`bridge ${spec.bridge} is down`);
    if (!tap || tap.kind !== 'tun') problems.push(`tap ${spec.tap} missing in ${spec.netnsPath}`);
    else if (!tap.up) problems.push(`tap ${spec.tap} is down`);
    for (const port of [tap, peer]) {
      if (port && bridge && (await masterOf(nl, port.ifindex)) !== bridge.ifindex) problems.push(`${port.ifname} is not a port of ${spec.bridge}`);
    }
    return { netnsPath: spec.netnsPath, tapIfindex: tap?.ifindex ?? 0, bridgeIfindex: bridge?.ifindex ?? 0, problems };
  }, inode);
}

/**
 * Removes the tap and the bridge (the pair is deleted by its host side), then the namespace if kitnet
 * made it. Tolerant of pieces already gone. An adopted namespace and anything else in it stay.
 */
export async function vmPlumbingDelete(spec: VmPlumbingSpec): Promise<void> {
  specValidate(spec);
  let inode: number | undefined;
  try {
    // The namespace it was made in, only: another one now at an adopted path is someone else's.
    const id = await netnsPathId(spec.netnsPath);
    netnsIdExpect(spec.netnsPath, spec.netnsId, id);
    inode = id.ino;
  } catch {
    inode = undefined;
  }
  if (inode !== undefined) {
    await withNetns(spec.netnsPath, async (nl) => {
      const tap = await linkGet(nl, spec.tap);
      if (tap?.kind === 'tun') await linkDelete(nl, spec.tap);
      const br = await linkGet(nl, spec.bridge);
      if (br?.kind === 'bridge') await linkDelete(nl, spec.bridge);
    }, inode);
  }
  if (spec.netnsOwnedName !== undefined) await netnsDelete(spec.netnsOwnedName);
}

// --- kind: tap — an existing tap/vnet device in the host namespace ---------------------------------

export interface TapAdoptSpec {
  device: string;
  ipv4: string;
  ipv6: string;
}

export interface TapAdopted {
  ifindex: number;
  mac: string;
  problems: string[];
  /**
   * The routes to the guest are missing: the host sends it nothing yet. tapAdopt adds them; the agent
   * asks for that only after the tap's programs are attached.
   */
  closed: boolean;
}

/** The guest's /32 and /128 through the tap: two lookups, not a dump of every route on the host. */
const hostRoutesThrough = (host: Rtnl, spec: TapAdoptSpec, ifindex: number): Promise<boolean[]> =>
  hostRoutesPresent(host, [spec.ipv4, spec.ipv6], ifindex, { name: spec.device });

async function tapHostLink(host: Rtnl, device: string): Promise<LinkInfo> {
  ifnameValidate('device', device);
  const link = await linkGet(host, device);
  if (!link) throw new EndpointSpecError('device', `device ${device} does not exist in the host namespace`);
  if (link.kind !== 'tun') {
    throw new EndpointSpecError('device', `device ${device} is a ${link.kind || 'plain'} device, not a tap (ip tuntap / libvirt vnetN)`);
  }
  return link;
}

/**
 * Adopts an existing tap: forwarding sysctls on it and host routes /32 and /128 to the guest through
 * it. Routes are added exclusively and only when missing: a route for the guest's address through
 * another device is not kitnet's to take over (EEXIST). The device itself is never created or changed
 * otherwise (its state belongs to the hypervisor).
 */
export async function tapAdopt(spec: TapAdoptSpec): Promise<TapAdopted> {
  const host = rtnlHost();
  const link = await tapHostLink(host, spec.device);
  hostSideSysctlsApply(spec.device);
  const [v4Route, v6Route] = await hostRoutesThrough(host, spec, link.ifindex);
  if (!v4Route) await routeAdd(host, { dst: `${spec.ipv4}/32`, oif: link.ifindex, scope: 'link' }, { ifname: spec.device });
  if (!v6Route) await routeAdd(host, { dst: `${spec.ipv6}/128`, oif: link.ifindex, scope: 'link' }, { ifname: spec.device });
  return { ifindex: link.ifindex, mac: link.mac, problems: [], closed: false };
}

/** undefined if the device is gone; otherwise its ifindex/MAC, whether it is a tap, and whether its routes are there. */
export async function tapObserve(spec: TapAdoptSpec): Promise<TapAdopted | undefined> {
  const host = rtnlHost();
  ifnameValidate('device', spec.device);
  const link = await linkGet(host, spec.device);
  if (!link) return undefined;
  const problems: string[] = [];
  if (link.kind !== 'tun') problems.push(`${spec.device} is a ${link.kind || 'plain'} device, not a tap`);
  const [v4Route, v6Route] = await hostRoutesThrough(host, spec, link.ifindex);
  return { ifindex: link.ifindex, mac: link.mac, problems, closed: !v4Route || !v6Route };
}

/** Removes the routes tapAdopt added (only those through this device); the device stays. */
export async function tapRelease(spec: TapAdoptSpec): Promise<void> {
  const host = rtnlHost();
  const link = await linkGet(host, spec.device);
  if (!link) return; // gone with the VM: its routes went with it
  for (const dst of [`${spec.ipv4}/32`, `${spec.ipv6}/128`]) {
    try {
      await host.request(RTM_DELROUTE, NLM_F_ACK, routeMessage({ dst, oif: link.ifindex, scope: 'link' }), { name: spec.device });
    } catch (err) {
      if (!isErrno(err, 'ESRCH') && !isErrno(err, 'ENOENT')) throw err;
    }
  }
}
