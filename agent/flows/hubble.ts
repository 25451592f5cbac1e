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
