import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Counter as DatapathCounter, FlowEvent, MetricName } from '../bpf/index.js';
import { CONNTRACK_MAP_MAX, ENDPOINTS_MAP_MAX, IPCACHE_MAP_MAX } from '../bpf/layout.gen.js';
import { dropReasonDesc, type HubbleFlowRecord, type LostEventSource } from './flows/hubble.js';

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
    /**
     * Batches of decoded events (the real pipeline): counted per batch from the events' fields, so no
     * flow object is made for the metrics. Without it, every 'flow' is counted as it is emitted.
     */
    batchObserve?(fn: (events: readonly FlowEvent[]) => void): () => void;
    listenerCount(event: 'flow' | 'lost'): number;
    readonly lost: Readonly<Record<LostEventSource, number>>;
    readonly ring: { readonly length: number; readonly capacity: number };
  };
  workloads?: () => ReadonlyArray<{ mode: string; state: string; spec: { kind: string } }>;
  identities?: () => number;
  /** Cluster mode: other nodes' addresses in the ipcache, and values or identities ignored (agent/cluster/). */
  clusterIpcache?: () => { remote: number; ignored: number };
  /** Workloads waiting in the reconcile queue (WorkloadController.depth). */
  reconcileQueueDepth?: () => number;
  /** Entries in the BPF policy map (PolicyEngine.entryCount); without it, policyMapEntriesSet feeds the gauge. */
  policyEntries?: () => number;
  /** Entries and max_entries of every map that fills with state (KitnetDatapath.mapFill); without it, list lengths. */
  mapFill?: () => Array<{ map: BpfMapName; entries: number; capacity: number }>;
  /** The datapath; the optional parts exist on the real one (KitnetDatapath) but not on every fake. */
  datapath?: {
    metricsRead?: () => Record<MetricName, DatapathCounter>;
    endpointList?: () => unknown[];
    ipcacheList?: () => unknown[];
    conntrackList?: () => unknown[];
    mapCapacity?: () => Partial<Record<BpfMapName, number>>;
  };
  /** max_entries of the BPF maps, for fill levels; by default those of bpf/layout.gen.ts when a datapath is given. */
  mapCapacity?: Partial<Record<BpfMapName, number>>;
}

export type BpfMapName = 'endpoints' | 'ipcache' | 'ipcache_exact' | 'policy' | 'policy_exact' | 'policy_wild' | 'conntrack';

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

export type ReconcileResult = 'unchanged' | 'changed' | 'removed' | 'error';

/** The reconcile loop's counters, per process like registrationDuration. */
const reconcileTotal = new Counter({
  name: 'kitnet_reconcile_total',
  help: 'Workload reconciles by result: unchanged (kernel already as desired), changed, removed (namespace or tap gone), error',
  labelNames: ['result'] as const,
  registers: [],
});
const reconcileRetries = new Counter({
  name: 'kitnet_reconcile_retries_total',
  help: 'Failed workload reconciles scheduled again after their backoff',
  registers: [],
});

/** Counts one reconcile; `retried`: a failure scheduled for retry. */
export function reconcileObserve(result: ReconcileResult, retried: boolean): void {
  reconcileTotal.inc({ result });
  if (retried) reconcileRetries.inc();
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

/** The agent's Prometheus registry. */
export class AgentMetrics {
  readonly registry = new Registry();
  private readonly flowsProcessed: Counter<'protocol' | 'type' | 'subtype' | 'verdict'>;
  private readonly drops: Counter<'reason' | 'protocol'>;
  private readonly tcpFlags: Counter<'flag' | 'family'>;
  private readonly portDistribution: Counter<'protocol' | 'port'>;
  private readonly policyEntries: Gauge;
  private readonly onFlow = (r: HubbleFlowRecord) => this.flowObserve(r);
  private readonly batchCounter: FlowBatchCounter;
  private unobserve: (() => void) | undefined;
  /** Datapath counters read once per scrape, shared by the collectors of that scrape. */
  private datapathCache: { at: number; scrape: number; value: Record<MetricName, DatapathCounter> | undefined } = { at: 0, scrape: 0, value: undefined };
  private scrapes = 0;
  /** The text() call whose collectors are running (0: none; the registry read directly). */
  private scrape = 0;

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
    new Gauge({
      name: 'kitnet_cluster_ipcache_remote_entries',
      help: 'Cluster mode: other nodes\' workload addresses in this host\'s ipcache',
      registers,
      collect() {
        if (src.clusterIpcache) this.set(src.clusterIpcache().remote);
      },
    });
    new Counter({
      name: 'kitnet_cluster_ipcache_ignored_total',
      help: 'Cluster mode: ipcache values and remote identities ignored (malformed, foreign identity range, an address of this host\'s pools, reserved labels)',
      registers,
      collect() {
        if (!src.clusterIpcache) return;
        this.reset();
        this.inc(src.clusterIpcache().ignored);
      },
    });
    registrationDuration.reset();
    this.registry.registerMetric(registrationDuration);
    for (const m of [reconcileTotal, reconcileRetries]) {
      m.reset();
      this.registry.registerMetric(m);
    }
    new Gauge({
      name: 'kitnet_reconcile_queue_depth',
      help: 'Workloads waiting in the reconcile queue (not counting those waiting for a retry backoff)',
      registers,
      collect() {
        if (src.reconcileQueueDepth) this.set(src.reconcileQueueDepth());
      },
    });
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
    mirroredCounter(this.registry, 'kitnet_datapath_non_ip_packets_total', 'ARP frames passed by the endpoint programs (other frames that are not IP are dropped)', [], () => dpCounter('NON_IP'));
    mirroredCounter(this.registry, 'kitnet_conntrack_created_total', 'Connection tracking entries created', [], () => dpCounter('CT_NEW'));
    mirroredCounter(this.registry, 'kitnet_datapath_policy_drops_total', 'New connections dropped by policy: no allow entry (denied) or a deny entry (deny)', ['reason'] as const, () => {
      const m = datapathRead();
      if (!m) return undefined;
      const read = (name: string) => Number((m as Partial<Record<string, DatapathCounter>>)[name]?.packets ?? 0n);
      return [[{ reason: 'POLICY_DENIED' }, read('POLICY_DENIED')], [{ reason: 'POLICY_DENY' }, read('POLICY_DENY')]];
    });
    mirroredCounter(this.registry, 'kitnet_conntrack_full_total', 'Connection tracking entries that could not be created (table full)', [], () => dpCounter('CT_FULL'));

    this.batchCounter = new FlowBatchCounter(this.flowsProcessed, this.drops, this.tcpFlags, this.portDistribution);
    if (src.flows?.batchObserve) this.unobserve = src.flows.batchObserve((events) => this.flowsCount(events));
    else src.flows?.on('flow', this.onFlow);
  }

  /** Counts a batch of decoded events as flowObserve counts the flows made from them. */
  flowsCount(events: readonly FlowEvent[]): void {
    this.batchCounter.count(events);
  }

  private datapathRead(): Record<MetricName, DatapathCounter> | undefined {
    const read = this.src.datapath?.metricsRead;
    if (!read) return undefined;
    // The collectors of one scrape run back to back: read the per-CPU map once for all of them (per
    // text() call; a direct read of the registry reuses a read less than 100 ms old).
    const now = Date.now();
    const fresh = this.scrape !== 0 ? this.datapathCache.scrape === this.scrape : now - this.datapathCache.at <= 100;
    if (!fresh) {
      let value: Record<MetricName, DatapathCounter> | undefined;
      try {
        value = read.call(this.src.datapath);
      } catch {
        value = undefined;
      }
      this.datapathCache = { at: now, scrape: this.scrape, value };
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
  async text(): Promise<string> {
    const id = ++this.scrapes;
    this.scrape = id;
    try {
      return await this.registry.metrics();
    } finally {
      if (this.scrape === id) this.scrape = 0;
    }
  }

  /** Stops counting flows (the agent is stopping). */
  close(): void {
    if (this.unobserve) this.unobserve();
    else this.src.flows?.off('flow', this.onFlow);
    this.unobserve = undefined;
  }
}
