// `policy` LPM trie: (endpoint, remote identity, direction, protocol, port prefix) -> allow / deny.
// Keys follow struct policy_key (bpf/layout.gen.ts; see tools/gen/bpf-layout.ts and bpf/include/policy.h):
// prefixlen and the u32 fields in host byte order (little-endian here, like every other kitnet map), the
// port in network byte order so that a port prefix is a prefix of the key's bits.
// Writes go to the kernel in one native call per batch (keys and values packed back to back): the agent
// may write ~100k entries when many endpoints change at once.
import { KernelError } from '../../common/kernel-error.js';
import { bpfError } from '../errors.js';
import {
  DIR_EGRESS,
  DIR_INGRESS,
  POLICY_F_DENY,
  POLICY_KEY,
  POLICY_MAP_MAX,
  POLICY_PREFIX_ANY_PROTO,
  POLICY_PREFIX_PROTO,
  POLICY_VALUE,
} from '../layout.gen.js';
import { native } from '../native.js';
import type { PolicyApplyResult, PolicyDirection, PolicyEntryFields, PolicyEntryOp, PolicyMapEntry, PolicyMapWrite } from '../types.js';
import { BPF_ANY } from './map.js';
import type { BpfMap } from './map.js';

const K = POLICY_KEY.fields;
const V = POLICY_VALUE.fields;
export const POLICY_KEY_SIZE = POLICY_KEY.size;
export const POLICY_VALUE_SIZE = POLICY_VALUE.size;

const OP_UPDATE = 1;
const OP_DELETE = 2;

/** A write the kernel refused; writes before `index` are applied, the rest are not. */
export class PolicyApplyError extends KernelError {
  constructor(
    readonly index: number,
    readonly total: number,
    cause: KernelError,
  ) {
    super({
      op: cause.op,
      errno: cause.errno,
      hint: `policy write ${index + 1} of ${total} failed, the ${index} before it are applied${cause.hint ? `; ${cause.hint}` : ''}`,
      cause,
    });
    this.name = 'PolicyApplyError';
  }
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

interface Packed {
  ops: Buffer;
  keys: Buffer;
  values: Buffer;
}

/** Raw writes -> packed buffers; every size is checked before anything reaches the kernel. */
export function policyWritesPack(writes: readonly PolicyMapWrite[]): Packed {
  const n = writes.length;
  const p: Packed = { ops: Buffer.alloc(n), keys: Buffer.alloc(n * POLICY_KEY_SIZE), values: Buffer.alloc(n * POLICY_VALUE_SIZE) };
  for (let i = 0; i < n; i++) {
    const w = writes[i]!;
    if (w.key.length !== POLICY_KEY_SIZE) throw new RangeError(`policy write ${i}: key is ${w.key.length} bytes, want ${POLICY_KEY_SIZE}`);
    w.key.copy(p.keys, i * POLICY_KEY_SIZE);
    if (w.op === 'upsert') {
      if (!w.value || w.value.length !== POLICY_VALUE_SIZE)
        throw new RangeError(`policy write ${i}: upsert needs a ${POLICY_VALUE_SIZE}-byte value, got ${w.value?.length ?? 'none'}`);
      w.value.copy(p.values, i * POLICY_VALUE_SIZE);
      p.ops[i] = OP_UPDATE;
    } else if (w.op === 'delete') {
      p.ops[i] = OP_DELETE;
    } else {
      throw new TypeError(`policy write ${i}: bad op ${String(w.op)}`);
    }
  }
  return p;
}

/** Compiled entry ops of one endpoint -> packed buffers, encoded in place (no per-entry allocation). */
export function policyEntryOpsPack(endpointId: number, ops: readonly PolicyEntryOp[]): Packed {
  const n = ops.length;
  const p: Packed = { ops: Buffer.alloc(n), keys: Buffer.alloc(n * POLICY_KEY_SIZE), values: Buffer.alloc(n * POLICY_VALUE_SIZE) };
  for (let i = 0; i < n; i++) {
    const o = ops[i]!;
    if (o.op !== 'upsert' && o.op !== 'delete') throw new TypeError(`policy op ${i}: bad op ${String(o.op)}`);
    policyKeyWrite(p.keys, i * POLICY_KEY_SIZE, endpointId, o.entry);
    if (o.op === 'upsert') policyValueWrite(p.values, i * POLICY_VALUE_SIZE, o.entry);
    p.ops[i] = o.op === 'upsert' ? OP_UPDATE : OP_DELETE;
  }
  return p;
}

export class PolicyMap {
  constructor(readonly map: BpfMap) {
    if (map.keySize !== POLICY_KEY_SIZE || map.valueSize !== POLICY_VALUE_SIZE)
      throw new Error(`policy map has key/value ${map.keySize}/${map.valueSize} bytes, want ${POLICY_KEY_SIZE}/${POLICY_VALUE_SIZE}`);
  }

  apply(p: Packed): PolicyApplyResult {
    if (p.ops.length === 0) return { upserted: 0, deleted: 0, missing: 0 };
    try {
      return native().mapBatchApply(this.map.fd, p.ops, p.keys, p.values, POLICY_KEY_SIZE, POLICY_VALUE_SIZE, BPF_ANY);
    } catch (err) {
      const k = bpfError(err);
      const index = (err as { index?: number }).index;
      if (k instanceof KernelError && typeof index === 'number') throw new PolicyApplyError(index, p.ops.length, k);
      throw k;
    }
  }

  list(endpointId?: number): PolicyMapEntry[] {
    let d: { count: number; keys: Buffer; values: Buffer };
    try {
      d = native().mapDump(this.map.fd, POLICY_KEY_SIZE, POLICY_VALUE_SIZE, POLICY_MAP_MAX);
    } catch (err) {
      throw bpfError(err);
    }
    const out: PolicyMapEntry[] = [];
    for (let i = 0; i < d.count; i++) {
      const key = d.keys.subarray(i * POLICY_KEY_SIZE, (i + 1) * POLICY_KEY_SIZE);
      if (endpointId !== undefined && key.readUInt32LE(K.endpoint_id.offset) !== endpointId) continue;
      out.push(policyEntryDecode(key, d.values.subarray(i * POLICY_VALUE_SIZE, (i + 1) * POLICY_VALUE_SIZE)));
    }
    return out.sort(
      (a, b) =>
        a.endpointId - b.endpointId ||
        a.direction.localeCompare(b.direction) ||
        a.identity - b.identity ||
        a.protocol - b.protocol ||
        a.port - b.port ||
        a.prefixLen - b.prefixLen,
    );
  }

  clear(endpointId?: number): number {
    const keys = this.list(endpointId).map((e) => e.key);
    const r = this.apply({
      ops: Buffer.alloc(keys.length, OP_DELETE),
      keys: Buffer.concat(keys),
      values: Buffer.alloc(keys.length * POLICY_VALUE_SIZE),
    });
    return r.deleted;
  }
}
