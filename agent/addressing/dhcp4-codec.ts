// DHCPv4 (RFC 2131/2132) as kitnet serves it to VM guests: a strict decoder of whole Ethernet frames
// from a guest (every length checked against the bytes present; anything odd is a reason, never an
// exception) and an encoder of the replies. No library: the npm DHCP packages are unmaintained
// servers with their own sockets, and the subset needed here is small.

export const DHCP_SERVER_PORT = 67;
export const DHCP_CLIENT_PORT = 68;
const ETH_HLEN = 14;
const ETHERTYPE_IPV4 = 0x0800;
const IPPROTO_UDP = 17;
const BOOTP_FIXED = 236;
const MAGIC_COOKIE = 0x63825363;
/** RFC 2131: every client accepts a 576-byte IP datagram; larger only when it says so (option 57). */
export const DHCP_MIN_MAX_MESSAGE = 576 - 20 - 8;

export const DhcpMessageType = {
  DISCOVER: 1, OFFER: 2, REQUEST: 3, DECLINE: 4, ACK: 5, NAK: 6, RELEASE: 7, INFORM: 8,
} as const;

export const Opt = {
  PAD: 0, SUBNET_MASK: 1, ROUTER: 3, DNS: 6, HOSTNAME: 12, DOMAIN_NAME: 15, MTU: 26, REQUESTED_ADDRESS: 50,
  LEASE_TIME: 51, OVERLOAD: 52, MESSAGE_TYPE: 53, SERVER_ID: 54, MESSAGE: 56, MAX_MESSAGE_SIZE: 57, RENEWAL_TIME: 58,
  REBINDING_TIME: 59, DOMAIN_SEARCH: 119, CLASSLESS_ROUTES: 121, END: 255,
} as const;

export interface DhcpRequest {
  /** Ethernet source. */
  srcMac: string;
  /** IPv4 source of the datagram (0.0.0.0 before the guest has an address). */
  srcIp: string;
  op: number;
  xid: number;
  flags: number;
  ciaddr: string;
  giaddr: string;
  chaddr: string;
  messageType: number;
  /** Options by code (RFC 3396: repeated codes concatenated). */
  options: Map<number, Buffer>;
}

export type DecodeResult = { ok: true; request: DhcpRequest } | { ok: false; reason: string };

export const macString = (b: Buffer, off: number): string =>
  [...b.subarray(off, off + 6)].map((x) => x.toString(16).padStart(2, '0')).join(':');
export const ipv4String = (b: Buffer, off: number): string => `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;

export function ipv4Bytes(ip: string): Buffer {
  const parts = ip.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) throw new Error(`not an IPv4 address: ${ip}`);
  return Buffer.from(parts.map(Number));
}

function macBytes(mac: string): Buffer {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) throw new Error(`not a MAC address: ${mac}`);
  return Buffer.from(mac.split(':').map((x) => parseInt(x, 16)));
}

/** Options area [start, end) into a map; false on a malformed area. */
function optionsParse(b: Buffer, start: number, end: number, into: Map<number, Buffer>): string | undefined {
  let i = start;
  while (i < end) {
    const code = b[i]!;
    if (code === Opt.PAD) {
      i++;
      continue;
    }
    if (code === Opt.END) return undefined;
    if (i + 1 >= end) return `option ${code} has no length byte`;
    const len = b[i + 1]!;
    if (i + 2 + len > end) return `option ${code} (length ${len}) runs past the packet`;
    const value = b.subarray(i + 2, i + 2 + len);
    const prev = into.get(code);
    into.set(code, prev ? Buffer.concat([prev, value]) : Buffer.from(value));
    i += 2 + len;
  }
  return 'options without an END option';
}

/** One Ethernet frame as received from a guest's device. */
export function dhcpFrameDecode(frame: Buffer): DecodeResult {
  const bad = (reason: string): DecodeResult => ({ ok: false, reason });
  if (frame.length < ETH_HLEN + 20 + 8) return bad(`frame of ${frame.length} bytes is too short`);
  if (frame.readUInt16BE(12) !== ETHERTYPE_IPV4) return bad('not IPv4');
  const ip = ETH_HLEN;
  const vihl = frame[ip]!;
  if (vihl >> 4 !== 4) return bad('IP version is not 4');
  const ihl = (vihl & 0x0f) * 4;
  if (ihl < 20) return bad('IP header length below 20');
  const total = frame.readUInt16BE(ip + 2);
  if (total < ihl + 8 || ip + total > frame.length) return bad(`IP total length ${total} does not fit the frame`);
  if ((frame.readUInt16BE(ip + 6) & 0x3fff) !== 0) return bad('fragmented');
  if (frame[ip + 9] !== IPPROTO_UDP) return bad('not UDP');
  const udp = ip + ihl;
  const udpLen = frame.readUInt16BE(udp + 4);
  if (udpLen < 8 || udp + udpLen > ip + total) return bad(`UDP length ${udpLen} does not fit the IP packet`);
  if (frame.readUInt16BE(udp + 2) !== DHCP_SERVER_PORT) return bad('not to the DHCP server port');
  if (frame.readUInt16BE(udp) !== DHCP_CLIENT_PORT) return bad('not from the DHCP client port');
  const d = udp + 8;
  const end = udp + udpLen;
  if (end - d < BOOTP_FIXED + 4) return bad(`DHCP message of ${end - d} bytes is too short`);
  if (frame[d + 1] !== 1 || frame[d + 2] !== 6) return bad('hardware type is not Ethernet');
  if (frame.readUInt32BE(d + BOOTP_FIXED) !== MAGIC_COOKIE) return bad('no DHCP magic cookie');
  const options = new Map<number, Buffer>();
  const problem = optionsParse(frame, d + BOOTP_FIXED + 4, end, options);
  if (problem) return bad(problem);
  // sname/file overloading (option 52) is a client-side feature nobody sends to a server: refused
  if (options.has(Opt.OVERLOAD)) return bad('option overload (52) is not accepted');
  const type = options.get(Opt.MESSAGE_TYPE);
  if (!type || type.length !== 1) return bad('no valid message type (option 53)');
  return {
    ok: true,
    request: {
      srcMac: macString(frame, 6),
      srcIp: ipv4String(frame, ip + 12),
      op: frame[d]!,
      xid: frame.readUInt32BE(d + 4),
      flags: frame.readUInt16BE(d + 10),
      ciaddr: ipv4String(frame, d + 12),
      giaddr: ipv4String(frame, d + 24),
      chaddr: macString(frame, d + 28),
      messageType: type[0]!,
      options,
    },
  };
}

/** RFC 1035 names, uncompressed (RFC 3397 allows compression; nothing requires it). */
export function domainListEncode(domains: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  for (const d of domains) {
    for (const label of d.replace(/\.$/, '').split('.')) {
      const l = Buffer.from(label, 'ascii');
      if (l.length < 1 || l.length > 63) throw new Error(`domain ${d}: labels must be 1-63 characters`);
      parts.push(Buffer.from([l.length]), l);
    }
    parts.push(Buffer.from([0]));
  }
  return Buffer.concat(parts);
}

/** RFC 3442 option 121: [width][significant octets of the destination][router]. */
export function classlessRoutesEncode(routes: ReadonlyArray<{ dst: string; prefix: number; router: string }>): Buffer {
  return Buffer.concat(routes.map((r) => {
    const sig = Math.ceil(r.prefix / 8);
    return Buffer.concat([Buffer.from([r.prefix]), ipv4Bytes(r.dst).subarray(0, sig), ipv4Bytes(r.router)]);
  }));
}

export interface DhcpReply {
  messageType: number;
  xid: number;
  flags: number;
  ciaddr: string;
  yiaddr: string;
  chaddr: string;
  /** Options in order; values longer than 255 bytes are split (RFC 3396). `optional` ones are left out when they do not fit. */
  options: Array<{ code: number; value: Buffer; optional?: boolean }>;
  /** Largest DHCP message the client takes (option 57, else 548). */
  maxMessage: number;
}

function optionBytes(code: number, value: Buffer): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i === 0 || i < value.length; i += 255) {
    const chunk = value.subarray(i, i + 255);
    parts.push(Buffer.from([code, chunk.length]), chunk);
  }
  return Buffer.concat(parts);
}

/** The DHCP message (BOOTP reply + options). Throws if the required options exceed maxMessage. */
export function dhcpMessageEncode(r: DhcpReply): Buffer {
  const fixed = Buffer.alloc(BOOTP_FIXED + 4);
  fixed[0] = 2; // BOOTREPLY
  fixed[1] = 1;
  fixed[2] = 6;
  fixed.writeUInt32BE(r.xid >>> 0, 4);
  fixed.writeUInt16BE(r.flags & 0x8000, 10);
  ipv4Bytes(r.ciaddr).copy(fixed, 12);
  ipv4Bytes(r.yiaddr).copy(fixed, 16);
  macBytes(r.chaddr).copy(fixed, 28);
  fixed.writeUInt32BE(MAGIC_COOKIE, BOOTP_FIXED);
  const parts: Buffer[] = [fixed, optionBytes(Opt.MESSAGE_TYPE, Buffer.from([r.messageType]))];
  let size = fixed.length + 3 + 1; // + END
  for (const o of r.options) {
    const bytes = optionBytes(o.code, o.value);
    if (size + bytes.length > r.maxMessage) {
      if (o.optional) continue;
      throw new Error(`DHCP reply does not fit ${r.maxMessage} bytes (option ${o.code})`);
    }
    parts.push(bytes);
    size += bytes.length;
  }
  parts.push(Buffer.from([Opt.END]));
  return Buffer.concat(parts);
}

function checksum(b: Buffer, start: number, end: number, initial = 0): number {
  let sum = initial;
  for (let i = start; i + 1 < end; i += 2) sum += b.readUInt16BE(i);
  if ((end - start) & 1) sum += b[end - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** Ethernet + IPv4 + UDP (67 -> 68) around a DHCP message, checksums filled in. */
export function udpFrameEncode(f: { srcMac: string; dstMac: string; srcIp: string; dstIp: string; payload: Buffer }): Buffer {
  const udpLen = 8 + f.payload.length;
  const total = 20 + udpLen;
  const b = Buffer.alloc(ETH_HLEN + total);
  macBytes(f.dstMac).copy(b, 0);
  macBytes(f.srcMac).copy(b, 6);
  b.writeUInt16BE(ETHERTYPE_IPV4, 12);
  const ip = ETH_HLEN;
  b[ip] = 0x45;
  b[ip + 1] = 0xc0; // CS6: network control
  b.writeUInt16BE(total, ip + 2);
  b[ip + 8] = 64;
  b[ip + 9] = IPPROTO_UDP;
  ipv4Bytes(f.srcIp).copy(b, ip + 12);
  ipv4Bytes(f.dstIp).copy(b, ip + 16);
  b.writeUInt16BE(~checksum(b, ip, ip + 20) & 0xffff, ip + 10);
  const udp = ip + 20;
  b.writeUInt16BE(DHCP_SERVER_PORT, udp);
  b.writeUInt16BE(DHCP_CLIENT_PORT, udp + 2);
  b.writeUInt16BE(udpLen, udp + 4);
  f.payload.copy(b, udp + 8);
  const pseudo = checksum(b, ip + 12, ip + 20) + IPPROTO_UDP + udpLen;
  const sum = ~checksum(b, udp, udp + udpLen, pseudo) & 0xffff;
  b.writeUInt16BE(sum === 0 ? 0xffff : sum, udp + 6);
  return b;
}
