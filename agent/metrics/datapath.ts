/**
 * The datapath's metrics: entries and capacity of the BPF maps, and the per-CPU counters of the
 * endpoint programs (read once per scrape by the caller's `datapathRead`).
 */
import { Gauge, type Registry } from 'prom-client';
import type { Counter as DatapathCounter, MetricName } from '../../bpf/index.js';
import { CONNTRACK_MAP_MAX, ENDPOINTS_MAP_MAX, IPCACHE_MAP_MAX } from '../../bpf/layout.gen.js';
import { mirroredCounter } from './mirror.js';
import type { BpfMapName, MetricsSources } from './sources.js';

const DATAPATH_PACKET_COUNTERS: ReadonlyArray<[MetricName, { direction: string; verdict: string }]> = [
  ['INGRESS_FORWARDED', { direction: 'INGRESS', verdict: 'FORWARDED' }],
  ['INGRESS_DROPPED', { direction: 'INGRESS', verdict: 'DROPPED' }],
  ['EGRESS_FORWARDED', { direction: 'EGRESS', verdict: 'FORWARDED' }],
  ['EGRESS_DROPPED', { direction: 'EGRESS', verdict: 'DROPPED' }],
];

export function datapathMetricsRegister(
  registry: Registry,
  src: MetricsSources,
  datapathRead: () => Record<MetricName, DatapathCounter> | undefined,
): void {
  const registers = [registry];
  new Gauge({
    name: 'kitnet_bpf_map_entries',
    help: 'Entries in the BPF maps',
    labelNames: ['map'] as const,
    registers,
    collect() {
      const dp = src.datapath;
      if (!dp) return;
      this.reset();
      try {
        if (src.mapFill) {
          // The real datapath: every map that fills with state, counted in the kernel.
          for (const { map, entries } of src.mapFill()) this.set({ map }, entries);
          return;
        }
        const lists: Array<[BpfMapName, (() => unknown[]) | undefined]> = [
          ['endpoints', dp.endpointList?.bind(dp)],
          ['ipcache', dp.ipcacheList?.bind(dp)],
          ['conntrack', dp.conntrackList?.bind(dp)],
        ];
        for (const [map, list] of lists) if (list) this.set({ map }, list().length);
      } catch {
        // A closed datapath (agent stopping) has no maps to count.
      }
    },
  });
  new Gauge({
    name: 'kitnet_bpf_map_capacity',
    help: 'Maximum entries of the BPF maps (max_entries)',
    labelNames: ['map'] as const,
    registers,
    collect() {
      let capacity = src.mapCapacity;
      try {
        capacity ??= src.datapath?.mapCapacity?.();
      } catch {
        // closed datapath: the generated sizes below
      }
      capacity ??= src.datapath ? { endpoints: ENDPOINTS_MAP_MAX, ipcache: IPCACHE_MAP_MAX, conntrack: CONNTRACK_MAP_MAX } : {};
      for (const [map, n] of Object.entries(capacity)) if (n !== undefined) this.set({ map }, n);
    },
  });
  const dpCounter = (name: MetricName, field: 'packets' | 'bytes' = 'packets'): Array<[Record<string, string>, number]> | undefined => {
    const m = datapathRead();
    return m && [[{}, Number(m[name][field])]];
  };
  mirroredCounter(registry, 'kitnet_datapath_packets_total', 'Packets seen by the endpoint programs, by direction and verdict', ['direction', 'verdict'] as const, () => {
    const m = datapathRead();
    return m && DATAPATH_PACKET_COUNTERS.map(([slot, labels]) => [labels, Number(m[slot].packets)]);
  });
  mirroredCounter(registry, 'kitnet_datapath_bytes_total', 'Bytes seen by the endpoint programs, by direction and verdict', ['direction', 'verdict'] as const, () => {
    const m = datapathRead();
    return m && DATAPATH_PACKET_COUNTERS.map(([slot, labels]) => [labels, Number(m[slot].bytes)]);
  });
  mirroredCounter(registry, 'kitnet_ringbuf_events_total', 'Flow events the datapath wrote to the BPF ring buffer', [], () => dpCounter('EVENTS_SENT'));
  mirroredCounter(registry, 'kitnet_ringbuf_lost_events_total', 'Flow events lost because the BPF ring buffer was full', [], () => dpCounter('EVENTS_LOST'));
  mirroredCounter(registry, 'kitnet_ringbuf_drop_events_suppressed_total', 'Drops not reported as flow events because their workload was over its drop event budget in their direction (flows.dropEvents); per workload: kitnet_workload_drop_events_suppressed_total', [], () => {
    const m = datapathRead() as Partial<Record<MetricName, DatapathCounter>> | undefined;
    return m && [[{}, Number(m.DROP_EVENTS_SUPPRESSED?.packets ?? 0n)]];
  });
  mirroredCounter(registry, 'kitnet_datapath_no_endpoint_packets_total', 'Packets dropped on a kitnet device without its endpoint entry (a step of setup or teardown failed or is under way)', [], () => dpCounter('NO_ENDPOINT'));
  mirroredCounter(registry, 'kitnet_datapath_non_ip_packets_total', 'ARP frames passed by the endpoint programs (other frames that are not IP are dropped)', [], () => dpCounter('NON_IP'));
  mirroredCounter(registry, 'kitnet_conntrack_created_total', 'Connection tracking entries created', [], () => dpCounter('CT_NEW'));
  mirroredCounter(registry, 'kitnet_datapath_policy_drops_total', 'New connections dropped by policy: no allow entry (denied) or a deny entry (deny)', ['reason'] as const, () => {
    const m = datapathRead();
    if (!m) return undefined;
    const read = (name: string) => Number((m as Partial<Record<string, DatapathCounter>>)[name]?.packets ?? 0n);
    return [[{ reason: 'POLICY_DENIED' }, read('POLICY_DENIED')], [{ reason: 'POLICY_DENY' }, read('POLICY_DENY')]];
  });
  mirroredCounter(registry, 'kitnet_conntrack_full_total', 'Connection tracking entries that could not be created (table full)', [], () => dpCounter('CT_FULL'));
}
