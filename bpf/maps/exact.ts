// The exact-match hashes in front of the LPM tries (`ipcache_exact`, `policy_exact`; bpf/include/maps.h):
// each holds the trie's entries of full prefix length, keys and values byte for byte, and the datapath
// asks the trie only when the hash misses. The trie stays complete — programs of an older object know
// only the trie, and a hash created by an upgrade starts empty — so the one rule for writers is that the
// hash never holds what the trie does not (hash ⊆ trie, equal values):
//   upsert: trie first, then the hash;  delete: the hash first, then the trie.
// Between the two writes, and after a crash between them, the hash misses or holds the value the trie
// had just before: the datapath sees the write not yet done, never a state the agent did not write.
// exactSync() repairs the hash from the trie; the loader runs it before any program is attached.
import { bpfError } from '../errors.js';
import { native } from '../../common/native.js';
import type { BpfMap } from './map.js';

export const OP_UPDATE = 1;
export const OP_DELETE = 2;

/** Where the hash differs from the trie's full-length entries. */
export interface ExactDiff {
  /** Full-length trie entries the hash lacks or holds with another value: [key, trie value]. */
  missing: Array<[Buffer, Buffer]>;
  /** Hash keys the trie lacks (or holds with a shorter prefix). */
  extra: Buffer[];
}

const BPF_MAP_TYPE_HASH = 1;
const BPF_MAP_TYPE_LRU_HASH = 9;
const BPF_MAP_TYPE_LPM_TRIE = 11;
/** Map types read with BPF_MAP_LOOKUP_BATCH; others (per-CPU and arrays among them) key by key. */
const BATCH_TYPES = new Set([BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LPM_TRIE]);

/** A map's entries as read in one native call: keys and values packed back to back. */
export interface Dump {
  count: number;
  keys: Buffer;
  values: Buffer;
  keySize: number;
  valueSize: number;
}

/** True for the error of a kernel (or map type) without BPF_MAP_LOOKUP_BATCH (common/native.ts). */
function batchUnsupported(err: unknown): boolean {
  const e = err as { op?: string; code?: string };
  return e.op === 'BPF_MAP_LOOKUP_BATCH' && (e.code === 'EINVAL' || e.code === 'EOPNOTSUPP');
}

/**
 * Every entry of a map, in one native call: hashes and LPM tries in BPF_MAP_LOOKUP_BATCH syscalls of
 * 4,096 entries (a ~1 M-entry policy trie about 10x faster than key by key), other maps — and
 * kernels without batch lookups for the type — key by key.
 */
export function dump(map: BpfMap, max: number): Dump {
  const n = native();
  try {
    // A per-CPU map's value is one slot per possible CPU (valueBufSize): what the kernel writes.
    let d: { count: number; keys: Buffer; values: Buffer } | undefined;
    if (BATCH_TYPES.has(map.type)) {
      try {
        d = n.mapDumpBatch(map.fd, map.keySize, map.valueBufSize, max);
      } catch (err) {
        if (!batchUnsupported(err)) throw err;
      }
    }
    d ??= n.mapDump(map.fd, map.keySize, map.valueBufSize, max);
    return { ...d, keySize: map.keySize, valueSize: map.valueBufSize };
  } catch (err) {
    throw bpfError(err);
  }
}

export function dumpKey(d: Dump, i: number): Buffer {
  return d.keys.subarray(i * d.keySize, (i + 1) * d.keySize);
}

export function dumpValue(d: Dump, i: number): Buffer {
  return d.values.subarray(i * d.valueSize, (i + 1) * d.valueSize);
}

/** Applies packed ops to one map (one native call); rethrows as KernelError with `index`. */
export function batchApply(
  map: BpfMap,
  ops: Buffer,
  keys: Buffer,
  values: Buffer,
  flags = 0,
  /** One byte per op: 1 where the op created / removed its key (see native.ts). */
  results?: Buffer,
): { upserted: number; deleted: number; missing: number } {
  if (ops.length === 0) return { upserted: 0, deleted: 0, missing: 0 };
  try {
    return native().mapBatchApply(map.fd, ops, keys, values, map.keySize, map.valueSize, flags, results);
  } catch (err) {
    throw batchError(err, map);
  }
}

/** Updates (or adds) every key of a hash map in one BPF_MAP_UPDATE_BATCH syscall; errors carry `index`. */
export function hashUpdateBatch(map: BpfMap, keys: Buffer, values: Buffer, flags = 0): number {
  if (keys.length === 0) return 0;
  try {
    return native().mapUpdateBatch(map.fd, keys, values, map.keySize, map.valueSize, flags);
  } catch (err) {
    throw batchError(err, map);
  }
}

/** A native batch call's error as a KernelError, keeping the index of the op the kernel refused. */
function batchError(err: unknown, map: BpfMap): Error & { index?: number } {
  const k = bpfError(err, undefined, { map }) as Error & { index?: number };
  const index = (err as { index?: number }).index;
  if (typeof index === 'number') k.index = index;
  return k;
}

/** A trie and the hash of its full-length entries. */
export class ExactMirror {
  constructor(
    readonly trie: BpfMap,
    readonly hash: BpfMap,
    private readonly max: number,
    /** Whether the trie key at `off` in `keys` is of full prefix length (belongs in the hash too). */
    readonly isFull: (keys: Buffer, off: number) => boolean,
  ) {
    if (trie.keySize !== hash.keySize || trie.valueSize !== hash.valueSize)
      throw new Error(`${hash.name}: key/value ${hash.keySize}/${hash.valueSize} bytes, ${trie.name} has ${trie.keySize}/${trie.valueSize}`);
  }

  /** Compares the hash with the trie's full-length entries (the trie dumped now unless given). */
  diff(trie: Dump = dump(this.trie, this.max)): ExactDiff {
    const ks = trie.keySize;
    const vs = trie.valueSize;
    const want = new Map<string, number>(); // key bytes -> index in the trie dump
    for (let i = 0; i < trie.count; i++) if (this.isFull(trie.keys, i * ks)) want.set(trie.keys.toString('latin1', i * ks, (i + 1) * ks), i);
    const missing: Array<[Buffer, Buffer]> = [];
    const extra: Buffer[] = [];
    const h = dump(this.hash, this.max);
    for (let j = 0; j < h.count; j++) {
      const id = h.keys.toString('latin1', j * ks, (j + 1) * ks);
      const i = want.get(id);
      if (i === undefined) extra.push(dumpKey(h, j));
      else {
        want.delete(id);
        if (trie.values.compare(h.values, j * vs, (j + 1) * vs, i * vs, (i + 1) * vs) !== 0) missing.push([dumpKey(trie, i), dumpValue(trie, i)]);
      }
    }
    for (const i of want.values()) missing.push([dumpKey(trie, i), dumpValue(trie, i)]);
    return { missing, extra };
  }

  /** Makes the hash equal to the trie's full-length entries: removes what the trie lacks, then adds. */
  sync(trie?: Dump): { added: number; removed: number } {
    const { missing, extra } = this.diff(trie);
    const ks = this.hash.keySize;
    const vs = this.hash.valueSize;
    if (extra.length) batchApply(this.hash, Buffer.alloc(extra.length, OP_DELETE), Buffer.concat(extra), Buffer.alloc(extra.length * vs));
    if (missing.length) {
      const keys = Buffer.alloc(missing.length * ks);
      const values = Buffer.alloc(missing.length * vs);
      missing.forEach(([k, v], i) => {
        k.copy(keys, i * ks);
        v.copy(values, i * vs);
      });
      hashUpdateBatch(this.hash, keys, values);
    }
    return { added: missing.length, removed: extra.length };
  }

  /** Best effort after a failed hash write: the keys leave the hash, so lookups fall back to the trie. */
  forget(keys: Buffer[]): void {
    if (!keys.length) return;
    try {
      batchApply(this.hash, Buffer.alloc(keys.length, OP_DELETE), Buffer.concat(keys), Buffer.alloc(keys.length * this.hash.valueSize));
    } catch {
      /* nothing better to do: the next load's sync() repairs it */
    }
  }
}
