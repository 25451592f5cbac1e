// Routes (RTM_*ROUTE): the main table, and the local table as what the host delivers to itself.
import type { Attr } from './attrs.js';
import { isErrno } from '../common/kernel-error.js';
import { attr, ipBytes, ipString, message, messageAttrs, readU32, rtmsg, rtmsgDecode, u32 } from './attrs.js';
import type { Rtnl } from './socket.js';
import {
  AF_INET, AF_INET6, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RT_TABLE_LOCAL, RT_TABLE_MAIN,
  RTA_DST, RTA_GATEWAY, RTA_OIF, RTA_TABLE, RTM_DELROUTE, RTM_F_FIB_MATCH, RTM_F_LOOKUP_TABLE, RTM_GETROUTE, RTM_NEWROUTE, RTMSG_LEN,
  RTN_ANYCAST, RTN_BROADCAST, RTN_LOCAL, RTN_MULTICAST, RTN_UNICAST, RTPROT_STATIC,
} from './uapi.js';

export interface RouteSpec {
  /** Destination prefix `addr/len`, or 'default' (family from `family`). */
  dst: string;
  family?: 'inet' | 'inet6';
  gateway?: string;
  oif: number;
  /** 'link' for on-link destinations (no gateway). */
  scope?: 'link' | 'universe';
  /** rtm_protocol: who owns the route (default RTPROT_STATIC); lets an owner find its routes again. */
  protocol?: number;
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
    family, dstLen, table: RT_TABLE_MAIN, protocol: r.protocol ?? RTPROT_STATIC,
    scope: r.scope === 'link' ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE, type: RTN_UNICAST,
  });
  return message(hdr, attrs);
}

/** Adds a route; `replace` makes it idempotent (and takes the prefix over from any other device). */
export async function routeAdd(nl: Rtnl, r: RouteSpec, opts: { replace?: boolean; ifname?: string } = {}): Promise<void> {
  const flags = NLM_F_CREATE | (opts.replace ? NLM_F_REPLACE : NLM_F_EXCL);
  await nl.request(RTM_NEWROUTE, flags, routeMessage(r), { name: opts.ifname ?? `route ${r.dst}`, ifindex: r.oif });
}

/** Deletes a route (the kernel matches destination, table and the given gateway, device and protocol). */
export async function routeDelete(nl: Rtnl, r: RouteSpec, opts: { ifname?: string } = {}): Promise<void> {
  await nl.request(RTM_DELROUTE, 0, routeMessage(r), { name: opts.ifname ?? `route ${r.dst}`, ifindex: r.oif });
}

/**
 * The route the kernel picks for address `ip` (any device, following the policy rules): which device a
 * packet to it leaves by and whether through a gateway. undefined when nothing routes it.
 */
export async function routeGet(nl: Rtnl, ip: string): Promise<RouteInfo | undefined> {
  const bytes = ipBytes(ip);
  if (!bytes) throw new Error(`invalid address "${ip}"`);
  const hdr = rtmsg({ family: bytes.length === 4 ? AF_INET : AF_INET6, dstLen: bytes.length * 8, table: 0, protocol: 0, scope: 0, type: 0 });
  try {
    const msgs = await nl.request(RTM_GETROUTE, 0, message(hdr, [attr(RTA_DST, bytes)]), { name: `route to ${ip}` });
    const m = msgs.find((x) => x.type === RTM_NEWROUTE);
    return m ? routeDecode(m.data) : undefined;
  } catch (err) {
    if (isErrno(err, 'ENETUNREACH') || isErrno(err, 'EHOSTUNREACH')) return undefined;
    throw err;
  }
}

function routeDecode(data: Buffer): RouteInfo {
  const h = rtmsgDecode(data);
  const a = messageAttrs(data, RTMSG_LEN);
  const tableAttr = a.get(RTA_TABLE);
  const dst = a.get(RTA_DST);
  const gw = a.get(RTA_GATEWAY);
  const oif = a.get(RTA_OIF);
  const info: RouteInfo = {
    family: h.family, dst: dst ? `${ipString(dst)}/${h.dstLen}` : 'default', dstLen: h.dstLen,
    scope: h.scope, protocol: h.protocol, table: tableAttr ? readU32(tableAttr) : h.table, type: h.type,
  };
  if (gw) info.gateway = ipString(gw);
  if (oif) info.oif = readU32(oif);
  return info;
}

/**
 * The route the kernel picks for host address `ip` among those through device `oif`: one
 * RTM_GETROUTE with RTM_F_FIB_MATCH, which answers with the FIB entry itself, so the cost does not
 * depend on how many routes the host has (a dump of them all is O(routes) to decode). RTA_OIF makes
 * the lookup consider only nexthops through that device (fib_table_lookup skips the others; IPv6
 * looks up with RT6_LOOKUP_F_IFACE), so a route for the same prefix through another device neither
 * hides ours nor is answered as ours. The lookup follows the policy rules: the answer may come from
 * another table than main, which IPv4 reports only with RTM_F_LOOKUP_TABLE (it says main otherwise). undefined when nothing routes the address through the device
 * (ENETUNREACH, EHOSTUNREACH; a device that is down or gone).
 */
export async function hostRouteLookup(nl: Rtnl, ip: string, oif: number, device?: { name?: string }): Promise<RouteInfo | undefined> {
  const bytes = ipBytes(ip);
  if (!bytes) throw new Error(`invalid address "${ip}"`);
  const hdr = rtmsg({
    family: bytes.length === 4 ? AF_INET : AF_INET6, dstLen: bytes.length * 8, table: 0, protocol: 0, scope: 0, type: 0, flags: RTM_F_FIB_MATCH | RTM_F_LOOKUP_TABLE,
  });
  try {
    const msgs = await nl.request(RTM_GETROUTE, 0, message(hdr, [attr(RTA_DST, bytes), attr(RTA_OIF, u32(oif))]), { ...device, ifindex: oif });
    const m = msgs.find((x) => x.type === RTM_NEWROUTE);
    return m ? routeDecode(m.data) : undefined;
  } catch (err) {
    if (isErrno(err, 'ENETUNREACH') || isErrno(err, 'EHOSTUNREACH') || isErrno(err, 'ENODEV')) return undefined;
    throw err;
  }
}

/**
 * For each host address, whether the main table has a route for exactly it (/32, /128) through
 * device `oif`: what a dump of the main table would say, at the cost of one lookup per address when
 * the routes are there (the steady state, observed by every resync). A lookup proves presence only
 * when it answers that very route from main; otherwise (missing, or a policy rule sent the lookup to
 * another table first) one dump of the main table decides, so the answer is the dump's in every case.
 */
export async function hostRoutesPresent(nl: Rtnl, ips: readonly string[], oif: number, device?: { name?: string }): Promise<boolean[]> {
  const wanted = ips.map((ip) => {
    const bytes = ipBytes(ip);
    if (!bytes) throw new Error(`invalid address "${ip}"`);
    return { family: bytes.length === 4 ? AF_INET : AF_INET6, dst: `${ipString(bytes)}/${bytes.length * 8}` };
  });
  const isOurs = (r: RouteInfo, w: { family: number; dst: string }): boolean =>
    r.table === RT_TABLE_MAIN && r.family === w.family && r.dst === w.dst && r.oif === oif;
  const found = await Promise.all(ips.map((ip) => hostRouteLookup(nl, ip, oif, device)));
  const present = found.map((r, i) => r !== undefined && isOurs(r, wanted[i]!));
  if (present.every(Boolean)) return present;
  const routes = await routeList(nl);
  return wanted.map((w, i) => present[i]! || routes.some((r) => isOurs(r, w)));
}

/** Routes of the main table (optionally of one family). */
export async function routeList(nl: Rtnl, family = 0): Promise<RouteInfo[]> {
  const msgs = await nl.dump(RTM_GETROUTE, message(rtmsg({
    family, dstLen: 0, table: 0, protocol: 0, scope: 0, type: 0,
  })));
  const out: RouteInfo[] = [];
  for (const m of msgs) {
    if (m.type !== RTM_NEWROUTE) continue;
    const info = routeDecode(m.data);
    if (info.table === RT_TABLE_MAIN) out.push(info);
  }
  return out;
}

const LOCAL_DELIVERY = new Set([RTN_LOCAL, RTN_BROADCAST, RTN_ANYCAST, RTN_MULTICAST]);

/**
 * The destinations the kernel delivers to the host itself: the routes of the local table (255) of type
 * local, broadcast, anycast or multicast, both families, as `addr/len` (a `local` route may be a whole
 * prefix: 127.0.0.0/8, or AnyIP's `ip route add local 198.51.100.0/24 dev lo`; `default` is written
 * 0.0.0.0/0 or ::/0). One dump of every table: the socket has no strict checking to filter by table.
 */
export async function localDeliveryPrefixes(nl: Rtnl): Promise<string[]> {
  const msgs = await nl.dump(RTM_GETROUTE, message(rtmsg({
    family: 0, dstLen: 0, table: 0, protocol: 0, scope: 0, type: 0,
  })));
  const out = new Set<string>();
  for (const m of msgs) {
    if (m.type !== RTM_NEWROUTE) continue;
    const r = routeDecode(m.data);
    if (r.table !== RT_TABLE_LOCAL || !LOCAL_DELIVERY.has(r.type)) continue;
    out.add(r.dst === 'default' ? (r.family === AF_INET ? '0.0.0.0/0' : '::/0') : r.dst);
  }
  return [...out];
}
