// The structs the BPF C code and the TypeScript loader share: map keys and values, events, with
// explicit padding. Part of the generator (../bpf-layout.ts).

import { DNS_STRUCTS } from './dns.js';

export type ScalarType = 'u8' | 'u16' | 'u32' | 'u64';
export interface FieldSpec {
  name: string;
  type: ScalarType;
  /** Array length for `u8 addr[16]`-style members; absent for scalars. */
  count?: number;
  doc?: string;
}
export interface StructSpec {
  name: string;
  doc: string;
  fields: FieldSpec[];
}

// ---------------------------------------------------------------------------------------------------
// The description. Padding is explicit (pad* members) so keys hash identically whatever the compiler
// does, and so BPF code can zero a struct field by field without leaving holes (the verifier rejects
// map updates from stack slots it considers uninitialised).
// ---------------------------------------------------------------------------------------------------

export const STRUCTS: StructSpec[] = [
  {
    name: 'endpoint_info',
    doc: 'Value of the `endpoints` map (key: __u32 ifindex of the host-side device).',
    fields: [
      { name: 'endpoint_id', type: 'u32' },
      { name: 'identity', type: 'u32', doc: 'security identity of the workload' },
      { name: 'ipv4', type: 'u8', count: 4, doc: 'network byte order; 0.0.0.0 = none' },
      { name: 'ipv6', type: 'u8', count: 16, doc: 'network byte order; :: = none' },
      { name: 'mac', type: 'u8', count: 6, doc: 'workload (peer) MAC' },
      { name: 'pad0', type: 'u8', count: 2 },
      { name: 'flags', type: 'u32', doc: 'EP_F_* bits' },
      {
        name: 'host_mac',
        type: 'u8',
        count: 6,
        doc: 'host-side device MAC: the gateway answers ARP / neighbour solicitations with it; 00:00:00:00:00:00 = no responder',
      },
      { name: 'pad1', type: 'u8', count: 2 },
    ],
  },
  {
    name: 'endpoint_addr_key',
    doc: 'Key of the `endpoint_addrs` hash (value: __u32 ifindex of the host-side device): finds the endpoint of a packet by its destination where skb->ifindex is not the host side (netkit primary).',
    fields: [
      { name: 'family', type: 'u8', doc: 'FAMILY_IPV4 / FAMILY_IPV6' },
      { name: 'pad0', type: 'u8', count: 3 },
      { name: 'addr', type: 'u8', count: 16, doc: 'IPv4 uses the first 4 bytes, the rest zero' },
    ],
  },
  {
    name: 'ipcache_key',
    doc: 'Key of the `ipcache` LPM trie. prefixlen counts bits after itself: 32 (family+pad) + IP prefix. Also the key of the `ipcache_exact` hash, which holds the host entries (IPCACHE_PREFIX_V4_HOST / IPCACHE_PREFIX_V6_HOST) of the trie byte for byte.',
    fields: [
      { name: 'prefixlen', type: 'u32' },
      { name: 'family', type: 'u8', doc: 'FAMILY_IPV4 / FAMILY_IPV6' },
      { name: 'pad0', type: 'u8', count: 3 },
      { name: 'addr', type: 'u8', count: 16, doc: 'IPv4 uses the first 4 bytes' },
    ],
  },
  {
    name: 'ipcache_value',
    doc: 'Value of the `ipcache` LPM trie and the `ipcache_exact` hash.',
    fields: [
      { name: 'identity', type: 'u32' },
      { name: 'host_id', type: 'u32', doc: '0 = local host, otherwise the remote host carrying the address' },
    ],
  },
  {
    name: 'ct_key',
    doc: 'Key of the `conntrack` LRU hash: one connection as seen from one endpoint, the same for both directions (local = the endpoint\'s side: source of packets from the workload, destination of packets towards it), so a packet needs one lookup whichever way it goes.',
    fields: [
      { name: 'laddr', type: 'u8', count: 16, doc: 'local (endpoint side) address' },
      { name: 'raddr', type: 'u8', count: 16, doc: 'remote address' },
      { name: 'lport', type: 'u16', doc: 'host byte order; ICMP echo: identifier on the requester\'s side, 0 on the other' },
      { name: 'rport', type: 'u16', doc: 'host byte order' },
      { name: 'protocol', type: 'u8' },
      { name: 'family', type: 'u8' },
      { name: 'v1_direction', type: 'u8', doc: '0. Keys of the previous layout (saddr, daddr, sport, dport of the creating packet) had its DIR_* here; such entries, left by an older datapath, are only looked up for replies and age out' },
      { name: 'pad0', type: 'u8' },
    ],
  },
  {
    name: 'ct_entry',
    doc: 'Value of the `conntrack` LRU hash. Updated without atomics: counters are statistics, races are benign.',
    fields: [
      { name: 'last_seen_ns', type: 'u64', doc: 'bpf_ktime_get_coarse_ns() of the last packet (CLOCK_MONOTONIC, tick resolution)' },
      { name: 'last_report_ns', type: 'u64', doc: 'when an event was last emitted for this entry (same clock)' },
      {
        name: 'packets',
        type: 'u32',
        doc: 'statistics, wraps; the low half of the u64 counter of earlier layouts (old entries read on, see policy_revision)',
      },
      {
        name: 'policy_revision',
        type: 'u32',
        doc: 'dp_config.policy_revision the connection was last allowed at: packets in the original direction are checked by policy again when it differs. The high half of the u64 packet counter of earlier layouts: 0 there, so entries left by an older datapath are checked again once (the agent never publishes revision 0 after loading)',
      },
      { name: 'bytes', type: 'u64' },
      { name: 'tx_flags_seen', type: 'u8', doc: 'TCP flags seen in the original direction' },
      { name: 'rx_flags_seen', type: 'u8', doc: 'TCP flags seen in the reply direction' },
      { name: 'flags', type: 'u16', doc: 'CT_F_* bits' },
      { name: 'direction', type: 'u8', doc: 'DIR_* of the packet that created the entry (its original direction); 0 in entries of the previous layout' },
      { name: 'pad0', type: 'u8', count: 3 },
    ],
  },
  {
    name: 'flow_event',
    doc: 'One record in the `events` ring buffer. Ports in host byte order, addresses in network byte order.',
    fields: [
      { name: 'time_ns', type: 'u64', doc: 'bpf_ktime_get_ns() (CLOCK_MONOTONIC); userspace adds the wall-clock offset' },
      { name: 'ifindex', type: 'u32' },
      { name: 'endpoint_id', type: 'u32' },
      { name: 'src_identity', type: 'u32' },
      { name: 'dst_identity', type: 'u32' },
      { name: 'length', type: 'u32', doc: 'skb->len' },
      { name: 'saddr', type: 'u8', count: 16 },
      { name: 'daddr', type: 'u8', count: 16 },
      { name: 'sport', type: 'u16' },
      { name: 'dport', type: 'u16' },
      { name: 'drop_reason', type: 'u16', doc: 'Hubble DropReason, 0 when forwarded' },
      { name: 'direction', type: 'u8', doc: 'DIR_INGRESS (to the workload) / DIR_EGRESS (from it)' },
      { name: 'family', type: 'u8' },
      { name: 'protocol', type: 'u8' },
      { name: 'icmp_type', type: 'u8' },
      { name: 'icmp_code', type: 'u8' },
      { name: 'tcp_flags', type: 'u8' },
      { name: 'verdict', type: 'u8', doc: 'VERDICT_*' },
      { name: 'is_reply', type: 'u8' },
      { name: 'reason', type: 'u8', doc: 'REPORT_* — why this packet was reported (aggregation)' },
      { name: 'pad0', type: 'u8' },
      {
        name: 'ethertype',
        type: 'u16',
        doc: 'host byte order: 0x0800 / 0x86dd, or 0x0806 for ARP (family 4, saddr = sender IP, daddr = target IP, protocol 0)',
      },
      { name: 'pad1', type: 'u8', count: 2 },
    ],
  },
  {
    name: 'frag_key',
    doc: 'Key of the `fragments` LRU hash: one fragmented IP datagram (RFC 791 / RFC 8200 identification).',
    fields: [
      { name: 'saddr', type: 'u8', count: 16 },
      { name: 'daddr', type: 'u8', count: 16 },
      { name: 'id', type: 'u32', doc: 'IPv4: 16-bit identification; IPv6: fragment header identification (host order)' },
      { name: 'protocol', type: 'u8' },
      { name: 'family', type: 'u8' },
      { name: 'pad0', type: 'u8', count: 2 },
    ],
  },
  {
    name: 'frag_value',
    doc: 'Value of the `fragments` LRU hash: the L4 fields of the first fragment, lent to the later ones (conntrack and policy need ports).',
    fields: [
      { name: 'sport', type: 'u16', doc: 'host byte order' },
      { name: 'dport', type: 'u16', doc: 'host byte order' },
      { name: 'icmp_id', type: 'u16' },
      { name: 'icmp_type', type: 'u8' },
      { name: 'pad0', type: 'u8' },
    ],
  },
  {
    name: 'policy_key',
    doc: 'Key of the `policy` LPM trie. prefixlen counts bits after itself: 72 (endpoint_id + identity + direction) are always matched, then protocol (8) and a destination port prefix (0..16). Also the key of the `policy_exact` hash, which holds the trie\'s POLICY_PREFIX_FULL entries byte for byte.',
    fields: [
      { name: 'prefixlen', type: 'u32', doc: 'POLICY_PREFIX_ANY_PROTO (72) / POLICY_PREFIX_PROTO (80) / 80 + port prefix bits; lookups: POLICY_PREFIX_FULL (96)' },
      { name: 'endpoint_id', type: 'u32', doc: 'host byte order' },
      { name: 'identity', type: 'u32', doc: 'remote identity, host byte order; 0 = any identity' },
      { name: 'direction', type: 'u8', doc: 'DIR_INGRESS (to the workload) / DIR_EGRESS (from it)' },
      { name: 'protocol', type: 'u8', doc: 'IPPROTO_*; 0 (with prefixlen 72) = any protocol' },
      { name: 'port', type: 'u16', doc: 'NETWORK byte order (prefix bits are the high bits): destination port; ICMP/ICMPv6: the type' },
    ],
  },
  {
    name: 'policy_value',
    doc: 'Value of the `policy` LPM trie and the `policy_exact` hash.',
    fields: [
      { name: 'flags', type: 'u8', doc: 'POLICY_F_* bits' },
      { name: 'pad0', type: 'u8', count: 3 },
      { name: 'cookie', type: 'u32', doc: 'opaque to the datapath (0 = none)' },
    ],
  },
  {
    name: 'metrics_value',
    doc: 'Value of the per-CPU `metrics` array; userspace sums the CPUs.',
    fields: [
      { name: 'packets', type: 'u64' },
      { name: 'bytes', type: 'u64' },
    ],
  },
  {
    name: 'dp_config',
    doc: 'Value of the `config` array (single entry, key 0). Until CFG_F_SET is set the datapath uses defaults.',
    fields: [
      { name: 'monitor_aggregation', type: 'u32', doc: 'MONITOR_AGG_NONE (every packet) / MONITOR_AGG_DEFAULT' },
      { name: 'report_interval_s', type: 'u32', doc: 'aggregated mode: re-report a flow at most this often; 0 = only on changes' },
      { name: 'flags', type: 'u32', doc: 'CFG_F_* bits' },
      {
        name: 'policy_revision',
        type: 'u32',
        doc: 'bumped by the agent after every write to the policy maps, the ipcache or the endpoints (never 0 once an agent loaded the object): a conntrack entry allowed at another revision is checked by policy again (conntrack.h)',
      },
      {
        name: 'drop_events_rate',
        type: 'u32',
        doc: 'drop events each endpoint may report per second in each direction (events.h, drop_event_admit); 0 = DROP_EVENTS_RATE_DEFAULT (an entry of the 16-byte layout grows with zeroes), DROP_EVENTS_UNLIMITED = every drop',
      },
      { name: 'drop_events_burst', type: 'u32', doc: 'drop events an endpoint may report at once beyond the rate, in each direction; 0 = DROP_EVENTS_BURST_DEFAULT' },
    ],
  },
  {
    name: 'drop_limit',
    doc: 'Value of the `drop_limit` hash (key: __u32 endpoint_id): the endpoint\'s drop event budgets, one per direction (GCRA: one word each, advanced with compare-and-swap by the CPU that reports), and the drop events over each it did not report. Drops of packets to the workload and of what it sent are charged apart: a flood at its denied ingress does not hide its own denied egress. An entry of an earlier object is 16 bytes: one budget for both directions, at ingress_tat_ns, and its count, at ingress_suppressed; the agent reads the fields it lacks as 0.',
    fields: [
      {
        name: 'ingress_tat_ns',
        type: 'u64',
        doc: 'budget of drops of packets to the workload (DIR_INGRESS): bpf_ktime_get_ns() at which it is whole again (theoretical arrival time); a drop is reported while it is at most (burst - 1) / rate seconds ahead of now',
      },
      { name: 'ingress_suppressed', type: 'u64', doc: 'dropped packets to the workload reported by no event (over the ingress budget); atomic add' },
      { name: 'egress_tat_ns', type: 'u64', doc: 'budget of drops of packets the workload sent (DIR_EGRESS), as ingress_tat_ns' },
      { name: 'egress_suppressed', type: 'u64', doc: 'dropped packets the workload sent reported by no event (over the egress budget); atomic add' },
    ],
  },
  ...DNS_STRUCTS,
];
