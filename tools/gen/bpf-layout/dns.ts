import type { ConstGroup } from './constants.js';
import type { StructSpec } from './structs.js';

// DNS steering (issue #17): a selected workload's DNS (UDP/TCP port 53, any resolver) is rewritten to
// the agent's DNS proxy, the original destination kept under (workload address, source port,
// protocol); the proxy's replies get that destination back as their source (bpf/include/dns.h,
// agent/dns/steering.ts). Appended after the other structs and constants.

export const DNS_STRUCTS: StructSpec[] = [
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
];

export const DNS_CONSTANTS: ConstGroup[] = [
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
];
