/**
 * The `policy` map: one BPF_MAP_TYPE_LPM_TRIE (BPF_F_NO_PREALLOC) shared by all endpoints.
 * The layout below is defined ONCE in tools/gen/bpf-layout.ts (struct policy_key / policy_value and the
 * POLICY_* constants); this file encodes through the generated bpf/layout.gen.ts, and
 * test/unit/bpf-policy-layout.test.ts proves the encoders agree with it and with the BPF object's BTF.
 *
 *   struct policy_key {            // 16 bytes; key_size = 16
 *       __u32 prefixlen;           // @0  LPM prefix length in bits over the bytes from @4 on
 *       __u32 endpoint_id;         // @4  host byte order; always fully matched
 *       __u32 identity;            // @8  remote identity, host byte order; 0 = any identity; fully matched
 *       __u8  direction;           // @12 DIR_INGRESS 1 (to the workload) / DIR_EGRESS 2 (from it); fully matched
 *       __u8  protocol;            // @13 IPPROTO_* (6 TCP, 17 UDP, 132 SCTP, 1 ICMP, 58 ICMPv6)
 *       __be16 port;               // @14 NETWORK byte order (so prefix bits are the port's high bits):
 *                                  //     destination port for TCP/UDP/SCTP; for ICMP and ICMPv6 the
 *                                  //     ICMP TYPE (0-255) goes here (bpf_htons(type)); other protocols 0
 *   };
 *   prefixlen = 72                       entry for any protocol, any port (protocol = port = 0)
 *             = 80                       entry for one protocol, any port (port = 0)
 *             = 80 + portPrefixLen       entry for one protocol and a port prefix (1..16; 16 = one port)
 *   A packet's lookup key always has prefixlen = 96 with the exact protocol and port.
 *
 *   struct policy_value {          // 8 bytes; value_size = 8
 *       __u8  flags;               // @0 POLICY_F_DENY 0x1
 *       __u8  pad[3];              // @1 zero
 *       __u32 cookie;              // @4 opaque to the datapath, echoed into flow events (0 = none)
 *   };
 *
 * Datapath (per packet, both families, after conntrack; replies of allowed connections skip it):
 *   remote = ipcache identity of the peer (destination at egress, source at ingress)
 *   a = lookup({96, ep, remote, dir, proto, htons(port_or_icmp_type)})
 *   b = lookup({96, ep, 0,      dir, proto, htons(port_or_icmp_type)})
 *   if ((a && a->flags & POLICY_F_DENY) || (b && b->flags & POLICY_F_DENY)) drop DROP_POLICY_DENY (181)
 *   else if (a || b) pass
 *   else if remote is a workload (label-derived) and the ipBlock view of the ipcache has an identity v
 *        for the remote address (cidr.ts, ipBlockView): c = lookup({96, ep, v, dir, proto, port});
 *        c allows -> pass, c denies -> DROP_POLICY_DENY (181)
 *   else drop DROP_POLICY_DENIED (133)      // default deny; no entry at all for the endpoint = drop too
 * Two lookups per direction, independent of the number of rules and identities. Directions an endpoint
 * is not enforced in carry an allow-all entry (identity 0, prefixlen 72), so the datapath needs no
 * enforcement flag. ICMPv6 neighbour discovery (types 133-137) bypasses policy only on the link, as
 * ND sends it (bpf/include/policy.h, nd_judge).
 */
import { endianness } from 'node:os';
import {
  DIR_EGRESS,
  DIR_INGRESS,
  POLICY_F_DENY as GEN_POLICY_F_DENY,
  POLICY_KEY,
  POLICY_PREFIX_ANY_PROTO,
  POLICY_PREFIX_FULL,
  POLICY_PREFIX_PROTO,
  POLICY_VALUE,
} from '../../bpf/layout.gen.js';
import type { Direction, PolicyEntry } from './types.js';

export const POLICY_KEY_SIZE: number = POLICY_KEY.size;
export const POLICY_VALUE_SIZE: number = POLICY_VALUE.size;
/** Bits of the key that are always matched: endpoint_id + identity + direction. */
export const POLICY_KEY_STATIC_PREFIX: number = POLICY_PREFIX_ANY_PROTO;
export const POLICY_KEY_FULL_PREFIX: number = POLICY_PREFIX_FULL;
export const POLICY_F_DENY: number = GEN_POLICY_F_DENY;
export const DIRECTION_CODE: Record<Direction, number> = { ingress: DIR_INGRESS, egress: DIR_EGRESS };

const K = POLICY_KEY.fields;
const V = POLICY_VALUE.fields;
/** LPM data (what prefixlen counts over) starts right after the prefixlen member. */
const LPM_DATA_OFFSET = K.prefixlen.offset + K.prefixlen.size;

const LE = endianness() === 'LE';

function u32(buf: Buffer, off: number, v: number): void {
  if (LE) buf.writeUInt32LE(v >>> 0, off);
  else buf.writeUInt32BE(v >>> 0, off);
}

export interface PolicyKey {
  endpointId: number;
  identity: number;
  direction: Direction;
  /** 0 = any protocol (then port/portPrefixLen must be 0). */
  protocol: number;
  port: number;
  portPrefixLen: number;
}

export function policyKeyPrefixLen(k: Pick<PolicyKey, 'protocol' | 'portPrefixLen'>): number {
  return k.protocol === 0 ? POLICY_KEY_STATIC_PREFIX : POLICY_PREFIX_PROTO + k.portPrefixLen;
}

/** Encodes a map key. Bits beyond the prefix are zeroed, as the kernel expects for inserted keys. */
export function policyKeyEncode(k: PolicyKey): Buffer {
  if (k.protocol === 0 && (k.port !== 0 || k.portPrefixLen !== 0)) throw new Error('a port needs a protocol');
  if (k.portPrefixLen < 0 || k.portPrefixLen > 16) throw new Error(`bad port prefix length ${k.portPrefixLen}`);
  const buf = Buffer.alloc(POLICY_KEY_SIZE);
  u32(buf, K.prefixlen.offset, policyKeyPrefixLen(k));
  u32(buf, K.endpoint_id.offset, k.endpointId);
  u32(buf, K.identity.offset, k.identity);
  buf.writeUInt8(DIRECTION_CODE[k.direction], K.direction.offset);
  buf.writeUInt8(k.protocol, K.protocol.offset);
  const mask = k.portPrefixLen === 0 ? 0 : (0xffff << (16 - k.portPrefixLen)) & 0xffff;
  buf.writeUInt16BE(k.port & mask, K.port.offset); // network byte order
  return buf;
}

/** The key a packet is looked up with (prefixlen 96). */
export function policyLookupKeyEncode(endpointId: number, identity: number, direction: Direction, protocol: number, port: number): Buffer {
  return policyKeyEncode({ endpointId, identity, direction, protocol, port, portPrefixLen: 16 });
}

export function policyKeyDecode(buf: Buffer): PolicyKey & { prefixLen: number } {
  const r32 = (o: number) => (LE ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const prefixLen = r32(K.prefixlen.offset);
  const dir = buf.readUInt8(K.direction.offset);
  return {
    prefixLen,
    endpointId: r32(K.endpoint_id.offset),
    identity: r32(K.identity.offset),
    direction: dir === DIR_INGRESS ? 'ingress' : 'egress',
    protocol: buf.readUInt8(K.protocol.offset),
    port: buf.readUInt16BE(K.port.offset),
    portPrefixLen: Math.max(0, prefixLen - POLICY_PREFIX_PROTO),
  };
}

export function policyValueEncode(v: { deny: boolean; cookie?: number }): Buffer {
  const buf = Buffer.alloc(POLICY_VALUE_SIZE);
  buf.writeUInt8(v.deny ? POLICY_F_DENY : 0, V.flags.offset);
  u32(buf, V.cookie.offset, v.cookie ?? 0);
  return buf;
}

export function policyValueDecode(buf: Buffer): { deny: boolean; cookie: number } {
  const c = V.cookie.offset;
  return { deny: (buf.readUInt8(V.flags.offset) & POLICY_F_DENY) !== 0, cookie: LE ? buf.readUInt32LE(c) : buf.readUInt32BE(c) };
}

/** Key and value buffers for an endpoint's compiled entries, ready for the map. */
export function policyEntriesEncode(endpointId: number, entries: readonly PolicyEntry[]): Array<{ key: Buffer; value: Buffer; entry: PolicyEntry }> {
  return entries.map((entry) => ({
    key: policyKeyEncode({ endpointId, ...entry }),
    value: policyValueEncode({ deny: entry.deny }),
    entry,
  }));
}

/**
 * A longest-prefix-match table over encoded keys with the kernel's LPM trie semantics: a stored key
 * with prefix p matches a lookup key when the first p bits of their data (from byte 4) are equal; the
 * longest such p wins. Used by the tracer so that it decides exactly as the map would.
 */
export class LpmTable<V> {
  private readonly byPrefix = new Map<number, Map<string, V>>();
  private prefixes: number[] = [];

  private static masked(data: Buffer, prefixLen: number): string {
    const out = Buffer.from(data);
    for (let bit = prefixLen; bit < out.length * 8; bit++) out[bit >> 3]! &= ~(0x80 >> (bit & 7));
    return out.toString('hex');
  }

  private static prefixOf(key: Buffer): number {
    return LE ? key.readUInt32LE(K.prefixlen.offset) : key.readUInt32BE(K.prefixlen.offset);
  }

  insert(key: Buffer, value: V): void {
    const p = LpmTable.prefixOf(key);
    let m = this.byPrefix.get(p);
    if (!m) {
      this.byPrefix.set(p, (m = new Map()));
      this.prefixes = [...this.byPrefix.keys()].sort((a, b) => b - a);
    }
    m.set(LpmTable.masked(key.subarray(LPM_DATA_OFFSET), p), value);
  }

  lookup(key: Buffer): V | undefined {
    const max = LpmTable.prefixOf(key);
    const data = key.subarray(LPM_DATA_OFFSET);
    for (const p of this.prefixes) {
      if (p > max) continue;
      const v = this.byPrefix.get(p)!.get(LpmTable.masked(data, p));
      if (v !== undefined) return v;
    }
    return undefined;
  }
}
