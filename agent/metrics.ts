import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Counter as DatapathCounter, MetricName } from '../bpf/index.js';
import { CONNTRACK_MAP_MAX, ENDPOINTS_MAP_MAX, IPCACHE_MAP_MAX } from '../bpf/layout.gen.js';
import type { HubbleFlowRecord, LostEventSource } from './flows/hubble.js';

/**
 * Prometheus metrics of the agent, served at `GET /metrics`.
 *
 * Flow metrics use Hubble's names and labels (cilium pkg/hubble/metrics: flow, drop, tcp,
 * port-distribution handlers and hubble_lost_events_total), counted from the enriched flows the
 * pipeline emits. Note that the datapath aggregates (see DatapathConfig.monitorAggregation): an
 * established connection's packets are not each a flow, exactly as with Hubble on Cilium.
 *
 * The kitnet_* metrics describe the agent itself. Everything held elsewhere (store, BPF maps,
 * datapath counters, lost-event counters) is read lazily when scraped, never on the packet path.
 */

/** What the metrics read: all optional so unit tests can give just what they exercise. */
export interface MetricsSources {
  /** The flow pipeline (agent/flows/pipeline.ts) or anything emitting the same events. */
  flows?: {
    on(event: 'flow', fn: (r: HubbleFlowRecord) => void): unknown;
    off(event: 'flow', fn: (r: HubbleFlowRecord) => void): unknown;
    listenerCount(event: 'flow' | 'lost'): number;
    readonly lost: Readonly<Record<LostEventSource, number>>;
    readonly ring: { readonly length: number; readonly capacity: number };
  };
  workloads?: () => ReadonlyArray<{ mode: string; state: string; spec: { kind: string } }>;
  identities?: () => number;
  /** Entries in the BPF policy map (PolicyEngine.entryCount); without it, policyMapEntriesSet feeds the gauge. */
  policyEntries?: () => number;
  /** The datapath; the optional parts exist on the real one (KitnetDatapath) but not on every fake. */
  datapath?: {
    metricsRead?: () => Record<MetricName, DatapathCounter>;
    endpointList?: () => unknown[];
    ipcacheList?: () => unknown[];
    conntrackList?: () => unknown[];
  };
  /** max_entries of the BPF maps, for fill levels; by default those of bpf/layout.gen.ts when a datapath is given. */
  mapCapacity?: Partial<Record<BpfMapName, number>>;
}

export type BpfMapName = 'endpoints' | 'ipcache' | 'conntrack';

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

const DATAPATH_PACKET_COUNTERS: ReadonlyArray<[MetricName, { direction: string; verdict: string }]> = [
  ['INGRESS_FORWARDED', { direction: 'INGRESS', verdict: 'FORWARDED' }],
  ['INGRESS_DROPPED', { direction: 'INGRESS', verdict: 'DROPPED' }],
  ['EGRESS_FORWARDED', { direction: 'EGRESS', verdict: 'FORWARDED' }],
  ['EGRESS_DROPPED', { direction: 'EGRESS', verdict: 'DROPPED' }],
];

const LOST_SOURCES: readonly LostEventSource[] = ['PERF_EVENT_RING_BUFFER', 'OBSERVER_EVENTS_QUEUE', 'HUBBLE_RING_BUFFER'];

export const REGISTRATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * Registration duration, kept per process so the WorkloadService can observe without holding the
 * metrics object; every AgentMetrics registry exports it.
 */
const registrationDuration = new Histogram({
  name: 'kitnet_workload_registration_duration_seconds',
  help: 'Time to register a workload: allocation, device, addresses, routes, BPF attach and map writes',
  labelNames: ['outcome', 'mode'] as const,
  buckets: REGISTRATION_BUCKETS,
  registers: [],
});

/** Records one registration; `seconds` from request to ready (or to the rolled-back failure). */
export function workloadRegistrationObserve(seconds: number, outcome: 'success' | 'failure' = 'success', mode = ''): void {
  registrationDuration.observe({ outcome, mode }, seconds);
}

/** A counter whose value lives elsewhere: reset and set from `read` on every scrape. */
function mirroredCounter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[],
  read: () => Array<[Partial<Record<L, string>>, number]> | undefined,
): Counter<L> {
  return new Counter<L>({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      const values = read();
      if (!values) return;
      this.reset();
      for (const [labels, v] of values) this.inc(labels, v);
    },
  });
}

/** The agent's Prometheus registry. */
export class AgentMetrics {
  readonly registry = new Registry();
  private readonly flowsProcessed: Counter<'protocol' | 'type' | 'subtype' | 'verdict'>;
  private readonly drops: Counter<'reason' | 'protocol'>;
  private readonly tcpFlags: Counter<'flag' | 'family'>;
  private readonly portDistribution: Counter<'protocol' | 'port'>;
  private readonly policyEntries: Gauge;
  private readonly onFlow = (r: HubbleFlowRecord) => this.flowObserve(r);
  /** Datapath counters read once per scrape, shared by the collectors of that scrape. */
  private datapathCache: { at: number; value: Record<MetricName, DatapathCounter> | undefined } = { at: 0, value: undefined };

  constructor(private readonly src: MetricsSources = {}) {
    const registers = [this.registry];

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
    mirroredCounter(this.registry, 'hubble_lost_events_total', 'Number of lost events', ['source'] as const, () => {
      const lost = src.flows?.lost;
      // Hubble labels the source in lower case (strings.ToLower(LostEventSource.String())).
      return lost && LOST_SOURCES.map((s) => [{ source: s.toLowerCase() }, lost[s]]);
    });

    // --- the agent ---
    new Gauge({
      name: 'kitnet_workloads',
      help: 'Registered workloads by datapath mode, state and kind',
      labelNames: ['mode', 'state', 'kind'] as const,
      registers,
      collect() {
        if (!src.workloads) return;
        this.reset();
        for (const w of src.workloads()) this.inc({ mode: w.mode, state: w.state, kind: w.spec.kind });
      },
    });
    new Gauge({
      name: 'kitnet_identities',
      help: 'Security identities allocated for workloads (reserved identities not counted)',
      registers,
      collect() {
        if (src.identities) this.set(src.identities());
      },
    });
    this.policyEntries = new Gauge({
      name: 'kitnet_policy_map_entries',
      help: 'Entries in the BPF policy map, all endpoints together',
      registers,
      collect() {
        if (src.policyEntries) this.set(src.policyEntries());
      },
    });
    registrationDuration.reset();
    this.registry.registerMetric(registrationDuration);
    new Gauge({
      name: 'kitnet_flow_ring_flows',
      help: 'Flows held in the in-memory ring of recent flows',
      registers,
      collect() {
        if (src.flows) this.set(src.flows.ring.length);
      },
    });
    new Gauge({
      name: 'kitnet_flow_ring_capacity',
      help: 'Capacity of the in-memory ring of recent flows',
      registers,
      collect() {
        if (src.flows) this.set(src.flows.ring.capacity);
      },
    });
    new Gauge({
      name: 'kitnet_flow_followers',
      help: 'Clients following the flow stream (GET /v1/flows?follow=true)',
      registers,
      collect() {
        // Each follower listens for 'lost' records; the metrics themselves listen only for 'flow'.
        if (src.flows) this.set(src.flows.listenerCount('lost'));
      },
    });

    // --- the datapath: BPF maps and per-CPU counters ---
    const datapathRead = () => this.datapathRead();
    new Gauge({
      name: 'kitnet_bpf_map_entries',
      help: 'Entries in the BPF maps',
      labelNames: ['map'] as const,
      registers,
      collect() {
        const dp = src.datapath;
        if (!dp) return;
        this.reset();
        const lists: Array<[BpfMapName, (() => unknown[]) | undefined]> = [
          ['endpoints', dp.endpointList?.bind(dp)],
          ['ipcache', dp.ipcacheList?.bind(dp)],
          ['conntrack', dp.conntrackList?.bind(dp)],
        ];
        for (const [map, list] of lists) {
          if (!list) continue;
          try {
            this.set({ map }, list().length);
          } catch {
            // A closed datapath (agent stopping) has no maps to count.
          }
        }
      },
    });
    new Gauge({
      name: 'kitnet_bpf_map_capacity',
      help: 'Maximum entries of the BPF maps (max_entries)',
      labelNames: ['map'] as const,
      registers,
      collect() {
        const capacity = src.mapCapacity ?? (src.datapath ? { endpoints: ENDPOINTS_MAP_MAX, ipcache: IPCACHE_MAP_MAX, conntrack: CONNTRACK_MAP_MAX } : {});
        for (const [map, n] of Object.entries(capacity)) if (n !== undefined) this.set({ map }, n);
      },
    });
    const dpCounter = (name: MetricName, field: 'packets' | 'bytes' = 'packets'): Array<[Record<string, string>, number]> | undefined => {
      const m = datapathRead();
      return m && [[{}, Number(m[name][field])]];
    };
    mirroredCounter(this.registry, 'kitnet_datapath_packets_total', 'Packets seen by the endpoint programs, by direction and verdict', ['direction', 'verdict'] as const, () => {
      const m = datapathRead();
      return m && DATAPATH_PACKET_COUNTERS.map(([slot, labels]) => [labels, Number(m[slot].packets)]);
    });
    mirroredCounter(this.registry, 'kitnet_datapath_bytes_total', 'Bytes seen by the endpoint programs, by direction and verdict', ['direction', 'verdict'] as const, () => {
      const m = datapathRead();
      return m && DATAPATH_PACKET_COUNTERS.map(([slot, labels]) => [labels, Number(m[slot].bytes)]);
    });
    mirroredCounter(this.registry, 'kitnet_ringbuf_events_total', 'Flow events the datapath wrote to the BPF ring buffer', [], () => dpCounter('EVENTS_SENT'));
    mirroredCounter(this.registry, 'kitnet_ringbuf_lost_events_total', 'Flow events lost because the BPF ring buffer was full', [], () => dpCounter('EVENTS_LOST'));
    mirroredCounter(this.registry, 'kitnet_datapath_no_endpoint_packets_total', 'Packets on a kitnet device with no endpoint entry (passed unobserved)', [], () => dpCounter('NO_ENDPOINT'));
    mirroredCounter(this.registry, 'kitnet_datapath_non_ip_packets_total', 'Non-IP packets (ARP, ...) passed by the endpoint programs', [], () => dpCounter('NON_IP'));
    mirroredCounter(this.registry, 'kitnet_conntrack_created_total', 'Connection tracking entries created', [], () => dpCounter('CT_NEW'));
    mirroredCounter(this.registry, 'kitnet_datapath_policy_drops_total', 'New connections dropped by policy: no allow entry (denied) or a deny entry (deny)', ['reason'] as const, () => {
      const m = datapathRead();
      if (!m) return undefined;
      const read = (name: string) => Number((m as Partial<Record<string, DatapathCounter>>)[name]?.packets ?? 0n);
      return [[{ reason: 'POLICY_DENIED' }, read('POLICY_DENIED')], [{ reason: 'POLICY_DENY' }, read('POLICY_DENY')]];
    });
    mirroredCounter(this.registry, 'kitnet_conntrack_full_total', 'Connection tracking entries that could not be created (table full)', [], () => dpCounter('CT_FULL'));

    src.flows?.on('flow', this.onFlow);
  }

  private datapathRead(): Record<MetricName, DatapathCounter> | undefined {
    const read = this.src.datapath?.metricsRead;
    if (!read) return undefined;
    // The collectors of one scrape run back to back: read the per-CPU map once for all of them.
    const now = Date.now();
    if (now - this.datapathCache.at > 100) {
      let value: Record<MetricName, DatapathCounter> | undefined;
      try {
        value = read.call(this.src.datapath);
      } catch {
        value = undefined;
      }
      this.datapathCache = { at: now, value };
    }
    return this.datapathCache.value;
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
    if (f.verdict !== 'FORWARDED') return;

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

  /** Sets the number of policy map entries (when no `policyEntries` source reads it on scrape). */
  policyMapEntriesSet(entries: number): void {
    this.policyEntries.set(entries);
  }

  /** See workloadRegistrationObserve. */
  registrationObserve(seconds: number, outcome: 'success' | 'failure' = 'success', mode = ''): void {
    workloadRegistrationObserve(seconds, outcome, mode);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** The text exposition format. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Stops counting flows (the agent is stopping). */
  close(): void {
    this.src.flows?.off('flow', this.onFlow);
  }
}
