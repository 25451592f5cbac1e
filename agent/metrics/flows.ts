/**
 * Hubble's flow metrics (cilium pkg/hubble/metrics: flow, drop, tcp, port-distribution handlers and
 * hubble_lost_events_total), with Hubble's names and labels, counted from the enriched flows the
 * pipeline emits or, per batch, from the decoded events themselves.
 */
import { Counter, type Registry } from 'prom-client';
import type { FlowEvent } from '../../bpf/index.js';
import { dropReasonDesc, type HubbleFlowRecord, type LostEventSource } from '../flows/hubble.js';
import { mirroredCounter } from './mirror.js';
import type { MetricsSources } from './sources.js';

/** Hubble's `v1.FlowProtocol`: the L4 (or ICMP) protocol name of a flow. */
export function flowProtocol(rec: HubbleFlowRecord): string {
  const l4 = rec.flow.l4 ?? {};
  for (const p of ['TCP', 'UDP', 'SCTP', 'ICMPv4', 'ICMPv6'] as const) if (l4[p]) return p;
  return 'Unknown flow';
}

/** Hubble's TraceObservationPoints names for the `subtype` label of Trace flows. */
const OBSERVATION_POINT_SUBTYPE: Record<string, string> = {
  TO_ENDPOINT: 'to-endpoint',
  FROM_ENDPOINT: 'from-endpoint',
  TO_STACK: 'to-stack',
  FROM_STACK: 'from-stack',
  TO_HOST: 'to-host',
  FROM_HOST: 'from-host',
  TO_NETWORK: 'to-network',
  FROM_NETWORK: 'from-network',
  TO_OVERLAY: 'to-overlay',
  FROM_OVERLAY: 'from-overlay',
};

/** Cilium monitor message types (pkg/monitor/api) to Hubble's `type` label. */
function flowTypeName(type: number): string {
  switch (type) {
    case 1:
      return 'Drop';
    case 3:
      return 'Capture';
    case 4:
      return 'Trace';
    case 5:
      return 'PolicyVerdict';
    case 129:
      return 'L7';
    default:
      return 'Unknown';
  }
}

const LOST_SOURCES: readonly LostEventSource[] = ['PERF_EVENT_RING_BUFFER', 'OBSERVER_EVENTS_QUEUE', 'HUBBLE_RING_BUFFER'];

/** Index of a flow's protocol for the batch counters, and Hubble's name for it (flowProtocol). */
const PROTO_NAMES = ['TCP', 'UDP', 'SCTP', 'ICMPv4', 'ICMPv6', 'Unknown flow'] as const;
function protoIndex(protocol: number): number {
  switch (protocol) {
    case 6:
      return 0;
    case 17:
      return 1;
    case 132:
      return 2;
    case 1:
      return 3;
    case 58:
      return 4;
    default:
      return 5;
  }
}
const TCP_FLAG_LABELS = ['FIN', 'SYN', 'SYN-ACK', 'RST'] as const;

/**
 * Hubble's flow metrics counted from decoded events, exactly as AgentMetrics.flowObserve counts the
 * Hubble flows made from them: per event a few integer operations into small tables keyed by label
 * combination, added to prom-client once per batch (one `inc` per distinct label set).
 */
class FlowBatchCounter {
  /** (protocol, verdict, direction) -> count: hubble_flows_processed_total. */
  private readonly processed = new Float64Array(PROTO_NAMES.length * 4);
  /** (flag, family) -> count: hubble_tcp_flags_total. */
  private readonly flags = new Float64Array(TCP_FLAG_LABELS.length * 2);
  /** protocol * 65536 + drop reason -> count: hubble_drop_total. */
  private readonly drops = new Map<number, number>();
  /** protocol * 65536 + destination port -> count: hubble_port_distribution_total. */
  private readonly ports = new Map<number, number>();

  constructor(
    private readonly flowsProcessed: Counter<'protocol' | 'type' | 'subtype' | 'verdict'>,
    private readonly dropsTotal: Counter<'reason' | 'protocol'>,
    private readonly tcpFlags: Counter<'flag' | 'family'>,
    private readonly portDistribution: Counter<'protocol' | 'port'>,
  ) {}

  count(events: readonly FlowEvent[]): void {
    const processed = this.processed;
    for (const ev of events) {
      const p = protoIndex(ev.protocol);
      if (ev.verdict === 'DROPPED') {
        processed[p * 4 + 2]!++;
        const k = p * 65536 + ev.dropReason;
        this.drops.set(k, (this.drops.get(k) ?? 0) + 1);
        continue;
      }
      processed[p * 4 + (ev.direction === 'EGRESS' ? 1 : 0)]!++;
      if (p === 0) {
        const f = ev.tcpFlags;
        const fam = ev.family === 4 ? 0 : 1;
        if (f & 0x01) this.flags[0 * 2 + fam]!++;
        if (f & 0x02) this.flags[(f & 0x10 ? 2 : 1) * 2 + fam]!++;
        if (f & 0x04) this.flags[3 * 2 + fam]!++;
      }
      if (ev.isReply || p === 5) continue;
      const k = p * 65536 + (p <= 2 ? ev.dstPort : 0);
      this.ports.set(k, (this.ports.get(k) ?? 0) + 1);
    }
    this.flush();
  }

  private flush(): void {
    const processed = this.processed;
    for (let i = 0; i < processed.length; i++) {
      const n = processed[i]!;
      if (n === 0) continue;
      processed[i] = 0;
      const dropped = (i & 2) !== 0;
      this.flowsProcessed.inc(
        {
          protocol: PROTO_NAMES[i >> 2]!,
          type: dropped ? 'Drop' : 'Trace',
          subtype: dropped ? '' : i & 1 ? 'from-endpoint' : 'to-endpoint',
          verdict: dropped ? 'DROPPED' : 'FORWARDED',
        },
        n,
      );
    }
    for (let i = 0; i < this.flags.length; i++) {
      const n = this.flags[i]!;
      if (n === 0) continue;
      this.flags[i] = 0;
      this.tcpFlags.inc({ flag: TCP_FLAG_LABELS[i >> 1]!, family: i & 1 ? 'IPv6' : 'IPv4' }, n);
    }
    for (const [k, n] of this.drops) {
      this.dropsTotal.inc({ reason: dropReasonDesc(k % 65536), protocol: PROTO_NAMES[Math.floor(k / 65536)]! }, n);
    }
    this.drops.clear();
    for (const [k, n] of this.ports) this.portDistribution.inc({ protocol: PROTO_NAMES[Math.floor(k / 65536)]!, port: String(k % 65536) }, n);
    this.ports.clear();
  }
}

/** The Hubble flow counters of one registry. */
export class HubbleFlowMetrics {
  private readonly flowsProcessed: Counter<'protocol' | 'type' | 'subtype' | 'verdict'>;
  private readonly drops: Counter<'reason' | 'protocol'>;
  private readonly tcpFlags: Counter<'flag' | 'family'>;
  private readonly portDistribution: Counter<'protocol' | 'port'>;
  private readonly batchCounter: FlowBatchCounter;

  constructor(registry: Registry, src: MetricsSources) {
    const registers = [registry];
    // --- Hubble's flow metrics ---
    this.flowsProcessed = new Counter({
      name: 'hubble_flows_processed_total',
      help: 'Total number of flows processed',
      labelNames: ['protocol', 'type', 'subtype', 'verdict'] as const,
      registers,
    });
    this.drops = new Counter({
      name: 'hubble_drop_total',
      help: 'Number of drops',
      labelNames: ['reason', 'protocol'] as const,
      registers,
    });
    this.tcpFlags = new Counter({
      name: 'hubble_tcp_flags_total',
      help: 'TCP flag occurrences',
      labelNames: ['flag', 'family'] as const,
      registers,
    });
    this.portDistribution = new Counter({
      name: 'hubble_port_distribution_total',
      help: 'Numbers of packets distributed by destination port',
      labelNames: ['protocol', 'port'] as const,
      registers,
    });
    mirroredCounter(registry, 'hubble_lost_events_total', 'Number of lost events', ['source'] as const, () => {
      const lost = src.flows?.lost;
      // Hubble labels the source in lower case (strings.ToLower(LostEventSource.String())).
      return lost && LOST_SOURCES.map((s) => [{ source: s.toLowerCase() }, lost[s]]);
    });
    this.batchCounter = new FlowBatchCounter(this.flowsProcessed, this.drops, this.tcpFlags, this.portDistribution);
  }

  /** Counts a batch of decoded events as flowObserve counts the flows made from them. */
  flowsCount(events: readonly FlowEvent[]): void {
    this.batchCounter.count(events);
  }

  /** Counts one flow as Hubble's flow, drop, tcp and port-distribution handlers do. */
  flowObserve(rec: HubbleFlowRecord): void {
    const f = rec.flow;
    const protocol = flowProtocol(rec);
    const type = f.event_type?.type ?? 0;
    const typeName = flowTypeName(type);
    const subtype = typeName === 'Trace' ? (OBSERVATION_POINT_SUBTYPE[f.trace_observation_point ?? ''] ?? '') : '';
    this.flowsProcessed.inc({ protocol, type: typeName, subtype, verdict: f.verdict });

    if (f.verdict === 'DROPPED') {
      this.drops.inc({ reason: f.drop_reason_desc ?? 'DROP_REASON_UNKNOWN', protocol });
      return;
    }
    if (f.verdict !== 'FORWARDED' || !f.l4 || !f.IP) return;

    const tcp = f.l4.TCP as { destination_port?: number; flags?: Record<string, boolean> } | undefined;
    if (tcp?.flags) {
      const family = f.IP.ipVersion;
      if (tcp.flags.FIN) this.tcpFlags.inc({ flag: 'FIN', family });
      if (tcp.flags.SYN) this.tcpFlags.inc({ flag: tcp.flags.ACK ? 'SYN-ACK' : 'SYN', family });
      if (tcp.flags.RST) this.tcpFlags.inc({ flag: 'RST', family });
    }
    if (f.is_reply) return;
    const port = (l4: unknown) => String((l4 as { destination_port?: number }).destination_port ?? 0);
    if (tcp) this.portDistribution.inc({ protocol: 'TCP', port: port(tcp) });
    else if (f.l4.UDP) this.portDistribution.inc({ protocol: 'UDP', port: port(f.l4.UDP) });
    else if (f.l4.SCTP) this.portDistribution.inc({ protocol: 'SCTP', port: port(f.l4.SCTP) });
    else if (f.l4.ICMPv4) this.portDistribution.inc({ protocol: 'ICMPv4', port: '0' });
    else if (f.l4.ICMPv6) this.portDistribution.inc({ protocol: 'ICMPv6', port: '0' });
  }
}
