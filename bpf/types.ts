// The datapath contract types shared with agent/ (re-exported by bpf/index.ts).

export const PIN_ROOT_DEFAULT = '/sys/fs/bpf/kitnet';

/** How programs attach to an endpoint's host-side device. */
export type AttachKind = 'tcx' | 'netkit';

export interface EndpointInfo {
  endpointId: number;
  identity: number;
  ipv4: string;
  ipv6: string;
  /** MAC of the workload side (peer), `aa:bb:...`. */
  mac: string;
  flags: number;
  /**
   * MAC of the host-side device (veth host end / netkit primary), `aa:bb:...`. The datapath answers the
   * workload's ARP requests for GATEWAY_IPV4 and neighbour solicitations for GATEWAY_IPV6 with it; absent
   * or empty: no responder (the workload needs static neighbour entries for its gateways).
   */
  hostMac?: string;
}

export interface IpcacheEntry {
  identity: number;
  /** Non-zero when the address lives on another host (scale-out); 0 = local. */
  hostId: number;
}

export type Verdict = 'FORWARDED' | 'DROPPED';
/** Hubble's sense: INGRESS = towards the endpoint (workload), EGRESS = from it. */
export type TrafficDirection = 'INGRESS' | 'EGRESS';

export interface FlowEvent {
  /** Wall-clock time in nanoseconds since the epoch. */
  timeNs: bigint;
  ifindex: number;
  endpointId: number;
  direction: TrafficDirection;
  /** 0: not an IP packet (a frame of another EtherType, dropped): srcAddr and dstAddr are ''. */
  family: 0 | 4 | 6;
  /** IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP). */
  protocol: number;
  srcAddr: string;
  dstAddr: string;
  srcPort: number;
  dstPort: number;
  /** ICMP type/code when protocol is ICMP/ICMPv6. */
  icmpType: number;
  icmpCode: number;
  /** TCP flag bits as on the wire (FIN=1, SYN=2, RST=4, PSH=8, ACK=16, URG=32, ECE=64, CWR=128). */
  tcpFlags: number;
  srcIdentity: number;
  dstIdentity: number;
  verdict: Verdict;
  /** Hubble drop reason number, 0 when forwarded. */
  dropReason: number;
  isReply: boolean;
  length: number;
  /**
   * EtherType of the frame (0x0800 IPv4, 0x86dd IPv6, 0x0806 ARP). ARP drops are family 4 with the sender
   * IP as srcAddr and the target IP as dstAddr, protocol 0. Absent in events not made by the datapath.
   */
  etherType?: number;
  /** Why the datapath reported this packet (aggregation); absent in events not made by the datapath. */
  reportReason?: ReportReason;
  /** IPv4 addresses as unsigned 32-bit numbers (network byte order read big-endian) when family is 4:
   *  decoded events have them, so the agent can look peers up without formatting a string. */
  readonly srcIpv4?: number;
  readonly dstIpv4?: number;
}

/** flow_event.reason: EVERY = no aggregation or untracked traffic; see tools/gen/bpf-layout.ts. */
export type ReportReason = 'EVERY' | 'NEW' | 'FLAGS' | 'CLOSE' | 'INTERVAL' | 'DROP' | 'FIRST_REPLY';

/** Policy direction in the agent's words: ingress = towards the workload, egress = from it. */
export type PolicyDirection = 'ingress' | 'egress';

/**
 * One raw write to the `policy` LPM trie: `key` is a 16-byte struct policy_key and `value` an 8-byte
 * struct policy_value (bpf/layout.gen.ts POLICY_KEY / POLICY_VALUE), e.g. from agent/policy's
 * policyKeyEncode / policyValueEncode. `value` is required for upserts and ignored for deletes.
 */
export interface PolicyMapWrite {
  op: 'upsert' | 'delete';
  key: Buffer;
  value?: Buffer;
}

/** A compiled entry: the fields of agent/policy's PolicyEntry the map needs (extra fields are ignored). */
export interface PolicyEntryFields {
  direction: PolicyDirection;
  /** Remote identity; 0 = any identity. */
  identity: number;
  /** 0 = any protocol (then port and portPrefixLen are 0). */
  protocol: number;
  /** Destination port, or the ICMP type for protocols 1 and 58. */
  port: number;
  /** 0..16 leading bits of `port` that must match; 0 = any port. */
  portPrefixLen: number;
  deny: boolean;
  /** Opaque to the datapath; 0 when absent. */
  cookie?: number;
}

/** A change to one compiled entry: the shape of agent/policy's PolicyMapOp. */
export interface PolicyEntryOp {
  op: 'upsert' | 'delete';
  entry: PolicyEntryFields;
}

export interface PolicyApplyResult {
  upserted: number;
  deleted: number;
  /** Deletes of keys that were not in the map (not an error). */
  missing: number;
}

/** An entry of the `policy` map, raw and decoded. */
export interface PolicyMapEntry extends PolicyEntryFields {
  key: Buffer;
  value: Buffer;
  endpointId: number;
  /** The key's LPM prefix length (72 any protocol, 80 protocol, 80 + portPrefixLen). */
  prefixLen: number;
  cookie: number;
}

export interface FlowReader {
  /** Events the kernel could not write because the ring buffer was full. */
  lostEvents(): bigint;
  close(): void;
}

export interface Datapath {
  readonly pinRoot: string;
  /**
   * Attach (or adopt and update) the endpoint programs on a host-side device; links are pinned.
   * netkit: `peerIfindex` (the peer's, in its namespace) is what the kernel reports for the peer's
   * link, so an existing one is adopted only when it is on that peer (bpf/links.ts, linkIsCurrent).
   */
  attach(ep: { ifname: string; ifindex: number; peerIfindex?: number; kind: AttachKind }): Promise<void>;
  /** Detach and unpin the endpoint's links. Idempotent. */
  detach(ifname: string): Promise<void>;
  /** ifnames that have pinned links. */
  attachedList(): Promise<string[]>;
  endpointUpsert(ifindex: number, info: EndpointInfo): void;
  endpointDelete(ifindex: number): void;
  endpointList(): Array<[number, EndpointInfo]>;
  /** cidr: `10.200.0.5/32`, `fd00:200::5/128`, or a wider prefix. */
  ipcacheUpsert(cidr: string, entry: IpcacheEntry): void;
  ipcacheDelete(cidr: string): void;
  ipcacheList(): Array<[string, IpcacheEntry]>;
  /**
   * Write policy entries in order, in one native call (the order matters: agent/policy's
   * policyEntriesDiff orders its ops so that the map never over-allows mid-change). Either raw
   * key/value buffers, or an endpoint id and compiled entry ops (PolicyMapOp). Sizes and fields are
   * checked before anything is written; if the kernel refuses a write (map full), the earlier writes
   * stay applied and a PolicyApplyError tells which one failed.
   */
  policyApply(ops: readonly PolicyMapWrite[]): PolicyApplyResult;
  policyApply(endpointId: number, ops: readonly PolicyEntryOp[]): PolicyApplyResult;
  /** Entries of the `policy` map (of one endpoint when given), sorted by endpoint, direction, identity, protocol, port. */
  policyList(endpointId?: number): PolicyMapEntry[];
  /** Delete every entry (of one endpoint when given): that endpoint then drops every new connection. Returns how many. */
  policyClear(endpointId?: number): number;
  /** Read flow events from the ring buffer on the event loop (epoll fd watched by libuv). */
  flowsRead(onEvents: (events: FlowEvent[]) => void): FlowReader;
  /** Close fds; pins stay so the datapath keeps working while the agent is down. */
  close(): void;
}
