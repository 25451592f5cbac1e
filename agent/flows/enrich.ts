import { randomUUID } from 'node:crypto';
import type { FlowEvent } from '../../bpf/index.js';
import { ipv4Number, type EndpointDirectory, type EndpointL2 } from './directory.js';
import { flowUuidTake, flowUuidText } from './flow-uuid.js';
import { DROP_REASON } from '../../bpf/layout.gen.js';
import { dropReasonDesc, MessageType, tcpFlagsObject, type HubbleEndpoint, type HubbleFlow, type HubbleFlowRecord } from './hubble.js';

const ICMP4_TYPES: Record<number, string> = { 0: 'EchoReply', 3: 'DestinationUnreachable', 8: 'EchoRequest', 11: 'TimeExceeded' };
const ICMP6_TYPES: Record<number, string> = {
  1: 'DestinationUnreachable', 2: 'PacketTooBig', 3: 'TimeExceeded', 128: 'EchoRequest', 129: 'EchoReply',
  130: 'MulticastListenerQuery', 131: 'MulticastListenerReport', 132: 'MulticastListenerDone',
  133: 'RouterSolicitation', 134: 'RouterAdvertisement', 135: 'NeighborSolicitation', 136: 'NeighborAdvertisement',
  143: 'MulticastListenerReportV2',
};

/**
 * The address configuration protocols kitnet serves VM guests (agent/addressing/), named in a flow's
 * summary as such: client and server ports both, so a stray packet to port 67 stays plain UDP.
 */
export function udpServiceOf(srcPort: number, dstPort: number): 'DHCP' | 'DHCPv6' | undefined {
  const pair = (a: number, b: number) => (srcPort === a && dstPort === b) || (srcPort === b && dstPort === a);
  if (pair(68, 67)) return 'DHCP';
  if (pair(546, 547)) return 'DHCPv6';
  return undefined;
}

/** The last whole second formatted (events come in time order, so most share it). */
let isoSecond = -1;
let isoPrefix = '';

/**
 * RFC 3339 as Hubble prints flow times (protojson's Timestamp): the fraction in 9, 6 or 3 digits, the
 * fewest that keep the nanoseconds, none for a whole second: `2026-11-26T12:00:00.123456789Z`,
 * `…00.123456Z`, `…00.123Z`, `…00Z`. The same text on REST and on Hubble's tools.
 */
export function nsToIso(ns: bigint): string {
  return secondsToIso(Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n));
}

/** nsToIso of a time given as whole seconds since the epoch and nanoseconds within the second. */
export function secondsToIso(sec: number, frac: number): string {
  if (sec !== isoSecond) {
    isoSecond = sec;
    isoPrefix = new Date(sec * 1000).toISOString().slice(0, 19); // YYYY-MM-DDTHH:MM:SS
  }
  if (frac === 0) return `${isoPrefix}Z`;
  if (frac % 1_000_000 === 0) return `${isoPrefix}.${String(frac / 1_000_000).padStart(3, '0')}Z`;
  if (frac % 1_000 === 0) return `${isoPrefix}.${String(frac / 1_000).padStart(6, '0')}Z`;
  return `${isoPrefix}.${String(frac).padStart(9, '0')}Z`;
}

const ETH_P_ARP = 0x0806;
const DROP_INVALID_SOURCE_MAC = DROP_REASON.INVALID_SOURCE_MAC;
/** EtherTypes a dropped frame that is not IP may show (the outermost one of a tagged frame). */
const ETHER_TYPES: Record<number, string> = { 0x8100: '802.1Q', 0x88a8: '802.1ad', 0x88cc: 'LLDP', 0x8847: 'MPLS', 0x8863: 'PPPoE', 0x888e: 'EAPOL' };

function etherTypeName(type: number | undefined): string {
  const hex = `0x${(type ?? 0).toString(16).padStart(4, '0')}`;
  if (type !== undefined && type < 0x0600) return `802.3 length ${type}`;
  return ETHER_TYPES[type ?? -1] ? `${ETHER_TYPES[type!]} (${hex})` : `EtherType ${hex}`;
}

/**
 * Hubble's `l4` (absent when there is no L4 header Hubble decodes) and Summary. ARP: "ARP" and no l4,
 * as Hubble shows layer-2 flows; frames that are not IP (family 0): their EtherType; an IP packet
 * inside VLAN tags: the tags' EtherType before the protocol.
 */
export function l4Of(ev: FlowEvent): { l4?: Record<string, unknown>; summary: string } {
  if (ev.etherType === ETH_P_ARP) return { summary: 'ARP' };
  if (ev.family === 0) return { summary: etherTypeName(ev.etherType) };
  const inner = l4OfIp(ev);
  const tagged = ev.etherType === 0x8100 || ev.etherType === 0x88a8;
  return tagged ? { ...inner, summary: `${etherTypeName(ev.etherType)} ${inner.summary}` } : inner;
}

function l4OfIp(ev: FlowEvent): { l4?: Record<string, unknown>; summary: string } {
  switch (ev.protocol) {
    case 6: {
      const flags = tcpFlagsObject(ev.tcpFlags);
      return {
        l4: { TCP: { source_port: ev.srcPort, destination_port: ev.dstPort, flags } },
        summary: `TCP Flags: ${Object.keys(flags).join(', ') || 'none'}`,
      };
    }
    case 17:
      return { l4: { UDP: { source_port: ev.srcPort, destination_port: ev.dstPort } }, summary: udpServiceOf(ev.srcPort, ev.dstPort) ?? 'UDP' };
    case 132:
      return { l4: { SCTP: { source_port: ev.srcPort, destination_port: ev.dstPort } }, summary: 'SCTP' };
    case 1:
      return { l4: { ICMPv4: { type: ev.icmpType, code: ev.icmpCode } }, summary: `ICMPv4 ${ICMP4_TYPES[ev.icmpType] ?? ev.icmpType}` };
    case 58:
      return { l4: { ICMPv6: { type: ev.icmpType, code: ev.icmpCode } }, summary: `ICMPv6 ${ICMP6_TYPES[ev.icmpType] ?? ev.icmpType}` };
    default:
      return { summary: `IP protocol ${ev.protocol}` };
  }
}

/** Hubble's event_type: a drop (with the reason as sub-type) or a trace. */
export function flowEventType(ev: FlowEvent): { type: number; sub_type?: number } {
  return ev.verdict === 'DROPPED' ? { type: MessageType.drop, sub_type: ev.dropReason } : { type: MessageType.trace };
}

/** Where the datapath saw the packet: leaving the workload (egress) or being delivered to it. */
export function flowObservationPoint(ev: FlowEvent): 'FROM_ENDPOINT' | 'TO_ENDPOINT' {
  return ev.direction === 'EGRESS' ? 'FROM_ENDPOINT' : 'TO_ENDPOINT';
}

type Ethernet = NonNullable<HubbleFlow['ethernet']>;
const ETH_BROADCAST = 'ff:ff:ff:ff:ff:ff';
const hex2 = (n: number) => (n & 0xff).toString(16).padStart(2, '0');

/**
 * The MAC an IP packet to a broadcast or multicast address is sent to (RFC 1112, RFC 2464), else
 * undefined. Workloads have host routes only (/32, /128), so there is no subnet broadcast.
 */
function groupMacOf(ev: FlowEvent): string | undefined {
  if (ev.family === 4) {
    const n = ev.dstIpv4 ?? ipv4Number(ev.dstAddr);
    if (n === 0xffffffff) return ETH_BROADCAST;
    if (n >>> 28 !== 0xe) return undefined;
    return `01:00:5e:${hex2((n >>> 16) & 0x7f)}:${hex2(n >>> 8)}:${hex2(n)}`;
  }
  if (ev.family !== 6 || !ev.dstAddr.startsWith('ff')) return undefined;
  // the low 32 bits of the group address: the last two groups of the (possibly compressed) text
  const groups = ev.dstAddr.split(':');
  const lo = parseInt(groups[groups.length - 1] || '0', 16);
  const hi = groups.length >= 2 ? parseInt(groups[groups.length - 2] || '0', 16) : 0;
  return `33:33:${hex2(hi >> 8)}:${hex2(hi)}:${hex2(lo >> 8)}:${hex2(lo)}`;
}

/**
 * Hubble's `ethernet` for a packet on a workload's device, from the MACs kitnet gave that link (the
 * event carries no L2 header): leaving the workload it goes from the workload's MAC to its gateway
 * (the host side, which answers ARP / neighbour solicitations for the gateway addresses); delivered
 * to it, the host side sends it to the workload's MAC; broadcast and multicast destinations get their
 * group MAC. Left out, as Cilium does for L3 devices, where the link has no MACs (netkit in L3 mode),
 * and where the frame's MACs are not known from the link: frames that are not IP (an ARP request is
 * broadcast, its reply is not) and frames dropped for a foreign source MAC.
 */
export function ethernetOf(ev: FlowEvent, l2: EndpointL2 | undefined): Ethernet | undefined {
  if (!l2 || ev.family === 0 || ev.etherType === ETH_P_ARP || (ev.verdict === 'DROPPED' && ev.dropReason === DROP_INVALID_SOURCE_MAC)) return undefined;
  const group = groupMacOf(ev);
  if (ev.direction === 'EGRESS') return group ? { source: l2.workload, destination: group } : l2.egress;
  return group ? { source: l2.gateway, destination: group } : l2.ingress;
}

/** Hubble's flow object for an event whose ends are already named; `names`: what the DNS proxy learned for them; `l2`: the MACs of the event's link. */
export function hubbleFlowBuild(
  ev: FlowEvent,
  source: HubbleEndpoint,
  destination: HubbleEndpoint,
  nodeName: string,
  time: string,
  uuid: string = randomUUID(),
  names: { source?: readonly string[] | undefined; destination?: readonly string[] | undefined } = {},
  l2?: EndpointL2,
): HubbleFlow {
  const { l4, summary } = l4Of(ev);
  const dropped = ev.verdict === 'DROPPED';
  const flow: HubbleFlow = {
    time,
    uuid,
    verdict: ev.verdict,
    ethernet: ethernetOf(ev, l2),
    // undefined (left out of the JSON) for frames that are not IP / without an L4 header, as Hubble
    IP: ev.family ? { source: ev.srcAddr, destination: ev.dstAddr, ipVersion: ev.family === 4 ? 'IPv4' : 'IPv6' } : undefined,
    l4,
    source,
    destination,
    Type: 'L3_L4',
    node_name: nodeName,
    source_names: names.source,
    destination_names: names.destination,
    event_type: flowEventType(ev),
    traffic_direction: ev.direction,
    trace_observation_point: flowObservationPoint(ev),
    is_reply: ev.isReply,
    interface: { index: ev.ifindex },
    Summary: summary,
  };
  if (dropped) {
    flow.drop_reason = ev.dropReason;
    flow.drop_reason_desc = dropReasonDesc(ev.dropReason);
  }
  return flow;
}

/**
 * A flow as the pipeline keeps it: the decoded event and both ends as the directory named them when
 * the event arrived (shared endpoint objects, so this costs two pointers). The Hubble JSON object,
 * its time string and uuid are made the first time someone reads `flow` or `time` (a follower, a
 * filter, `GET /v1/flows`) and kept from then on, so a flow nobody looks at costs no formatting.
 * JSON.stringify gives Hubble's line (`toJSON`).
 */
export class LazyFlowRecord implements HubbleFlowRecord {
  #flow: HubbleFlow | undefined;
  #time: string | undefined;
  #uuid: string | undefined;
  #uuidSequence = -1;
  /** What the DNS proxy had learned for either address when the event arrived (flowEnrich). */
  sourceNames: readonly string[] | undefined;
  destinationNames: readonly string[] | undefined;

  constructor(
    readonly event: FlowEvent,
    readonly sourceEndpoint: HubbleEndpoint,
    readonly destinationEndpoint: HubbleEndpoint,
    readonly node_name: string,
    /** The MACs of the link the event was seen on (undefined: L3 link or unknown device). */
    readonly l2?: EndpointL2,
  ) {}

  get time(): string {
    return (this.#time ??= nsToIso(this.event.timeNs));
  }

  /** The flow's uuid, the same whether the flow is read as JSON or encoded for gRPC (api/hubble/flow-encoder.ts). */
  get uuid(): string {
    return (this.#uuid ??= flowUuidText(this.uuidSequence));
  }

  /** The number the uuid's last group is made of (flow-uuid.ts), taken the first time the uuid is needed. */
  get uuidSequence(): number {
    if (this.#uuidSequence < 0) this.#uuidSequence = flowUuidTake();
    return this.#uuidSequence;
  }

  get flow(): HubbleFlow {
    return (this.#flow ??= hubbleFlowBuild(
      this.event,
      this.sourceEndpoint,
      this.destinationEndpoint,
      this.node_name,
      this.time,
      this.uuid,
      { source: this.sourceNames, destination: this.destinationNames },
      this.l2,
    ));
  }

  toJSON(): { flow: HubbleFlow; node_name: string; time: string } {
    return { flow: this.flow, node_name: this.node_name, time: this.time };
  }
}

/** Turns a datapath event into a Hubble flow record, naming both ends from the directory. */
export function flowEnrich(ev: FlowEvent, dir: EndpointDirectory, nodeName: string): LazyFlowRecord {
  const self = dir.endpointById(ev.endpointId);
  const l2 = dir.l2Of(ev.ifindex);
  let rec: LazyFlowRecord;
  // EGRESS: the workload sends (it is the source); INGRESS: it receives.
  if (ev.direction === 'EGRESS') {
    const source = self ?? sourceOf(ev, dir);
    rec = new LazyFlowRecord(ev, source, destinationOf(ev, dir), nodeName, l2);
  } else {
    const destination = self ?? destinationOf(ev, dir);
    rec = new LazyFlowRecord(ev, sourceOf(ev, dir), destination, nodeName, l2);
  }
  // Taken now, so a later expiry does not rename what was seen; only the peer's side (a workload's own
  // address is never learned), and no address is formatted while the proxy knows no name.
  const names = dir.fqdnNames;
  if (names && ev.family && names.active()) {
    if (ev.direction === 'EGRESS') {
      const v4 = ev.dstIpv4;
      rec.destinationNames = v4 !== undefined ? names.ofIpv4(v4) : names.of(ev.dstAddr);
    } else {
      const v4 = ev.srcIpv4;
      rec.sourceNames = v4 !== undefined ? names.ofIpv4(v4) : names.of(ev.srcAddr);
    }
  }
  return rec;
}

// IPv4 peers by number when the event has it (decoded events do): no address string is made.
function sourceOf(ev: FlowEvent, dir: EndpointDirectory): HubbleEndpoint {
  const v4 = ev.srcIpv4;
  return v4 !== undefined ? dir.endpointForPeerIpv4(v4, ev.srcIdentity) : dir.endpointForPeer(ev.srcAddr, ev.srcIdentity);
}

function destinationOf(ev: FlowEvent, dir: EndpointDirectory): HubbleEndpoint {
  const v4 = ev.dstIpv4;
  return v4 !== undefined ? dir.endpointForPeerIpv4(v4, ev.dstIdentity) : dir.endpointForPeer(ev.dstAddr, ev.dstIdentity);
}
