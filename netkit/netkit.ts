// netkit pairs (drivers/net/netkit.c, Linux >= 6.7): creation with mode, default policies and
// optional scrub/headroom/tailroom, and the peer policy switch used once programs are attached.
import type { Attr } from './attrs.js';
import { attr, ifinfomsg, message, nest, readU32, str, u16, u32 } from './attrs.js';
import { linkGet, linkSet } from './link.js';
import type { Rtnl } from './socket.js';
import { rtnlHost } from './socket.js';
import type { PeerSpec } from './veth.js';
import { macOrThrow, peerInfoEncode } from './veth.js';
import { KernelError, errnoNumber } from '../common/kernel-error.js';
import {
  IFLA_ADDRESS, IFLA_IFNAME, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MTU, IFLA_NETKIT_HEADROOM,
  IFLA_NETKIT_MODE, IFLA_NETKIT_PEER_INFO, IFLA_NETKIT_PEER_POLICY, IFLA_NETKIT_PEER_SCRUB, IFLA_NETKIT_POLICY,
  IFLA_NETKIT_SCRUB, IFLA_NETKIT_TAILROOM, NETKIT_DROP, NETKIT_L2, NETKIT_L3, NETKIT_PASS, NETKIT_SCRUB_DEFAULT,
  NETKIT_SCRUB_NONE,
} from './uapi.js';

export type NetkitMode = 'l2' | 'l3';
export type NetkitPolicy = 'forward' | 'drop';
export type NetkitScrub = 'none' | 'default';

export const NETKIT_REQUIREMENT = 'Linux >= 6.7 with CONFIG_NETKIT';

export interface NetkitCreate {
  ifname: string;
  mode: NetkitMode;
  /** Primary (host side) default policy when no program is attached; default 'forward'. */
  policy?: NetkitPolicy;
  /** Peer default policy; 'drop' blackholes the workload until its programs are attached. */
  peerPolicy?: NetkitPolicy;
  /** Only sent when set: older kernels lack IFLA_NETKIT_SCRUB / PEER_SCRUB (6.11+). */
  scrub?: NetkitScrub;
  peerScrub?: NetkitScrub;
  /** Only sent when set: IFLA_NETKIT_HEADROOM / TAILROOM are newer still. */
  headroom?: number;
  tailroom?: number;
  mtu?: number;
  /** L2 only (netkit rejects IFLA_ADDRESS in L3 mode). */
  mac?: string;
  peer: PeerSpec;
}

const policyValue = (p: NetkitPolicy): number => (p === 'drop' ? NETKIT_DROP : NETKIT_PASS);
const scrubValue = (s: NetkitScrub): number => (s === 'none' ? NETKIT_SCRUB_NONE : NETKIT_SCRUB_DEFAULT);

/** IFLA_LINKINFO for a netkit pair: kind "netkit", data { MODE, POLICY, PEER_POLICY, [SCRUB...], PEER_INFO }. */
export function netkitLinkinfo(req: NetkitCreate): Attr {
  const data: Attr[] = [
    attr(IFLA_NETKIT_MODE, u32(req.mode === 'l2' ? NETKIT_L2 : NETKIT_L3)),
    attr(IFLA_NETKIT_POLICY, u32(policyValue(req.policy ?? 'forward'))),
    attr(IFLA_NETKIT_PEER_POLICY, u32(policyValue(req.peerPolicy ?? 'forward'))),
  ];
  if (req.scrub !== undefined) data.push(attr(IFLA_NETKIT_SCRUB, u32(scrubValue(req.scrub))));
  if (req.peerScrub !== undefined) data.push(attr(IFLA_NETKIT_PEER_SCRUB, u32(scrubValue(req.peerScrub))));
  if (req.headroom !== undefined) data.push(attr(IFLA_NETKIT_HEADROOM, u16(req.headroom)));
  if (req.tailroom !== undefined) data.push(attr(IFLA_NETKIT_TAILROOM, u16(req.tailroom)));
  if (req.mode !== 'l2' && req.peer.mac !== undefined) {
    throw new Error('netkit in L3 mode has no MAC addresses; peer MAC is only valid for L2');
  }
  data.push(attr(IFLA_NETKIT_PEER_INFO, peerInfoEncode(req.peer)));
  return nest(IFLA_LINKINFO, [attr(IFLA_INFO_KIND, str('netkit')), nest(IFLA_INFO_DATA, data)]);
}

/** The RTM_NEWLINK payload that creates a netkit pair (send with NLM_F_CREATE|NLM_F_EXCL). */
export function netkitCreateMessage(req: NetkitCreate): Buffer {
  const attrs: Attr[] = [attr(IFLA_IFNAME, str(req.ifname))];
  if (req.mac !== undefined) {
    if (req.mode !== 'l2') throw new Error('netkit in L3 mode has no MAC addresses; MAC is only valid for L2');
    attrs.push(attr(IFLA_ADDRESS, macOrThrow(req.mac)));
  }
  if (req.mtu !== undefined) attrs.push(attr(IFLA_MTU, u32(req.mtu)));
  attrs.push(netkitLinkinfo(req));
  return message(ifinfomsg(), attrs);
}

export interface NetkitState {
  mode?: NetkitMode;
  policy?: NetkitPolicy | number;
  peerPolicy?: NetkitPolicy | number;
  primary?: boolean;
}

const policyName = (v: number): NetkitPolicy | number => (v === NETKIT_PASS ? 'forward' : v === NETKIT_DROP ? 'drop' : v);

/** Reads the netkit attributes the kernel reports in IFLA_INFO_DATA. */
export function netkitStateDecode(infoData: Map<number, Buffer>): NetkitState {
  const out: NetkitState = {};
  const mode = infoData.get(IFLA_NETKIT_MODE);
  if (mode && mode.length >= 4) out.mode = readU32(mode) === NETKIT_L2 ? 'l2' : 'l3';
  const pol = infoData.get(IFLA_NETKIT_POLICY);
  if (pol && pol.length >= 4) out.policy = policyName(readU32(pol));
  const ppol = infoData.get(IFLA_NETKIT_PEER_POLICY);
  if (ppol && ppol.length >= 4) out.peerPolicy = policyName(readU32(ppol));
  const prim = infoData.get(2 /* IFLA_NETKIT_PRIMARY */);
  if (prim && prim.length >= 1) out.primary = prim[0] !== 0;
  return out;
}

/**
 * Sets the default policies of an existing netkit pair, addressed by its primary (host side): what
 * netkit does with a packet no program decides (none attached, or all said "next"). `primary` governs
 * the host's packets into the workload, `peer` the workload's out. 'drop' blackholes that direction,
 * 'forward' lets it through (set once the programs are attached).
 */
export async function netkitPoliciesSet(hostIfname: string, policies: { primary?: NetkitPolicy; peer?: NetkitPolicy }, nl: Rtnl = rtnlHost()): Promise<void> {
  const link = await linkGet(nl, hostIfname);
  if (!link) {
    throw new KernelError({
      op: 'RTM_GETLINK', errno: errnoNumber('ENODEV') ?? 19, device: { name: hostIfname },
      hint: 'no such netkit device; was the endpoint deleted?',
    });
  }
  if (link.kind !== 'netkit') {
    throw new KernelError({
      op: 'RTM_NEWLINK', errno: errnoNumber('EINVAL') ?? 22, device: { name: hostIfname, ifindex: link.ifindex },
      hint: `${hostIfname} is a ${link.kind || 'plain'} device, not netkit; peer policies only exist on netkit`,
    });
  }
  const data: Attr[] = [];
  if (policies.primary !== undefined) data.push(attr(IFLA_NETKIT_POLICY, u32(policyValue(policies.primary))));
  if (policies.peer !== undefined) data.push(attr(IFLA_NETKIT_PEER_POLICY, u32(policyValue(policies.peer))));
  const extra = [nest(IFLA_LINKINFO, [attr(IFLA_INFO_KIND, str('netkit')), nest(IFLA_INFO_DATA, data)])];
  await linkSet(nl, { name: hostIfname, ifindex: link.ifindex }, { extra });
}

/** The peer's default policy alone (see netkitPoliciesSet). */
export function netkitPeerPolicySet(hostIfname: string, policy: NetkitPolicy, nl: Rtnl = rtnlHost()): Promise<void> {
  return netkitPoliciesSet(hostIfname, { peer: policy }, nl);
}
