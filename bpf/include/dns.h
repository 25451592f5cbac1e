/* DNS steering (issue #17): the DNS of a selected workload goes to the agent's DNS proxy, whatever
 * resolver it addresses, so no lookup bypasses the proxy's rules and learning.
 *
 * From the workload: a UDP or TCP packet to port 53 of an endpoint listed in `dns_endpoints` gets the
 * proxy's address and port (`dns_proxy`) as destination; the destination it had is kept in
 * `dns_redirect` under (workload address, source port, protocol), where the proxy reads it to forward
 * the query there. Towards the workload: a packet from the proxy's address and port gets that original
 * destination back as its source, so the answer comes from the resolver the workload asked; one the
 * host did not send itself is a spoof and dropped (packet_sent_by_host in parse.h).
 * Both skip conntrack and policy: the proxy judges the query (L3/L4 to the resolver, then the DNS
 * rules: agent/dns/verdict.ts) and reports it as an L7 flow. Fragmented DNS of a selected workload
 * (never sent by resolvers' clients for queries) is dropped rather than let past the proxy.
 *
 * Checksums: the address is in the L4 pseudo-header (BPF_F_PSEUDO_HDR: right for CHECKSUM_PARTIAL
 * packets of a local stack and for complete checksums alike), the port in the L4 header; a UDP/IPv4
 * checksum of 0 (none) stays 0 (BPF_F_MARK_MANGLED_0). */
#pragma once

#include "common.h"
#include "parse.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dns_proxy_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_proxy SEC(".maps");

/* endpoint_id -> 1: endpoints whose DNS is steered (the agent lists those whose egress policy has
 * toFQDNs or DNS rules). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DNS_ENDPOINTS_MAP_MAX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DNS_REDIRECT_MAP_MAX);
	__type(key, struct dns_redirect_key);
	__type(value, struct dns_redirect_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} dns_redirect SEC(".maps");

enum dns_steer_result {
	DNS_NOT_STEERED = 0,
	DNS_STEERED,
	DNS_STEER_DROP,
	DNS_SPOOFED, /* the proxy's source on a packet the host did not send */
};

static __always_inline int dns_csum_off(const struct pkt *p)
{
	return p->l4_off + (p->protocol == IPPROTO_TCP ? 16 : 6);
}

/* Rewrites one address (at addr_off) and one port (at port_off) of the packet, with the checksums. */
static __always_inline int dns_rewrite(struct __sk_buff *skb, const struct pkt *p, __u32 l3_off, __u32 addr_off, const __u8 *from,
				       const __u8 *to, __u32 port_off, __u16 from_port, __u16 to_port)
{
	__u64 mangled = p->protocol == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 csum = dns_csum_off(p);
	__be16 fp = bpf_htons(from_port), tp = bpf_htons(to_port);

	if (p->family == FAMILY_IPV4) {
		__be32 f, t;

		__builtin_memcpy(&f, from, 4);
		__builtin_memcpy(&t, to, 4);
		if (bpf_l4_csum_replace(skb, csum, f, t, BPF_F_PSEUDO_HDR | mangled | 4) < 0 ||
		    bpf_l3_csum_replace(skb, l3_off + 10, f, t, 4) < 0 || bpf_skb_store_bytes(skb, addr_off, &t, 4, 0) < 0)
			return -1;
	} else {
		__u32 f[4], t[4];
		__s64 diff;

		__builtin_memcpy(f, from, 16);
		__builtin_memcpy(t, to, 16);
		diff = bpf_csum_diff(f, 16, t, 16, 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, csum, 0, diff, BPF_F_PSEUDO_HDR | mangled) < 0 ||
		    bpf_skb_store_bytes(skb, addr_off, t, 16, 0) < 0)
			return -1;
	}
	if (bpf_l4_csum_replace(skb, csum, fp, tp, mangled | 2) < 0 || bpf_skb_store_bytes(skb, port_off, &tp, 2, 0) < 0)
		return -1;
	return 0;
}

static __always_inline struct dns_proxy_config *dns_proxy_get(void)
{
	__u32 zero = 0;
	struct dns_proxy_config *cfg = bpf_map_lookup_elem(&dns_proxy, &zero);

	return cfg && cfg->port && (cfg->flags & DNS_PROXY_F_SET) ? cfg : NULL;
}

static __always_inline int dns_is_l4(const struct pkt *p)
{
	return p->protocol == IPPROTO_UDP || p->protocol == IPPROTO_TCP;
}

/* A packet from the workload: to the proxy when it is DNS of a selected endpoint. */
static __always_inline int dns_steer(struct __sk_buff *skb, __u32 endpoint_id, const struct pkt *p, __u32 l3_off)
{
	struct dns_redirect_key k;
	struct dns_redirect_value v;
	struct dns_proxy_config *cfg;
	const __u8 *to;
	__u32 daddr_off = l3_off + (p->family == FAMILY_IPV4 ? 16 : 24);

	if (p->dport != DNS_PORT || !dns_is_l4(p) || !bpf_map_lookup_elem(&dns_endpoints, &endpoint_id))
		return DNS_NOT_STEERED;
	cfg = dns_proxy_get();
	if (!cfg || p->is_frag || !p->has_l4)
		return cfg ? DNS_STEER_DROP : DNS_NOT_STEERED;
	to = p->family == FAMILY_IPV4 ? cfg->ipv4 : cfg->ipv6;
	if (is_zero(to, p->family == FAMILY_IPV4 ? 4 : 16))
		return DNS_STEER_DROP; /* no proxy address for this family: never past the proxy */
	/* from an IPv6 link-local or :: source (check_source lets them reach the link only): no resolver
	 * there, and every such address would be another key in the shared dns_redirect */
	if (p->family == FAMILY_IPV6 && (ip6_is_link_local(p->saddr) || is_zero(p->saddr, 16)))
		return DNS_STEER_DROP;
	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memset(&v, 0, sizeof(v));
	__builtin_memcpy(k.addr, p->saddr, 16);
	k.port = p->sport;
	k.protocol = p->protocol;
	k.family = p->family;
	__builtin_memcpy(v.addr, p->daddr, 16);
	v.port = p->dport;
	if (bpf_map_update_elem(&dns_redirect, &k, &v, BPF_ANY) < 0)
		return DNS_STEER_DROP;
	if (dns_rewrite(skb, p, l3_off, daddr_off, p->daddr, to, p->l4_off + 2, p->dport, cfg->port) < 0)
		return DNS_STEER_DROP;
	return DNS_STEERED;
}

/* A packet towards the workload: from the proxy, it gets the original resolver back as its source;
 * one with the proxy's address and port that the host did not send is a spoof (DNS_SPOOFED). */
static __always_inline int dns_unsteer(struct __sk_buff *skb, const struct pkt *p, __u32 l3_off)
{
	struct dns_redirect_key k;
	struct dns_redirect_value *v;
	struct dns_proxy_config *cfg;
	__u8 orig[16];

	if (!dns_is_l4(p) || !p->has_l4 || p->is_frag)
		return DNS_NOT_STEERED;
	cfg = dns_proxy_get();
	if (!cfg || p->sport != cfg->port)
		return DNS_NOT_STEERED;
	if (!bytes_eq(p->saddr, p->family == FAMILY_IPV4 ? cfg->ipv4 : cfg->ipv6, p->family == FAMILY_IPV4 ? 4 : 16))
		return DNS_NOT_STEERED;
	if (p->forwarded)
		return DNS_SPOOFED;
	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memcpy(k.addr, p->daddr, 16);
	k.port = p->dport;
	k.protocol = p->protocol;
	k.family = p->family;
	v = bpf_map_lookup_elem(&dns_redirect, &k);
	if (!v)
		return DNS_NOT_STEERED; /* not an answer to a steered query: policy judges it as from the host */
	__builtin_memcpy(orig, v->addr, 16);
	if (dns_rewrite(skb, p, l3_off, l3_off + (p->family == FAMILY_IPV4 ? 12 : 8), p->saddr, orig, p->l4_off, p->sport, v->port) < 0)
		return DNS_STEER_DROP;
	return DNS_STEERED;
}
