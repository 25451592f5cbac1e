import { randomUUID } from 'node:crypto';
import type { FlowEvent } from '../../bpf/index.js';
import type { EndpointDirectory } from './directory.js';
import { dropReasonDesc, MessageType, tcpFlagsObject, type HubbleFlow, type HubbleFlowRecord } from './hubble.js';

const ICMP4_TYPES: Record<number, string> = { 0: 'EchoReply', 3: 'DestinationUnreachable', 8: 'EchoRequest', 11: 'TimeExceeded' };
const ICMP6_TYPES: Record<number, string> = {
  1: 'DestinationUnreachable', 2: 'PacketTooBig', 3: 'TimeExceeded', 128: 'EchoRequest', 129: 'EchoReply',
  130: 'MulticastListenerQuery', 131: 'MulticastListenerReport', 132: 'MulticastListenerDone',
  133: 'RouterSolicitation', 134: 'RouterAdvertisement', 135: 'NeighborSolicitation', 136: 'NeighborAdvertisement',
};

function nsToIso(ns: bigint): string {
  const ms = Number(ns / 1_000_000n);
  const frac = String(ns % 1_000_000_000n).padStart(9, '0');
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, `.${frac}Z`);
}

function l4Of(ev: FlowEvent): { l4: Record<string, unknown>; summary: string } {
  switch (ev.protocol) {
    case 6: {
      const flags = tcpFlagsObject(ev.tcpFlags);
      return {
        l4: { TCP: { source_port: ev.srcPort, destination_port: ev.dstPort, flags } },
        summary: `TCP Flags: ${Object.keys(flags).join(', ') || 'none'}`,
      };
    }
    case 17:
      return { l4: { UDP: { source_port: ev.srcPort, destination_port: ev.dstPort } }, summary: 'UDP' };
    case 132:
      return { l4: { SCTP: { source_port: ev.srcPort, destination_port: ev.dstPort } }, summary: 'SCTP' };
    case 1:
      return { l4: { ICMPv4: { type: ev.icmpType, code: ev.icmpCode } }, summary: `ICMPv4 ${ICMP4_TYPES[ev.icmpType] ?? ev.icmpType}` };
    case 58:
      return { l4: { ICMPv6: { type: ev.icmpType, code: ev.icmpCode } }, summary: `ICMPv6 ${ICMP6_TYPES[ev.icmpType] ?? ev.icmpType}` };
    default:
      return { l4: {}, summary: `IP protocol ${ev.protocol}` };
  }
}

/** Turns a datapath event into a Hubble flow record, naming both ends from the directory. */
export function flowEnrich(ev: FlowEvent, dir: EndpointDirectory, nodeName: string): HubbleFlowRecord {
  const self = dir.endpointById(ev.endpointId);
  // EGRESS: the workload sends (it is the source); INGRESS: it receives.
  const egress = ev.direction === 'EGRESS';
  const selfIdentity = egress ? ev.srcIdentity : ev.dstIdentity;
  const selfEp = self ?? dir.endpointForPeer(egress ? ev.srcAddr : ev.dstAddr, selfIdentity);
  const source = egress ? selfEp : dir.endpointForPeer(ev.srcAddr, ev.srcIdentity);
  const destination = egress ? dir.endpointForPeer(ev.dstAddr, ev.dstIdentity) : selfEp;
  const { l4, summary } = l4Of(ev);
  const time = nsToIso(ev.timeNs);
  const dropped = ev.verdict === 'DROPPED';
  const flow: HubbleFlow = {
    time,
    uuid: randomUUID(),
    verdict: ev.verdict,
    IP: { source: ev.srcAddr, destination: ev.dstAddr, ipVersion: ev.family === 4 ? 'IPv4' : 'IPv6' },
    l4,
    source,
    destination,
    Type: 'L3_L4',
    node_name: nodeName,
    event_type: dropped ? { type: MessageType.drop, sub_type: ev.dropReason } : { type: MessageType.trace },
    traffic_direction: ev.direction,
    trace_observation_point: egress ? 'FROM_ENDPOINT' : 'TO_ENDPOINT',
    is_reply: ev.isReply,
    interface: { index: ev.ifindex },
    Summary: summary,
  };
  if (dropped) {
    flow.drop_reason = ev.dropReason;
    flow.drop_reason_desc = dropReasonDesc(ev.dropReason);
  }
  return { flow, node_name: nodeName, time };
}
