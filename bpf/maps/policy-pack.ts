// Batches of policy writes packed back to back (ops, keys, values), as the native addon takes them in
// one call: the agent may write ~100k entries when many endpoints change at once.
import type { PolicyEntryOp, PolicyMapWrite } from '../types.js';
import { POLICY_KEY_SIZE, POLICY_VALUE_SIZE, policyKeyWrite, policyValueWrite } from './policy-key.js';

export const OP_UPDATE = 1;
export const OP_DELETE = 2;

export interface Packed {
  ops: Buffer;
  keys: Buffer;
  values: Buffer;
}

export function packedArgs(p: Packed): [Buffer, Buffer, Buffer] {
  return [p.ops, p.keys, p.values];
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

/** The ops at `idx` of a packed batch, packed again. */
export function packedPick(p: Packed, idx: readonly number[]): Packed {
  const out: Packed = { ops: Buffer.alloc(idx.length), keys: Buffer.alloc(idx.length * POLICY_KEY_SIZE), values: Buffer.alloc(idx.length * POLICY_VALUE_SIZE) };
  idx.forEach((i, j) => {
    out.ops[j] = p.ops[i]!;
    p.keys.copy(out.keys, j * POLICY_KEY_SIZE, i * POLICY_KEY_SIZE, (i + 1) * POLICY_KEY_SIZE);
    p.values.copy(out.values, j * POLICY_VALUE_SIZE, i * POLICY_VALUE_SIZE, (i + 1) * POLICY_VALUE_SIZE);
  });
  return out;
}

export function packedKeys(p: Packed): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < p.ops.length; i++) out.push(p.keys.subarray(i * POLICY_KEY_SIZE, (i + 1) * POLICY_KEY_SIZE));
  return out;
}
