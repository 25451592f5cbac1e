// struct policy_key / policy_value encoding (bpf/layout.gen.ts; see tools/gen/bpf-layout/structs.ts and
// bpf/include/policy.h): prefixlen and the u32 fields in host byte order (little-endian here, like every
// other kitnet map), the port in network byte order so that a port prefix is a prefix of the key's bits.
import {
  DIR_EGRESS,
  DIR_INGRESS,
  POLICY_F_DENY,
  POLICY_KEY,
  POLICY_PREFIX_ANY_PROTO,
  POLICY_PREFIX_FULL,
  POLICY_PREFIX_PROTO,
  POLICY_VALUE,
} from '../layout.gen.js';
import type { PolicyDirection, PolicyEntryFields, PolicyMapEntry } from '../types.js';

export const K = POLICY_KEY.fields;
const V = POLICY_VALUE.fields;
export const POLICY_KEY_SIZE = POLICY_KEY.size;
export const POLICY_VALUE_SIZE = POLICY_VALUE.size;

/** A key of full length: the entry also goes into `policy_exact`. */
export function policyKeyIsFull(key: Buffer, off = 0): boolean {
  return key.readUInt32LE(off + K.prefixlen.offset) === POLICY_PREFIX_FULL;
}

/** The `policy_wild` key of a policy key: its (endpoint, identity, direction), prefix ANY_PROTO. */
export function policyWildKey(key: Buffer, off = 0): Buffer {
  const w = Buffer.alloc(POLICY_KEY_SIZE);
  key.copy(w, 0, off, off + POLICY_KEY_SIZE);
  w.writeUInt32LE(POLICY_PREFIX_ANY_PROTO, K.prefixlen.offset);
  w.writeUInt8(0, K.protocol.offset);
  w.writeUInt16BE(0, K.port.offset);
  return w;
}

function directionCode(d: PolicyDirection): number {
  if (d === 'ingress') return DIR_INGRESS;
  if (d === 'egress') return DIR_EGRESS;
  throw new TypeError(`policy entry: bad direction ${String(d)}`);
}

function u(v: number, max: number, what: string): number {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`policy entry: ${what} ${v} out of range 0..${max}`);
  return v;
}

/** Writes struct policy_key for a compiled entry at `off`; bits past the prefix are zeroed. */
export function policyKeyWrite(out: Buffer, off: number, endpointId: number, e: PolicyEntryFields): void {
  const proto = u(e.protocol, 255, 'protocol');
  const plen = u(e.portPrefixLen, 16, 'port prefix length');
  if (proto === 0 && (e.port !== 0 || plen !== 0)) throw new RangeError('policy entry: a port needs a protocol');
  const mask = plen === 0 ? 0 : (0xffff << (16 - plen)) & 0xffff;
  out.writeUInt32LE(proto === 0 ? POLICY_PREFIX_ANY_PROTO : POLICY_PREFIX_PROTO + plen, off + K.prefixlen.offset);
  out.writeUInt32LE(u(endpointId, 0xffffffff, 'endpoint id'), off + K.endpoint_id.offset);
  out.writeUInt32LE(u(e.identity, 0xffffffff, 'identity'), off + K.identity.offset);
  out.writeUInt8(directionCode(e.direction), off + K.direction.offset);
  out.writeUInt8(proto, off + K.protocol.offset);
  out.writeUInt16BE(u(e.port, 0xffff, 'port') & mask, off + K.port.offset);
}

export function policyValueWrite(out: Buffer, off: number, e: Pick<PolicyEntryFields, 'deny' | 'cookie'>): void {
  out.writeUInt8(e.deny ? POLICY_F_DENY : 0, off + V.flags.offset);
  out.writeUInt32LE(u(e.cookie ?? 0, 0xffffffff, 'cookie'), off + V.cookie.offset);
}

export function policyEntryDecode(key: Buffer, value: Buffer): PolicyMapEntry {
  const prefixLen = key.readUInt32LE(K.prefixlen.offset);
  const dir = key.readUInt8(K.direction.offset);
  return {
    key,
    value,
    prefixLen,
    endpointId: key.readUInt32LE(K.endpoint_id.offset),
    identity: key.readUInt32LE(K.identity.offset),
    direction: dir === DIR_INGRESS ? 'ingress' : 'egress',
    protocol: key.readUInt8(K.protocol.offset),
    port: key.readUInt16BE(K.port.offset),
    portPrefixLen: Math.max(0, prefixLen - POLICY_PREFIX_PROTO),
    deny: (value.readUInt8(V.flags.offset) & POLICY_F_DENY) !== 0,
    cookie: value.readUInt32LE(V.cookie.offset),
  };
}
