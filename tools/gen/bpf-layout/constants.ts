// The constants the BPF C code and the TypeScript loader share: kernel UAPI numbers, directions,
// verdicts, map sizes, metric slots. Part of the generator (../bpf-layout.ts).

import { DNS_CONSTANTS } from './dns.js';

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
      ['DHCP_TO_HOST', 1 << 3, "DHCPv4 client broadcasts from 0.0.0.0 and the endpoint's MAC pass to the host side (its agent serves them) instead of INVALID_SOURCE_IP; its DHCPv6 client messages to ff02::1:2 and DHCPv4 renewals / rebinding broadcasts from its own address pass without policy"],
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
      ['FLAGS', 2, 'a SYN not reported before in this direction (FIN and RST report as CLOSE)'],
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
      ['NO_ENDPOINT', 6, 'packets on an attached device without an endpoints entry: dropped (tcx, netkit peer); the netkit primary\'s packets to an address of no endpoint pass on (TCX_NEXT)'],
      ['CT_NEW', 7, 'conntrack entries created'],
      ['CT_FULL', 8, 'conntrack inserts that failed'],
      ['NON_IP', 9, 'ARP frames passed (not reported); other frames that are not IP are dropped (UNSUPPORTED_L3_PROTOCOL)'],
      ['POLICY_DENIED', 10, 'packets dropped for want of an allow entry (DROP_POLICY_DENIED): new connections, and tracked ones checked again'],
      ['POLICY_DENY', 11, 'packets dropped by a deny entry (DROP_POLICY_DENY): new connections, and tracked ones checked again'],
      ['POLICY_BYPASS', 12, 'ARP / neighbour discovery and related ICMP errors that skipped the policy lookup'],
      ['FRAG_UNKNOWN', 13, 'later fragments whose first fragment was not seen (policy sees no ports)'],
      ['NEIGH_REPLIES', 14, 'ARP replies / neighbour advertisements the gateway responder sent to workloads'],
      ['DROP_EVENTS_SUPPRESSED', 15, 'dropped packets not reported by an event: over their endpoint\'s drop event budget in their direction (per endpoint and direction in `drop_limit`)'],
    ],
  },
  {
    doc: 'Drop event budget of each endpoint, one per direction (dp_config.drop_events_rate / drop_events_burst, each; events.h). A drop beyond it is still dropped and counted, only not reported one by one: one workload flooding denied packets cannot fill the ring the flows of all share, and a flood at a workload\'s denied ingress does not hide what the workload itself tried and was denied. At the defaults a flooder costs ~100 KB/s of the 8 MiB ring and the agent ~1,000 decoded events/s, and a burst of denied connections (a port scan of the first few hundred ports, a policy change) is still seen packet by packet.',
    prefix: 'DROP_EVENTS_',
    values: [
      ['RATE_DEFAULT', 1000, 'events/s per endpoint and direction'],
      ['BURST_DEFAULT', 500, 'events at once per endpoint and direction'],
      ['UNLIMITED', 0xffffffff, 'dp_config.drop_events_rate: every drop reported (flows.dropEvents.perSecond 0)'],
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
      ['CONNTRACK_MAP_FLAGS', 0, 'map_flags of `conntrack`: one LRU list shared by the CPUs. BPF_F_NO_COMMON_LRU (2, a list per CPU) was measured and left out (bench/README, datapath: no gain for a new connection, +10-15 % with the reader draining between SYNs); with it, max_entries is split per CPU and a copy from user space lands in the calling CPU\'s list. A pinned map of other flags or size is migrated at load (bpf/maps/conntrack-migrate.ts)'],
      ['POLICY_MAP_MAX', 1 << 20, 'entries over all endpoints; BPF_F_NO_PREALLOC: memory follows use'],
      ['POLICY_EXACT_MAP_MAX', 1 << 20, 'the POLICY_PREFIX_FULL entries of `policy` (a subset of it: never fuller than the trie)'],
      ['POLICY_WILD_MAP_MAX', 1 << 20, '(endpoint, identity, direction) with entries shorter than POLICY_PREFIX_FULL in `policy`: never more than the trie has entries'],
      ['FRAGMENTS_MAP_MAX', 8192, 'datagrams in flight whose later fragments still come'],
      ['EVENTS_RINGBUF_BYTES', 8 * 1024 * 1024],
      ['METRICS_MAP_MAX', 16],
      ['CONFIG_MAP_MAX', 1],
      ['DROP_LIMIT_MAP_MAX', 8192, 'endpoints with a drop event budget: twice ENDPOINTS_MAP_MAX, so the LRU does not evict a live endpoint\'s entry (the agent deletes it with the endpoint)'],
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
  ...DNS_CONSTANTS,
];
