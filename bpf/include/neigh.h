/* ARP and IPv6 neighbour discovery in frames from the workload (from_workload, devices with an
 * Ethernet header only):
 *  - anti-spoofing: the ARP sender hardware / protocol address, the source link-layer option of a
 *    router or neighbour solicitation, and the target address and target link-layer option of a
 *    neighbour advertisement must be the endpoint's (EP_F_ENFORCE_SRC_MAC / EP_F_ENFORCE_SRC_IP); the
 *    Ethernet source of every frame too;
 *  - gateway responder: an ARP request for GATEWAY_IPV4 and a neighbour solicitation for GATEWAY_IPV6
 *    are answered with endpoint_info.host_mac (all-zero host_mac: no responder), so a workload resolves
 *    its gateway whatever its neighbour table holds (VM guests, flushed tables, changed MACs).
 *
 * Where the answer goes. The request is rewritten in place into the reply and redirected to the EGRESS
 * of skb->ifindex, which is the host-side device in both attachment modes:
 *  - veth + tcx: from_workload runs at tcx ingress of the host-side veth, skb->ifindex is that veth;
 *    its egress transmits to the peer, i.e. to the workload. to_workload (tcx egress) sees the reply on
 *    the way and passes it (ARP is not IP; a neighbour advertisement bypasses policy).
 *  - netkit L2: from_workload (BPF_NETKIT_PEER) runs in the peer's ndo_start_xmit after netkit has set
 *    skb->dev to the primary, so skb->ifindex is the primary's (as for the endpoints lookup). Egress of
 *    the primary is netkit_xmit on the primary, which runs to_workload (BPF_NETKIT_PRIMARY) and hands
 *    the reply to the peer's receive path. The peer's ifindex belongs to the workload's namespace and
 *    is no redirect target; BPF_F_INGRESS on the primary would deliver the reply to the host instead.
 *  - netkit L3 (EP_F_NO_L2): no Ethernet header and a NOARP device: there is nothing to answer.
 *
 * Everything else that is not IP is dropped in both directions (l2_judge).
 */
#pragma once

#include "common.h"
#include "maps.h"
#include "parse.h"

#define ARPHRD_ETHER_ 1
#define ARPOP_REQUEST_ 1
#define ARPOP_REPLY_ 2
#define ND_OPT_SOURCE_LL_ 1
#define ND_OPT_TARGET_LL_ 2
/* Options checked per solicitation / advertisement; more is dropped when enforcing (real ones carry
 * one or two: the link-layer address and perhaps a nonce). */
#define ND_MAX_OPTS 6
/* neighbour advertisement flags: router, solicited, override */
#define ND_NA_FLAGS_RSO 0xe0
/* Ethernet (14) + IPv6 (40) + NA (24) + target link-layer option (8) */
#define ND_NA_FRAME_LEN 86
#define ND_NA_ICMP_OFF (ETH_HLEN + 40)

/* returned by the handlers below instead of a drop reason: the reply is written, redirect it */
#define NEIGH_ANSWERED 1

/* RFC 826 for Ethernet and IPv4, with the Ethernet header: 42 bytes, no padding. */
struct arp_frame {
	__u8 h_dest[6];
	__u8 h_source[6];
	__be16 h_proto;
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};
_Static_assert(sizeof(struct arp_frame) == 42, "struct arp_frame size");

/* Neighbour solicitation / advertisement up to the options (RFC 4861 4.3, 4.4). */
struct nd_msg {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 flags; /* NA: R, S, O in the first byte; NS: reserved */
	__u32 target[4];
};

/* Buffers of the ARP / ND path. handle() already uses most of the 512-byte BPF stack, so they live in a
 * per-CPU scratch slot instead (one lookup, only for ARP and neighbour discovery from workloads). */
struct neigh_scratch {
	__u8 na[ND_NA_FRAME_LEN + 2]; /* the advertisement being built, from na + 2: its IPv6 header is 4-byte aligned */
	struct nd_msg nd;
	__u8 opt[8]; /* one option header + Ethernet address */
	struct arp_frame arp;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct neigh_scratch);
} neigh_scratch SEC(".maps");

static __always_inline struct neigh_scratch *neigh_scratch_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&neigh_scratch, &zero);
}

/* a: 4-byte aligned IPv6 address */
static __always_inline int ip6_is_gateway(const __u32 *a)
{
	return a[0] == bpf_htonl(GATEWAY_IPV6_U32_0) && a[1] == bpf_htonl(GATEWAY_IPV6_U32_1) &&
	       a[2] == bpf_htonl(GATEWAY_IPV6_U32_2) && a[3] == bpf_htonl(GATEWAY_IPV6_U32_3);
}

static __always_inline int ip6_eq(const __u32 *a, const __u32 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

static __always_inline int ip6_is_zero(const __u32 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline void ip6_set_gateway(__u32 *a)
{
	a[0] = bpf_htonl(GATEWAY_IPV6_U32_0);
	a[1] = bpf_htonl(GATEWAY_IPV6_U32_1);
	a[2] = bpf_htonl(GATEWAY_IPV6_U32_2);
	a[3] = bpf_htonl(GATEWAY_IPV6_U32_3);
}

static __always_inline int mac_spoofed(const struct endpoint_info *ep, const __u8 *mac)
{
	return (ep->flags & EP_F_ENFORCE_SRC_MAC) && !is_zero(ep->mac, 6) && !bytes_eq(mac, ep->mac, 6);
}

/* ARP from the workload: 0 (pass), a drop reason, or NEIGH_ANSWERED. Fills p's addresses (family 4,
 * sender -> target protocol address) for the flow event. A BPF-to-BPF call: its frame is not added to
 * handle()'s. */
static __attribute__((noinline)) __u16 arp_from_workload(struct __sk_buff *skb, const struct endpoint_info *ep, struct pkt *p)
{
	struct neigh_scratch *s = neigh_scratch_get();
	struct arp_frame *f;
	__u32 gw = bpf_htonl(GATEWAY_IPV4_U32);

	if (!s)
		return 0;
	f = &s->arp;
	if (bpf_skb_load_bytes(skb, 0, f, sizeof(*f)) < 0)
		return mac_spoofed(ep, p->smac) ? DROP_INVALID_SOURCE_MAC : 0; /* truncated: arp_rcv discards it */
	if (f->htype != bpf_htons(ARPHRD_ETHER_) || f->ptype != bpf_htons(ETH_P_IP) || f->hlen != 6 || f->plen != 4)
		return mac_spoofed(ep, p->smac) ? DROP_INVALID_SOURCE_MAC : 0; /* not Ethernet/IPv4: ignored by Linux */
	p->family = FAMILY_IPV4;
	__builtin_memcpy(p->saddr, f->spa, 4);
	__builtin_memcpy(p->daddr, f->tpa, 4);
	if (mac_spoofed(ep, f->h_source) || mac_spoofed(ep, f->sha))
		return DROP_INVALID_SOURCE_MAC;
	/* 0.0.0.0: an ARP probe (RFC 5227) */
	if ((ep->flags & EP_F_ENFORCE_SRC_IP) && !is_zero(f->spa, 4) && !bytes_eq(f->spa, ep->ipv4, 4))
		return DROP_INVALID_SOURCE_IP;

	if (f->op != bpf_htons(ARPOP_REQUEST_) || !bytes_eq(f->tpa, (const __u8 *)&gw, 4) || is_zero(ep->host_mac, 6))
		return 0;
	/* request -> reply, as Linux answers (a probe gets target protocol address 0.0.0.0) */
	__builtin_memcpy(f->h_dest, f->h_source, 6);
	__builtin_memcpy(f->h_source, ep->host_mac, 6);
	f->op = bpf_htons(ARPOP_REPLY_);
	__builtin_memcpy(f->tha, f->sha, 6);
	__builtin_memcpy(f->sha, ep->host_mac, 6);
	__builtin_memcpy(f->tpa, f->spa, 4);
	__builtin_memcpy(f->spa, &gw, 4);
	if (bpf_skb_store_bytes(skb, 0, f, sizeof(*f), 0) < 0)
		return DROP_ERROR_WRITING_TO_PACKET;
	return NEIGH_ANSWERED;
}

/* Frames that are not plain IPv4 / IPv6, in either direction: 0 (pass), a drop reason, or NEIGH_ANSWERED.
 * A workload exchanges IPv4, IPv6 and, on devices with an Ethernet header, ARP (checked and answered
 * above when it comes from the workload) and nothing else: any other EtherType (Cilium's DROP_UNKNOWN_L3;
 * 802.3 length frames: DROP_UNSUPPORTED_L2) and any VLAN-tagged frame is dropped, because neither policy
 * nor the source checks could judge what the stack would make of it (it strips VID 0 tags and delivers
 * what is inside). */
static __always_inline __u16 l2_judge(struct __sk_buff *skb, const struct endpoint_info *ep, struct pkt *p, __u8 dir, int has_l2)
{
	if (p->vlan_tagged)
		return DROP_UNSUPPORTED_L3_PROTOCOL;
	if (has_l2 && p->eth_proto == ETH_P_ARP)
		return dir == DIR_EGRESS ? arp_from_workload(skb, ep, p) : 0;
	if (has_l2 && p->eth_proto < ETH_P_802_3_MIN_)
		return DROP_UNSUPPORTED_L2_PROTOCOL;
	return DROP_UNSUPPORTED_L3_PROTOCOL;
}

static __always_inline int nd_is_ns_or_na(const struct pkt *p)
{
	return p->protocol == IPPROTO_ICMPV6_ && p->has_l4 && (p->icmp_type == ICMPV6_NS_ || p->icmp_type == ICMPV6_NA_);
}

/* What nd_from_workload checks: every ND message that carries a link-layer address the host takes into
 * its neighbour cache. A router solicitation's source link-layer option does so as a neighbour
 * solicitation's does (RFC 4861 6.2.6, on a host that forwards): the workload's MAC only. */
static __always_inline int nd_from_workload_checked(const struct pkt *p)
{
	return p->protocol == IPPROTO_ICMPV6_ && p->has_l4 &&
	       (p->icmp_type == ICMPV6_NS_ || p->icmp_type == ICMPV6_NA_ || p->icmp_type == ICMPV6_RS_);
}

/* Router solicitation: type, code, checksum, reserved; the options follow (RFC 4861 4.1). */
#define ND_RS_HLEN 8

/* Router solicitation or neighbour solicitation / advertisement from the workload (check_source has
 * vetted the IPv6 source and the Ethernet source): 0 (pass), a drop reason, or NEIGH_ANSWERED. A
 * BPF-to-BPF call. */
static __attribute__((noinline)) __u16 nd_from_workload(struct __sk_buff *skb, const struct endpoint_info *ep, const struct pkt *p)
{
	struct neigh_scratch *s = neigh_scratch_get();
	struct nd_msg *nd;
	__u8 *f, *opt;
	__u8 want, hlim;
	__u32 off, sum;
	int i, rc, is_ns = p->icmp_type == ICMPV6_NS_, is_rs = p->icmp_type == ICMPV6_RS_;

	if (!s)
		return 0;
	nd = &s->nd;
	f = s->na + 2;
	opt = s->opt;
	/* shorter than RFC 4861 allows: ndisc discards it; only an enforced endpoint reports it */
	if (is_rs)
		rc = bpf_skb_load_bytes(skb, p->l4_off, nd, ND_RS_HLEN);
	else
		rc = bpf_skb_load_bytes(skb, p->l4_off, nd, sizeof(*nd));
	if (rc < 0)
		return ep->flags & (EP_F_ENFORCE_SRC_IP | EP_F_ENFORCE_SRC_MAC) ? DROP_INVALID_PACKET_DROPPED : 0;

	/* an advertisement speaks for its target: the workload's own address or one of its link-local
	 * ones, never the gateway's */
	if (!is_ns && !is_rs && (ep->flags & EP_F_ENFORCE_SRC_IP)) {
		if (ip6_is_gateway(nd->target))
			return DROP_INVALID_SOURCE_IP;
		if ((nd->target[0] & bpf_htonl(0xffc00000)) != bpf_htonl(0xfe800000) &&
		    (ip6_is_zero((const __u32 *)ep->ipv6) || !ip6_eq(nd->target, (const __u32 *)ep->ipv6)))
			return DROP_INVALID_SOURCE_IP;
	}

	/* the link-layer address option (source for RS and NS, target for NA) must be the workload's MAC */
	if ((ep->flags & EP_F_ENFORCE_SRC_MAC) && !is_zero(ep->mac, 6)) {
		want = is_ns || is_rs ? ND_OPT_SOURCE_LL_ : ND_OPT_TARGET_LL_;
		off = (__u32)p->l4_off + (is_rs ? ND_RS_HLEN : sizeof(*nd));
		for (i = 0; i < ND_MAX_OPTS; i++) {
			if (off >= skb->len)
				break;
			if (bpf_skb_load_bytes(skb, off, opt, sizeof(s->opt)) < 0)
				return DROP_INVALID_PACKET_DROPPED; /* option cut short */
			if (opt[1] == 0)
				return DROP_INVALID_PACKET_DROPPED; /* RFC 4861 4.6: zero length is invalid */
			if (opt[0] == want && !bytes_eq(opt + 2, ep->mac, 6))
				return DROP_INVALID_SOURCE_MAC;
			off += (__u32)opt[1] * 8;
		}
		if (off < skb->len)
			return DROP_INVALID_PACKET_DROPPED; /* more options than checked: could hide one */
	}

	/* responder: a valid solicitation (RFC 4861 7.1.1: hop limit 255, code 0) for the gateway from an
	 * address that can take a unicast answer (not DAD's ::) */
	if (!is_ns || nd->code != 0 || !ip6_is_gateway(nd->target) || ip6_is_zero((const __u32 *)p->saddr) ||
	    is_zero(ep->host_mac, 6))
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 7, &hlim, 1) < 0 || hlim != 255)
		return 0;

	/* Ethernet: back to the soliciting MAC from the host-side MAC */
	__builtin_memcpy(f, p->smac, 6);
	__builtin_memcpy(f + 6, ep->host_mac, 6);
	*(__u16 *)(f + 12) = bpf_htons(ETH_P_IPV6);
	/* IPv6: version 6, no traffic class or flow label, payload 32, ICMPv6, hop limit 255,
	 * gateway -> the solicitation's source */
	*(__u32 *)(f + 14) = bpf_htonl(0x60000000);
	*(__u16 *)(f + 18) = bpf_htons(ND_NA_FRAME_LEN - ND_NA_ICMP_OFF);
	f[20] = IPPROTO_ICMPV6_;
	f[21] = 255;
	ip6_set_gateway((__u32 *)(f + 22));
	__builtin_memcpy(f + 38, p->saddr, 16);
	/* NA: type, code 0, checksum (below), R|S|O, target = the gateway, target link-layer address */
	f[ND_NA_ICMP_OFF] = ICMPV6_NA_;
	f[ND_NA_ICMP_OFF + 1] = 0;
	*(__u16 *)(f + ND_NA_ICMP_OFF + 2) = 0;
	*(__u32 *)(f + ND_NA_ICMP_OFF + 4) = bpf_htonl(ND_NA_FLAGS_RSO << 24);
	ip6_set_gateway((__u32 *)(f + ND_NA_ICMP_OFF + 8));
	f[ND_NA_ICMP_OFF + 24] = ND_OPT_TARGET_LL_;
	f[ND_NA_ICMP_OFF + 25] = 1;
	__builtin_memcpy(f + ND_NA_ICMP_OFF + 26, ep->host_mac, 6);
	/* checksum: the one's complement sum is byte-order independent, so add the 16-bit words as they
	 * lie in memory: pseudo-header (addresses, upper-layer length 32, next header 58) + message */
	sum = bpf_htons(ND_NA_FRAME_LEN - ND_NA_ICMP_OFF) + bpf_htons(IPPROTO_ICMPV6_);
	for (i = 22; i < ND_NA_FRAME_LEN; i += 2)
		sum += *(__u16 *)(f + i);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	*(__u16 *)(f + ND_NA_ICMP_OFF + 2) = (__u16)~sum;

	if (skb->len != ND_NA_FRAME_LEN && bpf_skb_change_tail(skb, ND_NA_FRAME_LEN, 0) < 0)
		return DROP_ERROR_WRITING_TO_PACKET;
	if (bpf_skb_store_bytes(skb, 0, f, ND_NA_FRAME_LEN, BPF_F_RECOMPUTE_CSUM) < 0)
		return DROP_ERROR_WRITING_TO_PACKET;
	return NEIGH_ANSWERED;
}
