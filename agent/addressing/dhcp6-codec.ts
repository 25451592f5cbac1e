// DHCPv6 (RFC 8415) as kitnet serves it to VM guests: a strict decoder of whole Ethernet frames from a
// guest (every length checked against the bytes present, options nested at most as RFC 8415 nests
// them, a bound on how many there are; anything odd is a reason, never an exception) and an encoder
// of the replies. Hand-written: of the npm packages kept (npm.tsv), `dhcp` serves DHCPv4 only and
// `dhcpd-leases` parses ISC lease files; none speaks DHCPv6.
import { createHash } from 'node:crypto';
import { macString } from './dhcp4-codec.js';

export const DHCP6_CLIENT_PORT = 546;
export const DHCP6_SERVER_PORT = 547;
const ETH_HLEN = 14;
const IP6_HLEN = 40;
const ETHERTYPE_IPV6 = 0x86dd;
const IPPROTO_UDP = 17;
/** All_DHCP_Relay_Agents_and_Servers (RFC 8415 7.1): where clients send. */
const ALL_DHCP_SERVERS = Buffer.from('ff020000000000000000000000010002', 'hex');
export const GATEWAY_LL = Buffer.from('fe800000000000000000000000000001', 'hex');
/** Options in one message, nested ones included: a real client sends about ten. */
export const DHCP6_MAX_OPTIONS = 64;

export const Msg6 = {
  SOLICIT: 1, ADVERTISE: 2, REQUEST: 3, CONFIRM: 4, RENEW: 5, REBIND: 6, REPLY: 7, RELEASE: 8, DECLINE: 9,
  RECONFIGURE: 10, INFORMATION_REQUEST: 11, RELAY_FORW: 12, RELAY_REPL: 13,
} as const;

export const Opt6 = {
  CLIENTID: 1, SERVERID: 2, IA_NA: 3, IA_TA: 4, IAADDR: 5, ORO: 6, PREFERENCE: 7, ELAPSED_TIME: 8, RELAY_MSG: 9,
  AUTH: 11, UNICAST: 12, STATUS_CODE: 13, RAPID_COMMIT: 14, INTERFACE_ID: 18, DNS_SERVERS: 23, DOMAIN_LIST: 24,
  IA_PD: 25, SOL_MAX_RT: 82, INF_MAX_RT: 83,
} as const;

export const Status6 = { SUCCESS: 0, UNSPEC_FAIL: 1, NO_ADDRS_AVAIL: 2, NO_BINDING: 3, NOT_ON_LINK: 4, USE_MULTICAST: 5 } as const;

export interface IaAddress {
  /** 16 bytes. */
  address: Buffer;
  preferred: number;
  valid: number;
}

export interface IaNa {
  iaid: number;
  t1: number;
  t2: number;
  addresses: IaAddress[];
}

export interface Dhcp6Request {
  srcMac: string;
  /** The client's link-local source address (16 bytes): where the reply goes. */
  srcIp: Buffer;
  messageType: number;
  /** 24 bits. */
  xid: number;
  clientId: Buffer | undefined;
  serverId: Buffer | undefined;
  iaNa: IaNa[];
  /** IA_TA and IA_PD are not served; their presence is known so an Information-request carrying them is refused. */
  otherIa: boolean;
  rapidCommit: boolean;
  /** Option codes the client asked for (ORO). */
  requested: Set<number>;
}

export type Decode6Result = { ok: true; request: Dhcp6Request } | { ok: false; reason: string; relayed?: boolean };

interface RawOption { code: number; value: Buffer }

/** Options in b[start, end); a reason instead when they do not parse. `budget` counts options across nesting. */
function optionsParse(b: Buffer, start: number, end: number, budget: { left: number }): RawOption[] | string {
  const out: RawOption[] = [];
  let i = start;
  while (i < end) {
    if (end - i < 4) return `option header cut short (${end - i} bytes left)`;
    const code = b.readUInt16BE(i);
    const len = b.readUInt16BE(i + 2);
    if (i + 4 + len > end) return `option ${code} (length ${len}) runs past its container`;
    if (--budget.left < 0) return `more than ${DHCP6_MAX_OPTIONS} options`;
    out.push({ code, value: b.subarray(i + 4, i + 4 + len) });
    i += 4 + len;
  }
  return out;
}

/** RFC 8415 11: a DUID is 2 bytes of type and at most 128 of identifier. */
function duidCheck(d: Buffer, what: string): string | undefined {
  if (d.length < 3 || d.length > 130) return `${what} of ${d.length} bytes is not a DUID`;
  const type = d.readUInt16BE(0);
  if (type === 1 && d.length < 8 + 1) return `${what}: DUID-LLT too short`;
  if (type === 3 && d.length < 4 + 1) return `${what}: DUID-LL too short`;
  if (type === 4 && d.length !== 18) return `${what}: DUID-UUID must be 18 bytes`;
  return undefined;
}

/** The Ethernet MAC inside a DUID-LLT or DUID-LL (hardware type 1), if it carries one. */
export function duidMac(d: Buffer): string | undefined {
  const type = d.readUInt16BE(0);
  if (type === 1 && d.length === 14 && d.readUInt16BE(2) === 1) return macString(d, 8);
  if (type === 3 && d.length === 10 && d.readUInt16BE(2) === 1) return macString(d, 4);
  return undefined;
}

function iaNaParse(v: Buffer, budget: { left: number }): IaNa | string {
  if (v.length < 12) return `IA_NA of ${v.length} bytes (at least 12)`;
  const ia: IaNa = { iaid: v.readUInt32BE(0), t1: v.readUInt32BE(4), t2: v.readUInt32BE(8), addresses: [] };
  const inner = optionsParse(v, 12, v.length, budget);
  if (typeof inner === 'string') return `IA_NA: ${inner}`;
  for (const o of inner) {
    if (o.code !== Opt6.IAADDR) continue; // a status code or unknown option inside an IA: nothing to act on
    if (o.value.length < 24) return `IAADDR of ${o.value.length} bytes (at least 24)`;
    const sub = optionsParse(o.value, 24, o.value.length, budget);
    if (typeof sub === 'string') return `IAADDR: ${sub}`;
    ia.addresses.push({ address: Buffer.from(o.value.subarray(0, 16)), preferred: o.value.readUInt32BE(16), valid: o.value.readUInt32BE(20) });
  }
  return ia;
}

function udpChecksum(src: Buffer, dst: Buffer, udp: Buffer): number {
  let sum = udp.length + IPPROTO_UDP;
  for (const b of [src, dst]) for (let i = 0; i < 16; i += 2) sum += b.readUInt16BE(i);
  for (let i = 0; i + 1 < udp.length; i += 2) sum += udp.readUInt16BE(i);
  if (udp.length & 1) sum += udp[udp.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** One Ethernet frame as received from a guest's device. */
export function dhcp6FrameDecode(frame: Buffer): Decode6Result {
  const bad = (reason: string): Decode6Result => ({ ok: false, reason });
  if (frame.length < ETH_HLEN + IP6_HLEN + 8 + 4) return bad(`frame of ${frame.length} bytes is too short`);
  if (frame.readUInt16BE(12) !== ETHERTYPE_IPV6) return bad('not IPv6');
  const ip = ETH_HLEN;
  if (frame[ip]! >> 4 !== 6) return bad('IP version is not 6');
  if (frame[ip + 6] !== IPPROTO_UDP) return bad('not UDP (or behind extension headers)');
  const payload = frame.readUInt16BE(ip + 4);
  if (ip + IP6_HLEN + payload > frame.length) return bad(`IPv6 payload length ${payload} does not fit the frame`);
  const src = frame.subarray(ip + 8, ip + 24);
  const dst = frame.subarray(ip + 24, ip + 40);
  // RFC 8415 13.1: a client on the link sends from its link-local address
  if (src[0] !== 0xfe || (src[1]! & 0xc0) !== 0x80) return bad('source is not a link-local address');
  if (!dst.equals(ALL_DHCP_SERVERS) && !dst.equals(GATEWAY_LL)) return bad('not to ff02::1:2 or fe80::1');
  const udp = ip + IP6_HLEN;
  const udpLen = frame.readUInt16BE(udp + 4);
  if (udpLen < 8 + 4 || udpLen > payload) return bad(`UDP length ${udpLen} does not fit the IPv6 payload`);
  if (frame.readUInt16BE(udp + 2) !== DHCP6_SERVER_PORT) return bad('not to the DHCPv6 server port');
  if (frame.readUInt16BE(udp) !== DHCP6_CLIENT_PORT) return bad('not from the DHCPv6 client port');
  // The UDP checksum is not checked: a guest on a veth or virtio-net with checksum offload hands the
  // packet socket a partial one (CHECKSUM_PARTIAL), and every length below is checked anyway.
  const d = udp + 8;
  const end = udp + udpLen;
  const messageType = frame[d]!;
  if (messageType === Msg6.RELAY_FORW || messageType === Msg6.RELAY_REPL) return { ok: false, reason: 'relay message', relayed: true };
  const budget = { left: DHCP6_MAX_OPTIONS };
  const options = optionsParse(frame, d + 4, end, budget);
  if (typeof options === 'string') return bad(options);
  const req: Dhcp6Request = {
    srcMac: macString(frame, 6), srcIp: Buffer.from(src), messageType, xid: frame.readUIntBE(d + 1, 3),
    clientId: undefined, serverId: undefined, iaNa: [], otherIa: false, rapidCommit: false, requested: new Set(),
  };
  for (const o of options) {
    switch (o.code) {
      case Opt6.CLIENTID:
      case Opt6.SERVERID: {
        const key = o.code === Opt6.CLIENTID ? 'clientId' : 'serverId';
        if (req[key]) return bad(`${key} twice`);
        const problem = duidCheck(o.value, key);
        if (problem) return bad(problem);
        req[key] = Buffer.from(o.value);
        break;
      }
      case Opt6.IA_NA: {
        const ia = iaNaParse(o.value, budget);
        if (typeof ia === 'string') return bad(ia);
        if (req.iaNa.some((x) => x.iaid === ia.iaid)) return bad(`IA_NA ${ia.iaid} twice`);
        req.iaNa.push(ia);
        break;
      }
      case Opt6.IA_TA:
      case Opt6.IA_PD:
        req.otherIa = true;
        break;
      case Opt6.ORO:
        if (o.value.length % 2) return bad(`option request of odd length ${o.value.length}`);
        for (let i = 0; i < o.value.length; i += 2) req.requested.add(o.value.readUInt16BE(i));
        break;
      case Opt6.ELAPSED_TIME:
        if (o.value.length !== 2) return bad(`elapsed time of ${o.value.length} bytes (2)`);
        break;
      case Opt6.RAPID_COMMIT:
        if (o.value.length !== 0) return bad(`rapid commit with ${o.value.length} bytes (0)`);
        req.rapidCommit = true;
        break;
      case Opt6.RELAY_MSG:
      case Opt6.INTERFACE_ID:
        return { ok: false, reason: `relay option ${o.code} in a client message`, relayed: true };
      default:
        break; // options a server may ignore (RFC 8415 16)
    }
  }
  return { ok: true, request: req };
}

export function option6(code: number, value: Buffer): Buffer {
  if (value.length > 0xffff) throw new Error(`DHCPv6 option ${code} longer than 65535 bytes`);
  const h = Buffer.alloc(4);
  h.writeUInt16BE(code, 0);
  h.writeUInt16BE(value.length, 2);
  return Buffer.concat([h, value]);
}

export function statusOption(code: number, message: string): Buffer {
  const v = Buffer.alloc(2);
  v.writeUInt16BE(code);
  return option6(Opt6.STATUS_CODE, Buffer.concat([v, Buffer.from(message, 'utf8')]));
}

/** IA_NA with its addresses (each lifetimes given) and an optional status. */
export function iaNaOption(ia: { iaid: number; t1: number; t2: number; addresses: IaAddress[]; status?: Buffer }): Buffer {
  const head = Buffer.alloc(12);
  head.writeUInt32BE(ia.iaid >>> 0, 0);
  head.writeUInt32BE(ia.t1 >>> 0, 4);
  head.writeUInt32BE(ia.t2 >>> 0, 8);
  const addrs = ia.addresses.map((a) => {
    const v = Buffer.alloc(24);
    a.address.copy(v, 0);
    v.writeUInt32BE(a.preferred >>> 0, 16);
    v.writeUInt32BE(a.valid >>> 0, 20);
    return option6(Opt6.IAADDR, v);
  });
  return option6(Opt6.IA_NA, Buffer.concat([head, ...addrs, ...(ia.status ? [ia.status] : [])]));
}

/**
 * The server's DUID: a DUID-UUID (RFC 6355) derived from the node name, so it is the same after every
 * restart (a guest's Renew names it, and a server that changed identity would make the guest wait for
 * its rebind time) and different on every host.
 */
export function serverDuid(nodeName: string): Buffer {
  const uuid = createHash('sha256').update(`kitnet dhcpv6 server ${nodeName}`).digest().subarray(0, 16);
  uuid[6] = (uuid[6]! & 0x0f) | 0x50; // name-based (version 5 layout)
  uuid[8] = (uuid[8]! & 0x3f) | 0x80;
  return Buffer.concat([Buffer.from([0, 4]), uuid]);
}

/** Ethernet + IPv6 + UDP (547 -> 546) from fe80::1 to the client's link-local address, checksum filled in. */
export function dhcp6FrameEncode(f: { srcMac: Buffer; dstMac: Buffer; dstIp: Buffer; messageType: number; xid: number; options: Buffer[] }): Buffer {
  const msg = Buffer.concat([Buffer.from([f.messageType, (f.xid >> 16) & 0xff, (f.xid >> 8) & 0xff, f.xid & 0xff]), ...f.options]);
  const udp = Buffer.alloc(8 + msg.length);
  udp.writeUInt16BE(DHCP6_SERVER_PORT, 0);
  udp.writeUInt16BE(DHCP6_CLIENT_PORT, 2);
  udp.writeUInt16BE(udp.length, 4);
  msg.copy(udp, 8);
  const sum = ~udpChecksum(GATEWAY_LL, f.dstIp, udp) & 0xffff;
  udp.writeUInt16BE(sum === 0 ? 0xffff : sum, 6);
  const ip6 = Buffer.alloc(IP6_HLEN);
  ip6[0] = 0x60;
  ip6.writeUInt16BE(udp.length, 4);
  ip6[6] = IPPROTO_UDP;
  ip6[7] = 255;
  GATEWAY_LL.copy(ip6, 8);
  f.dstIp.copy(ip6, 24);
  return Buffer.concat([f.dstMac, f.srcMac, Buffer.from([0x86, 0xdd]), ip6, udp]);
}
