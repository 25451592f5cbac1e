// How full the maps that fill with state are, for `kitnet status` and /metrics.
import { dump as exactDump } from './maps/exact.js';
import type { BpfMap } from './maps/map.js';

/** The maps whose fill `kitnet status` and /metrics report. */
export const FILL_MAP_NAMES = ['endpoints', 'ipcache', 'ipcache_exact', 'policy', 'policy_exact', 'policy_wild', 'conntrack'] as const;
export type FillMapName = (typeof FILL_MAP_NAMES)[number];

/** Entries in a map: hashes and LPM tries in batch syscalls, other maps (and old kernels) key by key. */
export function mapCount(m: BpfMap): number {
  return exactDump(m, m.maxEntries).count;
}
