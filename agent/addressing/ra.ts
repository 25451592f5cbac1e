// IPv6 router advertisements (RFC 4861) from the gateway fe80::1 to one guest: a default route, no
// prefix (the guest's address is kitnet's /128, not SLAAC), the gateway's MAC (source link-layer
// option, so the guest needs no neighbour solicitation first) and the MTU. Sent when a guest is first
// served, in answer to its router solicitations, and every RA_REPEAT_MS so the route never expires.

export const RA_ROUTER_LIFETIME_S = 1800;
export const RA_REPEAT_MS = 600_000;
const ALL_NODES = Buffer.from('ff020000000000000000000000000001', 'hex');
const GATEWAY_LL = Buffer.from('fe800000000000000000000000000001', 'hex');

const mac = (m: string) => Buffer.from(m.split(':').map((x) => parseInt(x, 16)));

/** A whole Ethernet frame: RA from fe80::1 to ff02::1, sent to the guest's MAC only. */
export function routerAdvertFrame(o: { gatewayMac: string; guestMac: string; mtu: number; managed: boolean; other: boolean }): Buffer {
  const icmp = Buffer.alloc(16 + 8 + 8);
  icmp[0] = 134; // router advertisement
  icmp[4] = 64; // cur hop limit
  icmp[5] = (o.managed ? 0x80 : 0) | (o.other ? 0x40 : 0);
  icmp.writeUInt16BE(RA_ROUTER_LIFETIME_S, 6);
  icmp[16] = 1; // source link-layer address
  icmp[17] = 1;
  mac(o.gatewayMac).copy(icmp, 18);
  icmp[24] = 5; // MTU
  icmp[25] = 1;
  icmp.writeUInt32BE(o.mtu, 28);
  const ip6 = Buffer.alloc(40);
  ip6[0] = 0x60;
  ip6.writeUInt16BE(icmp.length, 4);
  ip6[6] = 58;
  ip6[7] = 255; // RFC 4861: hop limit 255, or the guest drops it
  GATEWAY_LL.copy(ip6, 8);
  ALL_NODES.copy(ip6, 24);
  let sum = 0;
  const add = (b: Buffer) => {
    for (let i = 0; i < b.length; i += 2) sum += b.readUInt16BE(i);
  };
  add(GATEWAY_LL);
  add(ALL_NODES);
  sum += icmp.length + 58;
  add(icmp);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  icmp.writeUInt16BE(~sum & 0xffff, 2);
  return Buffer.concat([mac(o.guestMac), mac(o.gatewayMac), Buffer.from([0x86, 0xdd]), ip6, icmp]);
}

/** A router solicitation from `guestMac`, checked as far as the answer depends on it (RFC 4861 6.1.1). */
export function isRouterSolicitation(frame: Buffer, guestMac: string): boolean {
  if (frame.length < 14 + 40 + 8 || frame.readUInt16BE(12) !== 0x86dd || frame[20] !== 58) return false;
  if (frame.subarray(6, 12).compare(mac(guestMac)) !== 0) return false;
  if (frame[21] !== 255 || frame[54] !== 133 || frame[55] !== 0) return false;
  return 40 + frame.readUInt16BE(18) <= frame.length - 14;
}
