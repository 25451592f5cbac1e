// Reading back what the kernel has for a workload's device pair, and every difference from its spec.
import { addressList } from './address.js';
import { ipBytes, ipString } from './attrs.js';
import { deviceOf, hasRoute } from './endpoint-configure.js';
import { endpointSpecValidate } from './endpoint-spec.js';
import { linkGet } from './link.js';
import { neighList } from './neigh.js';
import { netkitStateDecode } from './netkit.js';
import { netnsPathValidate } from './netns.js';
import { hostRoutesPresent, routeList } from './route.js';
import { withNetns } from './netns-pool.js';
import { rtnlHost } from './socket.js';
import type { DeviceMode, EndpointDevice, EndpointDeviceSpec } from './types.js';
import { GATEWAY_V4, GATEWAY_V6 } from './types.js';
import { AF_INET, AF_INET6, NUD_PERMANENT, RT_SCOPE_LINK } from './uapi.js';

const kindOf = (mode: DeviceMode): string => (mode === 'veth' ? 'veth' : 'netkit');

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
  // a veth whose host side is down is closed (made so until its programs are attached), not broken
  const closedVeth = spec.mode === 'veth' && hostLink.kind === 'veth' && !hostLink.up;
  if (!hostLink.up && !closedVeth) problems.push(`host link ${spec.hostIfname} is down`);
  if (spec.mtu !== undefined && hostLink.mtu !== spec.mtu) problems.push(`host mtu ${hostLink.mtu}, want ${spec.mtu}`);
  if (spec.mode === 'netkit-l2' && spec.hostMac && hostLink.mac !== spec.hostMac) problems.push(`host mac ${hostLink.mac}, want ${spec.hostMac}`);
  // one lookup per address, not a dump of every workload's routes: observing is O(1) in workloads
  // (a closed veth has none: the kernel keeps no route through a device that is down; opening adds them)
  if (!closedVeth) {
    const [v4Route, v6Route] = await hostRoutesPresent(host, [spec.ipv4, spec.ipv6], hostLink.ifindex, { name: spec.hostIfname });
    if (!v4Route) problems.push(`host route ${spec.ipv4}/32 dev ${spec.hostIfname} missing`);
    if (!v6Route) problems.push(`host route ${spec.ipv6}/128 dev ${spec.hostIfname} missing`);
  }

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
