// `policy` LPM trie: (endpoint, remote identity, direction, protocol, port prefix) -> allow / deny.
// Keys: ./policy-key.ts. Writes go to the kernel in one native call per batch (./policy-pack.ts).
// Entries of full length (POLICY_PREFIX_FULL: exact protocol and port) go to the `policy_exact` hash as
// well, which the datapath asks first (bpf/include/policy.h); the trie keeps every entry. Write order
// and repair: ./exact.ts. The `policy_wild` hash (./policy-wild.ts) counts, per (endpoint, identity,
// direction), the trie's entries shorter than that: where it has none, the datapath skips the trie after
// a hash miss. Counts go up before the trie write and down after it, so it never misses a triple the
// trie has.
import { KernelError } from '../../common/kernel-error.js';
import { POLICY_MAP_MAX } from '../layout.gen.js';
import type { PolicyApplyResult, PolicyMapEntry } from '../types.js';
import { ExactMirror, batchApply, dump, hashUpdateBatch } from './exact.js';
import { BPF_ANY } from './map.js';
import type { BpfMap } from './map.js';
import { K, POLICY_KEY_SIZE, POLICY_VALUE_SIZE, policyEntryDecode, policyKeyIsFull } from './policy-key.js';
import { OP_DELETE, OP_UPDATE, packedArgs, packedKeys, packedPick, type Packed } from './policy-pack.js';
import { wildAdd, wildBump, wildDiff, type WildDelta } from './policy-wild.js';

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

  /**
   * Fills the hashes from the trie (one dump for both): `policy_exact` equal to the trie's full-length
   * entries, `policy_wild` to its counts of shorter ones. Returns what it changed.
   */
  sync(): { exact: { added: number; removed: number }; wild: { added: number; removed: number } } | undefined {
    if (!this.exact) return undefined;
    const trie = dump(this.map, POLICY_MAP_MAX);
    const exact = this.exact.sync(trie);
    if (!this.wild) return { exact, wild: { added: 0, removed: 0 } };
    const { missing, extra } = wildDiff(trie, this.wild!);
    const deltas: WildDelta = new Map();
    for (const [k, want, have] of missing) deltas.set(k.toString('latin1'), { key: k, d: want - have });
    for (const [k, have] of extra) deltas.set(k.toString('latin1'), { key: k, d: -have });
    wildAdd(this.wild!, deltas);
    return { exact, wild: { added: missing.length, removed: extra.length } };
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
    if (wildUp.size) wildAdd(this.wild!, wildUp);

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
        wildAdd(this.wild!, down);
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
      const w = wildDiff(trie, this.wild!);
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
    const d = dump(this.map, POLICY_MAP_MAX); // batch lookups: ~1 M entries in a fraction of a second
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
