/* Packet parsing: Ethernet (optional), VLAN tags, IPv4 / IPv6 with extension headers, then the L4 fields
 * that flows and conntrack need. Headers are copied onto the stack by pkt_load: directly from the linear part
 * of the skb when it holds them, else with bpf_skb_load_bytes (paged data); no bpf_skb_pull_data. */
#pragma once

#include "common.h"

#define IPPROTO_ICMPV6_ 58
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_NONE 59
#define NEXTHDR_DEST 60
/* A packet with more extension headers than this is dropped (DROP_INVALID_IPV6_EXTENSION_HEADER);
 * keeps the loop bounded for the verifier. Linux itself rarely sees more than two. */
#define IPV6_MAX_EXT_HEADERS 6

#define ICMP_ECHOREPLY_ 0
#define ICMP_ECHO_ 8
#define ICMPV6_ECHO_REQUEST_ 128
#define ICMPV6_ECHO_REPLY_ 129
#define ICMP_DEST_UNREACH_ 3
#define ICMP_TIME_EXCEEDED_ 11
#define ICMP_PARAMETERPROB_ 12
/* ICMPv6 errors: 1 destination unreachable, 2 packet too big, 3 time exceeded, 4 parameter problem. */
#define ICMPV6_ERROR_LAST 4
/* Router/neighbour discovery (RFC 4861). */
#define ICMPV6_RS_ 133
#define ICMPV6_RA_ 134
#define ICMPV6_NS_ 135
#define ICMPV6_NA_ 136
#define ICMPV6_REDIRECT_ 137
/* Multicast listener discovery (RFC 2710, RFC 3810). */
#define ICMPV6_MLD_QUERY_ 130
#define ICMPV6_MLD_REPORT_ 131
#define ICMPV6_MLD_DONE_ 132
#define ICMPV6_MLD2_REPORT_ 143

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88a8
#define ETH_P_802_3_MIN_ 0x0600 /* smaller "EtherTypes" are 802.3 lengths (LLC frames) */
#define VLAN_HLEN_ 4
/* VLAN tags looked through to name the packet inside (a frame with more is reported without addresses) */
#define VLAN_MAX_TAGS 2

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP,    /* ARP or another L2 protocol (p->eth_proto, p->smac, p->vlan_tagged are set) */
	PARSE_TRUNCATED, /* an IP or L4 header is cut short */
	PARSE_BAD_EXTHDR,
};

/* Parsed view of one packet. Internal to the datapath (not shared with userspace). */
struct pkt {
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 smac[6];
	__u8 family;   /* FAMILY_* */
	__u8 protocol; /* L4 protocol after extension headers */
	__u16 sport;   /* host byte order */
	__u16 dport;
	__u16 icmp_id; /* ICMP echo identifier, host order */
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 tcp_flags;
	__u8 has_l4;   /* 0 for non-first fragments and protocols we do not parse */
	__u8 is_frag;  /* any fragment (first or later) */
	__u8 l4_from_frag; /* a later fragment: L4 fields borrowed from its first fragment (none at l4_off) */
	__u32 frag_id; /* fragments: IPv4 identification / IPv6 fragment header identification */
	__u16 l4_off;  /* offset of the L4 header in the skb when has_l4 (ICMP errors: the quoted packet follows at +8) */
	__u16 eth_proto; /* EtherType (host order): the Ethernet header's, or skb->protocol on L3 devices; the
			  * outermost one of a tagged frame (skb->vlan_proto when the kernel took the tag off) */
	__u8 vlan_tagged; /* a VLAN tag in the frame or in skb metadata: addresses are those of the packet inside */
	__u8 hop_limit;   /* IPv6 hop limit (neighbour discovery wants 255) */
	__u8 forwarded;   /* towards a workload, and not sent by the host itself (packet_sent_by_host) */
	__u8 pad0[1];
};

/* IPv6 address classes (a: 16 bytes, network order). Link-local unicast fe80::/10. */
static __always_inline int ip6_is_link_local(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

/* Multicast of interface- or link-local scope (ffX1::/16, ffX2::/16: RFC 4291 2.7): like link-local
 * unicast, never forwarded by a router. */
static __always_inline int ip6_is_link_scope_mcast(const __u8 *a)
{
	return a[0] == 0xff && ((a[1] & 0x0f) == 1 || (a[1] & 0x0f) == 2);
}

/* Copies len bytes at off into to: straight from the linear part of the skb when it holds them (the
 * usual case: no helper call), else through bpf_skb_load_bytes (headers in paged data). Returns 0 or
 * a negative error, like bpf_skb_load_bytes. */
static __always_inline int pkt_load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	void *at;

	if (off <= 0xffff) { /* bounds the offset for the verifier */
		at = data + off;
		if (at + len <= data_end) {
			__builtin_memcpy(to, at, len);
			return 0;
		}
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

static __always_inline int parse_l4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	__u8 b[14];

	switch (p->protocol) {
	case IPPROTO_TCP:
		/* ports (4) .. flags at byte 13 */
		if (pkt_load(skb, off, b, 14) < 0)
			return PARSE_TRUNCATED;
		p->sport = (b[0] << 8) | b[1];
		p->dport = (b[2] << 8) | b[3];
		p->tcp_flags = b[13];
		break;
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		/* both start with 16-bit source and destination ports */
		if (pkt_load(skb, off, b, 4) < 0)
			return PARSE_TRUNCATED;
		p->sport = (b[0] << 8) | b[1];
		p->dport = (b[2] << 8) | b[3];
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		/* type, code, checksum, then identifier for echo messages */
		if (pkt_load(skb, off, b, 6) < 0)
			return PARSE_TRUNCATED;
		p->icmp_type = b[0];
		p->icmp_code = b[1];
		p->icmp_id = (b[4] << 8) | b[5];
		break;
	default:
		return PARSE_OK; /* tracked by addresses and protocol only */
	}
	p->has_l4 = 1;
	p->l4_off = off;
	return PARSE_OK;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	struct iphdr ip;
	__u16 frag;

	if (pkt_load(skb, off, &ip, sizeof(ip)) < 0)
		return PARSE_TRUNCATED;
	if (ip.version != 4 || ip.ihl < 5)
		return PARSE_TRUNCATED;
	p->family = FAMILY_IPV4;
	p->protocol = ip.protocol;
	__builtin_memcpy(p->saddr, &ip.saddr, 4);
	__builtin_memcpy(p->daddr, &ip.daddr, 4);
	frag = bpf_ntohs(ip.frag_off);
	if (frag & 0x3fff) { /* MF set or offset != 0 */
		p->is_frag = 1;
		p->frag_id = bpf_ntohs(ip.id);
	}
	if (frag & 0x1fff)
		return PARSE_OK; /* later fragment: no L4 header */
	return parse_l4(skb, off + ip.ihl * 4, p);
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	struct ipv6hdr ip6;
	__u8 nexthdr;
	__u8 ext[8];
	int i;

	if (pkt_load(skb, off, &ip6, sizeof(ip6)) < 0)
		return PARSE_TRUNCATED;
	if (ip6.version != 6)
		return PARSE_TRUNCATED;
	p->family = FAMILY_IPV6;
	p->hop_limit = ip6.hop_limit;
	__builtin_memcpy(p->saddr, &ip6.saddr, 16);
	__builtin_memcpy(p->daddr, &ip6.daddr, 16);
	nexthdr = ip6.nexthdr;
	off += sizeof(ip6);

	for (i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
		switch (nexthdr) {
		case NEXTHDR_HOP:
		case NEXTHDR_ROUTING:
		case NEXTHDR_DEST:
			/* next header, length in 8-octet units not counting the first 8 */
			if (pkt_load(skb, off, ext, 2) < 0)
				return PARSE_TRUNCATED;
			nexthdr = ext[0];
			off += ((__u32)ext[1] + 1) * 8;
			break;
		case NEXTHDR_AUTH:
			/* AH: length in 4-octet units minus 2 */
			if (pkt_load(skb, off, ext, 2) < 0)
				return PARSE_TRUNCATED;
			nexthdr = ext[0];
			off += ((__u32)ext[1] + 2) * 4;
			break;
		case NEXTHDR_FRAGMENT:
			/* next header, reserved, 13-bit offset + flags, 32-bit identification */
			if (pkt_load(skb, off, ext, 8) < 0)
				return PARSE_TRUNCATED;
			nexthdr = ext[0];
			p->is_frag = 1;
			p->frag_id = ((__u32)ext[4] << 24) | ((__u32)ext[5] << 16) | ((__u32)ext[6] << 8) | ext[7];
			off += 8;
			if (((ext[2] << 8) | ext[3]) & 0xfff8) {
				p->protocol = nexthdr;
				return PARSE_OK; /* later fragment: no L4 header */
			}
			break;
		default:
			/* upper-layer protocol (or ESP / no next header: nothing more to parse) */
			p->protocol = nexthdr;
			if (nexthdr == NEXTHDR_NONE)
				return PARSE_OK;
			return parse_l4(skb, off, p);
		}
	}
	return PARSE_BAD_EXTHDR;
}

static __always_inline int eth_type_vlan_(__u16 proto)
{
	return proto == ETH_P_8021Q_ || proto == ETH_P_8021AD_;
}

/* l3_off: 0 on L3 devices (EP_F_NO_L2), else ETH_HLEN.
 *
 * VLAN: the receive path moves the outer tag of a frame into skb metadata before tcx runs
 * (skb->vlan_present, vlan_proto) and, after tcx, strips a VID 0 tag and the tag inside it, so the
 * stack reads the packet within. Any tag marks the packet vlan_tagged (handle() drops those); tags in
 * the frame are looked through so that the flow names the addresses the packet claims. */
/* Whether a packet towards a workload was sent by the host itself rather than forwarded: the host's
 * identity (allow-localhost) and the DNS proxy's answers stand for the host's own sockets, but nothing
 * stops a neighbour on an uplink from sending with a host address (IPv6 forwards a packet whose source
 * is an address of the host, IPv4 does with accept_local; an address the host does not own, like a
 * subnet's network address, is forwarded anyway). A forwarded packet carries no socket (ip_rcv_core /
 * ip6_rcv_core orphan it, ip_forward drops one that has one), and a packet of a local socket (a packet
 * socket's too) keeps it down to the device, through netkit_xmit's scrub. A few the stack sends on its
 * own have none (SYN cookies, a reset for no socket): on a veth's tcx egress they are told apart by
 * ingress_ifindex (skb_iif), 0 for what the host sends and the receiving device for what it forwards;
 * netkit's primary sees 0 for everything (skb_scrub_packet clears skb_iif before its programs run), so
 * only the socket counts there. */
static __always_inline int packet_sent_by_host(struct __sk_buff *skb, int on_netkit_primary)
{
	if (skb->sk)
		return 1;
	return !on_netkit_primary && skb->ingress_ifindex == 0;
}

static __always_inline int parse_packet(struct __sk_buff *skb, __u32 l3_off, struct pkt *p)
{
	__u16 proto = bpf_ntohs(skb->protocol);
	__be16 inner;
	int i;

	p->vlan_tagged = skb->vlan_present != 0;
	if (l3_off) {
		struct ethhdr eth;

		if (pkt_load(skb, 0, &eth, sizeof(eth)) < 0)
			return PARSE_NOT_IP;
		__builtin_memcpy(p->smac, eth.h_source, 6);
		proto = bpf_ntohs(eth.h_proto);
	}
	p->eth_proto = p->vlan_tagged ? bpf_ntohs(skb->vlan_proto) : proto;
	if (l3_off && unlikely(eth_type_vlan_(proto))) {
		p->vlan_tagged = 1;
		for (i = 0; i < VLAN_MAX_TAGS && eth_type_vlan_(proto); i++) {
			/* TPID, TCI, then the EtherType of what follows */
			if (pkt_load(skb, l3_off + 2, &inner, 2) < 0)
				return PARSE_NOT_IP;
			proto = bpf_ntohs(inner);
			l3_off += VLAN_HLEN_;
		}
	}
	if (proto == ETH_P_IP)
		return parse_ipv4(skb, l3_off, p);
	if (proto == ETH_P_IPV6)
		return parse_ipv6(skb, l3_off, p);
	return PARSE_NOT_IP;
}
