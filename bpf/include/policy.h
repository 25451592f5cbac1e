/* Policy verdict for a packet that conntrack does not already let through (a new connection, or traffic
 * that is not tracked). The agent's compiler writes per-endpoint entries into the `policy` LPM trie;
 * the datapath does two lookups, whatever the number of rules and identities (and a third on the
 * default-deny path for a workload remote: policy_check_ipblock, below):
 *   a = (endpoint, remote identity, direction, protocol, port)   b = the same with identity 0 (any)
 *   either is a deny entry -> DROP_POLICY_DENY; either exists -> allow; neither -> DROP_POLICY_DENIED.
 * A direction the endpoint is not enforced in carries an allow-all entry (identity 0, prefix 72); an
 * endpoint without any entry drops everything.
 * Each of a and b is asked of the `policy_exact` hash first (the trie's POLICY_PREFIX_FULL entries, see
 * maps.h) and of the trie only on a miss. A hit is the entry the trie's longest match would return (no
 * prefix is longer than the full key), so a and b, and with them deny precedence, are what the trie
 * alone gives: an exact deny found in the hash for a still beats an allow found in the trie for b, and
 * the other way round. On a hash miss the trie can only hold a shorter entry of the same (endpoint,
 * identity, direction); once the loader has filled the hashes (CFG_F_EXACT_COMPLETE) the trie is only
 * walked where `policy_wild` says such entries exist, so the identity-0 lookup, which usually matches
 * nothing, costs a hash miss instead of a walk down a trie that grows with the policy. */
#pragma once

#include "maps.h"
#include "parse.h"
#include "ipcache.h"

/* returned by nd_judge instead of a drop reason: neighbour discovery that skips policy */
#define ND_BYPASS 1

/* The ND multicast groups (a: 4-byte aligned): all-nodes ff02::1, all-routers ff02::2, solicited-node
 * ff02::1:ff00:0/104. */
static __always_inline int ip6_is_nd_group(const __u32 *a)
{
	if (a[0] != bpf_htonl(0xff020000) || a[1] != 0)
		return 0;
	if (a[2] == 0)
		return a[3] == bpf_htonl(1) || a[3] == bpf_htonl(2);
	return a[2] == bpf_htonl(1) && (a[3] & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000);
}

/* The source of an RA, NS or NA towards a workload (hop limit 255 checked) that only the host can be: a
 * link-local address or :: (DAD), which the kernel never forwards, or for a solicitation / advertisement
 * an address of this host (ipcache). */
static __always_inline int nd_sender_is_host(const struct pkt *p)
{
	if (ip6_is_link_local(p->saddr) || (p->icmp_type == ICMPV6_NS_ && is_zero(p->saddr, 16)))
		return 1;
	return p->icmp_type != ICMPV6_RA_ && ipcache_identity(p->saddr, FAMILY_IPV6) == IDENTITY_HOST;
}

/* Router / neighbour discovery (ICMPv6 133-137, RFC 4861) skips policy only as far as ND needs it, and
 * only where the kernel never forwards it, so that no ND message carries anything past policy to a third
 * party. The message must be unfragmented (RFC 6980), code 0 and hop limit 255 (what RFC 4861 receivers demand: a
 * forwarded packet never has it), and
 *  - from the workload: a router solicitation or a neighbour solicitation / advertisement to a
 *    link-local address or an ND group (link scope: never forwarded); a solicitation / advertisement
 *    also to an address of this host (ipcache: host), which the host delivers to itself (it solicits
 *    from an address the device carries, when it has one). A router advertisement or a redirect is a
 *    router's message, never a workload's: dropped wherever it goes (FORBIDDEN_ICMPV6_MESSAGE, as
 *    upstream's host firewall does with RFC 4890's list);
 *  - towards the workload: a router advertisement or a neighbour solicitation / advertisement from a
 *    link-local address (or ::, duplicate address detection), which the kernel never forwards, so only
 *    the host sends it (its neighbour discovery, the agent's router advertisements, the gateway answers
 *    of neigh.h), to the workload's address (unicast NUD probes), a link-local address or an ND group;
 *    a solicitation / advertisement also from an address of this host.
 * Anything else of these types is ICMPv6 like any other: policy decides, and it is reported.
 * Returns ND_BYPASS, 0 (policy decides) or a drop reason. */
static __always_inline __u16 nd_judge(const struct endpoint_info *ep, const struct pkt *p, __u8 dir)
{
	__u8 t = p->icmp_type;

	if (p->protocol != IPPROTO_ICMPV6_ || !p->has_l4 || t < ICMPV6_RS_ || t > ICMPV6_REDIRECT_)
		return 0;
	if (dir == DIR_EGRESS && (t == ICMPV6_RA_ || t == ICMPV6_REDIRECT_))
		return DROP_FORBIDDEN_ICMPV6_MESSAGE;
	if (p->is_frag || p->icmp_code != 0 || p->hop_limit != 255)
		return 0;
	if (dir == DIR_EGRESS) {
		if (ip6_is_link_local(p->daddr) || ip6_is_nd_group((const __u32 *)p->daddr))
			return ND_BYPASS;
		return (t == ICMPV6_NS_ || t == ICMPV6_NA_) && ipcache_identity(p->daddr, FAMILY_IPV6) == IDENTITY_HOST ? ND_BYPASS : 0;
	}
	if (t == ICMPV6_RS_ || t == ICMPV6_REDIRECT_)
		return 0;
	if (!ip6_is_link_local(p->daddr) && !ip6_is_nd_group((const __u32 *)p->daddr) && !bytes_eq(p->daddr, ep->ipv6, 16))
		return 0;
	return nd_sender_is_host(p) ? ND_BYPASS : 0;
}

/* The trie's longest match for k: from the hash when k is a full key there; else, unless `policy_wild`
 * (trusted when `complete`) says the trie has nothing shorter for k's triple, from the trie. */
static __always_inline struct policy_value *policy_lookup(const struct policy_key *k, int complete)
{
	struct policy_value *v;
	struct policy_key w;

	if (k->prefixlen != POLICY_PREFIX_FULL)
		return bpf_map_lookup_elem(&policy, k);
	v = bpf_map_lookup_elem(&policy_exact, k);
	if (v)
		return v;
	if (complete) {
		w = *k;
		w.prefixlen = POLICY_PREFIX_ANY_PROTO;
		w.protocol = 0;
		w.port = 0;
		if (!bpf_map_lookup_elem(&policy_wild, &w))
			return NULL;
	}
	return bpf_map_lookup_elem(&policy, k);
}

/* The full-length lookup key of a packet. */
static __always_inline void policy_key_init(struct policy_key *k, __u32 endpoint_id, __u32 remote_identity, __u8 dir, const struct pkt *p)
{
	__u16 port = 0;

	__builtin_memset(k, 0, sizeof(*k));
	k->prefixlen = POLICY_PREFIX_FULL;
	k->endpoint_id = endpoint_id;
	k->identity = remote_identity;
	k->direction = dir;
	k->protocol = p->protocol;
	switch (p->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		port = p->dport;
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		port = p->icmp_type;
		break;
	}
	/* No L4 header (a later fragment; a protocol without ports): only entries that allow every port of
	 * the protocol (or any protocol) can match. */
	if (!p->has_l4)
		k->prefixlen = POLICY_PREFIX_PROTO;
	k->port = bpf_htons(port);
}

/* Returns 0 (allowed) or the drop reason. */
static __always_inline __u16 policy_check(__u32 endpoint_id, __u32 remote_identity, __u8 dir, const struct pkt *p, int complete)
{
	struct policy_value *a, *b;
	struct policy_key k;

	policy_key_init(&k, endpoint_id, remote_identity, dir, p);
	a = policy_lookup(&k, complete);
	k.identity = 0;
	b = policy_lookup(&k, complete);
	if ((a && (a->flags & POLICY_F_DENY)) || (b && (b->flags & POLICY_F_DENY)))
		return DROP_POLICY_DENY;
	if (a || b)
		return 0;
	return DROP_POLICY_DENIED;
}

/* A Kubernetes NetworkPolicy ipBlock selects workload addresses, per address (a dual-stack workload's
 * IPv4 address may be covered and its IPv6 address not), while the entries above are keyed by identity,
 * which stands for every address of every workload with the same labels. So when a packet whose remote
 * is a workload (a label-derived identity) found no entry at all (DROP_POLICY_DENIED), the remote
 * address is asked once more, as the ipBlock view of the ipcache sees it (ipblock_identity: the identity
 * of its longest covering ipBlock prefix); the compiler writes entries for those identities only for
 * NetworkPolicy ipBlocks, never for CiliumNetworkPolicy CIDR rules (which do not select workloads).
 * A deny entry for the workload identity or for identity 0 was already found above and wins; only the
 * identity lookup is repeated (identity 0 missed already). Established connections never get here, and
 * allowed packets never pay for it: only the default-deny path does, one trie lookup more (plus a hash
 * lookup when an ipBlock covers the address). Returns 0 or the drop reason. */
static __always_inline __u16 policy_check_ipblock(__u32 endpoint_id, __u32 remote_identity, const __u8 *remote_addr,
						   __u8 dir, const struct pkt *p, int complete)
{
	struct policy_value *a;
	struct policy_key k;
	__u32 block;

	if (remote_identity < IDENTITY_RANGE_LABEL_FIRST || remote_identity >= IDENTITY_RANGE_LOCAL_FLAG)
		return DROP_POLICY_DENIED;
	block = ipblock_identity(remote_addr, p->family);
	if (!block)
		return DROP_POLICY_DENIED;
	policy_key_init(&k, endpoint_id, block, dir, p);
	a = policy_lookup(&k, complete);
	if (!a)
		return DROP_POLICY_DENIED;
	return (a->flags & POLICY_F_DENY) ? DROP_POLICY_DENY : 0;
}

/* A packet towards a netkit workload whose destination is none of the endpoint addresses
 * (endpoint_addrs): the workload's link-local address, a multicast group, a broadcast, any other address
 * the host routes through the device. It has no endpoint, so no policy can judge it (the peer's ifindex,
 * all that skb->ifindex offers there, belongs to the workload's namespace and can be another's too), and
 * the host would reach every service of a default-deny workload through fe80::...%dev. So only what the
 * link itself needs passes, exactly as the host sends it, each with a source no router forwards
 * (link-local, ::, the host's own) or a destination none does (limited broadcast, link-local):
 *  - router / neighbour discovery as nd_judge passes it towards a workload, to a link-local address or an
 *    ND group: the host's own ND, the gateway responder's advertisements (neigh.h) and the agent's
 *    router advertisements (agent/addressing/ra.ts: fe80::1 -> ff02::1, through a packet socket);
 *  - the host's MLD (hop limit 1, from a link-local address or ::, to a multicast group);
 *  - the agent's DHCP answers through its packet sockets (agent/addressing/dhcp4-server.ts): DHCPv4
 *    67 -> 68 from the gateway to 255.255.255.255 (offers, NAKs, ACKs to a guest without an address;
 *    an ACK to the guest's address has its endpoint, and policy judges it), DHCPv6 547 -> 546 from
 *    fe80::1 to a link-local address (the client's; one to its global address has its endpoint).
 * Unfragmented only. Returns 1 to pass, 0 to drop. */
static __always_inline int link_to_workload(const struct pkt *p)
{
	const __u8 gateway6[16] = GATEWAY_IPV6_INIT;
	const __u8 gateway4[4] = GATEWAY_IPV4_INIT;
	const __u8 bcast4[4] = { 0xff, 0xff, 0xff, 0xff };
	__u8 t = p->icmp_type;

	if (!p->has_l4 || p->is_frag)
		return 0;
	if (p->protocol == IPPROTO_UDP) {
		if (p->family == FAMILY_IPV4)
			return p->sport == 67 && p->dport == 68 && bytes_eq(p->saddr, gateway4, 4) &&
			       bytes_eq(p->daddr, bcast4, 4);
		return p->sport == 547 && p->dport == 546 && bytes_eq(p->saddr, gateway6, 16) &&
		       ip6_is_link_local(p->daddr);
	}
	if (p->family != FAMILY_IPV6 || p->protocol != IPPROTO_ICMPV6_ || p->icmp_code != 0)
		return 0;
	if (t == ICMPV6_RA_ || t == ICMPV6_NS_ || t == ICMPV6_NA_)
		return p->hop_limit == 255 && (ip6_is_link_local(p->daddr) || ip6_is_nd_group((const __u32 *)p->daddr)) &&
		       nd_sender_is_host(p);
	if (t == ICMPV6_MLD_QUERY_ || t == ICMPV6_MLD_REPORT_ || t == ICMPV6_MLD_DONE_ || t == ICMPV6_MLD2_REPORT_)
		return p->hop_limit == 1 && p->daddr[0] == 0xff && (ip6_is_link_local(p->saddr) || is_zero(p->saddr, 16));
	return 0;
}
