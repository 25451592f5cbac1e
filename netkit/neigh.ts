// Neighbour entries (RTM_*NEIGH): the workload's permanent entries for its gateways.
import { attr, ipBytes, ipString, macString, message, messageAttrs, ndmsg, ndmsgDecode } from './attrs.js';
import type { Rtnl } from './socket.js';
import { macOrThrow } from './veth.js';
import {
  AF_INET, AF_INET6, NDA_DST, NDA_LLADDR, NDMSG_LEN, NLM_F_CREATE, NLM_F_REPLACE, NUD_PERMANENT, RTM_GETNEIGH,
  RTM_NEWNEIGH,
} from './uapi.js';

export interface NeighInfo {
  ifindex: number;
  family: number;
  dst: string;
  lladdr?: string;
  state: number;
}

/** Adds or replaces a PERMANENT entry `ip -> mac` on `ifindex`. */
export async function neighPermanentSet(nl: Rtnl, ifindex: number, ip: string, mac: string, ifname?: string): Promise<void> {
  const dst = ipBytes(ip);
  if (!dst) throw new Error(`invalid neighbour address "${ip}"`);
  const hdr = ndmsg({ family: dst.length === 4 ? AF_INET : AF_INET6, ifindex, state: NUD_PERMANENT });
  await nl.request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE,
    message(hdr, [attr(NDA_DST, dst), attr(NDA_LLADDR, macOrThrow(mac))]), { name: ifname, ifindex });
}

export async function neighList(nl: Rtnl, ifindex?: number): Promise<NeighInfo[]> {
  const msgs = await nl.dump(RTM_GETNEIGH, message(ndmsg({ family: 0, ifindex: 0, state: 0 })));
  const out: NeighInfo[] = [];
  for (const m of msgs) {
    if (m.type !== RTM_NEWNEIGH) continue;
    const h = ndmsgDecode(m.data);
    if (ifindex !== undefined && h.ifindex !== ifindex) continue;
    const a = messageAttrs(m.data, NDMSG_LEN);
    const dst = a.get(NDA_DST);
    if (!dst) continue;
    const ll = a.get(NDA_LLADDR);
    const info: NeighInfo = { ifindex: h.ifindex, family: h.family, dst: ipString(dst), state: h.state };
    if (ll) info.lladdr = macString(ll);
    out.push(info);
  }
  return out;
}
