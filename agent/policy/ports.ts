/** Protocols, ports, port ranges as LPM prefixes, and ICMP type names. */
import { Proto } from './types.js';

const PROTO_BY_NAME: Record<string, number> = {
  TCP: Proto.TCP,
  UDP: Proto.UDP,
  SCTP: Proto.SCTP,
  ICMP: Proto.ICMP,
  ICMPV6: Proto.ICMPV6,
  ANY: Proto.ANY,
};

/** `TCP` / `tcp` / 6 -> 6. Throws on an unknown name. */
export function protocolNumber(p: string | number): number {
  if (typeof p === 'number') return p;
  const n = PROTO_BY_NAME[p.toUpperCase()];
  if (n === undefined) throw new Error(`unknown protocol "${p}"`);
  return n;
}

const NAME_BY_PROTO = new Map(Object.entries(PROTO_BY_NAME).map(([k, v]) => [v, k === 'ICMPV6' ? 'ICMPv6' : k]));

export function protocolName(n: number): string {
  return NAME_BY_PROTO.get(n) ?? String(n);
}

/** The protocols Cilium's `ANY` stands for when ports are given. */
export const ANY_L4_PROTOCOLS = [Proto.TCP, Proto.UDP, Proto.SCTP] as const;

/** IANA_SVC_NAME as Kubernetes validates container port names. */
export function isPortName(s: string): boolean {
  return s.length >= 1 && s.length <= 15 && /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/.test(s) && /[a-z]/.test(s) && !s.includes('--');
}

export interface PortPrefix {
  port: number;
  prefixLen: number;
}

/**
 * The minimal set of aligned prefixes (over 16 bits) that covers exactly [lo, hi].
 * [0, 65535] is the single prefix 0/0.
 */
export function portRangePrefixes(lo: number, hi: number): PortPrefix[] {
  if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 0 || hi > 65535 || lo > hi) {
    throw new Error(`bad port range ${lo}-${hi}`);
  }
  const out: PortPrefix[] = [];
  let cur = lo;
  while (cur <= hi) {
    // the largest power-of-two block aligned at cur ...
    let size = cur === 0 ? 65536 : cur & -cur;
    // ... that does not run past hi
    while (cur + size - 1 > hi) size /= 2;
    out.push({ port: cur, prefixLen: 16 - Math.log2(size) });
    cur += size;
  }
  return out;
}

/** Whether `port` lies in the prefix. */
export function portPrefixContains(p: PortPrefix, port: number): boolean {
  if (p.prefixLen === 0) return true;
  const shift = 16 - p.prefixLen;
  return port >>> shift === p.port >>> shift;
}

const ICMP4_TYPES: Record<string, number> = {
  EchoReply: 0,
  DestinationUnreachable: 3,
  Redirect: 5,
  Echo: 8,
  EchoRequest: 8,
  RouterAdvertisement: 9,
  RouterSelection: 10,
  TimeExceeded: 11,
  ParameterProblem: 12,
  Timestamp: 13,
  TimestampReply: 14,
  Photuris: 40,
  ExtendedEchoRequest: 42,
  ExtendedEchoReply: 43,
};

const ICMP6_TYPES: Record<string, number> = {
  DestinationUnreachable: 1,
  PacketTooBig: 2,
  TimeExceeded: 3,
  ParameterProblem: 4,
  EchoRequest: 128,
  EchoReply: 129,
  MulticastListenerQuery: 130,
  MulticastListenerReport: 131,
  MulticastListenerDone: 132,
  RouterSolicitation: 133,
  RouterAdvertisement: 134,
  NeighborSolicitation: 135,
  NeighborAdvertisement: 136,
  RedirectMessage: 137,
  RouterRenumbering: 138,
  ICMPNodeInformationQuery: 139,
  ICMPNodeInformationResponse: 140,
  InverseNeighborDiscoverySolicitation: 141,
  InverseNeighborDiscoveryAdvertisement: 142,
  HomeAgentAddressDiscoveryRequest: 144,
  HomeAgentAddressDiscoveryReply: 145,
  MobilePrefixSolicitation: 146,
  MobilePrefixAdvertisement: 147,
  DuplicateAddressRequestCodeSuffix: 157,
  DuplicateAddressConfirmationCodeSuffix: 158,
  ExtendedEchoRequest: 160,
  ExtendedEchoReply: 161,
};

/** ICMP type (number 0-255 or upstream's CamelCase name) for a family; undefined if unknown. */
export function icmpTypeNumber(type: number | string, family: 'IPv4' | 'IPv6'): number | undefined {
  if (typeof type === 'number') return Number.isInteger(type) && type >= 0 && type <= 255 ? type : undefined;
  if (/^\d+$/.test(type)) return icmpTypeNumber(Number(type), family);
  return (family === 'IPv6' ? ICMP6_TYPES : ICMP4_TYPES)[type];
}
