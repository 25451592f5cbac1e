import type { Config } from './config.js';
import { addressParse, cidrContains, cidrParse } from './ipam.js';
import type { WorkloadRecord } from './store/types.js';

/** A workload whose address lies outside the configured pool (the pool changed under it). */
export interface PoolMismatch {
  /** `NS/NAME`. */
  workload: string;
  address: string;
  pool: string;
  /** The config key of the pool. */
  key: 'ipam.ipv4Pool' | 'ipam.ipv6Pool';
}

/**
 * Workloads keep the addresses they were given when the pool changes: they still work, but a
 * new pool that overlaps no old address, or a later pool that takes the old range back, is a surprise
 * worth saying out loud (on start, on reload and in status).
 */
export function workloadsOutsidePools(records: readonly WorkloadRecord[], ipam: Config['ipam']): PoolMismatch[] {
  const pools = [
    { key: 'ipam.ipv4Pool' as const, cidr: cidrParse(ipam.ipv4Pool), address: (r: WorkloadRecord) => r.ipv4 },
    { key: 'ipam.ipv6Pool' as const, cidr: cidrParse(ipam.ipv6Pool), address: (r: WorkloadRecord) => r.ipv6 },
  ];
  const out: PoolMismatch[] = [];
  for (const r of records) {
    for (const p of pools) {
      const text = p.address(r);
      if (!text) continue;
      const a = addressParse(text);
      if (!cidrContains(p.cidr, a.family, a.value)) out.push({ workload: `${r.spec.namespace}/${r.spec.name}`, address: a.text, pool: p.cidr.text, key: p.key });
    }
  }
  return out;
}
