// `policy` LPM trie: (endpoint, remote identity, direction, protocol, port prefix) -> allow / deny.
// Keys follow struct policy_key (bpf/layout.gen.ts; see tools/gen/bpf-layout.ts and bpf/include/policy.h):
// prefixlen and the u32 fields in host byte order (little-endian here, like every other kitnet map), the
// port in network byte order so that a port prefix is a prefix of the key's bits.
// Writes go to the kernel in one native call per batch (keys and values packed back to back): the agent
// may write ~100k entries when many endpoints change at once.
// Entries of full length (POLICY_PREFIX_FULL: exact protocol and port) go to the `policy_exact` hash as
// well, which the datapath asks first (bpf/include/policy.h); the trie keeps every entry. Write order
// and repair: ./exact.ts. The `policy_wild` hash counts, per (endpoint, identity, direction), the trie's
// entries shorter than that: where it has none, the datapath skips the trie after a hash miss. Counts go
// up before the trie write and down after it, so it never misses a triple the trie has.
import { KernelError } from '../../common/kernel-error.js';
import { bpfError } from '../errors.js';
import {
  DIR_EGRESS,
  DIR_INGRESS,
  POLICY_F_DENY,
  POLICY_KEY,
  POLICY_MAP_MAX,
  POLICY_PREFIX_ANY_PROTO,
  POLICY_PREFIX_FULL,
  POLICY_PREFIX_PROTO,
  POLICY_VALUE,
} from '../layout.gen.js';
import { native } from '../../common/native.js';
import type { PolicyApplyResult, PolicyDirection, PolicyEntryFields, PolicyEntryOp, PolicyMapEntry, PolicyMapWrite } from '../types.js';
import { ExactMirror, batchApply, dump, dumpKey, hashUpdateBatch } from './exact.js';
import type { Dump } from './exact.js';
import { BPF_ANY } from './map.js';
import type { BpfMap } from './map.js';

const K = POLICY_KEY.fields;
const V = POLICY_VALUE.fields;
export const POLICY_KEY_SIZE = POLICY_KEY.size;
export const POLICY_VALUE_SIZE = POLICY_VALUE.size;

const OP_UPDATE = 1;
const OP_DELETE = 2;

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

/** A `policy_wild` key as a latin1 string: these around the bytes of endpoint, identity and direction. */
const WILD_ID_HEAD = policyWildKey(Buffer.alloc(POLICY_KEY_SIZE)).toString('latin1', 0, K.endpoint_id.offset);
const WILD_ID_TAIL = '\0'.repeat(POLICY_KEY_SIZE - K.protocol.offset);

/** Count changes per `policy_wild` key, by the key's latin1 string. */
type WildDelta = Map<string, { key: Buffer; d: number }>;

function wildBump(m: WildDelta, keys: Buffer, off: number, d: number): void {
  const w = policyWildKey(keys, off);
  const id = w.toString('latin1');
  const e = m.get(id);
  if (e) e.d += d;
  else m.set(id, { key: w, d });
}

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

function packedArgs(p: Packed): [Buffer, Buffer, Buffer] {
  return [p.ops, p.keys, p.values];
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

/** The ops at `idx` of a packed batch, packed again. */
function packedPick(p: Packed, idx: readonly number[]): Packed {
  const out: Packed = { ops: Buffer.alloc(idx.length), keys: Buffer.alloc(idx.length * POLICY_KEY_SIZE), values: Buffer.alloc(idx.length * POLICY_VALUE_SIZE) };
  idx.forEach((i, j) => {
    out.ops[j] = p.ops[i]!;
    p.keys.copy(out.keys, j * POLICY_KEY_SIZE, i * POLICY_KEY_SIZE, (i + 1) * POLICY_KEY_SIZE);
    p.values.copy(out.values, j * POLICY_VALUE_SIZE, i * POLICY_VALUE_SIZE, (i + 1) * POLICY_VALUE_SIZE);
  });
  return out;
}

function packedKeys(p: Packed): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < p.ops.length; i++) out.push(p.keys.subarray(i * POLICY_KEY_SIZE, (i + 1) * POLICY_KEY_SIZE));
  return out;
}

export class PolicyMap {
  /** Absent with objects of releases before the hash (the trie alone then). */
  readonly exact?: ExactMirror;
  /** `policy_wild`; absent with objects before it (and used only with `exact`). */
  readonly wild?: BpfMap;

  constructor(
    readonly map: BpfMap,
    exact?: BpfMap,
    wild?: BpfMap,
  ) {
    if (map.keySize !== POLICY_KEY_SIZE || map.valueSize !== POLICY_VALUE_SIZE)
      throw new Error(`policy map has key/value ${map.keySize}/${map.valueSize} bytes, want ${POLICY_KEY_SIZE}/${POLICY_VALUE_SIZE}`);
    if (exact) this.exact = new ExactMirror(map, exact, POLICY_MAP_MAX, policyKeyIsFull);
    if (exact && wild) {
      if (wild.keySize !== POLICY_KEY_SIZE || wild.valueSize !== 4) throw new Error(`policy_wild has key/value ${wild.keySize}/${wild.valueSize} bytes, want ${POLICY_KEY_SIZE}/4`);
      this.wild = wild;
    }
  }

  /** Adds the deltas to the `policy_wild` counts; a count that reaches 0 leaves the map. */
  private wildAdd(deltas: WildDelta): void {
    const wild = this.wild!;
    const v = Buffer.alloc(4);
    for (const { key, d } of deltas.values()) {
      if (d === 0) continue;
      const next = (wild.lookup(key)?.readUInt32LE(0) ?? 0) + d;
      if (next > 0) {
        v.writeUInt32LE(next, 0);
        wild.update(key, v);
      } else wild.delete(key);
    }
  }

  /**
   * Fills the hashes from the trie (one dump for both): `policy_exact` equal to the trie's full-length
   * entries, `policy_wild` to its counts of shorter ones. Returns what it changed.
   */
  sync(): { exact: { added: number; removed: number }; wild: { added: number; removed: number } } | undefined {
    if (!this.exact) return undefined;
    const trie = dump(this.map, POLICY_MAP_MAX);
    const exact = this.exact.sync(trie);
    if (!this.wild) return { exact, wild: { added: 0, removed: 0 } };
    const { missing, extra } = this.wildDiff(trie);
    const deltas: WildDelta = new Map();
    for (const [k, want, have] of missing) deltas.set(k.toString('latin1'), { key: k, d: want - have });
    for (const [k, have] of extra) deltas.set(k.toString('latin1'), { key: k, d: -have });
    this.wildAdd(deltas);
    return { exact, wild: { added: missing.length, removed: extra.length } };
  }

  /** `policy_wild` against the trie: [key, count wanted, count held] where they differ; [key, count] held but not wanted. */
  private wildDiff(trie: Dump): { missing: Array<[Buffer, number, number]>; extra: Array<[Buffer, number]> } {
    // the wild key of a trie key, as a string: its triple between the fixed prefix length and zeros
    const head = K.endpoint_id.offset;
    const tail = K.protocol.offset;
    const want = new Map<string, { off: number; n: number }>();
    for (let i = 0; i < trie.count; i++) {
      const off = i * POLICY_KEY_SIZE;
      if (policyKeyIsFull(trie.keys, off)) continue;
      const id = WILD_ID_HEAD + trie.keys.toString('latin1', off + head, off + tail) + WILD_ID_TAIL;
      const w = want.get(id);
      if (w) w.n++;
      else want.set(id, { off, n: 1 });
    }
    const missing: Array<[Buffer, number, number]> = [];
    const extra: Array<[Buffer, number]> = [];
    const held = dump(this.wild!, POLICY_MAP_MAX);
    for (let j = 0; j < held.count; j++) {
      const id = held.keys.toString('latin1', j * POLICY_KEY_SIZE, (j + 1) * POLICY_KEY_SIZE);
      const have = held.values.readUInt32LE(j * 4);
      const w = want.get(id);
      if (!w) extra.push([dumpKey(held, j), have]);
      else {
        want.delete(id);
        if (w.n !== have) missing.push([policyWildKey(trie.keys, w.off), w.n, have]);
      }
    }
    for (const w of want.values()) missing.push([policyWildKey(trie.keys, w.off), w.n, 0]);
    return { missing, extra };
  }

  private trieApply(p: Packed, results?: Buffer): PolicyApplyResult {
    try {
      return batchApply(this.map, p.ops, p.keys, p.values, BPF_ANY, results);
    } catch (err) {
      const index = (err as { index?: number }).index;
      if (err instanceof KernelError && typeof index === 'number') throw new PolicyApplyError(index, p.ops.length, err);
      throw err;
    }
  }

  /**
   * Ops in order. With the hash (./exact.ts: it never holds what the trie does not): (1) the full-length
   * keys this batch deletes leave the hash, (2) every op goes to the trie, (3) the full-length ops the
   * trie took are replayed on the hash in order — upserts, and the deletes of keys this batch upserted
   * before (the others already left in 1). A failed trie write stops at its index, as without the hash;
   * the hash gets what the trie took. `policy_wild`: the shorter upserts' triples count up before (2),
   * and what did not add an entry (a replacement, an op past a failure) or removed one counts down after.
   */
  apply(p: Packed): PolicyApplyResult {
    if (p.ops.length === 0) return { upserted: 0, deleted: 0, missing: 0 };
    const exact = this.exact;
    if (!exact) return this.trieApply(p);
    const n = p.ops.length;
    const fullDeletes: number[] = [];
    const wildUp: WildDelta = new Map();
    for (let i = 0; i < n; i++) {
      const off = i * POLICY_KEY_SIZE;
      if (policyKeyIsFull(p.keys, off)) {
        if (p.ops[i] === OP_DELETE) fullDeletes.push(i);
      } else if (this.wild && p.ops[i] === OP_UPDATE) wildBump(wildUp, p.keys, off, 1);
    }
    if (fullDeletes.length) batchApply(exact.hash, ...packedArgs(packedPick(p, fullDeletes)));
    if (wildUp.size) this.wildAdd(wildUp);

    let result: PolicyApplyResult | undefined;
    let failure: unknown;
    let applied = n;
    const results = this.wild ? Buffer.alloc(n) : undefined;
    try {
      result = this.trieApply(p, results);
    } catch (err) {
      failure = err;
      applied = err instanceof PolicyApplyError ? err.index : -1;
    }
    if (applied < 0) {
      // not known how far the trie got: rebuild the hashes from it
      try {
        this.sync();
      } catch {
        /* the next load's sync repairs it */
      }
      throw failure;
    }
    if (this.wild) {
      const down: WildDelta = new Map();
      for (let i = 0; i < n; i++) {
        const off = i * POLICY_KEY_SIZE;
        if (policyKeyIsFull(p.keys, off)) continue;
        if (p.ops[i] === OP_UPDATE ? i >= applied || results![i] === 0 : i < applied && results![i] === 1) wildBump(down, p.keys, off, -1);
      }
      try {
        this.wildAdd(down);
      } catch {
        /* counts left too high: only slower (a trie walk), never wrong; the next load's sync fixes them */
      }
    }
    const replay: number[] = [];
    let replayDeletes = false;
    if (fullDeletes.length === 0) {
      // the usual batch: no full-length deletes, so the replay is the full-length upserts
      for (let i = 0; i < applied; i++) if (policyKeyIsFull(p.keys, i * POLICY_KEY_SIZE)) replay.push(i);
    } else {
      const upserted = new Set<string>();
      for (let i = 0; i < applied; i++) {
        const off = i * POLICY_KEY_SIZE;
        if (!policyKeyIsFull(p.keys, off)) continue;
        const id = p.keys.toString('latin1', off, off + POLICY_KEY_SIZE);
        if (p.ops[i] === OP_UPDATE) {
          upserted.add(id);
          replay.push(i);
        } else if (upserted.has(id)) {
          upserted.delete(id);
          replay.push(i);
          replayDeletes = true;
        }
      }
    }
    if (replay.length) {
      const r = packedPick(p, replay);
      try {
        // upserts only: one BPF_MAP_UPDATE_BATCH syscall; with deletes in between, op by op in order
        if (replayDeletes) batchApply(exact.hash, ...packedArgs(r), BPF_ANY);
        else hashUpdateBatch(exact.hash, r.keys, r.values, BPF_ANY);
      } catch (err) {
        exact.forget(packedKeys(r)); // stale values would shadow the trie's new ones
        if (failure === undefined) throw err;
      }
    }
    if (failure !== undefined) throw failure;
    return result!;
  }

  /**
   * Where `policy_exact` differs from the trie's full-length entries, and `policy_wild` from the trie's
   * counts of shorter entries per (endpoint, identity, direction); undefined without the hash.
   */
  exactDiff(): { missing: PolicyMapEntry[]; extra: PolicyMapEntry[]; wild: Array<{ entry: PolicyMapEntry; want: number; have: number }> } | undefined {
    if (!this.exact) return undefined;
    const trie = dump(this.map, POLICY_MAP_MAX);
    const d = this.exact.diff(trie);
    const none = Buffer.alloc(POLICY_VALUE_SIZE);
    const wild: Array<{ entry: PolicyMapEntry; want: number; have: number }> = [];
    if (this.wild) {
      const w = this.wildDiff(trie);
      for (const [k, want, have] of w.missing) wild.push({ entry: policyEntryDecode(k, none), want, have });
      for (const [k, have] of w.extra) wild.push({ entry: policyEntryDecode(k, none), want: 0, have });
    }
    return {
      missing: d.missing.map(([k, v]) => policyEntryDecode(k, v)),
      extra: d.extra.map((k) => policyEntryDecode(k, none)),
      wild,
    };
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
