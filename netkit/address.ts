// Interface addresses (RTM_*ADDR).
import type { Attr } from './attrs.js';
import {
  addressAttrs, attr, ifaddrmsg, ifaddrmsgDecode, ipBytes, ipString, message, messageAttrs, readU32, u32,
} from './attrs.js';
import type { Rtnl } from './socket.js';
import {
  AF_INET, AF_INET6, IFA_ADDRESS, IFA_F_NODAD, IFA_F_PERMANENT, IFA_FLAGS, IFA_LOCAL, IFADDRMSG_LEN, NLM_F_CREATE,
  NLM_F_EXCL, NLM_F_REPLACE, RT_SCOPE_UNIVERSE, RTM_GETADDR, RTM_NEWADDR,
} from './uapi.js';

export interface AddressInfo {
  ifindex: number;
  family: number;
  address: string;
  prefixlen: number;
  flags: number;
}

export function familyOf(ip: Buffer): number {
  return ip.length === 4 ? AF_INET : AF_INET6;
}

/** Adds `ip/prefixlen` to a device; IPv6 gets IFA_F_NODAD so it is usable at once. */
export async function addressAdd(
  nl: Rtnl, ifindex: number, ip: string, prefixlen: number, opts: { replace?: boolean; ifname?: string } = {},
): Promise<void> {
  const bytes = ipBytes(ip);
  if (!bytes) throw new Error(`invalid IP address "${ip}"`);
  const family = familyOf(bytes);
  const flags = family === AF_INET6 ? IFA_F_NODAD | IFA_F_PERMANENT : IFA_F_PERMANENT;
  const hdr = ifaddrmsg({ family, prefixlen, flags, scope: RT_SCOPE_UNIVERSE, index: ifindex });
  const attrs: Attr[] = family === AF_INET6
    ? [attr(IFA_ADDRESS, bytes), attr(IFA_FLAGS, u32(flags))]
    : addressAttrs(bytes, flags);
  const nlFlags = NLM_F_CREATE | (opts.replace ? NLM_F_REPLACE : NLM_F_EXCL);
  await nl.request(RTM_NEWADDR, nlFlags, message(hdr, attrs), { name: opts.ifname, ifindex });
}

export async function addressList(nl: Rtnl, ifindex?: number): Promise<AddressInfo[]> {
  const msgs = await nl.dump(RTM_GETADDR, message(ifaddrmsg({ family: 0, prefixlen: 0, flags: 0, scope: 0, index: 0 })));
  const out: AddressInfo[] = [];
  for (const m of msgs) {
    if (m.type !== RTM_NEWADDR) continue;
    const hdr = ifaddrmsgDecode(m.data);
    if (ifindex !== undefined && hdr.index !== ifindex) continue;
    const a = messageAttrs(m.data, IFADDRMSG_LEN);
    const addr = a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS);
    if (!addr) continue;
    const flags = a.get(IFA_FLAGS);
    out.push({
      ifindex: hdr.index, family: hdr.family, address: ipString(addr), prefixlen: hdr.prefixlen,
      flags: flags ? readU32(flags) : hdr.flags,
    });
  }
  return out;
}
