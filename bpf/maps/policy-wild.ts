// `policy_wild` counts, per (endpoint, identity, direction), the `policy` trie's entries shorter than
// POLICY_PREFIX_FULL: where it has none, the datapath skips the trie after a miss in `policy_exact`.
import { POLICY_MAP_MAX } from '../layout.gen.js';
import { dump, dumpKey } from './exact.js';
import type { Dump } from './exact.js';
import type { BpfMap } from './map.js';
import { K, POLICY_KEY_SIZE, policyKeyIsFull, policyWildKey } from './policy-key.js';

/** A `policy_wild` key as a latin1 string: these around the bytes of endpoint, identity and direction. */
const WILD_ID_HEAD = policyWildKey(Buffer.alloc(POLICY_KEY_SIZE)).toString('latin1', 0, K.endpoint_id.offset);
const WILD_ID_TAIL = '\0'.repeat(POLICY_KEY_SIZE - K.protocol.offset);

/** Count changes per `policy_wild` key, by the key's latin1 string. */
export type WildDelta = Map<string, { key: Buffer; d: number }>;

export function wildBump(m: WildDelta, keys: Buffer, off: number, d: number): void {
  const w = policyWildKey(keys, off);
  const id = w.toString('latin1');
  const e = m.get(id);
  if (e) e.d += d;
  else m.set(id, { key: w, d });
}

/** Adds the deltas to the `policy_wild` counts; a count that reaches 0 leaves the map. */
export function wildAdd(wild: BpfMap, deltas: WildDelta): void {
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

/** `policy_wild` against the trie: [key, count wanted, count held] where they differ; [key, count] held but not wanted. */
export function wildDiff(trie: Dump, wild: BpfMap): { missing: Array<[Buffer, number, number]>; extra: Array<[Buffer, number]> } {
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
  const held = dump(wild, POLICY_MAP_MAX);
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
