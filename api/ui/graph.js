// The service map's model: Hubble flow records in, nodes (workloads grouped by namespace, world,
// host, other identities) and edges (source -> destination, per protocol/port, with forwarded and
// dropped counts) out. No DOM here: app.js draws it with cytoscape.

/** Reserved identity numbers (Cilium's) that get a node of their own. */
const RESERVED = { 1: 'host', 2: 'world', 6: 'remote-node', 7: 'kube-apiserver', 9: 'world', 10: 'world' };

/** The map node an endpoint of a flow belongs to. */
export function endpointNode(ep) {
  if (ep.pod_name && ep.namespace) {
    const kind = ep.workloads?.[0]?.kind ?? '';
    return {
      id: `wl:${ep.namespace}/${ep.pod_name}`,
      label: ep.pod_name,
      namespace: ep.namespace,
      type: kind === 'VirtualMachine' ? 'vm' : 'workload',
      kind,
      identity: ep.identity,
      filter: { pod: `${ep.namespace}/`, workload: ep.pod_name },
    };
  }
  const labels = ep.labels ?? [];
  const reserved = labels.find((l) => l.startsWith('reserved:'))?.slice('reserved:'.length) ?? RESERVED[ep.identity];
  if (reserved === 'world' || reserved === 'world-ipv4' || reserved === 'world-ipv6') {
    return { id: 'world', label: 'world', type: 'world', identity: ep.identity, filter: { identity: [2, 9, 10] } };
  }
  if (reserved === 'host') return { id: 'host', label: 'host', type: 'host', identity: ep.identity, filter: { identity: ep.identity } };
  if (reserved) return { id: `reserved:${reserved}`, label: reserved, type: 'reserved', identity: ep.identity, filter: { identity: ep.identity } };
  const cidr = labels.find((l) => l.startsWith('cidr:'));
  if (cidr) return { id: `id:${ep.identity}`, label: cidr.slice('cidr:'.length), type: 'cidr', identity: ep.identity, filter: { identity: ep.identity } };
  return { id: `id:${ep.identity}`, label: `identity ${ep.identity}`, type: 'identity', identity: ep.identity, filter: { identity: ep.identity } };
}

/** Protocol and service port of a flow, named from the connection's initiator (replies are folded in). */
export function flowService(flow) {
  const l4 = flow.l4 ?? {};
  for (const p of ['TCP', 'UDP', 'SCTP']) {
    if (l4[p]) return { protocol: p, port: flow.is_reply ? l4[p].source_port : l4[p].destination_port };
  }
  if (l4.ICMPv4) return { protocol: 'ICMPv4', port: null };
  if (l4.ICMPv6) return { protocol: 'ICMPv6', port: null };
  return { protocol: 'IP', port: null };
}

export const isLocal = (ep) => Boolean(ep.pod_name);

/** ICMPv6 neighbour discovery and multicast listener messages: link housekeeping, not services. */
const ICMP6_HOUSEKEEPING = new Set([130, 131, 132, 133, 134, 135, 136, 137, 143]);

/** Flows the map leaves off (they stay in the flow lists). */
export function mapIgnores(flow) {
  const icmp6 = flow.l4?.ICMPv6;
  return Boolean(icmp6 && ICMP6_HOUSEKEEPING.has(icmp6.type));
}

/**
 * A packet between two local workloads is observed twice (EGRESS at the sender, INGRESS at the
 * receiver). Count it once, with its final verdict: at the receiver when the receiver is local, else
 * at the sender; a drop at the sender is the packet's end and always counts.
 */
export function countsOnce(flow) {
  if (flow.verdict === 'DROPPED') return true;
  if (flow.traffic_direction === 'INGRESS') return true;
  return !isLocal(flow.destination);
}

export function edgeLabel(e) {
  const svc = e.port === null ? e.protocol : `${e.protocol}/${e.port}`;
  return e.dropped > 0 ? `${svc}  ✓${e.forwarded} ✗${e.dropped}` : `${svc}  ✓${e.forwarded}`;
}

export class ServiceMap {
  constructor() {
    /** id -> node data */
    this.nodes = new Map();
    /** id -> edge data */
    this.edges = new Map();
    this.flows = 0;
    this.dropped = 0;
    this.lost = 0;
  }

  /** Adds (or updates) a node; returns true when it is new. */
  nodeEnsure(n) {
    const prev = this.nodes.get(n.id);
    if (prev) {
      Object.assign(prev, n, { seen: Math.max(prev.seen ?? 0, n.seen ?? 0) });
      return false;
    }
    this.nodes.set(n.id, { ...n });
    return true;
  }

  /** A registered workload (GET /v1/workloads) is on the map even before it has traffic. */
  workloadAdd(w) {
    return this.nodeEnsure({
      id: `wl:${w.namespace}/${w.name}`,
      label: w.name,
      namespace: w.namespace,
      type: w.kind === 'vm' ? 'vm' : 'workload',
      kind: w.kind === 'vm' ? 'VirtualMachine' : 'ExternalWorkload',
      identity: w.identity,
      ipv4: w.ipv4,
      ipv6: w.ipv6,
      mode: w.mode,
      state: w.state,
      registered: true,
      filter: { pod: `${w.namespace}/`, workload: w.name },
    });
  }

  /** Forgets registered workloads that are gone and have no edges left. */
  workloadsSync(list) {
    const present = new Set(list.map((w) => `wl:${w.namespace}/${w.name}`));
    const removed = [];
    for (const [id, n] of this.nodes) {
      if (!n.registered || present.has(id)) continue;
      const linked = [...this.edges.values()].some((e) => e.source === id || e.target === id);
      if (linked) n.registered = false;
      else {
        this.nodes.delete(id);
        removed.push(id);
      }
    }
    return removed;
  }

  /**
   * Takes one line of the flow stream. Returns what changed: { nodes: [new node ids], edge: id } or
   * undefined when the line does not change the map.
   */
  record(rec) {
    if (rec.lost_events) {
      this.lost += rec.lost_events.num_events_lost ?? 0;
      return { lost: true };
    }
    const flow = rec.flow;
    if (!flow || !flow.source || !flow.destination || mapIgnores(flow)) return undefined;
    const newNodes = [];
    const t = Date.parse(flow.time ?? rec.time) || Date.now();
    let src = endpointNode(flow.source);
    let dst = endpointNode(flow.destination);
    for (const n of [src, dst]) if (this.nodeEnsure({ ...n, seen: t })) newNodes.push(n.id);
    if (flow.is_reply) [src, dst] = [dst, src];
    const { protocol, port } = flowService(flow);
    const id = `${src.id}->${dst.id}|${protocol}/${port ?? ''}`;
    let e = this.edges.get(id);
    const isNew = !e;
    if (!e) {
      e = { id, source: src.id, target: dst.id, protocol, port, forwarded: 0, dropped: 0, dropReasons: {}, last: 0 };
      this.edges.set(id, e);
    }
    e.last = Math.max(e.last, t);
    if (countsOnce(flow)) {
      this.flows++;
      if (flow.verdict === 'DROPPED') {
        e.dropped++;
        this.dropped++;
        const reason = flow.drop_reason_desc ?? 'DROP_REASON_UNKNOWN';
        e.dropReasons[reason] = (e.dropReasons[reason] ?? 0) + 1;
      } else e.forwarded++;
    }
    return { nodes: newNodes, edge: id, newEdge: isNew };
  }

  /** Hubble flow filters (whitelist) selecting the flows of a node. */
  nodeFilters(id) {
    const n = this.nodes.get(id);
    if (!n) return [];
    return [endpointFilter('source', n.filter), endpointFilter('destination', n.filter)];
  }

  /** Hubble flow filters selecting the flows of an edge: both directions of its connections. */
  edgeFilters(id) {
    const e = this.edges.get(id);
    if (!e) return [];
    const a = this.nodes.get(e.source)?.filter ?? {};
    const b = this.nodes.get(e.target)?.filter ?? {};
    const proto = e.protocol === 'IP' ? {} : { protocol: [e.protocol.toLowerCase()] };
    const fwd = { ...endpointFilter('source', a), ...endpointFilter('destination', b), ...proto };
    const rev = { ...endpointFilter('source', b), ...endpointFilter('destination', a), ...proto };
    if (e.port !== null) {
      fwd.destination_port = [String(e.port)];
      rev.source_port = [String(e.port)];
    }
    return [fwd, rev];
  }
}

/** One side of a Hubble flow filter for a node's filter description. */
export function endpointFilter(side, f) {
  const out = {};
  if (f.pod) out[`${side}_pod`] = [f.pod];
  if (f.workload) out[`${side}_workload`] = [f.workload];
  if (f.identity !== undefined) out[`${side}_identity`] = [].concat(f.identity);
  return out;
}

/** Client-side twin of the filters above, for appending live flows to an open flow list. */
export function flowMatches(map, selection, rec) {
  if (!rec.flow) return false;
  const src = endpointNode(rec.flow.source).id;
  const dst = endpointNode(rec.flow.destination).id;
  if (selection.kind === 'node') return src === selection.id || dst === selection.id;
  const e = map.edges.get(selection.id);
  if (!e) return false;
  const { protocol, port } = flowService(rec.flow);
  if (protocol !== e.protocol || (port ?? null) !== e.port) return false;
  return (src === e.source && dst === e.target) || (src === e.target && dst === e.source);
}
