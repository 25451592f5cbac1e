// Generator: the ONE description of everything the BPF C code and the TypeScript loader must agree on —
// map structs, map sizes, directions, verdicts, drop reasons, metric slots and the few kernel UAPI
// constants the Debian 12 headers are too old to carry. It emits:
//   bpf/include/shared.gen.h  C structs with explicit padding, _Static_assert on every size and offset,
//                             #defines for all constants
//   bpf/layout.gen.ts         the same structs as offset tables, plus the constants and drop-reason table
// Usage: node dist/tools/gen/bpf-layout.js [--check]   (bpf/build.sh runs it when this file changed)
// Tests: test/unit/bpf-layout.test.ts re-runs it in memory (freshness) and compares it with the BTF of the
// compiled object (Cilium's alignchecker idea), and checks the UAPI numbers against /sys/kernel/btf/vmlinux.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

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

const SIZE: Record<ScalarType, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

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
    ],
  },
];

export interface ConstGroup {
  doc: string;
  /** C #define prefix, e.g. DIR_ -> DIR_INGRESS. */
  prefix: string;
  values: Array<[name: string, value: number, doc?: string]>;
}

/**
 * Constants. The UAPI group mirrors linux/bpf.h of kernels newer than Debian 12's headers; its numbers are
 * ABI and test/unit/bpf-layout.test.ts checks them against the running kernel's BTF.
 */
export const CONSTANTS: ConstGroup[] = [
  {
    doc: 'Kernel UAPI (linux/bpf.h, >= 6.7) not present in the build host headers.',
    prefix: '',
    values: [
      ['BPF_TCX_INGRESS', 46],
      ['BPF_TCX_EGRESS', 47],
      ['BPF_NETKIT_PRIMARY', 54, 'primary xmit: traffic towards the workload'],
      ['BPF_NETKIT_PEER', 55, 'peer xmit: traffic from the workload'],
      ['BPF_LINK_TYPE_TCX', 11],
      ['BPF_LINK_TYPE_NETKIT', 13],
      ['TCX_NEXT', -1, 'continue with the next program (or the device default)'],
      ['TCX_PASS', 0],
      ['TCX_DROP', 2],
      ['TCX_REDIRECT', 7, 'TC_ACT_REDIRECT: bpf_redirect() decided where the packet goes'],
    ],
  },
  {
    doc: 'Hubble TrafficDirection: INGRESS = towards the workload, EGRESS = from it.',
    prefix: 'DIR_',
    values: [
      ['UNKNOWN', 0],
      ['INGRESS', 1],
      ['EGRESS', 2],
    ],
  },
  {
    doc: 'Hubble Verdict.',
    prefix: 'VERDICT_',
    values: [
      ['UNKNOWN', 0],
      ['FORWARDED', 1],
      ['DROPPED', 2],
    ],
  },
  {
    doc: 'Address family as stored in keys and events (not AF_*: 4 and 6 read better in dumps).',
    prefix: 'FAMILY_',
    values: [
      ['IPV4', 4],
      ['IPV6', 6],
    ],
  },
  {
    doc: 'Reserved identities (Cilium numbering). Unknown remote addresses are WORLD_IPV4 / WORLD_IPV6.',
    prefix: 'IDENTITY_',
    values: [
      ['UNKNOWN', 0],
      ['HOST', 1],
      ['WORLD', 2],
      ['UNMANAGED', 3],
      ['HEALTH', 4],
      ['INIT', 5],
      ['REMOTE_NODE', 6],
      ['KUBE_APISERVER', 7],
      ['INGRESS', 8],
      ['WORLD_IPV4', 9],
      ['WORLD_IPV6', 10],
    ],
  },
  {
    doc: 'endpoint_info.flags.',
    prefix: 'EP_F_',
    values: [
      ['ENFORCE_SRC_IP', 1 << 0, 'drop packets from the workload whose source IP is not its own (INVALID_SOURCE_IP)'],
      ['ENFORCE_SRC_MAC', 1 << 1, 'drop frames from the workload whose source MAC is not its own (INVALID_SOURCE_MAC)'],
      ['NO_L2', 1 << 2, 'device carries no Ethernet header: packets start at the IP header (L3 devices)'],
      ['DHCP_TO_HOST', 1 << 3, "DHCPv4 client broadcasts from 0.0.0.0 and the endpoint's MAC pass to the host side (its agent serves them) instead of INVALID_SOURCE_IP"],
    ],
  },
  {
    doc: 'policy_value.flags.',
    prefix: 'POLICY_F_',
    values: [['DENY', 1 << 0, 'deny entry: wins over any allow (DROP_POLICY_DENY)']],
  },
  {
    doc: 'policy_key.prefixlen: bits matched after the prefixlen member.',
    prefix: 'POLICY_PREFIX_',
    values: [
      ['ANY_PROTO', 72, 'endpoint_id + identity + direction: any protocol, any port'],
      ['PROTO', 80, 'one protocol, any port; 80 + n = port prefix of n bits'],
      ['FULL', 96, 'exact protocol and port: every lookup key; such entries are also in `policy_exact`'],
    ],
  },
  {
    doc: 'Identity ranges the datapath tells apart: label-derived identities (workloads, local and remote) lie in [IDENTITY_RANGE_LABEL_FIRST, IDENTITY_RANGE_LOCAL_FLAG); CIDR identities carry IDENTITY_RANGE_LOCAL_FLAG.',
    prefix: 'IDENTITY_RANGE_',
    values: [
      ['LABEL_FIRST', 256, 'the first label-derived identity (below: reserved)'],
      ['LOCAL_FLAG', 1 << 24, 'node-local (CIDR) identities'],
      ['IPBLOCK_FLAG', 1 << 25, 'with a CIDR identity (or world-ipv4/-ipv6 for a /0): a workload address as a Kubernetes NetworkPolicy ipBlock sees it (IPCACHE_FAMILY_IPBLOCK); never an ipcache answer'],
    ],
  },
  {
    doc: 'ipcache_key.family of the ipBlock view: the prefixes of Kubernetes NetworkPolicy ipBlocks (and their excepts, /0 included) with family | IPCACHE_FAMILY_IPBLOCK, so the ipcache lookups of addresses (family 4 / 6) never match them. A workload address looked up there yields the identity (IDENTITY_RANGE_IPBLOCK_FLAG) its longest covering ipBlock prefix has: the per-address match of an ipBlock on a workload (policy.h).',
    prefix: 'IPCACHE_FAMILY_',
    values: [['IPBLOCK', 0x80, 'flag on FAMILY_IPV4 / FAMILY_IPV6']],
  },
  {
    doc: 'ipcache_key.prefixlen: 32 bits of family + padding, then the address prefix.',
    prefix: 'IPCACHE_PREFIX_',
    values: [
      ['FAMILY', 32, 'family + padding: always matched, so IPv4 and IPv6 prefixes never match each other'],
      ['V4_HOST', 64, 'an IPv4 /32: every lookup key of an IPv4 address; such entries are also in `ipcache_exact`'],
      ['V6_HOST', 160, 'an IPv6 /128: every lookup key of an IPv6 address; such entries are also in `ipcache_exact`'],
    ],
  },
  {
    doc: 'ct_entry.flags.',
    prefix: 'CT_F_',
    values: [
      ['TX_CLOSING', 1 << 0, 'FIN seen in the original direction'],
      ['RX_CLOSING', 1 << 1, 'FIN seen in the reply direction'],
      ['RESET', 1 << 2, 'RST seen'],
      ['SEEN_REPLY', 1 << 3, 'at least one reply packet'],
    ],
  },
  {
    doc: 'flow_event.reason: why a packet was reported.',
    prefix: 'REPORT_',
    values: [
      ['EVERY', 0, 'monitor_aggregation = none, or traffic that is not tracked'],
      ['NEW', 1, 'first packet of a connection'],
      ['FLAGS', 2, 'new TCP flags in this direction'],
      ['CLOSE', 3, 'FIN or RST'],
      ['INTERVAL', 4, 'periodic report of an established flow'],
      ['DROP', 5],
      ['FIRST_REPLY', 6, 'first packet in the reply direction'],
    ],
  },
  {
    doc: 'dp_config.monitor_aggregation.',
    prefix: 'MONITOR_AGG_',
    values: [
      ['NONE', 0, 'report every packet'],
      ['DEFAULT', 1, 'report new connections, TCP flag changes, closes and drops'],
    ],
  },
  {
    doc: 'dp_config.flags.',
    prefix: 'CFG_F_',
    values: [
      ['SET', 1 << 0, 'the agent wrote this entry; an all-zero (never written) entry means defaults'],
      [
        'EXACT_COMPLETE',
        1 << 1,
        'the loader filled `policy_exact` and `policy_wild` from the policy trie: a full-length policy lookup that misses the hash asks the trie only where `policy_wild` has its (endpoint, identity, direction); clear = always asks the trie on a miss',
      ],
    ],
  },
  {
    doc: 'Slots of the per-CPU `metrics` array. Traffic slot = (direction-1)*2 + (verdict-1).',
    prefix: 'METRIC_',
    values: [
      ['INGRESS_FORWARDED', 0],
      ['INGRESS_DROPPED', 1],
      ['EGRESS_FORWARDED', 2],
      ['EGRESS_DROPPED', 3],
      ['EVENTS_SENT', 4, 'packets = events written to the ring buffer'],
      ['EVENTS_LOST', 5, 'packets = ring buffer reservations that failed (lost events)'],
      ['NO_ENDPOINT', 6, 'packets on an attached device without an endpoints entry (passed)'],
      ['CT_NEW', 7, 'conntrack entries created'],
      ['CT_FULL', 8, 'conntrack inserts that failed'],
      ['NON_IP', 9, 'ARP frames passed (not reported); other frames that are not IP are dropped (UNSUPPORTED_L3_PROTOCOL)'],
      ['POLICY_DENIED', 10, 'packets dropped for want of an allow entry (DROP_POLICY_DENIED): new connections, and tracked ones checked again'],
      ['POLICY_DENY', 11, 'packets dropped by a deny entry (DROP_POLICY_DENY): new connections, and tracked ones checked again'],
      ['POLICY_BYPASS', 12, 'ARP / neighbour discovery and related ICMP errors that skipped the policy lookup'],
      ['FRAG_UNKNOWN', 13, 'later fragments whose first fragment was not seen (policy sees no ports)'],
      ['NEIGH_REPLIES', 14, 'ARP replies / neighbour advertisements the gateway responder sent to workloads'],
    ],
  },
  {
    doc: 'Map sizes (max_entries). Changing one makes libbpf refuse to reuse the pinned map: unpin first.',
    prefix: '',
    values: [
      ['ENDPOINTS_MAP_MAX', 4096],
      ['ENDPOINT_ADDRS_MAP_MAX', 8192, 'an IPv4 and an IPv6 address per endpoint'],
      ['IPCACHE_MAP_MAX', 65536],
      ['IPCACHE_EXACT_MAP_MAX', 65536, 'the host entries of `ipcache` (a subset of it: never fuller than the trie)'],
      ['CONNTRACK_MAP_MAX', 262144],
      ['POLICY_MAP_MAX', 1 << 20, 'entries over all endpoints; BPF_F_NO_PREALLOC: memory follows use'],
      ['POLICY_EXACT_MAP_MAX', 1 << 20, 'the POLICY_PREFIX_FULL entries of `policy` (a subset of it: never fuller than the trie)'],
      ['POLICY_WILD_MAP_MAX', 1 << 20, '(endpoint, identity, direction) with entries shorter than POLICY_PREFIX_FULL in `policy`: never more than the trie has entries'],
      ['FRAGMENTS_MAP_MAX', 8192, 'datagrams in flight whose later fragments still come'],
      ['EVENTS_RINGBUF_BYTES', 8 * 1024 * 1024],
      ['METRICS_MAP_MAX', 16],
      ['CONFIG_MAP_MAX', 1],
    ],
  },
  {
    doc: 'Conntrack lifetimes (seconds) after the last packet; an expired entry counts as a new connection.',
    prefix: 'CT_LIFETIME_',
    values: [
      ['TCP', 21600, 'TCP connection that saw a reply (Cilium: CT_CONNECTION_LIFETIME_TCP)'],
      ['TCP_SYN', 60, 'TCP connection without a reply yet (Cilium: CT_SYN_TIMEOUT)'],
      ['TCP_CLOSED', 10, 'after RST, or FIN both ways (Cilium: CT_CLOSE_TIMEOUT)'],
      ['NONTCP', 60, 'other protocols, with or without a reply (Cilium: CT_CONNECTION_LIFETIME_NONTCP)'],
    ],
  },
];

/**
 * Addresses shared by the datapath and the TypeScript side. C gets byte initialisers
 * (`#define GATEWAY_IPV4_INIT { 169, 254, 1, 1 }`) and TS the text (`export const GATEWAY_IPV4 = '169.254.1.1'`).
 */
export const ADDRESSES: Array<[name: string, text: string, doc: string]> = [
  ['GATEWAY_IPV4', '169.254.1.1', 'IPv4 default gateway of every workload; the datapath answers ARP for it (endpoint_info.host_mac)'],
  ['GATEWAY_IPV6', 'fe80::1', 'IPv6 default gateway of every workload; the datapath answers neighbour solicitations for it'],
];

// --- DNS steering (issue #17): self-contained, appended to the lists above. --------------------------
// A selected workload's DNS (UDP/TCP port 53, any resolver) is rewritten to the agent's DNS proxy, the
// original destination kept under (workload address, source port, protocol); the proxy's replies get
// that destination back as their source (bpf/include/dns.h, agent/dns/steering.ts).
STRUCTS.push(
  {
    name: 'dns_proxy_config',
    doc: 'Value of the `dns_proxy` array (key 0): where steered DNS goes. port 0 = no proxy (nothing is steered).',
    fields: [
      { name: 'port', type: 'u16', doc: 'host byte order; the proxy listens on UDP and TCP' },
      { name: 'flags', type: 'u16', doc: 'DNS_PROXY_F_* bits' },
      { name: 'ipv4', type: 'u8', count: 4, doc: 'proxy IPv4 address (network byte order); 0.0.0.0 = IPv4 DNS of selected workloads is dropped' },
      { name: 'ipv6', type: 'u8', count: 16, doc: 'proxy IPv6 address; :: = IPv6 DNS of selected workloads is dropped' },
    ],
  },
  {
    name: 'dns_redirect_key',
    doc: 'Key of the `dns_redirect` LRU hash: one steered DNS client socket.',
    fields: [
      { name: 'addr', type: 'u8', count: 16, doc: 'workload address (IPv4 in the first 4 bytes)' },
      { name: 'port', type: 'u16', doc: 'workload source port, host byte order' },
      { name: 'protocol', type: 'u8', doc: 'IPPROTO_UDP / IPPROTO_TCP' },
      { name: 'family', type: 'u8', doc: 'FAMILY_IPV4 / FAMILY_IPV6' },
    ],
  },
  {
    name: 'dns_redirect_value',
    doc: 'Value of the `dns_redirect` LRU hash: the destination the workload addressed (its resolver).',
    fields: [
      { name: 'addr', type: 'u8', count: 16, doc: 'original destination address' },
      { name: 'port', type: 'u16', doc: 'original destination port (53), host byte order' },
      { name: 'pad0', type: 'u8', count: 2 },
    ],
  },
);
CONSTANTS.push(
  {
    doc: 'dns_proxy_config.flags.',
    prefix: 'DNS_PROXY_F_',
    values: [['SET', 1 << 0, 'the agent wrote this entry']],
  },
  {
    doc: 'DNS steering map sizes.',
    prefix: '',
    values: [
      ['DNS_REDIRECT_MAP_MAX', 65536, 'steered DNS client sockets (LRU: the oldest go first)'],
      ['DNS_ENDPOINTS_MAP_MAX', 4096, 'endpoints whose DNS is steered (ENDPOINTS_MAP_MAX)'],
      ['DNS_PORT', 53],
    ],
  },
);

/** Bytes of a textual IPv4 or IPv6 address (the generator compiles alone, so no import from bpf/addr.ts). */
export function addressBytes(text: string): number[] {
  if (!text.includes(':')) {
    const parts = text.split('.').map(Number);
    if (parts.length !== 4 || parts.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) throw new Error(`bad IPv4 address ${text}`);
    return parts;
  }
  const halves = text.split('::');
  if (halves.length > 2) throw new Error(`bad IPv6 address ${text}`);
  const words = (h: string | undefined) => (h ? h.split(':').map((w) => parseInt(w, 16)) : []);
  const head = words(halves[0]);
  const tail = words(halves[1]);
  const fill = halves.length === 2 ? 8 - head.length - tail.length : 0;
  const all = [...head, ...Array<number>(fill).fill(0), ...tail];
  if (all.length !== 8 || all.some((w) => !Number.isInteger(w) || w < 0 || w > 0xffff)) throw new Error(`bad IPv6 address ${text}`);
  return all.flatMap((w) => [w >> 8, w & 0xff]);
}

/**
 * Hubble DropReason numbers (cilium api/v1/flow/flow.proto; descriptions from pkg/monitor/api/drop.go).
 * The numbers are ABI shared with Hubble consumers: never renumber, only add. Only the reasons kitnet can
 * produce are listed. Cilium's C names differ: UNSUPPORTED_L3_PROTOCOL is its DROP_UNKNOWN_L3 (EtherTypes
 * other than IPv4, IPv6 and ARP, VLAN-tagged frames), UNSUPPORTED_L2_PROTOCOL its DROP_UNSUPPORTED_L2.
 */
export const DROP_REASONS: Array<[name: string, value: number, desc: string]> = [
  ['INVALID_SOURCE_MAC', 130, 'Invalid source mac'],
  ['INVALID_DESTINATION_MAC', 131, 'Invalid destination mac'],
  ['INVALID_SOURCE_IP', 132, 'Invalid source ip'],
  ['POLICY_DENIED', 133, 'Policy denied'],
  ['INVALID_PACKET_DROPPED', 134, 'Invalid packet'],
  ['CT_TRUNCATED_OR_INVALID_HEADER', 135, 'CT: Truncated or invalid header'],
  ['CT_UNKNOWN_L4_PROTOCOL', 137, 'CT: Unknown L4 protocol'],
  ['UNSUPPORTED_L3_PROTOCOL', 139, 'Unsupported L3 protocol'],
  ['ERROR_WRITING_TO_PACKET', 141, 'Error writing to packet'],
  ['UNKNOWN_L4_PROTOCOL', 142, 'Unknown L4 protocol'],
  ['UNKNOWN_ICMPV4_TYPE', 144, 'Unknown ICMPv4 type'],
  ['UNKNOWN_ICMPV6_TYPE', 146, 'Unknown ICMPv6 type'],
  ['CT_MAP_INSERTION_FAILED', 155, 'CT: Map insertion failed'],
  ['INVALID_IPV6_EXTENSION_HEADER', 156, 'Invalid IPv6 extension header'],
  ['IP_FRAGMENTATION_NOT_SUPPORTED', 157, 'Fragmentation not supported'],
  ['NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION', 165, 'No configuration available to perform policy decision'],
  ['UNSUPPORTED_L2_PROTOCOL', 166, 'Unsupported L2 protocol'],
  ['INVALID_IDENTITY', 171, 'Invalid identity'],
  ['UNKNOWN_SENDER', 172, 'Unknown sender'],
  ['FORBIDDEN_ICMPV6_MESSAGE', 176, 'Forbidden ICMPv6 message'],
  ['POLICY_DENY', 181, 'Policy denial'],
  ['AUTH_REQUIRED', 189, 'Authentication required'],
  ['DROP_RATE_LIMITED', 198, 'Rate limited'],
  ['DROP_EP_NOT_READY', 203, 'Endpoint policy program not available'],
];

// ---------------------------------------------------------------------------------------------------
// Layout computation (C natural alignment, which is what clang does for BPF).
// ---------------------------------------------------------------------------------------------------

export interface FieldLayout extends FieldSpec {
  offset: number;
  size: number;
}
export interface StructLayout {
  name: string;
  size: number;
  align: number;
  fields: FieldLayout[];
}

export function structLayout(s: StructSpec): StructLayout {
  let off = 0;
  let align = 1;
  const fields: FieldLayout[] = [];
  for (const f of s.fields) {
    const a = SIZE[f.type];
    if (off % a !== 0) throw new Error(`${s.name}.${f.name}: offset ${off} not aligned to ${a}; add explicit padding`);
    const size = a * (f.count ?? 1);
    fields.push({ ...f, offset: off, size });
    off += size;
    align = Math.max(align, a);
  }
  if (off % align !== 0) throw new Error(`${s.name}: size ${off} leaves tail padding; add explicit padding`);
  return { name: s.name, size: off, align, fields };
}

// ---------------------------------------------------------------------------------------------------
// Emitters.
// ---------------------------------------------------------------------------------------------------

const HEADER_NOTE = 'Generated by tools/gen/bpf-layout.ts — do not edit. Regenerate: bash bpf/build.sh';

/** C macro of a drop reason: flow.proto's DROP_RATE_LIMITED stays DROP_RATE_LIMITED, POLICY_DENY becomes DROP_POLICY_DENY. */
export function dropMacro(name: string): string {
  return name.startsWith('DROP_') ? name : `DROP_${name}`;
}

function constName(g: ConstGroup, name: string): string {
  return g.prefix + name;
}

export function emitC(): string {
  const out: string[] = [];
  out.push(`/* ${HEADER_NOTE} */`, '#pragma once', '', '#include <linux/types.h>', '');
  for (const g of CONSTANTS) {
    out.push(`/* ${g.doc} */`);
    for (const [n, v, doc] of g.values) out.push(`#define ${constName(g, n)} ${v < 0 ? `(${v})` : v}${doc ? ` /* ${doc} */` : ''}`);
    out.push('');
  }
  out.push('/* Shared addresses (network byte order initialisers). */');
  for (const [n, text, doc] of ADDRESSES) {
    const b = addressBytes(text);
    out.push(`/* ${text}: ${doc} */`, `#define ${n}_INIT { ${b.join(', ')} }`);
    // the address as 32-bit words in host order (compare with bpf_ntohl() of a loaded word)
    for (let i = 0; i < b.length; i += 4) {
      const w = ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
      out.push(`#define ${n}_U32${b.length > 4 ? `_${i / 4}` : ''} 0x${w.toString(16).padStart(8, '0')}`);
    }
  }
  out.push('');
  out.push('/* Hubble DropReason (flow.proto). ABI: never renumber. */');
  for (const [n, v, d] of DROP_REASONS) out.push(`#define ${dropMacro(n)} ${v} /* ${d} */`);
  out.push('');
  for (const s of STRUCTS) {
    const l = structLayout(s);
    out.push(`/* ${s.doc} */`, `struct ${s.name} {`);
    for (const f of l.fields) {
      const decl = `__${f.type} ${f.name}${f.count ? `[${f.count}]` : ''};`;
      out.push(`\t${decl.padEnd(28)}/* @${f.offset}${f.doc ? ` ${f.doc}` : ''} */`);
    }
    out.push('};');
    out.push(`_Static_assert(sizeof(struct ${s.name}) == ${l.size}, "struct ${s.name} size");`);
    for (const f of l.fields) {
      out.push(`_Static_assert(__builtin_offsetof(struct ${s.name}, ${f.name}) == ${f.offset}, "${s.name}.${f.name} offset");`);
    }
    out.push('');
  }
  return out.join('\n');
}

export function emitTs(): string {
  const out: string[] = [];
  out.push(`// ${HEADER_NOTE}`, '// Offsets and sizes of the structs shared with bpf/include/shared.gen.h, and the shared constants.', '');
  out.push("export type ScalarType = 'u8' | 'u16' | 'u32' | 'u64';");
  out.push('export interface FieldLayout {\n  readonly offset: number;\n  readonly size: number;\n  readonly type: ScalarType;\n  /** Array length (u8 arrays); 0 for scalars. */\n  readonly count: number;\n}');
  out.push('export interface StructLayout {\n  readonly name: string;\n  readonly size: number;\n  readonly fields: Readonly<Record<string, FieldLayout>>;\n}', '');
  for (const s of STRUCTS) {
    const l = structLayout(s);
    out.push(`/** struct ${s.name}: ${s.doc} */`);
    out.push(`export const ${s.name.toUpperCase()} = {`, `  name: '${s.name}',`, `  size: ${l.size},`, '  fields: {');
    for (const f of l.fields) {
      out.push(`    ${f.name}: { offset: ${f.offset}, size: ${f.size}, type: '${f.type}', count: ${f.count ?? 0} },`);
    }
    out.push('  },', '} as const satisfies StructLayout;', '');
  }
  out.push('export const STRUCTS: readonly StructLayout[] = [' + STRUCTS.map((s) => s.name.toUpperCase()).join(', ') + '];', '');
  for (const g of CONSTANTS) {
    out.push(`/** ${g.doc} */`);
    for (const [n, v, doc] of g.values) {
      if (doc) out.push(`/** ${doc} */`);
      out.push(`export const ${constName(g, n)} = ${v};`);
    }
    out.push('');
  }
  for (const [n, text, doc] of ADDRESSES) out.push(`/** ${doc} */`, `export const ${n} = '${text}';`);
  out.push('');
  out.push('/** Hubble DropReason numbers (flow.proto). */');
  out.push('export const DROP_REASON = {');
  for (const [n, v] of DROP_REASONS) out.push(`  ${n}: ${v},`);
  out.push('} as const;', '');
  out.push('/** DropReason number -> [flow.proto name, description]. */');
  out.push('export const DROP_REASON_DESC: ReadonlyMap<number, readonly [string, string]> = new Map([');
  for (const [n, v, d] of DROP_REASONS) out.push(`  [${v}, ['${n}', '${d.replace(/'/g, "\\'")}']],`);
  out.push(']);', '');
  return out.join('\n');
}

export interface GeneratedFile {
  path: string;
  content: string;
}

/** Repo-relative outputs, computed in memory. */
export function generate(): GeneratedFile[] {
  return [
    { path: 'bpf/include/shared.gen.h', content: emitC() },
    { path: 'bpf/layout.gen.ts', content: emitTs() },
  ];
}

function repoRoot(): string {
  // Runs from the checkout (build.sh) or from its compiled location; find the checkout by its package.json.
  for (const start of [process.cwd(), dirname(fileURLToPath(import.meta.url))]) {
    let dir = start;
    for (let i = 0; i < 8; i++) {
      try {
        const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: string };
        if (pkg.name === 'kitnet') return dir;
      } catch {
        /* keep walking up */
      }
      dir = dirname(dir);
    }
  }
  throw new Error('cannot find the kitnet checkout (package.json) above ' + fileURLToPath(import.meta.url));
}

function main(argv: string[]): number {
  const root = repoRoot();
  const check = argv.includes('--check');
  let stale = 0;
  for (const f of generate()) {
    const p = join(root, f.path);
    let old = '';
    try {
      old = readFileSync(p, 'utf8');
    } catch {
      /* missing: write it */
    }
    if (old === f.content) continue;
    stale++;
    if (check) console.error(`${f.path} is stale`);
    else {
      writeFileSync(p, f.content);
      console.error(`wrote ${f.path}`);
    }
  }
  return check && stale ? 1 : 0;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) process.exit(main(process.argv.slice(2)));
