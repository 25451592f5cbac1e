// A workload's device pair, all-or-nothing: create (veth / netkit L3 / netkit L2) with the peer
// born inside the workload's namespace, configure both sides, observe, repair, delete.
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, statSync } from 'node:fs';
import { KernelError, UnsupportedFeatureError } from '../common/kernel-error.js';
import { addressAdd, addressList } from './address.js';
import { ipBytes, ipString, macBytes } from './attrs.js';
import { EndpointSpecError, aliasValidate, errnoIs, ifnameValidate } from './errors.js';
import type { LinkInfo } from './link.js';
import { linkDecode, linkDelete, linkGet, linkList, linkSet } from './link.js';
import { neighList, neighPermanentSet } from './neigh.js';
import { NETKIT_REQUIREMENT, netkitCreateMessage, netkitStateDecode } from './netkit.js';
import { netnsPathValidate } from './netns.js';
import { netkitProbe } from './probe.js';
import type { RouteInfo, RouteSpec } from './route.js';
import { hostRoutesPresent, routeAdd, routeList } from './route.js';
import type { Rtnl } from './socket.js';
import { requestsPipelined, rtnlHost, withNetns } from './socket.js';
import { hostForwardingEnsure, hostSideSysctlsApply, sysctlIfname } from './sysctl.js';
import type { DeviceMode, EndpointDevice, EndpointDeviceSpec, KitnetLink } from './types.js';
import { GATEWAY_V4, GATEWAY_V6, KITNET_ALIAS_PREFIX } from './types.js';
import {
  AF_INET, AF_INET6, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NUD_PERMANENT, RT_SCOPE_LINK, RTM_NEWLINK,
} from './uapi.js';
import { vethCreateMessage } from './veth.js';

const MODES: readonly DeviceMode[] = ['netkit', 'netkit-l2', 'veth'];

/** A locally administered unicast MAC derived from `seed` (stable across restarts and hosts). */
export function macDerive(seed: string): string {
  const h = createHash('sha256').update(seed).digest();
  h[0] = (h[0]! & 0xfe) | 0x02;
  return Array.from(h.subarray(0, 6)).map((b) => b.toString(16).padStart(2, '0')).join(':');
}

function ipValidate(field: string, ip: unknown, bytes: 4 | 16): string {
  const b = typeof ip === 'string' ? ipBytes(ip) : undefined;
  if (!b || b.length !== bytes) {
    throw new EndpointSpecError(field, `${field}: "${String(ip)}" is not a bare ${bytes === 4 ? 'IPv4' : 'IPv6'} address`);
  }
  return ip as string;
}

function macValidate(field: string, mac: string | undefined): string | undefined {
  if (mac === undefined) return undefined;
  const b = macBytes(mac);
  if (!b || (b[0]! & 1) !== 0 || b.every((x) => x === 0)) {
    throw new EndpointSpecError(field, `${field}: "${mac}" is not a unicast MAC address (aa:bb:cc:dd:ee:ff)`);
  }
  return mac.toLowerCase();
}

/** Checks a spec before the kernel sees it; returns it with defaults filled in. */
export function endpointSpecValidate(spec: EndpointDeviceSpec): EndpointDeviceSpec {
  if (!MODES.includes(spec.mode)) {
    throw new EndpointSpecError('mode', `mode "${String(spec.mode)}" is not one of ${MODES.join(', ')}`);
  }
  ifnameValidate('hostIfname', spec.hostIfname);
  const peerIfname = ifnameValidate('peerIfname', spec.peerIfname || 'eth0');
  aliasValidate('alias', spec.alias);
  if (!spec.alias.startsWith(KITNET_ALIAS_PREFIX)) {
    throw new EndpointSpecError('alias', `alias "${spec.alias}" must start with "${KITNET_ALIAS_PREFIX}" so kitnet can find its links`);
  }
  ipValidate('ipv4', spec.ipv4, 4);
  ipValidate('ipv6', spec.ipv6, 16);
  if (spec.mtu !== undefined && (!Number.isInteger(spec.mtu) || spec.mtu < 68 || spec.mtu > 65535)) {
    throw new EndpointSpecError('mtu', `mtu ${spec.mtu} is outside 68..65535`);
  }
  for (const f of ['headroom', 'tailroom'] as const) {
    const v = spec[f];
    if (v !== undefined && (!Number.isInteger(v) || v < 0 || v > 0xffff)) throw new EndpointSpecError(f, `${f} ${v} is outside 0..65535`);
  }
  if (spec.mode === 'netkit' && (spec.hostMac || spec.peerMac)) {
    throw new EndpointSpecError('peerMac', 'netkit in L3 mode has no MAC addresses; use mode netkit-l2 for fixed MACs');
  }
  const out: EndpointDeviceSpec = { ...spec, peerIfname };
  const hostMac = macValidate('hostMac', spec.hostMac);
  const peerMac = macValidate('peerMac', spec.peerMac);
  if (spec.mode === 'netkit-l2') {
    out.hostMac = hostMac ?? macDerive(`${spec.hostIfname}/host`);
    out.peerMac = peerMac ?? macDerive(`${spec.hostIfname}/peer`);
  } else {
    if (hostMac) out.hostMac = hostMac; else delete out.hostMac;
    if (peerMac) out.peerMac = peerMac; else delete out.peerMac;
  }
  return out;
}

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
    policy: 'forward',
    peerPolicy: spec.peerPolicy ?? 'drop',
    scrub: spec.scrub, peerScrub: spec.peerScrub, headroom: spec.headroom, tailroom: spec.tailroom,
    mtu: spec.mtu, mac: spec.hostMac, peer,
  });
}

const kindOf = (mode: DeviceMode): string => (mode === 'veth' ? 'veth' : 'netkit');

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

/** EEXIST for one of kitnet's routes in the workload's namespace: a route kitnet did not make is there. */
function routeTakenError(err: unknown, spec: EndpointDeviceSpec, route: string): unknown {
  if (!(err instanceof KernelError) || !errnoIs(err, 'EEXIST')) return err;
  return new KernelError({
    op: 'RTM_NEWROUTE', errno: err.errno, device: { name: spec.peerIfname, netns: spec.netnsPath }, extack: err.extack, cause: err,
    hint: `${spec.netnsPath} already has a route for ${route} that kitnet did not make, and kitnet never replaces routes; ` +
      'remove it (ip route del ... inside the namespace) or register the workload in a namespace of its own',
  });
}

/**
 * Everything inside the workload's namespace: lo and peer up, addresses, routes, gateway neighbours.
 * Two round trips: lo and the peer are read together, then every change is sent pipelined, in the
 * order they depend on each other (peer up before its addresses and routes, the on-link route to the
 * gateway before the default routes through it).
 */
async function peerConfigure(nl: Rtnl, spec: EndpointDeviceSpec, hostMac: string, repair: boolean): Promise<LinkInfo> {
  const [lo, peer] = await Promise.all([linkGet(nl, 'lo'), linkGet(nl, spec.peerIfname)]);
  if (!peer) {
    throw new KernelError({
      op: 'RTM_GETLINK', errno: 19, device: { name: spec.peerIfname, netns: spec.netnsPath },
      hint: 'the peer was created but is not in the namespace (namespace replaced meanwhile?)',
    });
  }
  const dev = { name: spec.peerIfname, ifindex: peer.ifindex };
  if (spec.peerL3 === false) {
    // a bridge port (kind: vm): no link-local address, DAD or router solicitations of its own
    try {
      await nl.sysctlWrite(`net/ipv6/conf/${sysctlIfname(spec.peerIfname)}/disable_ipv6`, '1');
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENOENT') throw err;
    }
  }
  const ifname = spec.peerIfname;
  const steps: (() => Promise<unknown>)[] = [];
  if (lo && !lo.up) steps.push(() => linkSet(nl, { name: 'lo', ifindex: lo.ifindex }, { up: true }));
  if (!peer.up || (spec.mtu !== undefined && peer.mtu !== spec.mtu)) steps.push(() => linkSet(nl, dev, { up: true, mtu: spec.mtu }));
  if (spec.peerL3 !== false) {
    steps.push(
      () => addressAdd(nl, peer.ifindex, spec.ipv4, 32, { replace: true, ifname }),
      () => addressAdd(nl, peer.ifindex, spec.ipv6, 128, { replace: true, ifname }),
    );
    // Routes are created exclusively (NLM_F_EXCL), never replaced: a route kitnet did not make (the
    // namespace's own default route) makes the registration fail instead of being taken over, and
    // deleting the pair then removes only kitnet's routes. A repair adds only the missing ones.
    const have = repair ? await routeList(nl) : [];
    const routes: Array<[RouteSpec, number, string]> = [
      [{ dst: `${GATEWAY_V4}/32`, oif: peer.ifindex, scope: 'link' }, AF_INET, `${GATEWAY_V4} scope link`],
      [{ dst: 'default', family: 'inet', gateway: GATEWAY_V4, oif: peer.ifindex }, AF_INET, `default via ${GATEWAY_V4}`],
      [{ dst: 'default', family: 'inet6', gateway: GATEWAY_V6, oif: peer.ifindex }, AF_INET6, `default via ${GATEWAY_V6}`],
    ];
    for (const [route, family, text] of routes) {
      if (repair && hasRoute(have, family, route.dst, peer.ifindex, route.gateway)) continue;
      steps.push(() => routeAdd(nl, route, { ifname }).catch((err: unknown) => {
        throw routeTakenError(err, spec, text);
      }));
    }
    if (spec.mode !== 'netkit') {
      steps.push(
        () => neighPermanentSet(nl, peer.ifindex, GATEWAY_V4, hostMac, ifname),
        () => neighPermanentSet(nl, peer.ifindex, GATEWAY_V6, hostMac, ifname),
      );
    }
  }
  await requestsPipelined(steps);
  // what callers use of it (name, ifindex, MAC) does not change by being configured
  return peer;
}

/**
 * The host side: sysctls (before it goes up), then alias, up, and the /32 and /128 routes to the
 * workload in one pipelined round trip (the routes need the device up: sent after it, handled after it).
 */
async function hostConfigure(host: Rtnl, spec: EndpointDeviceSpec, link: LinkInfo, replaceRoutes: boolean): Promise<void> {
  const dev = { name: spec.hostIfname, ifindex: link.ifindex };
  hostSideSysctlsApply(spec.hostIfname);
  await requestsPipelined([
    () => linkSet(host, dev, {
      alias: spec.alias,
      up: true,
      mtu: spec.mtu !== undefined && link.mtu !== spec.mtu ? spec.mtu : undefined,
      group: spec.group !== undefined && link.group !== spec.group ? spec.group : undefined,
    }),
    () => routeAdd(host, { dst: `${spec.ipv4}/32`, oif: link.ifindex, scope: 'link' }, { replace: replaceRoutes, ifname: spec.hostIfname }),
    () => routeAdd(host, { dst: `${spec.ipv6}/128`, oif: link.ifindex, scope: 'link' }, { replace: replaceRoutes, ifname: spec.hostIfname }),
  ]);
}

function deviceOf(spec: EndpointDeviceSpec, host: LinkInfo, peer: LinkInfo): EndpointDevice {
  const out: EndpointDevice = {
    mode: spec.mode,
    hostIfname: host.ifname,
    hostIfindex: host.ifindex,
    hostMac: host.mac,
    peerIfname: peer.ifname,
    peerIfindex: peer.ifindex,
    peerMac: peer.mac,
    netnsPath: spec.netnsPath,
  };
  if (host.kind === 'netkit') {
    const st = netkitStateDecode(host.infoData);
    if (st.peerPolicy === 'forward' || st.peerPolicy === 'drop') out.peerPolicy = st.peerPolicy;
  }
  return out;
}

/**
 * An open fd of the namespace at `path` for IFLA_NET_NS_FD (close it after the request), and its inode.
 * The kernel itself refuses an fd that is not a network namespace; the checks of netnsPathValidate,
 * with their precise errors, run when opening fails here or the kernel refuses (see the caller), not
 * on every creation: a registration has just validated the path, and they cost ~8 thread-pool round
 * trips. Only regular files are opened here (nsfs files are), never a FIFO or a device.
 */
async function netnsOpen(path: string): Promise<{ fd: number; inode: number; validated: boolean }> {
  let fd: number | undefined;
  try {
    if (path.startsWith('/') && statSync(path).isFile()) {
      fd = openSync(path, 'r');
      return { fd, inode: fstatSync(fd).ino, validated: false };
    }
  } catch {
    if (fd !== undefined) closeSync(fd);
  }
  const inode = await netnsPathValidate(path); // throws the precise EndpointSpecError
  return { fd: openSync(path, 'r'), inode, validated: true };
}

/**
 * Creates the pair and configures both sides. All or nothing: on any failure everything made here is
 * removed (deleting the host side takes the peer, its addresses and both sides' routes with it).
 * Errors: EndpointSpecError (bad spec, missing netns), KernelError, UnsupportedFeatureError (netkit).
 */
export async function endpointDeviceCreate(specIn: EndpointDeviceSpec): Promise<EndpointDevice> {
  const spec = endpointSpecValidate(specIn);
  const host = rtnlHost();
  await hostForwardingEnsure();
  const ns = await netnsOpen(spec.netnsPath);
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
    await hostConfigure(host, spec, hostLink, false);
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

const hasRoute = (routes: RouteInfo[], family: number, dst: string, oif: number, gateway?: string): boolean =>
  routes.some((r) => r.family === family && r.dst === dst && r.oif === oif && (gateway === undefined || r.gateway === gateway));

/**
 * Reads what the kernel has for this endpoint. undefined if the host side is missing; otherwise the
 * device with `problems` listing every difference from the spec (empty = present and correct).
 */
export async function endpointDeviceObserve(specIn: EndpointDeviceSpec): Promise<EndpointDevice | undefined> {
  const spec = endpointSpecValidate(specIn);
  const host = rtnlHost();
  const hostLink = await linkGet(host, spec.hostIfname);
  if (!hostLink) return undefined;
  const problems: string[] = [];
  const want = kindOf(spec.mode);
  if (hostLink.kind !== want) problems.push(`host link ${spec.hostIfname} is ${hostLink.kind || 'a plain device'}, want ${want}`);
  if (hostLink.kind === 'netkit') {
    const st = netkitStateDecode(hostLink.infoData);
    const wantMode = spec.mode === 'netkit-l2' ? 'l2' : 'l3';
    if (st.mode && st.mode !== wantMode) problems.push(`netkit mode is ${st.mode}, want ${wantMode}`);
  }
  if (hostLink.alias !== spec.alias) problems.push(`host alias is "${hostLink.alias}", want "${spec.alias}"`);
  if (spec.group !== undefined && hostLink.group !== spec.group) problems.push(`host link group is ${hostLink.group}, want ${spec.group}`);
  if (!hostLink.up) problems.push(`host link ${spec.hostIfname} is down`);
  if (spec.mtu !== undefined && hostLink.mtu !== spec.mtu) problems.push(`host mtu ${hostLink.mtu}, want ${spec.mtu}`);
  if (spec.mode === 'netkit-l2' && spec.hostMac && hostLink.mac !== spec.hostMac) problems.push(`host mac ${hostLink.mac}, want ${spec.hostMac}`);
  // one lookup per address, not a dump of every workload's routes: observing is O(1) in workloads
  const [v4Route, v6Route] = await hostRoutesPresent(host, [spec.ipv4, spec.ipv6], hostLink.ifindex, { name: spec.hostIfname });
  if (!v4Route) problems.push(`host route ${spec.ipv4}/32 dev ${spec.hostIfname} missing`);
  if (!v6Route) problems.push(`host route ${spec.ipv6}/128 dev ${spec.hostIfname} missing`);

  const device: EndpointDevice = { ...deviceOf(spec, hostLink, { ...hostLink, ifname: spec.peerIfname, ifindex: 0, mac: '' }), problems };
  let inode: number;
  try {
    inode = await netnsPathValidate(spec.netnsPath);
  } catch (err) {
    problems.push((err as Error).message);
    return device;
  }
  await withNetns(spec.netnsPath, async (nl) => {
    // the two link reads sent together (requests, not dumps), answered in one wake-up
    const [peer, lo] = await Promise.all([linkGet(nl, spec.peerIfname), linkGet(nl, 'lo')]);
    if (!peer) {
      problems.push(`peer ${spec.peerIfname} missing in ${spec.netnsPath}`);
      return;
    }
    device.peerIfindex = peer.ifindex;
    device.peerMac = peer.mac;
    if (hostLink.link !== undefined && hostLink.link !== peer.ifindex) {
      problems.push(`${spec.peerIfname} in ${spec.netnsPath} is not the peer of ${spec.hostIfname}`);
    } else if (peer.link !== undefined && peer.link !== hostLink.ifindex) {
      problems.push(`${spec.peerIfname} in ${spec.netnsPath} is not the peer of ${spec.hostIfname}`);
    }
    if (!peer.up) problems.push(`peer ${spec.peerIfname} is down`);
    if (lo && !lo.up) problems.push('lo is down in the namespace');
    if (spec.mode === 'netkit-l2' && spec.peerMac && peer.mac !== spec.peerMac) problems.push(`peer mac ${peer.mac}, want ${spec.peerMac}`);
    if (spec.peerL3 === false) return; // a bridge port: no addresses, routes or neighbours to check
    // dumps one after the other: a netlink socket runs one dump at a time
    const addrs = await addressList(nl, peer.ifindex);
    const routes = await routeList(nl);
    const neigh = spec.mode !== 'netkit' ? await neighList(nl, peer.ifindex) : [];
    if (!addrs.some((a) => a.family === AF_INET && a.address === spec.ipv4 && a.prefixlen === 32)) problems.push(`address ${spec.ipv4}/32 missing on ${spec.peerIfname}`);
    if (!addrs.some((a) => a.family === AF_INET6 && a.address === ipCanonical(spec.ipv6) && a.prefixlen === 128)) problems.push(`address ${spec.ipv6}/128 missing on ${spec.peerIfname}`);
    if (!hasRoute(routes, AF_INET, `${GATEWAY_V4}/32`, peer.ifindex) || !routes.some((r) => r.dst === `${GATEWAY_V4}/32` && r.scope === RT_SCOPE_LINK)) {
      problems.push(`route ${GATEWAY_V4} dev ${spec.peerIfname} scope link missing in netns`);
    }
    if (!hasRoute(routes, AF_INET, 'default', peer.ifindex, GATEWAY_V4)) problems.push(`route default via ${GATEWAY_V4} missing in netns`);
    if (!hasRoute(routes, AF_INET6, 'default', peer.ifindex, GATEWAY_V6)) problems.push(`route default via ${GATEWAY_V6} (v6) missing in netns`);
    if (spec.mode !== 'netkit') {
      for (const gw of [GATEWAY_V4, GATEWAY_V6]) {
        const n = neigh.find((x) => x.dst === gw);
        if (!n || !(n.state & NUD_PERMANENT) || n.lladdr !== hostLink.mac) problems.push(`permanent neighbour ${gw} -> ${hostLink.mac} missing in netns`);
      }
    }
  }, inode);
  return device;
}

/** Canonical text of an address, as the kernel reports it back. */
function ipCanonical(ip: string): string {
  const b = ipBytes(ip);
  return b ? ipString(b) : ip;
}

/**
 * Converges an endpoint to its spec: re-creates it if the pair itself is missing or wrong (kind,
 * mode, peer gone), otherwise re-applies every setting idempotently. Returns the repaired device.
 */
export async function endpointDeviceRepair(specIn: EndpointDeviceSpec): Promise<EndpointDevice> {
  const spec = endpointSpecValidate(specIn);
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
  const inode = await netnsPathValidate(spec.netnsPath);
  await hostConfigure(host, spec, hostLink, true);
  const peer = await withNetns(spec.netnsPath, (nl) => peerConfigure(nl, spec, hostLink.mac, true), inode);
  return deviceOf(spec, (await linkGet(host, spec.hostIfname)) ?? hostLink, peer);
}

/** Host links whose alias starts with `kitnet:` (for orphan cleanup). */
export async function kitnetLinksList(): Promise<KitnetLink[]> {
  const links = await linkList(rtnlHost());
  return links
    .filter((l) => l.alias.startsWith(KITNET_ALIAS_PREFIX))
    .map((l) => ({ ifname: l.ifname, ifindex: l.ifindex, alias: l.alias, group: l.group }));
}

