// veth pairs: the request that creates both ends at once, the peer directly in its namespace.
import type { Attr } from './attrs.js';
import { attr, ifinfomsg, macBytes, message, attrsEncode, nest, s32, str, u32 } from './attrs.js';
import {
  IFF_UP, IFLA_ADDRESS, IFLA_IFNAME, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MTU, IFLA_NET_NS_FD,
  VETH_INFO_PEER,
} from './uapi.js';

/** The end of a pair that goes into the workload's namespace. */
export interface PeerSpec {
  ifname: string;
  /** Open fd of the target namespace (IFLA_NET_NS_FD); omitted = same namespace as the primary. */
  netnsFd?: number;
  mtu?: number;
  mac?: string;
  /** Bring the peer up as it is created (ifi_flags in the peer's ifinfomsg). */
  up?: boolean;
}

/** The payload of VETH_INFO_PEER / IFLA_NETKIT_PEER_INFO: a struct ifinfomsg followed by IFLA_* attributes. */
export function peerInfoEncode(peer: PeerSpec): Buffer {
  const attrs: Attr[] = [attr(IFLA_IFNAME, str(peer.ifname))];
  if (peer.mac !== undefined) attrs.push(attr(IFLA_ADDRESS, macOrThrow(peer.mac)));
  if (peer.mtu !== undefined) attrs.push(attr(IFLA_MTU, u32(peer.mtu)));
  if (peer.netnsFd !== undefined) attrs.push(attr(IFLA_NET_NS_FD, s32(peer.netnsFd)));
  const hdr = ifinfomsg(peer.up ? { flags: IFF_UP, change: IFF_UP } : {});
  return Buffer.concat([hdr, attrsEncode(attrs)]);
}

export function macOrThrow(mac: string): Buffer {
  const b = macBytes(mac);
  if (!b) throw new Error(`invalid MAC address "${mac}"`);
  return b;
}

export interface VethCreate {
  ifname: string;
  mtu?: number;
  mac?: string;
  peer: PeerSpec;
}

/** IFLA_LINKINFO for a veth pair: kind "veth", data { VETH_INFO_PEER: ifinfomsg + attrs }. */
export function vethLinkinfo(peer: PeerSpec): Attr {
  return nest(IFLA_LINKINFO, [
    attr(IFLA_INFO_KIND, str('veth')),
    nest(IFLA_INFO_DATA, [attr(VETH_INFO_PEER, peerInfoEncode(peer))]),
  ]);
}

/** The RTM_NEWLINK payload that creates a veth pair (send with NLM_F_CREATE|NLM_F_EXCL). */
export function vethCreateMessage(req: VethCreate): Buffer {
  const attrs: Attr[] = [attr(IFLA_IFNAME, str(req.ifname))];
  if (req.mac !== undefined) attrs.push(attr(IFLA_ADDRESS, macOrThrow(req.mac)));
  if (req.mtu !== undefined) attrs.push(attr(IFLA_MTU, u32(req.mtu)));
  attrs.push(vethLinkinfo(req.peer));
  return message(ifinfomsg(), attrs);
}
