/** The kitnet_* metrics that describe the agent itself, read from their sources when scraped. */
import { Counter, Gauge, type Registry } from 'prom-client';
import { processMetricsRegister } from './process.js';
import type { MetricsSources } from './sources.js';

/** Registers the agent's own metrics; returns the policy map entries gauge (AgentMetrics.policyMapEntriesSet). */
export function agentMetricsRegister(registry: Registry, src: MetricsSources): Gauge {
  const registers = [registry];
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
  const policyEntries = new Gauge({
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
  processMetricsRegister(registry);
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
  return policyEntries;
}
