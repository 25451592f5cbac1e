// A workload's device pair, all-or-nothing: create (veth / netkit L3 / netkit L2) with the peer
// born inside the workload's namespace, repair, delete. The spec is checked by endpoint-spec.ts,
// both sides configured by endpoint-configure.ts and read back by endpoint-observe.ts.
import { closeSync, fstatSync, openSync, statSync } from 'node:fs';
import { KernelError, UnsupportedFeatureError } from '../common/kernel-error.js';
import { deviceOf, hostConfigure, hostOpen, peerConfigure } from './endpoint-configure.js';
import { endpointDeviceObserve } from './endpoint-observe.js';
import { endpointSpecValidate } from './endpoint-spec.js';
import { EndpointSpecError, errnoIs, ifnameValidate } from './errors.js';
import type { LinkInfo } from './link.js';
import { linkDecode, linkDelete, linkGet, linkList, linkSet } from './link.js';
import { NETKIT_REQUIREMENT, netkitCreateMessage, netkitPoliciesSet } from './netkit.js';
import { netnsFdId, netnsIdExpect, netnsPathId, netnsPathValidate, type NetnsId } from './netns.js';
import { netkitProbe } from './probe.js';
import { routeDelete } from './route.js';
import type { Rtnl } from './socket.js';
import { withNetns } from './netns-pool.js';
import { rtnlHost } from './socket.js';
import { hostForwardingEnsure } from './sysctl.js';
import type { EndpointDevice, EndpointDeviceSpec, KitnetLink } from './types.js';
import { KITNET_ALIAS_PREFIX } from './types.js';
import { NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, RTM_NEWLINK } from './uapi.js';
import { vethCreateMessage } from './veth.js';

function createMessage(spec: EndpointDeviceSpec, netnsFd: number): Buffer {
  const peer = { ifname: spec.peerIfname, netnsFd, mtu: spec.mtu, mac: spec.peerMac };
  if (peer.mtu === undefined) delete peer.mtu;
  if (peer.mac === undefined) delete peer.mac;
  if (spec.mode === 'veth') {
    return vethCreateMessage({ ifname: spec.hostIfname, mtu: spec.mtu, mac: spec.hostMac, peer });
  }
  return netkitCreateMessage({
    ifname: spec.hostIfname,
    mode: spec.mode === 'netkit-l2' ? 'l2' : 'l3',
    // closed both ways until endpointDeviceOpen: the host's packets into the workload too (the
    // primary's policy), not only the workload's out (the peer's)
    policy: spec.peerPolicy ?? 'drop',
    peerPolicy: spec.peerPolicy ?? 'drop',
    scrub: spec.scrub, peerScrub: spec.peerScrub, headroom: spec.headroom, tailroom: spec.tailroom,
    mtu: spec.mtu, mac: spec.hostMac, peer,
  });
}

/** Turns a failed pair creation into the most precise error we can name. */
async function pairCreateError(err: unknown, spec: EndpointDeviceSpec, host: Rtnl): Promise<Error> {
  if (!(err instanceof KernelError)) return err as Error;
  if (errnoIs(err, 'EEXIST')) {
    const existing = await linkGet(host, spec.hostIfname).catch(() => undefined);
    if (existing) {
      return new KernelError({
        op: err.op, errno: err.errno, device: { name: spec.hostIfname }, extack: err.extack, cause: err,
        hint: `a link named ${spec.hostIfname} already exists on the host (${existing.kind || 'device'}${existing.alias ? `, alias "${existing.alias}"` : ''}); delete it or pick another name`,
      });
    }
    return new KernelError({
      op: err.op, errno: err.errno, device: { name: spec.peerIfname, netns: spec.netnsPath }, extack: err.extack, cause: err,
      hint: `an interface named ${spec.peerIfname} already exists in ${spec.netnsPath}; remove it or choose another peer name`,
    });
  }
  if (spec.mode !== 'veth' && errnoIs(err, 'EOPNOTSUPP', 'EINVAL')) {
    const probe = await netkitProbe(host);
    if (!probe.ok) return new UnsupportedFeatureError('netkit', NETKIT_REQUIREMENT, err);
    if (errnoIs(err, 'EOPNOTSUPP') && spec.mode === 'netkit-l2') {
      return new KernelError({
        op: err.op, errno: err.errno, device: { name: spec.hostIfname }, extack: err.extack, cause: err,
        hint: 'this kernel has netkit but rejects fixed MAC addresses in L2 mode (fixed in Linux 6.10 and stable kernels)',
      });
    }
    if (spec.scrub || spec.peerScrub || spec.headroom !== undefined || spec.tailroom !== undefined) {
      return new KernelError({
        op: err.op, errno: err.errno, device: { name: spec.hostIfname }, extack: err.extack, cause: err,
        hint: 'this kernel\'s netkit does not know scrub/headroom/tailroom; leave them unset',
      });
    }
  }
  return err;
}

/**
 * An open fd of the namespace at `path` for IFLA_NET_NS_FD (close it after the request), and its inode.
 * The kernel itself refuses an fd that is not a network namespace; the checks of netnsPathValidate,
 * with their precise errors, run when opening fails here or the kernel refuses (see the caller), not
 * on every creation: a registration has just validated the path, and they cost ~8 thread-pool round
 * trips. Only regular files are opened here (nsfs files are), never a FIFO or a device.
 */
async function netnsOpen(path: string, expected?: NetnsId): Promise<{ fd: number; inode: number; validated: boolean }> {
  let fd: number | undefined;
  let validated = false;
  try {
    if (path.startsWith('/') && statSync(path).isFile()) fd = openSync(path, 'r');
  } catch {
    if (fd !== undefined) closeSync(fd);
    fd = undefined;
  }
  if (fd === undefined) {
    await netnsPathValidate(path); // throws the precise EndpointSpecError
    fd = openSync(path, 'r');
    validated = true;
  }
  // The id of what was opened, the fd the kernel gets: no window between the check and the use.
  const st = fstatSync(fd);
  try {
    if (expected) netnsIdExpect(path, expected, netnsFdId(fd));
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return { fd, inode: st.ino, validated };
}

/**
 * Creates the pair and configures both sides, closed: no packet crosses it until endpointDeviceOpen
 * (netkit: peer policy drop unless the spec says otherwise; veth: the host side down, without its
 * routes). All or nothing: on any failure everything made here is removed (deleting the host side
 * takes the peer, its addresses and both sides' routes with it).
 * Errors: EndpointSpecError (bad spec, missing netns), KernelError, UnsupportedFeatureError (netkit).
 */
export async function endpointDeviceCreate(specIn: EndpointDeviceSpec): Promise<EndpointDevice> {
  const spec = endpointSpecValidate(specIn);
  const host = rtnlHost();
  await hostForwardingEnsure();
  const ns = await netnsOpen(spec.netnsPath, spec.netnsId);
  let made: LinkInfo | undefined;
  try {
    // NLM_F_ECHO: the kernel answers with the new host side (Linux >= 6.3), saving a read
    const replies = await host.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, createMessage(spec, ns.fd), { name: spec.hostIfname });
    const echo = replies.find((m) => m.type === RTM_NEWLINK);
    const echoed = echo ? linkDecode(echo.data) : undefined;
    if (echoed?.ifname === spec.hostIfname) made = echoed;
  } catch (err) {
    // the same EndpointSpecError as before the kernel was asked, when the path is no network namespace
    if (!ns.validated) await netnsPathValidate(spec.netnsPath);
    throw await pairCreateError(err, spec, host);
  } finally {
    closeSync(ns.fd);
  }
  try {
    made ??= await linkGet(host, spec.hostIfname);
    if (!made) throw new Error(`${spec.hostIfname} vanished right after it was created`);
    // kind, MAC and netkit state are as created; configuring changes none of what deviceOf reads
    const hostLink = made;
    await hostConfigure(host, spec, hostLink, false, spec.mode !== 'veth');
    const peer = await withNetns(spec.netnsPath, (nl) => peerConfigure(nl, spec, hostLink.mac, false), ns.inode);
    return deviceOf(spec, hostLink, peer);
  } catch (err) {
    await endpointRollback(host, spec.hostIfname, made?.ifindex);
    throw err;
  }
}

async function endpointRollback(host: Rtnl, ifname: string, ifindex?: number): Promise<void> {
  try {
    // Only delete what we made: same name and, when known, same ifindex.
    const cur = await linkGet(host, ifname);
    if (cur && (ifindex === undefined || cur.ifindex === ifindex)) await linkDelete(host, ifname);
  } catch {
    // the original error matters more; a leftover is found by kitnetLinksList
  }
}

/**
 * Deletes the pair by its host side; false if there was nothing. The kernel removes the peer and the
 * routes through either side. Refuses devices that are not veth/netkit.
 */
export async function endpointDeviceDelete(hostIfname: string): Promise<boolean> {
  ifnameValidate('hostIfname', hostIfname);
  const host = rtnlHost();
  const link = await linkGet(host, hostIfname);
  if (!link) return false;
  if (link.kind !== 'veth' && link.kind !== 'netkit') {
    throw new EndpointSpecError('hostIfname', `refusing to delete ${hostIfname}: it is a ${link.kind || 'plain'} device, not a kitnet pair`);
  }
  return linkDelete(host, hostIfname);
}

/**
 * Converges an endpoint to its spec: re-creates it if the pair itself is missing or wrong (kind,
 * mode, peer gone), otherwise re-applies every setting idempotently. Returns the repaired device: a
 * re-created one closed, one repaired in place as open or closed as it was.
 */
export async function endpointDeviceRepair(specIn: EndpointDeviceSpec): Promise<EndpointDevice> {
  const spec = endpointSpecValidate(specIn);
  // Before anything is deleted or re-made: a structural repair would delete the pair first.
  if (spec.netnsId) netnsIdExpect(spec.netnsPath, spec.netnsId, await netnsPathId(spec.netnsPath));
  const observed = await endpointDeviceObserve(spec);
  if (!observed) return endpointDeviceCreate(spec);
  const problems = observed.problems ?? [];
  if (problems.length === 0) return observed;
  const structural = problems.some((p) => /want (veth|netkit)|netkit mode|peer .* missing|is not the peer|mac /.test(p));
  if (structural) {
    await endpointDeviceDelete(spec.hostIfname);
    return endpointDeviceCreate(spec);
  }
  const host = rtnlHost();
  const hostLink = await linkGet(host, spec.hostIfname);
  if (!hostLink) return endpointDeviceCreate(spec);
  const id = await netnsPathId(spec.netnsPath);
  netnsIdExpect(spec.netnsPath, spec.netnsId, id);
  const inode = id.ino;
  // an open veth stays open (its programs are attached): only a closed one waits for endpointDeviceOpen
  await hostConfigure(host, spec, hostLink, true, spec.mode !== 'veth' || hostLink.up);
  const peer = await withNetns(spec.netnsPath, (nl) => peerConfigure(nl, spec, hostLink.mac, true), inode);
  return deviceOf(spec, (await linkGet(host, spec.hostIfname)) ?? hostLink, peer);
}

/**
 * Lets traffic through a pair made closed, once its programs are attached: netkit's peer policy to
 * forward; a veth's host side up, with the routes to the workload. Idempotent.
 */
export async function endpointDeviceOpen(specIn: EndpointDeviceSpec): Promise<void> {
  const spec = endpointSpecValidate(specIn);
  if (spec.mode !== 'veth') return netkitPoliciesSet(spec.hostIfname, { primary: 'forward', peer: 'forward' });
  const host = rtnlHost();
  const link = await linkGet(host, spec.hostIfname);
  if (!link || link.kind !== 'veth') {
    throw new KernelError({
      op: 'RTM_GETLINK', errno: 19, device: { name: spec.hostIfname },
      hint: link ? `${spec.hostIfname} is a ${link.kind || 'plain'} device, not the veth pair to open` : 'no such veth device; was the endpoint deleted?',
    });
  }
  await hostOpen(host, spec, link);
}

/**
 * Closes an open pair again, as it is made: netkit's policies (primary and peer) to drop; a veth's host
 * side down, without its routes to the workload (the kernel removes routes through a device that goes
 * down; whatever it kept is removed here, so endpointDeviceOpen adds them as at creation). For a pair
 * whose programs are missing, before anything else is done to it: nothing crosses it unjudged until
 * they are attached again, also when a repair meanwhile fails. The pair is closed as the kind it is,
 * which may not be the spec's yet (a repair re-makes it then); a host side that is gone or no pair
 * has nothing to close. Idempotent.
 */
export async function endpointDeviceClose(specIn: EndpointDeviceSpec): Promise<void> {
  const spec = endpointSpecValidate(specIn);
  const host = rtnlHost();
  const link = await linkGet(host, spec.hostIfname);
  if (link?.kind === 'netkit') return netkitPoliciesSet(spec.hostIfname, { primary: 'drop', peer: 'drop' }, host);
  if (link?.kind !== 'veth') return;
  const dev = { name: spec.hostIfname, ifindex: link.ifindex };
  // down first: from here nothing crosses either way (the peer has no carrier, the host no route)
  if (link.up) await linkSet(host, dev, { up: false });
  for (const dst of [`${spec.ipv4}/32`, `${spec.ipv6}/128`]) {
    await routeDelete(host, { dst, oif: link.ifindex, scope: 'link' }, { ifname: spec.hostIfname }).catch((err: unknown) => {
      if (!errnoIs(err, 'ESRCH', 'ENOENT')) throw err;
    });
  }
}

/** Host links whose alias starts with `kitnet:` (for orphan cleanup). */
export async function kitnetLinksList(): Promise<KitnetLink[]> {
  const links = await linkList(rtnlHost());
  return links
    .filter((l) => l.alias.startsWith(KITNET_ALIAS_PREFIX))
    .map((l) => ({ ifname: l.ifname, ifindex: l.ifindex, alias: l.alias, group: l.group }));
}
