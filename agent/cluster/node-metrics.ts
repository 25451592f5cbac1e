import { Counter, Gauge, type Registry } from 'prom-client';
import type { NodeRegistry } from './node-registry.js';
import type { NodeRoutes } from './node-routes.js';

/** Cluster nodes and their routes on the agent's /metrics, read when scraped. */
export function nodeMetricsRegister(registry: Registry, nodes: NodeRegistry, routes: NodeRoutes | undefined): void {
  const registers = [registry];
  new Gauge({
    name: 'kitnet_cluster_nodes',
    help: 'Cluster mode: other nodes known from etcd (accepted entries)',
    registers,
    collect() {
      this.set(nodes.peers().length);
    },
  });
  new Counter({
    name: 'kitnet_cluster_node_events_total',
    help: 'Cluster mode: nodes that joined, left, and node entries ignored (malformed, out of the pools, a CIDR its node has not claimed)',
    labelNames: ['event'],
    registers,
    collect() {
      this.reset();
      for (const event of ['added', 'removed', 'ignored'] as const) this.inc({ event }, nodes.counts[event]);
    },
  });
  if (!routes) return;
  new Gauge({
    name: 'kitnet_cluster_node_routes_failing',
    help: 'Cluster mode: routes to other nodes\' CIDRs the kernel refused (see the log for device, errno and what to do)',
    registers,
    collect() {
      this.set(routes.failures().length);
    },
  });
  new Counter({
    name: 'kitnet_cluster_node_route_changes_total',
    help: 'Cluster mode: routes to other nodes\' CIDRs installed and removed, and failed attempts',
    labelNames: ['change'],
    registers,
    collect() {
      this.reset();
      for (const change of ['installed', 'removed', 'errors'] as const) this.inc({ change }, routes.counts[change]);
    },
  });
}
