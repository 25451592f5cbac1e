import type { HubbleFlow, HubbleFlowRecord, HubbleLostEventsRecord } from '../../agent/flows/hubble.js';
import type { FlowExtras } from './backend.js';

/** google.protobuf.Timestamp as proto-loader takes it. */
export interface Timestamp {
  seconds: number;
  nanos: number;
}

/** A GetFlowsResponse as proto-loader serialises it (proto field names, enums by name). */
export interface GetFlowsResponseMessage {
  flow?: Record<string, unknown>;
  lost_events?: { source: string; num_events_lost: number };
  node_name: string;
  time: Timestamp;
}

export function timestampFromNs(ns: bigint): Timestamp {
  return { seconds: Number(ns / 1_000_000_000n), nanos: Number(ns % 1_000_000_000n) };
}

/** RFC 3339 text (the flow's `time`, nanoseconds kept) as a Timestamp; an unreadable text gives 0. */
export function timestampFromIso(text: string): Timestamp {
  const ms = Date.parse(text);
  if (Number.isNaN(ms)) return { seconds: 0, nanos: 0 };
  const seconds = Math.floor(ms / 1000);
  const frac = text.match(/\.(\d{1,9})(?:Z|[+-]\d\d:\d\d)$/i)?.[1];
  return { seconds, nanos: frac ? Number(frac.padEnd(9, '0')) : (ms % 1000) * 1_000_000 };
}

/** Timestamp as milliseconds since the epoch (filters compare at this precision, as the REST API does). */
export function timestampToMs(t: { seconds?: number | string; nanos?: number } | null | undefined): number | undefined {
  if (!t) return undefined;
  return Number(t.seconds ?? 0) * 1000 + Math.floor((t.nanos ?? 0) / 1_000_000);
}

/** The record's time: exact from the datapath event when the record has one. */
function recordTime(r: HubbleFlowRecord): Timestamp {
  const ev = (r as { event?: { timeNs?: unknown } }).event;
  return typeof ev?.timeNs === 'bigint' ? timestampFromNs(ev.timeNs) : timestampFromIso(r.time);
}

/**
 * kitnet's flow (Hubble's JSON shape) as a flow.Flow message. The JSON shape already uses the proto
 * field names; what differs on the wire: time is a Timestamp, is_reply a BoolValue, drop_reason_desc an
 * enum (sent as the number, which is the DropReason value).
 */
export function flowMessage(f: HubbleFlow, time: Timestamp, extras?: FlowExtras): Record<string, unknown> {
  const msg: Record<string, unknown> = {
    time,
    uuid: f.uuid,
    verdict: f.verdict,
    IP: f.IP,
    l4: f.l4,
    source: f.source,
    destination: f.destination,
    Type: f.Type,
    node_name: f.node_name,
    event_type: f.event_type,
    traffic_direction: f.traffic_direction,
    trace_observation_point: f.trace_observation_point,
    is_reply: { value: f.is_reply },
    interface: f.interface,
    Summary: f.Summary,
  };
  if (f.ethernet) msg.ethernet = f.ethernet;
  if (f.source_names) msg.source_names = f.source_names;
  if (f.destination_names) msg.destination_names = f.destination_names;
  if (f.l7) msg.l7 = f.l7;
  if (f.egress_denied_by) msg.egress_denied_by = f.egress_denied_by;
  if (f.verdict === 'DROPPED') {
    msg.drop_reason = f.drop_reason ?? 0;
    msg.drop_reason_desc = f.drop_reason ?? 0;
  }
  if (extras) {
    const { interfaceName, ...policies } = extras;
    Object.assign(msg, policies);
    if (f.egress_denied_by && policies.egress_denied_by) msg.egress_denied_by = [...f.egress_denied_by, ...policies.egress_denied_by];
    if (interfaceName && f.interface) msg.interface = { ...f.interface, name: interfaceName };
  }
  return msg;
}

export function flowResponse(r: HubbleFlowRecord, extras?: FlowExtras): GetFlowsResponseMessage {
  const time = recordTime(r);
  return { flow: flowMessage(r.flow, time, extras), node_name: r.node_name, time };
}

export function lostResponse(r: HubbleLostEventsRecord): GetFlowsResponseMessage {
  return { lost_events: { source: r.lost_events.source, num_events_lost: r.lost_events.num_events_lost }, node_name: r.node_name, time: timestampFromIso(r.time) };
}
