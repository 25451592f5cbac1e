import { DROP_REASON_DESC } from '../../bpf/layout.gen.js';

/**
 * The subset of Hubble's flow.proto that kitnet fills, in the JSON shape `hubble observe -o json`
 * prints (proto field names, enums as strings).
 */
export interface HubbleEndpoint {
  ID?: number;
  identity: number;
  namespace?: string;
  labels: string[];
  pod_name?: string;
  workloads?: Array<{ name: string; kind: string }>;
}

/** flow.Policy: the policy that decided a flow, named as Cilium names it. */
export interface PolicyMessage {
  name: string;
  namespace: string;
  labels: string[];
  kind: string;
}

const RULE_REF = /^(NetworkPolicy|CiliumNetworkPolicy|CiliumClusterwideNetworkPolicy) (?:([^/\s]+)\/)?([^\s]+)/;

/** A rule section reference (`CiliumNetworkPolicy shop/be-from-fe ingress[0]`) as a flow.Policy. */
export function policyFromRuleRef(ref: string): PolicyMessage | undefined {
  const m = ref.match(RULE_REF);
  if (!m) return undefined;
  const [, kind, namespace = '', name] = m;
  const labels = [`k8s:io.cilium.k8s.policy.derived-from=${kind}`, `k8s:io.cilium.k8s.policy.name=${name}`];
  if (namespace) labels.push(`k8s:io.cilium.k8s.policy.namespace=${namespace}`);
  return { name: name!, namespace, labels, kind: kind! };
}

/** flow.DNS as `hubble observe -o json` prints it (Cilium's LogRecordDNS). */
export interface HubbleDns {
  /** The name asked, with its trailing dot (`api.test.`). */
  query: string;
  ips?: string[];
  ttl?: number;
  cnames?: string[];
  observation_source: 'proxy';
  rcode?: number;
  qtypes: string[];
  rrtypes?: string[];
}

/** flow.Layer7: kitnet's L7 flows are the DNS proxy's. */
export interface HubbleL7 {
  type: 'REQUEST' | 'RESPONSE';
  /** uint64 as protojson prints it: a decimal string; absent on requests. */
  latency_ns?: string;
  dns: HubbleDns;
}

export interface HubbleFlow {
  time: string;
  uuid: string;
  verdict: 'FORWARDED' | 'DROPPED';
  drop_reason?: number;
  drop_reason_desc?: string;
  ethernet?: { source: string; destination: string };
  /** Absent for frames that are not IP. */
  IP?: { source: string; destination: string; ipVersion: 'IPv4' | 'IPv6' };
  /** Absent when there is no L4 header (ARP, other IP protocols), as in Hubble. */
  l4?: Record<string, unknown>;
  source: HubbleEndpoint;
  destination: HubbleEndpoint;
  Type: 'L3_L4' | 'L7';
  node_name: string;
  /** Names the DNS proxy learned for the source / destination address (Cilium's FQDN cache). */
  source_names?: readonly string[];
  destination_names?: readonly string[];
  /** Only on L7 flows (Type L7). */
  l7?: HubbleL7;
  event_type: { type: number; sub_type?: number };
  traffic_direction: 'INGRESS' | 'EGRESS';
  trace_observation_point?: string;
  is_reply: boolean;
  interface?: { index: number; name?: string };
  Summary: string;
  /** On an L7 flow the proxy denied: the policy whose DNS rules did not allow the name. */
  egress_denied_by?: PolicyMessage[];
}

/** One line of `hubble observe -o json`. */
export interface HubbleFlowRecord {
  flow: HubbleFlow;
  node_name: string;
  time: string;
}

/** Cilium's monitor message types (pkg/monitor/api): the `event_type.type` of a flow (accessLog: an L7 proxy's record). */
export const MessageType = { drop: 1, trace: 4, accessLog: 129 } as const;

/** Hubble's DropReason name for a number the datapath reports (one list, generated with the C side). */
export function dropReasonDesc(reason: number): string {
  return DROP_REASON_DESC.get(reason)?.[0] ?? 'DROP_REASON_UNKNOWN';
}

export const TCP_FLAG_NAMES = ['FIN', 'SYN', 'RST', 'PSH', 'ACK', 'URG', 'ECE', 'CWR'] as const;

export function tcpFlagsObject(bits: number): Record<string, boolean> {
  const out: Record<string, boolean> = {};
  TCP_FLAG_NAMES.forEach((name, i) => {
    if (bits & (1 << i)) out[name] = true;
  });
  return out;
}

/** Hubble's LostEventSource: where events were lost. */
export type LostEventSource = 'PERF_EVENT_RING_BUFFER' | 'OBSERVER_EVENTS_QUEUE' | 'HUBBLE_RING_BUFFER';

/** A `lost_events` line of `hubble observe -o json`. */
export interface HubbleLostEventsRecord {
  lost_events: { source: LostEventSource; num_events_lost: number; cpu: null };
  node_name: string;
  time: string;
}

export type HubbleRecord = HubbleFlowRecord | HubbleLostEventsRecord;
