// Routes (RTM_*ROUTE) in the main table.
import type { Attr } from './attrs.js';
import { attr, ipBytes, ipString, message, messageAttrs, readU32, rtmsg, rtmsgDecode, u32 } from './attrs.js';
import type { Rtnl } from './socket.js';
import {
  AF_INET, AF_INET6, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN,
  RTA_DST, RTA_GATEWAY, RTA_OIF, RTA_TABLE, RTM_GETROUTE, RTM_NEWROUTE, RTMSG_LEN, RTN_UNICAST, RTPROT_STATIC,
} from './uapi.js';

export interface RouteSpec {
  /** Destination prefix `addr/len`, or 'default' (family from `family`). */
  dst: string;
  family?: 'inet' | 'inet6';
  gateway?: string;
  oif: number;
  /** 'link' for on-link destinations (no gateway). */
  scope?: 'link' | 'universe';
}

export interface RouteInfo {
  family: number;
  dst: string;
  dstLen: number;
  gateway?: string;
  oif?: number;
  scope: number;
  protocol: number;
  table: number;
  type: number;
}

export function routeMessage(r: RouteSpec): Buffer {
  let family: number;
  let dstLen: number;
  let dstBytes: Buffer | undefined;
  if (r.dst === 'default') {
    family = r.family === 'inet6' ? AF_INET6 : AF_INET;
    dstLen = 0;
  } else {
    const [addr, len] = r.dst.split('/');
    dstBytes = ipBytes(addr ?? '');
    if (!dstBytes) throw new Error(`invalid route destination "${r.dst}"`);
    family = dstBytes.length === 4 ? AF_INET : AF_INET6;
    dstLen = len === undefined ? dstBytes.length * 8 : Number(len);
  }
  const attrs: Attr[] = [attr(RTA_TABLE, u32(RT_TABLE_MAIN))];
  if (dstBytes) attrs.push(attr(RTA_DST, dstBytes));
  if (r.gateway) {
    const gw = ipBytes(r.gateway);
    if (!gw) throw new Error(`invalid gateway "${r.gateway}"`);
    attrs.push(attr(RTA_GATEWAY, gw));
  }
  attrs.push(attr(RTA_OIF, u32(r.oif)));
  const hdr = rtmsg({
    family, dstLen, table: RT_TABLE_MAIN, protocol: RTPROT_STATIC,
    scope: r.scope === 'link' ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE, type: RTN_UNICAST,
  });
  return message(hdr, attrs);
}

/** Adds a route; `replace` makes it idempotent (and takes the prefix over from any other device). */
export async function routeAdd(nl: Rtnl, r: RouteSpec, opts: { replace?: boolean; ifname?: string } = {}): Promise<void> {
  const flags = NLM_F_CREATE | (opts.replace ? NLM_F_REPLACE : NLM_F_EXCL);
  await nl.request(RTM_NEWROUTE, flags, routeMessage(r), { name: opts.ifname ?? `route ${r.dst}`, ifindex: r.oif });
}

/** Routes of the main table (optionally of one family). */
export async function routeList(nl: Rtnl, family = 0): Promise<RouteInfo[]> {
  const msgs = await nl.dump(RTM_GETROUTE, message(rtmsg({
    family, dstLen: 0, table: 0, protocol: 0, scope: 0, type: 0,
  })));
  const out: RouteInfo[] = [];
  for (const m of msgs) {
    if (m.type !== RTM_NEWROUTE) continue;
    const h = rtmsgDecode(m.data);
    const a = messageAttrs(m.data, RTMSG_LEN);
    const tableAttr = a.get(RTA_TABLE);
    const table = tableAttr ? readU32(tableAttr) : h.table;
    if (table !== RT_TABLE_MAIN) continue;
    const dst = a.get(RTA_DST);
    const gw = a.get(RTA_GATEWAY);
    const oif = a.get(RTA_OIF);
    const info: RouteInfo = {
      family: h.family, dst: dst ? `${ipString(dst)}/${h.dstLen}` : 'default', dstLen: h.dstLen,
      scope: h.scope, protocol: h.protocol, table, type: h.type,
    };
    if (gw) info.gateway = ipString(gw);
    if (oif) info.oif = readU32(oif);
    out.push(info);
  }
  return out;
}
