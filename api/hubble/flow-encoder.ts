import protobuf from 'protobufjs';
import { ethernetOf, flowEventType, flowObservationPoint, l4Of, LazyFlowRecord, udpServiceOf } from '../../agent/flows/enrich.js';
import { TCP_FLAG_NAMES } from '../../agent/flows/hubble.js';
import type { HubbleEndpoint, HubbleFlow, HubbleFlowRecord } from '../../agent/flows/hubble.js';
import type { PolicyMessage } from './attribution.js';
import type { FlowExtras } from './backend.js';
import { FLOW_UUID_PREFIX, FLOW_UUID_SEQUENCE_DIGITS } from '../../agent/flows/flow-uuid.js';
import { ByteWriter } from './byte-writer.js';
import { timestampFromIso } from './flow-convert.js';
import { hubbleProtoRoot } from './proto.js';

/** The Writer methods the encoder uses: ByteWriter's, and protobufjs's (the bench compares the two). */
interface ProtoWriter {
  uint32(v: number): ProtoWriter;
  int32(v: number): ProtoWriter;
  int64(v: number): ProtoWriter;
  bool(v: boolean): ProtoWriter;
  string(v: string): ProtoWriter;
  bytes(v: Uint8Array): ProtoWriter;
  fork(): ProtoWriter;
  ldelim(): ProtoWriter;
  finish(): Uint8Array;
}

/** Which writer the encoder uses: in place (ByteWriter), or protobufjs's Writer as before (bench/hubble.bench.ts --ab). */
export const flowEncoderOptions = { inPlace: true };

/** Wire type of a field: 2 (length-delimited) for messages, strings and bytes, 0 (varint) for the rest this encoder writes. */
function fieldTag(type: protobuf.Type, name: string): number {
  const field = type.fields[name];
  if (!field) throw new Error(`flow encoder: ${type.fullName} has no field ${name} (api/hubble/proto changed?)`);
  field.resolve();
  const delimited = field.resolvedType instanceof protobuf.Type || field.type === 'string' || field.type === 'bytes';
  return (field.id << 3) | (delimited ? 2 : 0);
}

/** Tags of every field of `type` the encoder writes, by name, read from the .proto (the numbers live there only). */
function tagsOf<K extends string>(root: protobuf.Root, typeName: string, names: readonly K[]): Record<K, number> {
  const type = root.lookupType(typeName);
  return Object.fromEntries(names.map((n) => [n, fieldTag(type, n)])) as Record<K, number>;
}

function enumOf(root: protobuf.Root, name: string): Record<string, number> {
  return root.lookupEnum(name).values;
}

function enumValue(values: Record<string, number>, name: string, what: string): number {
  const v = values[name];
  if (v === undefined) throw new Error(`flow encoder: ${what} has no value ${name}`);
  return v;
}

/** flow.Flow fields this encoder writes: a field the JSON flow gains must be added here (the unit test checks). */
export const FLOW_FIELDS_ENCODED = [
  'time', 'uuid', 'verdict', 'drop_reason', 'ethernet', 'IP', 'l4', 'source', 'destination', 'Type', 'node_name', 'event_type',
  'traffic_direction', 'trace_observation_point', 'drop_reason_desc', 'is_reply', 'interface', 'Summary',
  'egress_allowed_by', 'ingress_allowed_by', 'egress_denied_by', 'ingress_denied_by', 'source_names', 'destination_names', 'l7',
] as const;

/**
 * A record's GetFlowsResponse bytes, or undefined for a record the encoder does not take (the caller
 * encodes those with the library); `into` writes a datapath record's message into a framed writer
 * instead (false: not such a record, nothing written).
 */
export interface FlowResponseEncoder {
  (r: HubbleFlowRecord, extras?: FlowExtras): Buffer | undefined;
  into(w: ByteWriter, r: HubbleFlowRecord, extras?: FlowExtras): boolean;
}

/**
 * GetFlowsResponse bytes straight from a pipeline record (the decoded datapath event and its two
 * shared endpoint objects), for the Follow/GetFlows hot path: no Hubble JSON object, no protobufjs
 * `fromObject`. The field numbers and enum values are read from kitnet's .proto at start; the flow's
 * content comes from the same functions that build the JSON flow (agent/flows/enrich.ts), and
 * test/unit/hubble-flow-encoder.test.ts checks that both decode to the same message. Endpoints and
 * policy lists are encoded once per object (the directory and the attribution cache share them
 * between flows and never mutate them). The DNS proxy's L7 flows (plain records, Type L7) are encoded
 * from their JSON flow. Other records that are not the pipeline's (no event) give undefined: the
 * caller encodes those with the library.
 */
export function flowResponseEncoderCreate(root: protobuf.Root = hubbleProtoRoot()): FlowResponseEncoder {
  const R = tagsOf(root, 'observer.GetFlowsResponse', ['flow', 'node_name', 'time'] as const);
  const F = tagsOf(root, 'flow.Flow', FLOW_FIELDS_ENCODED);
  const TS = tagsOf(root, 'google.protobuf.Timestamp', ['seconds', 'nanos'] as const);
  const ETH = tagsOf(root, 'flow.Ethernet', ['source', 'destination'] as const);
  const IP = tagsOf(root, 'flow.IP', ['source', 'destination', 'ipVersion'] as const);
  const L4 = tagsOf(root, 'flow.Layer4', ['TCP', 'UDP', 'ICMPv4', 'ICMPv6', 'SCTP'] as const);
  const PORTS = { TCP: tagsOf(root, 'flow.TCP', ['source_port', 'destination_port', 'flags'] as const), UDP: tagsOf(root, 'flow.UDP', ['source_port', 'destination_port'] as const), SCTP: tagsOf(root, 'flow.SCTP', ['source_port', 'destination_port'] as const) };
  const ICMP = { ICMPv4: tagsOf(root, 'flow.ICMPv4', ['type', 'code'] as const), ICMPv6: tagsOf(root, 'flow.ICMPv6', ['type', 'code'] as const) };
  const flagsType = root.lookupType('flow.TCPFlags');
  const FLAG = Object.fromEntries(Object.keys(flagsType.fields).map((n) => [n, fieldTag(flagsType, n)]));
  const EV = tagsOf(root, 'flow.CiliumEventType', ['type', 'sub_type'] as const);
  const IFACE = tagsOf(root, 'flow.NetworkInterface', ['index', 'name'] as const);
  const BOOL = tagsOf(root, 'google.protobuf.BoolValue', ['value'] as const);
  const verdicts = enumOf(root, 'flow.Verdict');
  const directions = enumOf(root, 'flow.TrafficDirection');
  const points = enumOf(root, 'flow.TraceObservationPoint');
  const ipVersion = { 4: enumValue(enumOf(root, 'flow.IPVersion'), 'IPv4', 'IPVersion'), 6: enumValue(enumOf(root, 'flow.IPVersion'), 'IPv6', 'IPVersion') };
  const l3l4 = enumValue(enumOf(root, 'flow.FlowType'), 'L3_L4', 'FlowType');
  const l7Type = enumValue(enumOf(root, 'flow.FlowType'), 'L7', 'FlowType');
  const L7 = tagsOf(root, 'flow.Layer7', ['type', 'latency_ns', 'dns'] as const);
  const DNS = tagsOf(root, 'flow.DNS', ['query', 'ips', 'ttl', 'cnames', 'observation_source', 'rcode', 'qtypes', 'rrtypes'] as const);
  const l7FlowTypes = enumOf(root, 'flow.L7FlowType');
  const endpointType = root.lookupType('flow.Endpoint');
  const policyType = root.lookupType('flow.Policy');
  const endpointBytes = new WeakMap<HubbleEndpoint, Uint8Array>();
  const policyBytes = new WeakMap<PolicyMessage, Uint8Array>();
  const ethernetBytes = new WeakMap<object, Uint8Array>();
  // framed: each flow lands in a slab behind its gRPC frame header, sent from there without a copy
  const scratch = new ByteWriter({ framed: true });
  // Text most flows share, UTF-8 encoded once (a string write is a call into C++ each time): node and
  // interface names, summaries, and IPv4 addresses by number (no text made for them at all).
  const textBytes = new Map<string, Uint8Array>();
  const text = (w: ProtoWriter, tag: number, s: string) => {
    let bytes = textBytes.get(s);
    if (!bytes) {
      if (textBytes.size >= 4096) textBytes.clear();
      textBytes.set(s, (bytes = Buffer.from(s, 'utf8')));
    }
    w.uint32(tag).bytes(bytes);
  };
  const ipv4Bytes = new Map<number, Uint8Array>();
  const address = (w: ProtoWriter, tag: number, v4: number | undefined, textOf: () => string) => {
    if (v4 === undefined) return void w.uint32(tag).string(textOf());
    let bytes = ipv4Bytes.get(v4);
    if (!bytes) {
      if (ipv4Bytes.size >= 65_536) ipv4Bytes.clear();
      ipv4Bytes.set(v4, (bytes = Buffer.from(textOf(), 'latin1')));
    }
    w.uint32(tag).bytes(bytes);
  };
  // TCP: the flags message and the summary depend on the flags byte only.
  const tcpFlagNames = Array.from({ length: 256 }, (_, bits) => TCP_FLAG_NAMES.filter((_, i) => bits & (1 << i)));
  const tcpFlagsBytes = tcpFlagNames.map((names) => {
    const fw = protobuf.Writer.create();
    for (const n of names) fw.uint32(FLAG[n]!).bool(true);
    return fw.finish();
  });
  const tcpSummaryBytes = tcpFlagNames.map((names) => Buffer.from(`TCP Flags: ${names.join(', ') || 'none'}`, 'latin1'));

  // the flow's and the response's time are the same: the BigInt division is done once per flow
  const timestamp = (w: ProtoWriter, tag: number, seconds: number, nanos: number) => {
    w.uint32(tag).fork();
    w.uint32(TS.seconds).int64(seconds);
    if (nanos) w.uint32(TS.nanos).int32(nanos);
    w.ldelim();
  };
  const endpoint = (w: ProtoWriter, tag: number, ep: HubbleEndpoint) => {
    let bytes = endpointBytes.get(ep);
    if (!bytes) endpointBytes.set(ep, (bytes = endpointType.encode(endpointType.fromObject(ep)).finish()));
    w.uint32(tag).bytes(bytes);
  };
  const policies = (w: ProtoWriter, tag: number, list: PolicyMessage[] | undefined) => {
    for (const p of list ?? []) {
      let bytes = policyBytes.get(p);
      if (!bytes) policyBytes.set(p, (bytes = policyType.encode(policyType.fromObject(p)).finish()));
      w.uint32(tag).bytes(bytes);
    }
  };
  // the unicast pairs are the directory's shared objects: encoded once each; group destinations anew
  const ethernet = (w: ProtoWriter, eth: { source: string; destination: string }, shared: boolean) => {
    let bytes = ethernetBytes.get(eth);
    if (!bytes) {
      bytes = protobuf.Writer.create().uint32(ETH.source).string(eth.source).uint32(ETH.destination).string(eth.destination).finish();
      if (shared) ethernetBytes.set(eth, bytes);
    }
    w.uint32(F.ethernet).bytes(bytes);
  };
  const uint = (w: ProtoWriter, tag: number, v: number) => {
    if (v) w.uint32(tag).uint32(v);
  };
  const strings = (w: ProtoWriter, tag: number, list: readonly string[] | undefined) => {
    for (const v of list ?? []) w.uint32(tag).string(v);
  };
  const policyLists = (w: ProtoWriter, f: Pick<HubbleFlow, 'egress_denied_by'>, extras: FlowExtras | undefined) => {
    policies(w, F.egress_allowed_by, extras?.egress_allowed_by);
    policies(w, F.ingress_allowed_by, extras?.ingress_allowed_by);
    policies(w, F.egress_denied_by, [...(f.egress_denied_by ?? []), ...(extras?.egress_denied_by ?? [])]);
    policies(w, F.ingress_denied_by, extras?.ingress_denied_by);
  };

  /** An L7 flow from its JSON object (the DNS proxy's; rare next to the datapath's, so no shortcuts). */
  const l7Flow = (r: HubbleFlowRecord, extras: FlowExtras | undefined): Buffer => {
    const f = r.flow;
    const t = timestampFromIso(r.time);
    const seconds = Number(t.seconds);
    const w = protobuf.Writer.create();
    w.uint32(R.flow).fork();
    timestamp(w, F.time, seconds, t.nanos);
    w.uint32(F.verdict).int32(enumValue(verdicts, f.verdict, 'Verdict'));
    const dropped = f.verdict === 'DROPPED';
    if (dropped) uint(w, F.drop_reason, f.drop_reason ?? 0);
    if (f.IP) w.uint32(F.IP).fork().uint32(IP.source).string(f.IP.source).uint32(IP.destination).string(f.IP.destination).uint32(IP.ipVersion).int32(ipVersion[f.IP.ipVersion === 'IPv4' ? 4 : 6]).ldelim();
    const kind = Object.keys(f.l4 ?? {})[0] as 'TCP' | 'UDP' | undefined;
    if (kind === 'TCP' || kind === 'UDP') {
      const ports = (f.l4 as Record<string, { source_port: number; destination_port: number }>)[kind]!;
      w.uint32(F.l4).fork().uint32(L4[kind]).fork();
      uint(w, PORTS[kind].source_port, ports.source_port);
      uint(w, PORTS[kind].destination_port, ports.destination_port);
      w.ldelim().ldelim();
    }
    endpoint(w, F.source, f.source);
    endpoint(w, F.destination, f.destination);
    w.uint32(F.Type).int32(f.Type === 'L7' ? l7Type : l3l4);
    if (f.node_name) w.uint32(F.node_name).string(f.node_name);
    strings(w, F.source_names, f.source_names);
    strings(w, F.destination_names, f.destination_names);
    if (f.l7) {
      w.uint32(F.l7).fork();
      const type = enumValue(l7FlowTypes, f.l7.type, 'L7FlowType');
      if (type) w.uint32(L7.type).int32(type);
      if (f.l7.latency_ns && f.l7.latency_ns !== '0') w.uint32(L7.latency_ns).uint64(f.l7.latency_ns);
      const d = f.l7.dns;
      w.uint32(L7.dns).fork();
      if (d.query) w.uint32(DNS.query).string(d.query);
      strings(w, DNS.ips, d.ips);
      uint(w, DNS.ttl, d.ttl ?? 0);
      strings(w, DNS.cnames, d.cnames);
      w.uint32(DNS.observation_source).string(d.observation_source);
      uint(w, DNS.rcode, d.rcode ?? 0);
      strings(w, DNS.qtypes, d.qtypes);
      strings(w, DNS.rrtypes, d.rrtypes);
      w.ldelim().ldelim();
    }
    w.uint32(F.event_type).fork();
    uint(w, EV.type, f.event_type.type);
    uint(w, EV.sub_type, f.event_type.sub_type ?? 0);
    w.ldelim();
    w.uint32(F.traffic_direction).int32(enumValue(directions, f.traffic_direction, 'TrafficDirection'));
    if (f.trace_observation_point) w.uint32(F.trace_observation_point).int32(enumValue(points, f.trace_observation_point, 'TraceObservationPoint'));
    if (dropped) uint(w, F.drop_reason_desc, f.drop_reason ?? 0);
    w.uint32(F.is_reply).fork();
    if (f.is_reply) w.uint32(BOOL.value).bool(true);
    w.ldelim();
    w.uint32(F.uuid).string(f.uuid);
    w.uint32(F.Summary).string(f.Summary);
    policyLists(w, f, extras);
    w.ldelim();
    if (r.node_name) w.uint32(R.node_name).string(r.node_name);
    timestamp(w, R.time, seconds, t.nanos);
    return w.finish() as Buffer;
  };

  /** A datapath record's message, written after the writer's reset(). */
  const datapathFlow = (w: ProtoWriter, r: LazyFlowRecord, extras: FlowExtras | undefined) => {
    const ev = r.event;
    w.uint32(R.flow).fork();
    const ns = ev.timeNs;
    const seconds = Number(ns / 1_000_000_000n);
    const nanos = Number(ns - BigInt(seconds) * 1_000_000_000n);
    timestamp(w, F.time, seconds, nanos);
    w.uint32(F.verdict).int32(enumValue(verdicts, ev.verdict, 'Verdict'));
    const dropped = ev.verdict === 'DROPPED';
    if (dropped) uint(w, F.drop_reason, ev.dropReason);
    const eth = ethernetOf(ev, r.l2);
    if (eth) ethernet(w, eth, eth === r.l2!.egress || eth === r.l2!.ingress);
    if (ev.family) {
      w.uint32(F.IP).fork();
      address(w, IP.source, ev.srcIpv4, () => ev.srcAddr);
      address(w, IP.destination, ev.dstIpv4, () => ev.dstAddr);
      w.uint32(IP.ipVersion).int32(ipVersion[ev.family]).ldelim();
    }
    // TCP and UDP of untagged IP frames (nearly every flow) straight from the event, their summary from
    // the cache; the rest through l4Of, as the JSON flow has them.
    let summary: string | Uint8Array;
    const plain = ev.family !== 0 && ev.etherType !== 0x8100 && ev.etherType !== 0x88a8;
    if (plain && ev.protocol === 6) {
      w.uint32(F.l4).fork().uint32(L4.TCP).fork();
      uint(w, PORTS.TCP.source_port, ev.srcPort);
      uint(w, PORTS.TCP.destination_port, ev.dstPort);
      w.uint32(PORTS.TCP.flags).bytes(tcpFlagsBytes[ev.tcpFlags & 0xff]!);
      w.ldelim().ldelim();
      summary = tcpSummaryBytes[ev.tcpFlags & 0xff]!;
    } else if (plain && ev.protocol === 17) {
      w.uint32(F.l4).fork().uint32(L4.UDP).fork();
      uint(w, PORTS.UDP.source_port, ev.srcPort);
      uint(w, PORTS.UDP.destination_port, ev.dstPort);
      w.ldelim().ldelim();
      summary = udpServiceOf(ev.srcPort, ev.dstPort) ?? 'UDP';
    } else {
      const { l4, summary: s } = l4Of(ev);
      summary = s;
      if (l4) {
        w.uint32(F.l4).fork();
        const kind = Object.keys(l4)[0] as keyof typeof L4;
        w.uint32(L4[kind]).fork();
        if (kind === 'ICMPv4' || kind === 'ICMPv6') {
          uint(w, ICMP[kind].type, ev.icmpType);
          uint(w, ICMP[kind].code, ev.icmpCode);
        } else {
          uint(w, PORTS[kind].source_port, ev.srcPort);
          uint(w, PORTS[kind].destination_port, ev.dstPort);
          if (kind === 'TCP') w.uint32(PORTS.TCP.flags).bytes(tcpFlagsBytes[ev.tcpFlags & 0xff]!);
        }
        w.ldelim().ldelim();
      }
    }
    endpoint(w, F.source, r.sourceEndpoint);
    endpoint(w, F.destination, r.destinationEndpoint);
    w.uint32(F.Type).int32(l3l4);
    if (r.node_name) text(w, F.node_name, r.node_name);
    strings(w, F.source_names, r.sourceNames);
    strings(w, F.destination_names, r.destinationNames);
    const eventType = flowEventType(ev);
    w.uint32(F.event_type).fork();
    uint(w, EV.type, eventType.type);
    uint(w, EV.sub_type, eventType.sub_type ?? 0);
    w.ldelim();
    w.uint32(F.traffic_direction).int32(enumValue(directions, ev.direction, 'TrafficDirection'));
    w.uint32(F.trace_observation_point).int32(enumValue(points, flowObservationPoint(ev), 'TraceObservationPoint'));
    if (dropped) uint(w, F.drop_reason_desc, ev.dropReason);
    w.uint32(F.is_reply).fork();
    if (ev.isReply) w.uint32(BOOL.value).bool(true);
    w.ldelim();
    w.uint32(F.interface).fork();
    uint(w, IFACE.index, ev.ifindex);
    if (extras?.interfaceName) text(w, IFACE.name, extras.interfaceName);
    w.ldelim();
    if (w instanceof ByteWriter) w.uint32(F.uuid).prefixedHex(FLOW_UUID_PREFIX, r.uuidSequence, FLOW_UUID_SEQUENCE_DIGITS);
    else w.uint32(F.uuid).string(r.uuid);
    if (typeof summary === 'string') text(w, F.Summary, summary);
    else w.uint32(F.Summary).bytes(summary);
    if (extras) {
      policies(w, F.egress_allowed_by, extras.egress_allowed_by);
      policies(w, F.ingress_allowed_by, extras.ingress_allowed_by);
      policies(w, F.egress_denied_by, extras.egress_denied_by);
      policies(w, F.ingress_denied_by, extras.ingress_denied_by);
    }
    w.ldelim();
    if (r.node_name) text(w, R.node_name, r.node_name);
    timestamp(w, R.time, seconds, nanos);
  };

  const encode = (r: HubbleFlowRecord, extras?: FlowExtras): Buffer | undefined => {
    if (!(r instanceof LazyFlowRecord)) return r.flow?.Type === 'L7' && r.flow.l7 ? l7Flow(r, extras) : undefined;
    const w: ProtoWriter = flowEncoderOptions.inPlace ? scratch.reset() : protobuf.Writer.create();
    datapathFlow(w, r, extras);
    return w.finish() as Buffer;
  };
  encode.into = (w: ByteWriter, r: HubbleFlowRecord, extras?: FlowExtras): boolean => {
    if (!(r instanceof LazyFlowRecord)) return false;
    datapathFlow(w.reset(), r, extras);
    w.finishFramed();
    return true;
  };
  return encode;
}
