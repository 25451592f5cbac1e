import type { Counter as DatapathCounter, FlowEvent, MetricName } from '../../bpf/index.js';
import type { HubbleFlowRecord, LostEventSource } from '../flows/hubble.js';

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
