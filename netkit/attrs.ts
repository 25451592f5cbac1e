// Netlink TLV encoding and decoding (host byte order, 4-byte alignment), plus the fixed headers of
// the rtnetlink families netkit/ speaks. Pure functions: unit-tested against golden bytes.
import { endianness } from 'node:os';
import {
  IFA_ADDRESS, IFA_FLAGS, IFA_LOCAL, IFADDRMSG_LEN, IFINFOMSG_LEN, NDMSG_LEN, RTMSG_LEN, TCMSG_LEN,
} from './uapi.js';

const LE = endianness() === 'LE';
const NLA_HDRLEN = 4;
const NLA_F_NESTED = 0x8000;
const NLA_TYPE_MASK = 0x3fff;

export const nlaAlign = (n: number): number => (n + 3) & ~3;

/** One attribute, or a nested list of attributes. Encoded lazily by {@link attrsEncode}. */
export type Attr = { type: number; data: Buffer } | { type: number; nested: Attr[] };

export function u8(v: number): Buffer {
  return Buffer.from([v & 0xff]);
}
export function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  if (LE) b.writeUInt16LE(v); else b.writeUInt16BE(v);
  return b;
}
export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  if (LE) b.writeUInt32LE(v >>> 0); else b.writeUInt32BE(v >>> 0);
  return b;
}
export function s32(v: number): Buffer {
  const b = Buffer.alloc(4);
  if (LE) b.writeInt32LE(v); else b.writeInt32BE(v);
  return b;
}
/** NUL-terminated string (NLA_STRING / NLA_NUL_STRING both accept it). */
export function str(v: string): Buffer {
  return Buffer.concat([Buffer.from(v, 'utf8'), Buffer.alloc(1)]);
}

export function readU16(b: Buffer, off = 0): number {
  return LE ? b.readUInt16LE(off) : b.readUInt16BE(off);
}
export function readU32(b: Buffer, off = 0): number {
  return LE ? b.readUInt32LE(off) : b.readUInt32BE(off);
}
export function readS32(b: Buffer, off = 0): number {
  return LE ? b.readInt32LE(off) : b.readInt32BE(off);
}
export function readStr(b: Buffer): string {
  const end = b.indexOf(0);
  return b.subarray(0, end < 0 ? b.length : end).toString('utf8');
}

export const attr = (type: number, data: Buffer): Attr => ({ type, data });
export const nest = (type: number, nested: Attr[]): Attr => ({ type, nested });

/** Encodes attributes back to back, each padded to 4 bytes. Nested ones carry NLA_F_NESTED only if asked. */
export function attrsEncode(attrs: Attr[]): Buffer {
  const parts: Buffer[] = [];
  for (const a of attrs) {
    const payload = 'nested' in a ? attrsEncode(a.nested) : a.data;
    const hdr = Buffer.alloc(NLA_HDRLEN);
    hdr.set(u16(NLA_HDRLEN + payload.length), 0);
    hdr.set(u16(a.type), 2);
    parts.push(hdr, payload, Buffer.alloc(nlaAlign(payload.length) - payload.length));
  }
  return Buffer.concat(parts);
}

/** Decoded attributes: type -> payload (the last one wins, as in the kernel's nla_parse). */
export type AttrMap = Map<number, Buffer>;

export function attrsDecode(buf: Buffer): AttrMap {
  const out: AttrMap = new Map();
  let off = 0;
  while (off + NLA_HDRLEN <= buf.length) {
    const len = readU16(buf, off);
    const type = readU16(buf, off + 2) & NLA_TYPE_MASK;
    if (len < NLA_HDRLEN || off + len > buf.length) break;
    out.set(type, buf.subarray(off + NLA_HDRLEN, off + len));
    off += nlaAlign(len);
  }
  return out;
}

export { NLA_F_NESTED };

// ---- fixed headers ----

export interface IfInfoMsg {
  family?: number;
  type?: number;
  index?: number;
  flags?: number;
  change?: number;
}

export function ifinfomsg(m: IfInfoMsg = {}): Buffer {
  const b = Buffer.alloc(IFINFOMSG_LEN);
  b[0] = m.family ?? 0;
  b.set(u16(m.type ?? 0), 2);
  b.set(s32(m.index ?? 0), 4);
  b.set(u32(m.flags ?? 0), 8);
  b.set(u32(m.change ?? 0), 12);
  return b;
}

export function ifinfomsgDecode(b: Buffer): Required<IfInfoMsg> {
  return { family: b[0] ?? 0, type: readU16(b, 2), index: readS32(b, 4), flags: readU32(b, 8), change: readU32(b, 12) };
}

export interface IfAddrMsg { family: number; prefixlen: number; flags: number; scope: number; index: number }

export function ifaddrmsg(m: IfAddrMsg): Buffer {
  const b = Buffer.alloc(IFADDRMSG_LEN);
  b[0] = m.family; b[1] = m.prefixlen; b[2] = m.flags & 0xff; b[3] = m.scope;
  b.set(u32(m.index), 4);
  return b;
}

export function ifaddrmsgDecode(b: Buffer): IfAddrMsg {
  return { family: b[0] ?? 0, prefixlen: b[1] ?? 0, flags: b[2] ?? 0, scope: b[3] ?? 0, index: readU32(b, 4) };
}

export interface RtMsg {
  family: number; dstLen: number; srcLen?: number; tos?: number; table: number;
  protocol: number; scope: number; type: number; flags?: number;
}

export function rtmsg(m: RtMsg): Buffer {
  const b = Buffer.alloc(RTMSG_LEN);
  b[0] = m.family; b[1] = m.dstLen; b[2] = m.srcLen ?? 0; b[3] = m.tos ?? 0;
  b[4] = m.table; b[5] = m.protocol; b[6] = m.scope; b[7] = m.type;
  b.set(u32(m.flags ?? 0), 8);
  return b;
}

export function rtmsgDecode(b: Buffer): Required<RtMsg> {
  return {
    family: b[0] ?? 0, dstLen: b[1] ?? 0, srcLen: b[2] ?? 0, tos: b[3] ?? 0, table: b[4] ?? 0,
    protocol: b[5] ?? 0, scope: b[6] ?? 0, type: b[7] ?? 0, flags: readU32(b, 8),
  };
}

export interface NdMsg { family: number; ifindex: number; state: number; flags?: number; type?: number }

export function ndmsg(m: NdMsg): Buffer {
  const b = Buffer.alloc(NDMSG_LEN);
  b[0] = m.family;
  b.set(s32(m.ifindex), 4);
  b.set(u16(m.state), 8);
  b[10] = m.flags ?? 0; b[11] = m.type ?? 0;
  return b;
}

export function ndmsgDecode(b: Buffer): Required<NdMsg> {
  return { family: b[0] ?? 0, ifindex: readS32(b, 4), state: readU16(b, 8), flags: b[10] ?? 0, type: b[11] ?? 0 };
}

export interface TcMsg { family?: number; ifindex: number; handle: number; parent: number; info?: number }

export function tcmsg(m: TcMsg): Buffer {
  const b = Buffer.alloc(TCMSG_LEN);
  b[0] = m.family ?? 0;
  b.set(s32(m.ifindex), 4);
  b.set(u32(m.handle), 8);
  b.set(u32(m.parent), 12);
  b.set(u32(m.info ?? 0), 16);
  return b;
}

/** A fixed header followed by attributes: the payload of one rtnetlink message. */
export function message(header: Buffer, attrs: Attr[] = []): Buffer {
  return Buffer.concat([header, attrsEncode(attrs)]);
}

/** The attributes that follow a fixed header of `headerLen` bytes (aligned). */
export function messageAttrs(payload: Buffer, headerLen: number): AttrMap {
  return attrsDecode(payload.subarray(nlaAlign(headerLen)));
}

// ---- addresses ----

/** Parses a bare IPv4 or IPv6 address into network-order bytes, or undefined if it is not one. */
export function ipBytes(ip: string): Buffer | undefined {
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(ip)) {
    const parts = ip.split('.').map(Number);
    if (parts.some((p) => p > 255)) return undefined;
    return Buffer.from(parts);
  }
  if (!/^[0-9a-fA-F:.]+$/.test(ip) || !ip.includes(':')) return undefined;
  let text = ip;
  const lastColon = text.lastIndexOf(':');
  if (text.slice(lastColon + 1).includes('.')) {
    // embedded IPv4 (e.g. ::ffff:10.0.0.1): rewrite its four bytes as two hex groups
    const v4 = ipBytes(text.slice(lastColon + 1));
    if (!v4 || v4.length !== 4) return undefined;
    text = `${text.slice(0, lastColon + 1)}${v4.readUInt16BE(0).toString(16)}:${v4.readUInt16BE(2).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parse = (s: string): number[] | undefined => {
    if (s === '') return [];
    const groups = s.split(':');
    if (groups.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) return undefined;
    return groups.map((g) => parseInt(g, 16));
  };
  const head = parse(halves[0]!);
  const rest = halves.length === 2 ? parse(halves[1]!) : [];
  if (!head || !rest) return undefined;
  const known = head.length + rest.length;
  let groups: number[];
  if (halves.length === 2) {
    if (known > 7) return undefined;
    groups = [...head, ...new Array<number>(8 - known).fill(0), ...rest];
  } else {
    groups = head;
  }
  if (groups.length !== 8) return undefined;
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(g, i * 2));
  return b;
}

/** Formats network-order address bytes (4 or 16) the way iproute2 prints them. */
export function ipString(b: Buffer): string {
  if (b.length === 4) return Array.from(b).join('.');
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i));
  // longest run of zero groups (>= 2) becomes '::'
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

export function macBytes(mac: string): Buffer | undefined {
  if (!/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac)) return undefined;
  return Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
}

export function macString(b: Buffer): string {
  return Array.from(b).map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** IFA_LOCAL/IFA_ADDRESS plus IFA_FLAGS: the attribute list of an address request. */
export function addressAttrs(addr: Buffer, flags: number): Attr[] {
  return [attr(IFA_LOCAL, addr), attr(IFA_ADDRESS, addr), attr(IFA_FLAGS, u32(flags))];
}
