// How full the maps that fill with state are, for `kitnet status` and /metrics.
import { native } from '../common/native.js';
import { dump as exactDump } from './maps/exact.js';
import type { BpfMap } from './maps/map.js';

/** The maps whose fill `kitnet status` and /metrics report. */
export const FILL_MAP_NAMES = ['endpoints', 'ipcache', 'ipcache_exact', 'policy', 'policy_exact', 'policy_wild', 'conntrack'] as const;
export type FillMapName = (typeof FILL_MAP_NAMES)[number];

const BPF_MAP_TYPE_LRU_HASH = 9;

/** Entries in a map: hashes (LRU too) in batch syscalls, other maps key by key. */
export function mapCount(m: BpfMap): number {
  try {
    if (m.type === BPF_MAP_TYPE_LRU_HASH) return native().mapDumpBatch(m.fd, m.keySize, m.valueSize, m.maxEntries).count;
  } catch {
    // a kernel without batch ops for LRU hashes: the plain dump below
  }
  return exactDump(m, m.maxEntries).count;
}
