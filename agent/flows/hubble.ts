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

export interface HubbleFlow {
  time: string;
  uuid: string;
  verdict: 'FORWARDED' | 'DROPPED';
  drop_reason?: number;
  drop_reason_desc?: string;
  ethernet?: { source: string; destination: string };
  IP: { source: string; destination: string; ipVersion: 'IPv4' | 'IPv6' };
  l4: Record<string, unknown>;
  source: HubbleEndpoint;
  destination: HubbleEndpoint;
  Type: 'L3_L4';
  node_name: string;
  event_type: { type: number; sub_type?: number };
  traffic_direction: 'INGRESS' | 'EGRESS';
  trace_observation_point?: string;
  is_reply: boolean;
  interface?: { index: number; name?: string };
  Summary: string;
}

/** One line of `hubble observe -o json`. */
export interface HubbleFlowRecord {
  flow: HubbleFlow;
  node_name: string;
  time: string;
}

/** Cilium's monitor message types (pkg/monitor/api): the `event_type.type` of a flow. */
export const MessageType = { drop: 1, trace: 4 } as const;

/** Hubble's DropReason names for the numbers the datapath reports. */
export const DropReasonName: Record<number, string> = {
  130: 'INVALID_SOURCE_MAC',
  131: 'INVALID_DESTINATION_MAC',
  132: 'INVALID_SOURCE_IP',
  133: 'POLICY_DENIED',
  134: 'INVALID_PACKET_DROPPED',
  135: 'CT_TRUNCATED_OR_INVALID_HEADER',
  137: 'UNSUPPORTED_L3_PROTOCOL',
  140: 'UNKNOWN_L4_PROTOCOL',
  151: 'STALE_OR_UNROUTABLE_IP',
  153: 'UNKNOWN_CONNECTION_TRACKING_STATE',
  165: 'UNKNOWN_SENDER',
  181: 'POLICY_DENY',
};

export function dropReasonDesc(reason: number): string {
  return DropReasonName[reason] ?? 'DROP_REASON_UNKNOWN';
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
