/* Connection tracking. One LRU table for both families and both directions; the key carries the
 * direction the creating packet travelled, so a connection between two local endpoints gets one entry
 * per endpoint (each side makes its own policy decision later). A packet either matches its own tuple
 * (original direction) or the reversed tuple with the opposite direction (reply).
 *
 * The table also drives event aggregation: ct_process says whether this packet is worth an event
 * (new connection, first reply, new TCP flags in this direction, FIN/RST, periodic interval). */
#pragma once

#include "maps.h"
#include "metrics.h"
#include "parse.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define CT_NO_REPORT 0xff

struct ct_result {
	__u8 is_reply;
	__u8 report; /* REPORT_* or CT_NO_REPORT */
};

/* Whether the packet can be tracked, and its ports for the key (ICMP echo uses the identifier on the
 * requester's side of the tuple so that request and reply are each other's reverse). */
static __always_inline int ct_tuple_ports(const struct pkt *p, __u16 *sport, __u16 *dport)
{
	*sport = 0;
	*dport = 0;
	switch (p->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (!p->has_l4)
			return 0; /* later fragment */
		*sport = p->sport;
		*dport = p->dport;
		return 1;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		if (!p->has_l4)
			return 0;
		if (p->icmp_type == ICMP_ECHO_ || p->icmp_type == ICMPV6_ECHO_REQUEST_) {
			*sport = p->icmp_id;
			return 1;
		}
		if (p->icmp_type == ICMP_ECHOREPLY_ || p->icmp_type == ICMPV6_ECHO_REPLY_) {
			*dport = p->icmp_id;
			return 1;
		}
		return 0; /* errors, neighbour discovery: not connections */
	default:
		/* other protocols: tracked by addresses and protocol, unless fragmented */
		return !p->is_frag;
	}
}

static __always_inline int ct_closed(const struct ct_entry *e)
{
	return (e->flags & CT_F_RESET) || ((e->flags & CT_F_TX_CLOSING) && (e->flags & CT_F_RX_CLOSING));
}

static __always_inline int ct_expired(const struct ct_entry *e, __u8 protocol, __u64 now)
{
	__u64 life = CT_LIFETIME_NONTCP;

	if (protocol == IPPROTO_TCP)
		life = ct_closed(e) ? CT_LIFETIME_TCP_CLOSED : CT_LIFETIME_TCP;
	return now - e->last_seen_ns > life * NSEC_PER_SEC;
}

static __always_inline __u16 ct_close_flags(__u8 tcp_flags, int reply)
{
	__u16 f = 0;

	if (tcp_flags & TCP_FIN)
		f |= reply ? CT_F_RX_CLOSING : CT_F_TX_CLOSING;
	if (tcp_flags & TCP_RST)
		f |= CT_F_RESET;
	return f;
}

/* Returns 0 when the packet is not trackable (res untouched). */
static __always_inline int ct_process(const struct pkt *p, __u8 dir, __u32 len, __u64 now,
				      __u64 report_interval_ns, struct ct_result *res)
{
	struct ct_key key;
	struct ct_entry *e;
	struct ct_entry fresh;
	__u16 sport, dport;
	int reply = 0;
	__u8 *seen;

	if (!ct_tuple_ports(p, &sport, &dport))
		return 0;

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memcpy(key.saddr, p->saddr, 16);
	__builtin_memcpy(key.daddr, p->daddr, 16);
	key.sport = sport;
	key.dport = dport;
	key.protocol = p->protocol;
	key.family = p->family;
	key.direction = dir;

	e = bpf_map_lookup_elem(&conntrack, &key);
	if (!e || ct_expired(e, p->protocol, now)) {
		/* not ours in this direction: maybe a reply to a connection seen the other way */
		struct ct_key rkey;

		__builtin_memset(&rkey, 0, sizeof(rkey));
		__builtin_memcpy(rkey.saddr, p->daddr, 16);
		__builtin_memcpy(rkey.daddr, p->saddr, 16);
		rkey.sport = dport;
		rkey.dport = sport;
		rkey.protocol = p->protocol;
		rkey.family = p->family;
		rkey.direction = dir == DIR_INGRESS ? DIR_EGRESS : DIR_INGRESS;
		e = bpf_map_lookup_elem(&conntrack, &rkey);
		if (e && !ct_expired(e, p->protocol, now))
			reply = 1;
		else
			e = NULL;
	}

	/* A bare SYN on a closed connection starts a new one (port reuse). */
	if (e && !reply && p->protocol == IPPROTO_TCP &&
	    (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN && ct_closed(e))
		e = NULL;

	if (!e) {
		__builtin_memset(&fresh, 0, sizeof(fresh));
		fresh.last_seen_ns = now;
		fresh.last_report_ns = now;
		fresh.packets = 1;
		fresh.bytes = len;
		fresh.tx_flags_seen = p->tcp_flags;
		fresh.flags = ct_close_flags(p->tcp_flags, 0);
		if (bpf_map_update_elem(&conntrack, &key, &fresh, BPF_ANY) < 0)
			metric_add(METRIC_CT_FULL, 0);
		else
			metric_add(METRIC_CT_NEW, 0);
		res->is_reply = 0;
		res->report = REPORT_NEW;
		return 1;
	}

	res->is_reply = reply;
	res->report = CT_NO_REPORT;
	e->last_seen_ns = now;
	e->packets += 1;
	e->bytes += len;

	if (reply && !(e->flags & CT_F_SEEN_REPLY)) {
		e->flags |= CT_F_SEEN_REPLY;
		res->report = REPORT_FIRST_REPLY;
	}
	if (p->protocol == IPPROTO_TCP) {
		seen = reply ? &e->rx_flags_seen : &e->tx_flags_seen;
		if (p->tcp_flags & (TCP_FIN | TCP_RST)) {
			e->flags |= ct_close_flags(p->tcp_flags, reply);
			res->report = REPORT_CLOSE;
		} else if ((p->tcp_flags | *seen) != *seen && res->report == CT_NO_REPORT) {
			res->report = REPORT_FLAGS;
		}
		*seen |= p->tcp_flags;
	}
	if (res->report == CT_NO_REPORT && report_interval_ns && now - e->last_report_ns >= report_interval_ns)
		res->report = REPORT_INTERVAL;
	if (res->report != CT_NO_REPORT)
		e->last_report_ns = now;
	return 1;
}
