// Links (RTM_*LINK): read, list, delete and change flags/alias/MTU. Creation of pairs lives in
// veth.ts and netkit.ts; both share linkPairCreate's error handling here.
import type { DeviceRef } from '../common/kernel-error.js';
import { isErrno } from '../common/kernel-error.js';
import type { Attr, AttrMap } from './attrs.js';
import {
  attr, attrsDecode, ifinfomsg, ifinfomsgDecode, macString, message, messageAttrs, readS32, readStr, readU32, str, u32,
} from './attrs.js';
import type { Rtnl } from './socket.js';
import { IFLA_GROUP,
  IFF_UP, IFINFOMSG_LEN, IFLA_ADDRESS, IFLA_IFALIAS, IFLA_IFNAME, IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINK,
  IFLA_LINK_NETNSID, IFLA_LINKINFO, IFLA_MTU, IFLA_OPERSTATE, NLM_F_ACK, RTM_DELLINK, RTM_GETLINK, RTM_NEWLINK,
} from './uapi.js';

export interface LinkInfo {
  ifindex: number;
  ifname: string;
  flags: number;
  up: boolean;
  mtu: number;
  mac: string;
  alias: string;
  /** IFLA_INFO_KIND ('veth', 'netkit', ...), '' for kind-less devices such as lo. */
  kind: string;
  /** IFLA_INFO_DATA attributes of the kind, when the driver reports them. */
  infoData: AttrMap;
  /** IFLA_LINK: the peer's ifindex for veth/netkit (in the peer's namespace). */
  link?: number;
  /** IFLA_LINK_NETNSID: the peer lives in another namespace. */
  linkNetnsid?: number;
  operstate?: number;
  /** IFLA_GROUP. */
  group: number;
}

export function linkDecode(payload: Buffer): LinkInfo {
  const hdr = ifinfomsgDecode(payload);
  const a = messageAttrs(payload, IFINFOMSG_LEN);
  const linkinfo = a.get(IFLA_LINKINFO);
  const li = linkinfo ? attrsDecode(linkinfo) : new Map<number, Buffer>();
  const kind = li.get(IFLA_INFO_KIND);
  const data = li.get(IFLA_INFO_DATA);
  const mtu = a.get(IFLA_MTU);
  const link = a.get(IFLA_LINK);
  const nsid = a.get(IFLA_LINK_NETNSID);
  const alias = a.get(IFLA_IFALIAS);
  const mac = a.get(IFLA_ADDRESS);
  const oper = a.get(IFLA_OPERSTATE);
  const info: LinkInfo = {
    ifindex: hdr.index,
    ifname: readStr(a.get(IFLA_IFNAME) ?? Buffer.alloc(0)),
    flags: hdr.flags,
    up: (hdr.flags & IFF_UP) !== 0,
    mtu: mtu ? readU32(mtu) : 0,
    mac: mac ? macString(mac) : '',
    alias: alias ? readStr(alias) : '',
    kind: kind ? readStr(kind) : '',
    infoData: data ? attrsDecode(data) : new Map(),
    group: a.get(IFLA_GROUP) ? readU32(a.get(IFLA_GROUP)!) : 0,
  };
  if (link) info.link = readU32(link);
  if (nsid) info.linkNetnsid = readS32(nsid);
  if (oper) info.operstate = oper[0] ?? 0;
  return info;
}

/** The link called `ifname`, or undefined if there is none. */
export async function linkGet(nl: Rtnl, ifname: string): Promise<LinkInfo | undefined> {
  try {
    const msgs = await nl.request(RTM_GETLINK, 0, message(ifinfomsg(), [attr(IFLA_IFNAME, str(ifname))]), { name: ifname });
    const m = msgs.find((x) => x.type === RTM_NEWLINK);
    return m ? linkDecode(m.data) : undefined;
  } catch (err) {
    if (isErrno(err, 'ENODEV') || isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}

export async function linkGetByIndex(nl: Rtnl, ifindex: number): Promise<LinkInfo | undefined> {
  try {
    const msgs = await nl.request(RTM_GETLINK, 0, message(ifinfomsg({ index: ifindex })), { ifindex });
    const m = msgs.find((x) => x.type === RTM_NEWLINK);
    return m ? linkDecode(m.data) : undefined;
  } catch (err) {
    if (isErrno(err, 'ENODEV') || isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}

export async function linkList(nl: Rtnl): Promise<LinkInfo[]> {
  const msgs = await nl.dump(RTM_GETLINK, message(ifinfomsg()));
  return msgs.filter((m) => m.type === RTM_NEWLINK).map((m) => linkDecode(m.data));
}

/** Deletes a link by name; false if it did not exist. */
export async function linkDelete(nl: Rtnl, ifname: string): Promise<boolean> {
  try {
    await nl.request(RTM_DELLINK, NLM_F_ACK, message(ifinfomsg(), [attr(IFLA_IFNAME, str(ifname))]), { name: ifname });
    return true;
  } catch (err) {
    if (isErrno(err, 'ENODEV') || isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}

export interface LinkChange {
  up?: boolean;
  alias?: string;
  mtu?: number;
  group?: number;
  /** Extra attributes, e.g. an IFLA_LINKINFO with changed netkit policies. */
  extra?: Attr[];
}

/** Changes an existing link (RTM_NEWLINK on its ifindex, which reports errors for every attribute). */
export async function linkSet(nl: Rtnl, dev: DeviceRef & { ifindex: number }, change: LinkChange): Promise<void> {
  const attrs: Attr[] = [];
  if (change.alias !== undefined) attrs.push(attr(IFLA_IFALIAS, str(change.alias)));
  if (change.mtu !== undefined) attrs.push(attr(IFLA_MTU, u32(change.mtu)));
  if (change.group !== undefined) attrs.push(attr(IFLA_GROUP, u32(change.group)));
  if (change.extra) attrs.push(...change.extra);
  const hdr = ifinfomsg({
    index: dev.ifindex,
    flags: change.up ? IFF_UP : 0,
    change: change.up === undefined ? 0 : IFF_UP,
  });
  await nl.request(RTM_NEWLINK, NLM_F_ACK, message(hdr, attrs), dev);
}
