// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* kitnet datapath: one object, configured only through maps (no per-endpoint compile).
 *
 * Per packet: endpoint lookup (by ifindex, or by destination on the netkit primary) -> parse (only
 * IPv4, IPv6 and ARP pass; other EtherTypes and VLAN-tagged frames are dropped: neigh.h) ->
 * anti-spoofing (from the workload; ARP and neighbour discovery too, and the gateway's ARP / NS
 * responder: neigh.h) -> conntrack (replies pass; the original direction of a connection that saw a
 * reply passes while the policy revision it was allowed at is current: conntrack.h) -> ipcache identity
 * and policy (new connections, connections checked again, untracked packets; allowed connections are
 * then tracked) -> event (aggregated;
 * drops reported within each endpoint's drop event budget, events.h; the ipcache is only consulted for packets that need an identity) -> metrics
 * -> verdict.
 *
 * Return codes are tcx/netkit codes: TCX_NEXT for packets the netkit primary finds no endpoint for, so
 * other programs and the device default decide; TCX_PASS for forwarded packets; TCX_DROP for drops
 * (and for every packet on a device whose own endpoint entry is missing);
 * TCX_REDIRECT (bpf_redirect) for the responder's ARP replies and neighbour advertisements. */
#include "common.h"
#include "maps.h"
#include "metrics.h"
#include "parse.h"
#include "ipcache.h"
#include "clock.h"
#include "fragments.h"
#include "conntrack.h"
#include "policy.h"
#include "events.h"
#include "neigh.h"
#include "dns.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline struct dp_config *config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config, &zero);
}

/* Source checks for packets leaving the workload; returns a drop reason or 0. The workload's own
 * address, the common case, is checked first. An IPv6 link-local source, and the unspecified one (DAD,
 * router solicitations and DHCPv6 before an address), is allowed on the link only: to a link-local or a
 * link-scope multicast destination (neighbour discovery, DHCPv6 to ff02::1:2, MLD), and a link-local
 * one for neighbour solicitations / advertisements to a unicast neighbour. The kernel never forwards
 * such a packet off the link, so anything else is no traffic, only new conntrack and dns_redirect keys
 * in the maps all endpoints share. */
static __always_inline __u16 check_source(const struct endpoint_info *ep, const struct pkt *p, int has_l2)
{
	if ((ep->flags & EP_F_ENFORCE_SRC_MAC) && has_l2 && !is_zero(ep->mac, 6) && !bytes_eq(p->smac, ep->mac, 6))
		return DROP_INVALID_SOURCE_MAC;
	if (!(ep->flags & EP_F_ENFORCE_SRC_IP))
		return 0;
	if (p->family == FAMILY_IPV4)
		return bytes_eq(p->saddr, ep->ipv4, 4) ? 0 : DROP_INVALID_SOURCE_IP;
	if (bytes_eq(p->saddr, ep->ipv6, 16))
		return 0;
	if (!ip6_is_link_local(p->saddr) && !is_zero(p->saddr, 16))
		return DROP_INVALID_SOURCE_IP;
	if (ip6_is_link_local(p->daddr) || ip6_is_link_scope_mcast(p->daddr))
		return 0;
	/* a unicast NUD probe (and its answer) to an on-link global neighbour goes from the link-local
	 * address: neighbour discovery, never tracked, and policy judges it there (policy.h, nd_judge) */
	return !is_zero(p->saddr, 16) && nd_is_ns_or_na(p) && !p->is_frag ? 0 : DROP_INVALID_SOURCE_IP;
}

static __always_inline int finish(struct flow_ctx *c, int report)
{
	metric_add(metric_slot(c->direction, c->verdict), c->len);
	if (report && (c->verdict != VERDICT_DROPPED || drop_event_admit(c->endpoint_id, c->direction)))
		event_emit(c);
	return c->verdict == VERDICT_DROPPED ? TCX_DROP : TCX_PASS;
}

/* A guest's DHCPv4 client broadcast before it has an address (DISCOVER, REQUEST while selecting,
 * INIT-REBOOT): UDP 68 -> 67, 0.0.0.0 -> 255.255.255.255, from the endpoint's MAC to ff:ff:ff:ff:ff:ff,
 * unfragmented. Only asked about packets the source check already refused. */
static __always_inline int dhcp_client_broadcast(struct __sk_buff *skb, const struct endpoint_info *ep, const struct pkt *p)
{
	__u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	__u8 dmac[6];

	if (p->family != FAMILY_IPV4 || p->protocol != IPPROTO_UDP || !p->has_l4 || p->is_frag || p->sport != 68 ||
	    p->dport != 67 || !is_zero(p->saddr, 4) || !bytes_eq(p->daddr, bcast, 4) || !bytes_eq(p->smac, ep->mac, 6))
		return 0;
	if (bpf_skb_load_bytes(skb, 0, dmac, 6) < 0)
		return 0;
	return bytes_eq(dmac, bcast, 6);
}

/* A served guest's DHCP client message to its server (the agent, on the host side), once it has an
 * address: DHCPv6 UDP 546 -> 547 from its link-local address to ff02::1:2 (All_DHCP_Relay_Agents_and_
 * Servers); DHCPv4 renewals (UDP 68 -> 67 to the server identifier, the gateway) and rebinding
 * broadcasts from its own address. Unfragmented. Policy judges traffic to services; this is the
 * device's own addressing (a lease that cannot be renewed takes the guest's address away), and on
 * netkit the agent only sees what passes here. The source was checked before (check_source). */
static __always_inline int dhcp_client_to_agent(const struct pkt *p)
{
	const __u8 servers6[16] = { 0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2 };
	const __u8 gateway4[4] = GATEWAY_IPV4_INIT;
	const __u8 bcast4[4] = { 0xff, 0xff, 0xff, 0xff };

	if (p->protocol != IPPROTO_UDP || !p->has_l4 || p->is_frag)
		return 0;
	if (p->family == FAMILY_IPV6)
		return p->sport == 546 && p->dport == 547 && ip6_is_link_local(p->saddr) && bytes_eq(p->daddr, servers6, 16);
	return p->sport == 68 && p->dport == 67 && (bytes_eq(p->daddr, gateway4, 4) || bytes_eq(p->daddr, bcast4, 4));
}

/* Addresses a guest's DHCP message to the guest's own MAC, so the host side takes it as
 * PACKET_OTHERHOST: the agent's packet socket sees it, the host's IP stack drops it (no DHCP server or
 * relay on the host hears a guest, nothing is forwarded). Returns bpf_skb_store_bytes's result. */
static __always_inline int dhcp_dmac_to_guest(struct __sk_buff *skb, const struct endpoint_info *ep)
{
	__u8 mac[6];

	__builtin_memcpy(mac, ep->mac, 6);
	return bpf_skb_store_bytes(skb, 0, mac, 6, 0);
}

/* Hands a DHCP client broadcast to the host side, where the agent's packet socket answers it
 * (dhcp_dmac_to_guest). Reported as a forwarded flow. */
static __always_inline int dhcp_to_host(struct __sk_buff *skb, struct flow_ctx *c, const struct endpoint_info *ep)
{
	if (dhcp_dmac_to_guest(skb, ep) < 0) {
		c->verdict = VERDICT_DROPPED;
		c->drop_reason = DROP_INVALID_SOURCE_IP;
		c->reason = REPORT_DROP;
		return finish(c, 1);
	}
	c->reason = REPORT_EVERY;
	return finish(c, 1);
}

/* The ARP / neighbour discovery responder wrote a reply over the request: send it back to the workload
 * through the egress of the host-side device (see neigh.h for veth and netkit). */
static __always_inline int neigh_answer(struct __sk_buff *skb)
{
	metric_add(METRIC_NEIGH_REPLIES, skb->len);
	return bpf_redirect(skb->ifindex, 0);
}

/* Identities of both ends: the workload's own, and the remote's from the ipcache (or world). Only
 * resolved when needed (policy, an event): established packets that are not reported skip the LPM
 * lookup, the biggest part of their cost. */
static __always_inline void identities_resolve(struct flow_ctx *c, const struct endpoint_info *ep, const struct pkt *p, __u8 dir)
{
	if (dir == DIR_EGRESS) {
		c->src_identity = ep->identity;
		c->dst_identity = p->family ? ipcache_identity(p->daddr, p->family) : 0;
	} else {
		c->src_identity = p->family ? ipcache_source_identity(p) : 0;
		c->dst_identity = ep->identity;
	}
}

/* ifindex of the host-side device of the local workload that owns addr, or 0. */
static __always_inline __u32 endpoint_ifindex_by_addr(const __u8 *addr, __u8 family)
{
	struct endpoint_addr_key k;
	__u32 *ifindex;

	__builtin_memset(&k, 0, sizeof(k));
	k.family = family;
	if (family == FAMILY_IPV4)
		__builtin_memcpy(k.addr, addr, 4);
	else
		__builtin_memcpy(k.addr, addr, 16);
	ifindex = bpf_map_lookup_elem(&endpoint_addrs, &k);
	return ifindex ? *ifindex : 0;
}

/* netkit primary: an IP packet for none of the endpoint addresses, which no policy can judge: what the
 * link needs passes, the rest is dropped, counted without a flow (no endpoint to charge; policy.h,
 * link_to_workload). */
static __always_inline int unaddressed_to_workload(struct __sk_buff *skb, const struct pkt *p, int rc)
{
	if (rc == PARSE_OK && !p->vlan_tagged && link_to_workload(p)) {
		metric_add(METRIC_NO_ENDPOINT, skb->len);
		return TCX_PASS;
	}
	metric_add(metric_slot(DIR_INGRESS, VERDICT_DROPPED), skb->len);
	return TCX_DROP;
}

/* How a program finds its endpoint: by the device the skb is on (tcx on the host-side veth, netkit
 * peer), or by the packet's destination (netkit primary: skb->dev is the peer there, see maps.h). */
enum ep_lookup {
	EP_BY_IFINDEX,
	EP_BY_DADDR,
};

static __always_inline int handle(struct __sk_buff *skb, __u8 dir, enum ep_lookup lookup)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_info *ep;
	struct dp_config *cfg;
	struct flow_ctx c;
	struct ct_result ct;
	struct pkt p;
	__u64 now, interval_ns = 0;
	__u32 revision = 0;
	int aggregate = 1, has_l2, rc, ct_state, related, report, resolved = 0, exact_complete = 0;
	__u32 l3_off = ETH_HLEN;
	__u16 reason;

	__builtin_memset(&p, 0, sizeof(p));
	if (lookup == EP_BY_DADDR) {
		/* netkit hands its programs an Ethernet frame in both modes (netkit_xmit pulls ETH_HLEN;
		 * L3 mode just carries zero MACs). Frames that are not IP have no address to find their
		 * endpoint by: ARP (the host resolving an L2 guest) goes on unjudged; anything else can only
		 * come from the host itself and is dropped as l2_judge would, counted but without a flow
		 * (no endpoint to charge). Tagged IP finds its endpoint and is judged below; IP for no
		 * endpoint address is the link's or dropped (unaddressed_to_workload). */
		rc = parse_packet(skb, ETH_HLEN, &p);
		if (rc == PARSE_NOT_IP) {
			if (p.eth_proto == ETH_P_ARP && !p.vlan_tagged) {
				metric_add(METRIC_NON_IP, skb->len);
				return TCX_NEXT;
			}
			metric_add(metric_slot(dir, VERDICT_DROPPED), skb->len);
			return TCX_DROP;
		}
		ifindex = p.family ? endpoint_ifindex_by_addr(p.daddr, p.family) : 0;
		if (!ifindex)
			return unaddressed_to_workload(skb, &p, rc);
	}
	ep = bpf_map_lookup_elem(&endpoints, &ifindex);
	if (!ep) {
		metric_add(METRIC_NO_ENDPOINT, skb->len);
		/* The agent writes a device's entry before it attaches there (and an address's with it): a
		 * device or address without one is being torn down, or a step failed, or it is not the
		 * endpoint it was taken for. Passing would let a workload through unjudged: fail closed. */
		return TCX_DROP;
	}
	has_l2 = !(ep->flags & EP_F_NO_L2);

	__builtin_memset(&c, 0, sizeof(c));
	c.p = &p;
	c.ifindex = ifindex;
	c.endpoint_id = ep->endpoint_id;
	c.direction = dir;
	c.len = skb->len;
	c.verdict = VERDICT_FORWARDED;

	if (lookup == EP_BY_IFINDEX) {
		l3_off = has_l2 ? ETH_HLEN : 0;
		rc = parse_packet(skb, l3_off, &p);
	}
	p.forwarded = dir == DIR_INGRESS && !packet_sent_by_host(skb, lookup == EP_BY_DADDR);
	if (rc == PARSE_NOT_IP || unlikely(p.vlan_tagged)) {
		/* Only ARP passes (from the workload: anti-spoofing and the gateway responder); other
		 * EtherTypes and tagged frames are dropped, in both directions (neigh.h, l2_judge). */
		reason = l2_judge(skb, ep, &p, dir, has_l2);
		if (reason == NEIGH_ANSWERED)
			return neigh_answer(skb);
		if (!reason) {
			metric_add(METRIC_NON_IP, skb->len);
			return TCX_PASS;
		}
		identities_resolve(&c, ep, &p, dir);
		c.verdict = VERDICT_DROPPED;
		c.drop_reason = reason;
		c.reason = REPORT_DROP;
		return finish(&c, 1);
	}

	if (rc != PARSE_OK) {
		identities_resolve(&c, ep, &p, dir);
		c.verdict = VERDICT_DROPPED;
		c.drop_reason = rc == PARSE_BAD_EXTHDR ? DROP_INVALID_IPV6_EXTENSION_HEADER : DROP_INVALID_PACKET_DROPPED;
		c.reason = REPORT_DROP;
		return finish(&c, 1);
	}

	if (dir == DIR_EGRESS) {
		reason = check_source(ep, &p, has_l2);
		if (!reason && has_l2 && nd_from_workload_checked(&p)) {
			reason = nd_from_workload(skb, ep, &p);
			if (reason == NEIGH_ANSWERED)
				return neigh_answer(skb);
		}
		if (reason) {
			identities_resolve(&c, ep, &p, dir);
			/* off the fast path: only packets the source check refused get here */
			if (reason == DROP_INVALID_SOURCE_IP && (ep->flags & EP_F_DHCP_TO_HOST) && has_l2 &&
			    dhcp_client_broadcast(skb, ep, &p))
				return dhcp_to_host(skb, &c, ep);
			c.verdict = VERDICT_DROPPED;
			c.drop_reason = reason;
			c.reason = REPORT_DROP;
			return finish(&c, 1);
		}
	}

	/* DNS of selected workloads to and from the agent's proxy (dns.h): judged there, not here */
	if (p.protocol == IPPROTO_UDP || p.protocol == IPPROTO_TCP) {
		rc = dir == DIR_EGRESS ? dns_steer(skb, ep->endpoint_id, &p, l3_off)
				       : dns_unsteer(skb, &p, l3_off);
		if (rc == DNS_STEERED)
			return finish(&c, 0);
		if (rc == DNS_STEER_DROP || rc == DNS_SPOOFED) {
			identities_resolve(&c, ep, &p, dir);
			c.verdict = VERDICT_DROPPED;
			c.drop_reason = rc == DNS_SPOOFED ? DROP_INVALID_SOURCE_IP : DROP_POLICY_DENIED;
			c.reason = REPORT_DROP;
			return finish(&c, 1);
		}
	}

	if (p.is_frag)
		frag_track(&p);

	cfg = config_get();
	if (cfg && (cfg->flags & CFG_F_SET)) {
		aggregate = cfg->monitor_aggregation != MONITOR_AGG_NONE;
		interval_ns = (__u64)cfg->report_interval_s * NSEC_PER_SEC;
	}
	if (cfg) {
		exact_complete = (cfg->flags & CFG_F_EXACT_COMPLETE) != 0;
		revision = cfg->policy_revision;
	}

	/* Conntrack ages entries in seconds: the coarse clock (CLOCK_MONOTONIC at tick resolution, no
	 * clocksource read) is precise enough and cheaper, and read once per tick (clock.h). Events take the
	 * fine clock (event_emit). */
	now = clock_coarse_ns();
	ct.is_reply = 0;
	ct.entry = NULL;
	ct.report = CT_NO_REPORT;
	ct_state = ct_process(&p, dir, c.len, now, interval_ns, revision, &ct);
	if (ct_state == CT_ESTABLISHED) {
		c.is_reply = ct.is_reply;
		goto out;
	}

	/* A new connection, one checked again (CT_RECHECK) or not a connection: policy decides, except for
	 * neighbour discovery (policy.h: what ND needs, on the link only) and ICMP errors about a tracked
	 * connection. */
	reason = nd_judge(ep, &p, dir);
	if (reason == ND_BYPASS) {
		metric_add(METRIC_POLICY_BYPASS, 0);
		goto out; /* neighbour discovery is periodic noise: not reported when aggregating */
	}
	if (reason) {
		identities_resolve(&c, ep, &p, dir);
		c.verdict = VERDICT_DROPPED;
		c.drop_reason = reason;
		c.reason = REPORT_DROP;
		return finish(&c, 1);
	}
	if (dir == DIR_EGRESS && (ep->flags & EP_F_DHCP_TO_HOST) && has_l2 && dhcp_client_to_agent(&p)) {
		/* for the agent's packet socket only, as dhcp_to_host: unjudged, it must not reach a host
		 * socket on port 67 / 547 nor be forwarded (a renewal to a server address that is not local) */
		if (dhcp_dmac_to_guest(skb, ep) < 0) {
			identities_resolve(&c, ep, &p, dir);
			c.verdict = VERDICT_DROPPED;
			c.drop_reason = DROP_INVALID_SOURCE_IP;
			c.reason = REPORT_DROP;
			return finish(&c, 1);
		}
		metric_add(METRIC_POLICY_BYPASS, 0);
		ct.report = REPORT_EVERY; /* a DHCP / DHCPv6 flow from the guest's device, as when policy judged it */
		goto out;
	}
	if (ct_state == CT_UNTRACKED && icmp_is_error(&p)) {
		related = ct_icmp_related(skb, &p, p.family == FAMILY_IPV4 ? ep->ipv4 : ep->ipv6, dir, now, &ct.key);
		if (related) {
			metric_add(METRIC_POLICY_BYPASS, 0);
			c.is_reply = related == 1;
			ct.report = REPORT_EVERY; /* rare, and worth seeing */
			goto out;
		}
	}
	identities_resolve(&c, ep, &p, dir);
	resolved = 1;
	reason = policy_check(ep->endpoint_id, dir == DIR_EGRESS ? c.dst_identity : c.src_identity, dir, &p, exact_complete);
	if (reason == DROP_POLICY_DENIED)
		reason = policy_check_ipblock(ep->endpoint_id, dir == DIR_EGRESS ? c.dst_identity : c.src_identity,
					      dir == DIR_EGRESS ? p.daddr : p.saddr, dir, &p, exact_complete);
	if (reason) {
		metric_add(reason == DROP_POLICY_DENY ? METRIC_POLICY_DENY : METRIC_POLICY_DENIED, c.len);
		c.verdict = VERDICT_DROPPED;
		c.drop_reason = reason;
		c.reason = REPORT_DROP;
		return finish(&c, 1);
	}
	if (ct_state == CT_NEW)
		ct_create(&ct, &p, dir, c.len, now, revision);
	else if (ct_state == CT_RECHECK)
		ct_confirm(&ct, &p, c.len, now, interval_ns, revision);
	else if (p.has_l4)
		ct.report = REPORT_EVERY; /* untracked but rare (ICMP errors, other ICMP): always worth an event */

out:
	report = !aggregate || ct.report != CT_NO_REPORT;
	if (report && !resolved)
		identities_resolve(&c, ep, &p, dir);
	c.reason = ct.report == CT_NO_REPORT ? REPORT_EVERY : ct.report;
	return finish(&c, report);
}

/* tcx ingress on the host-side veth, or netkit BPF_NETKIT_PEER (skb->dev is the primary there): packets
 * leaving the workload. */
SEC("tc")
int from_workload(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS, EP_BY_IFINDEX);
}

/* tcx egress on the host-side veth: packets towards the workload. */
SEC("tc")
int to_workload(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS, EP_BY_IFINDEX);
}

/* netkit BPF_NETKIT_PRIMARY: packets towards the workload, found by destination address. */
SEC("tc")
int to_workload_netkit(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS, EP_BY_DADDR);
}
