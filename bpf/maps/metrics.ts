// Per-CPU `metrics` array: sums over CPUs, slots named by the generated METRIC_* constants.
import * as L from '../layout.gen.js';
import type { BpfMap } from './map.js';

export type MetricName =
  | 'INGRESS_FORWARDED'
  | 'INGRESS_DROPPED'
  | 'EGRESS_FORWARDED'
  | 'EGRESS_DROPPED'
  | 'EVENTS_SENT'
  | 'EVENTS_LOST'
  | 'NO_ENDPOINT'
  | 'CT_NEW'
  | 'CT_FULL'
  | 'NON_IP'
  | 'POLICY_DENIED'
  | 'POLICY_DENY'
  | 'POLICY_BYPASS'
  | 'FRAG_UNKNOWN'
  | 'NEIGH_REPLIES'
  | 'DROP_EVENTS_SUPPRESSED';

export const METRIC_SLOTS: Readonly<Record<MetricName, number>> = {
  INGRESS_FORWARDED: L.METRIC_INGRESS_FORWARDED,
  INGRESS_DROPPED: L.METRIC_INGRESS_DROPPED,
  EGRESS_FORWARDED: L.METRIC_EGRESS_FORWARDED,
  EGRESS_DROPPED: L.METRIC_EGRESS_DROPPED,
  EVENTS_SENT: L.METRIC_EVENTS_SENT,
  EVENTS_LOST: L.METRIC_EVENTS_LOST,
  NO_ENDPOINT: L.METRIC_NO_ENDPOINT,
  CT_NEW: L.METRIC_CT_NEW,
  CT_FULL: L.METRIC_CT_FULL,
  NON_IP: L.METRIC_NON_IP,
  POLICY_DENIED: L.METRIC_POLICY_DENIED,
  POLICY_DENY: L.METRIC_POLICY_DENY,
  POLICY_BYPASS: L.METRIC_POLICY_BYPASS,
  FRAG_UNKNOWN: L.METRIC_FRAG_UNKNOWN,
  NEIGH_REPLIES: L.METRIC_NEIGH_REPLIES,
  DROP_EVENTS_SUPPRESSED: L.METRIC_DROP_EVENTS_SUPPRESSED,
};

export interface Counter {
  packets: bigint;
  bytes: bigint;
}

export class MetricsMap {
  constructor(readonly map: BpfMap) {}

  read(slot: number): Counter {
    const key = Buffer.alloc(4);
    key.writeUInt32LE(slot);
    const v = this.map.lookup(key);
    const c: Counter = { packets: 0n, bytes: 0n };
    if (!v) return c;
    const stride = Math.ceil(L.METRICS_VALUE.size / 8) * 8;
    for (let cpu = 0; cpu < this.map.ncpus; cpu++) {
      c.packets += v.readBigUInt64LE(cpu * stride + L.METRICS_VALUE.fields.packets.offset);
      c.bytes += v.readBigUInt64LE(cpu * stride + L.METRICS_VALUE.fields.bytes.offset);
    }
    return c;
  }

  readAll(): Record<MetricName, Counter> {
    const out = {} as Record<MetricName, Counter>;
    for (const [name, slot] of Object.entries(METRIC_SLOTS) as Array<[MetricName, number]>) out[name] = this.read(slot);
    return out;
  }
}
