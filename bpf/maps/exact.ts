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
import { native } from '../native.js';
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

/** Every entry of a map, in one native call (hash maps in BPF_MAP_LOOKUP_BATCH syscalls). */
export function dump(map: BpfMap, max: number): Array<[Buffer, Buffer]> {
  let d: { count: number; keys: Buffer; values: Buffer };
  try {
    d =
      map.type === BPF_MAP_TYPE_HASH
        ? native().mapDumpBatch(map.fd, map.keySize, map.valueSize, max)
        : native().mapDump(map.fd, map.keySize, map.valueSize, max);
  } catch (err) {
    throw bpfError(err);
  }
  const out: Array<[Buffer, Buffer]> = [];
  for (let i = 0; i < d.count; i++) {
    out.push([d.keys.subarray(i * map.keySize, (i + 1) * map.keySize), d.values.subarray(i * map.valueSize, (i + 1) * map.valueSize)]);
  }
  return out;
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
    const k = bpfError(err) as Error & { index?: number };
    const index = (err as { index?: number }).index;
    if (typeof index === 'number') k.index = index;
    throw k;
  }
}

/** Updates (or adds) every key of a hash map in one BPF_MAP_UPDATE_BATCH syscall; errors carry `index`. */
export function hashUpdateBatch(map: BpfMap, keys: Buffer, values: Buffer, flags = 0): number {
  if (keys.length === 0) return 0;
  try {
    return native().mapUpdateBatch(map.fd, keys, values, map.keySize, map.valueSize, flags);
  } catch (err) {
    const k = bpfError(err) as Error & { index?: number };
    const index = (err as { index?: number }).index;
    if (typeof index === 'number') k.index = index;
    throw k;
  }
}

/** A trie and the hash of its full-length entries. */
export class ExactMirror {
  constructor(
    readonly trie: BpfMap,
    readonly hash: BpfMap,
    private readonly max: number,
    /** Whether a trie key is of full prefix length (belongs in the hash too). */
    readonly isFull: (key: Buffer) => boolean,
  ) {
    if (trie.keySize !== hash.keySize || trie.valueSize !== hash.valueSize)
      throw new Error(`${hash.name}: key/value ${hash.keySize}/${hash.valueSize} bytes, ${trie.name} has ${trie.keySize}/${trie.valueSize}`);
  }

  /** Compares the hash with the trie's full-length entries (the trie dumped now unless given). */
  diff(trie: Array<[Buffer, Buffer]> = dump(this.trie, this.max)): ExactDiff {
    const want = new Map<string, [Buffer, Buffer]>();
    for (const [k, v] of trie) if (this.isFull(k)) want.set(k.toString('latin1'), [k, v]);
    const missing: Array<[Buffer, Buffer]> = [];
    const extra: Buffer[] = [];
    const seen = new Set<string>();
    for (const [k, v] of dump(this.hash, this.max)) {
      const id = k.toString('latin1');
      const w = want.get(id);
      if (!w) extra.push(k);
      else {
        seen.add(id);
        if (!w[1].equals(v)) missing.push(w);
      }
    }
    for (const [id, w] of want) if (!seen.has(id)) missing.push(w);
    return { missing, extra };
  }

  /** Makes the hash equal to the trie's full-length entries: removes what the trie lacks, then adds. */
  sync(trie?: Array<[Buffer, Buffer]>): { added: number; removed: number } {
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
