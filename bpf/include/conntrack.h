/* Connection tracking. One LRU table for both families and both directions. A key is one connection as
 * seen from one endpoint (ct_key: local = the endpoint's side), the same for the packets of both
 * directions, so every packet costs one lookup; the entry remembers the direction of the packet that
 * created it, and a packet going the other way is a reply. A connection between two local endpoints
 * gets one entry per endpoint (each side makes its own policy decision).
 *
 * What skips policy (Cilium's rules, plus a policy revision so that policy changes reach established
 * connections without a policy lookup per packet):
 *   - replies (packets against the entry's original direction) and ICMP errors about a tracked
 *     connection: always;
 *   - packets in the original direction: only when the entry saw a reply and was allowed at the current
 *     policy revision (dp_config.policy_revision, bumped by the agent after every policy, ipcache or
 *     endpoint write). Otherwise they are checked again (CT_RECHECK); a bare TCP SYN never rides an entry
 *     without a reply (nor a closed one): it is a new connection (CT_NEW).
 * A packet that policy denies leaves the entry as it was (not refreshed): the connection's packets in
 * the original direction keep being checked (and dropped while denied), its replies keep passing, as
 * in Cilium. Removing the entry instead would let the remote's next packet create an entry in the
 * other direction, under which the workload's packets would be replies. Entries without a reply live
 * CT_LIFETIME_TCP_SYN / CT_LIFETIME_NONTCP seconds after their last allowed packet.
 *
 * The table also drives event aggregation: ct_process says whether this packet is worth an event
 * (new connection, first reply, a new SYN in this direction, the first FIN / RST in this direction,
 * periodic interval). */
#pragma once

#include "maps.h"
#include "metrics.h"
#include "parse.h"
#include "ipcache.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define CT_NO_REPORT 0xff

/* TCP flags whose first appearance in a direction is worth an event on an established connection
 * (aggregated mode). A connection is reported at its start (NEW: the SYN, each end's policy verdict),
 * when it is answered (FIRST_REPLY: the SYN-ACK) and at its end (CLOSE: the first FIN and the first RST
 * in each direction); the handshake's ACK and the first PSH/URG/ECE/CWR are not (Cilium's
 * `monitorFlags: syn,fin,rst`): they were half of a short connection's events and tell nothing the
 * SYN-ACK and the close do not. A retransmitted FIN or a second RST in the same direction is not
 * reported again. every-packet mode (monitor_aggregation none) reports every packet regardless. */
#define CT_REPORT_TCP_FLAGS TCP_SYN

struct ct_result {
	struct ct_key key;       /* CT_NEW: the entry to create; CT_RECHECK: the entry's key */
	struct ct_entry *entry;  /* CT_RECHECK: the entry, untouched until policy allows (ct_confirm) */
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
		life = ct_closed(e)			 ? CT_LIFETIME_TCP_CLOSED :
		       (e->flags & CT_F_SEEN_REPLY) ? CT_LIFETIME_TCP :
						    CT_LIFETIME_TCP_SYN;
	/* signed: another CPU may have stored a later time than this packet's clock read */
	return (__s64)(now - e->last_seen_ns) > (__s64)(life * NSEC_PER_SEC);
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

enum ct_state {
	CT_UNTRACKED = 0, /* not a connection (ICMP errors, ND, later fragments): res->key unset */
	CT_ESTABLISHED,   /* a reply, or the original direction of an entry allowed at this revision: res filled, entry updated */
	CT_NEW,           /* trackable, no live entry (or a bare SYN that may not ride it): res->key holds the key to create once policy allows */
	CT_RECHECK,       /* original direction of a live entry without a reply or allowed at another revision: policy decides, then ct_confirm */
};

/* The key of the packet's connection as its endpoint sees it: local = source of a packet from the
 * workload (DIR_EGRESS), destination of a packet towards it. */
static __always_inline void ct_key_fill(struct ct_key *key, const __u8 *saddr, const __u8 *daddr, __u16 sport,
					__u16 dport, __u8 protocol, __u8 family, __u8 dir)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (dir == DIR_EGRESS) {
		__builtin_memcpy(key->laddr, saddr, 16);
		__builtin_memcpy(key->raddr, daddr, 16);
		key->lport = sport;
		key->rport = dport;
	} else {
		__builtin_memcpy(key->laddr, daddr, 16);
		__builtin_memcpy(key->raddr, saddr, 16);
		key->lport = dport;
		key->rport = sport;
	}
	key->protocol = protocol;
	key->family = family;
}

/* An entry of the previous layout (keyed by the creating packet's tuple and direction) that this packet
 * answers: keeps the replies of connections tracked before an upgrade flowing. Only asked when the
 * current layout has no entry and the packet is not a bare SYN (a SYN opens a connection; it is not a
 * reply), so new TCP connections do not pay for it. Remove once no datapath of that layout is deployed. */
static __always_inline struct ct_entry *ct_v1_reply_lookup(const struct pkt *p, __u8 dir, __u16 sport, __u16 dport)
{
	struct ct_key k;

	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memcpy(k.laddr, p->daddr, 16);
	__builtin_memcpy(k.raddr, p->saddr, 16);
	k.lport = dport;
	k.rport = sport;
	k.protocol = p->protocol;
	k.family = p->family;
	k.v1_direction = dir == DIR_INGRESS ? DIR_EGRESS : DIR_INGRESS;
	return bpf_map_lookup_elem(&conntrack, &k);
}

static __always_inline int tcp_bare_syn(const struct pkt *p)
{
	return p->protocol == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
}

/* Counts a packet of a tracked connection into its entry and says whether it is worth an event. */
static __always_inline void ct_account(struct ct_entry *e, const struct pkt *p, int reply, __u32 len, __u64 now,
				       __u64 report_interval_ns, struct ct_result *res)
{
	__u8 *seen, fresh;

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
		fresh = p->tcp_flags & ~*seen;
		if (p->tcp_flags & (TCP_FIN | TCP_RST)) {
			e->flags |= ct_close_flags(p->tcp_flags, reply);
			if (fresh & (TCP_FIN | TCP_RST))
				res->report = REPORT_CLOSE;
		} else if ((fresh & CT_REPORT_TCP_FLAGS) && res->report == CT_NO_REPORT) {
			res->report = REPORT_FLAGS;
		}
		*seen |= p->tcp_flags;
	}
	if (res->report == CT_NO_REPORT && report_interval_ns &&
	    (__s64)(now - e->last_report_ns) >= (__s64)report_interval_ns)
		res->report = REPORT_INTERVAL;
	if (res->report != CT_NO_REPORT)
		e->last_report_ns = now;
}

/* Looks the packet's connection up (one lookup, both directions). Nothing is created here, and an entry
 * is only updated when the packet skips policy (CT_ESTABLISHED): the caller decides (policy) and then
 * calls ct_create or ct_confirm, so denied packets never leave or refresh an entry that would let their
 * replies through. `revision` is the current dp_config.policy_revision. */
static __always_inline int ct_process(const struct pkt *p, __u8 dir, __u32 len, __u64 now,
				      __u64 report_interval_ns, __u32 revision, struct ct_result *res)
{
	struct ct_key *key = &res->key;
	struct ct_entry *e;
	__u16 sport, dport;
	int reply = 0;

	if (!ct_tuple_ports(p, &sport, &dport))
		return CT_UNTRACKED;

	ct_key_fill(key, p->saddr, p->daddr, sport, dport, p->protocol, p->family, dir);
	e = bpf_map_lookup_elem(&conntrack, key);
	if (e && !ct_expired(e, p->protocol, now)) {
		reply = e->direction != dir;
		if (!reply) {
			/* A bare SYN starts a new connection unless the entry saw a reply and is open: on a
			 * closed connection it is port reuse, on an unanswered one a retry, or a new attempt
			 * that must not inherit the earlier attempt's verdict. */
			if (tcp_bare_syn(p) && (ct_closed(e) || !(e->flags & CT_F_SEEN_REPLY)))
				return CT_NEW;
			if (!(e->flags & CT_F_SEEN_REPLY) || e->policy_revision != revision) {
				res->entry = e;
				res->is_reply = 0;
				return CT_RECHECK;
			}
		}
	} else if (!tcp_bare_syn(p)) {
		e = ct_v1_reply_lookup(p, dir, sport, dport);
		if (!e || ct_expired(e, p->protocol, now))
			return CT_NEW;
		reply = 1;
	} else {
		return CT_NEW;
	}

	ct_account(e, p, reply, len, now, report_interval_ns, res);
	return CT_ESTABLISHED;
}

/* A CT_RECHECK packet that policy allowed: the entry is now allowed at `revision`. */
static __always_inline void ct_confirm(struct ct_result *res, const struct pkt *p, __u32 len, __u64 now,
				       __u64 report_interval_ns, __u32 revision)
{
	struct ct_entry *e = res->entry;

	if (!e)
		return;
	e->policy_revision = revision;
	ct_account(e, p, 0, len, now, report_interval_ns, res);
}

/* Creates the entry for a CT_NEW packet (res->key from ct_process) travelling in dir. A replaced entry
 * (expired, or a closed or unanswered TCP connection a new SYN reuses) starts from scratch. */
static __always_inline void ct_create(struct ct_result *res, const struct pkt *p, __u8 dir, __u32 len, __u64 now,
				      __u32 revision)
{
	struct ct_entry fresh;

	__builtin_memset(&fresh, 0, sizeof(fresh));
	fresh.last_seen_ns = now;
	fresh.last_report_ns = now;
	fresh.packets = 1;
	fresh.bytes = len;
	fresh.tx_flags_seen = p->tcp_flags;
	fresh.flags = ct_close_flags(p->tcp_flags, 0);
	fresh.direction = dir;
	fresh.policy_revision = revision;
	if (bpf_map_update_elem(&conntrack, &res->key, &fresh, BPF_ANY) < 0)
		metric_add(METRIC_CT_FULL, 0);
	else
		metric_add(METRIC_CT_NEW, 0);
	res->is_reply = 0;
	res->report = REPORT_NEW;
}

static __always_inline int icmp_is_error(const struct pkt *p)
{
	if (!p->has_l4 || p->l4_from_frag)
		return 0;
	if (p->protocol == IPPROTO_ICMP)
		return p->icmp_type == ICMP_DEST_UNREACH_ || p->icmp_type == ICMP_TIME_EXCEEDED_ ||
		       p->icmp_type == ICMP_PARAMETERPROB_;
	if (p->protocol == IPPROTO_ICMPV6_)
		return p->icmp_type >= 1 && p->icmp_type <= ICMPV6_ERROR_LAST;
	return 0;
}

static __always_inline int addr_eq(const __u8 *a, const __u8 *b, __u8 family)
{
	return family == FAMILY_IPV4 ? bytes_eq(a, b, 4) : bytes_eq(a, b, 16);
}

/* An ICMP error quotes the packet that caused it (after its 8-byte header). The error belongs to a
 * tracked connection when the quoted packet does: quoted in the connection's original direction, the
 * error travels the reply way (e.g. port unreachable, time exceeded on the way out, packet too big);
 * quoted in the reply direction, it travels the original way. Only live entries count, and nothing is
 * updated. Returns 0 (unrelated: policy decides), 1 (related, reply direction), 2 (related, original
 * direction). The quoted IPv6 packet must carry its L4 header right after the fixed header.
 *
 * The quoted tuple alone proves nothing (the sender writes it): the quoted packet must be one this
 * endpoint sent or received, as seen from where the error goes. An error goes back to the sender of
 * the packet it quotes, so the quoted source is always the error's destination, and
 *  - from the workload (it answers a packet it received): the quoted destination is the error's
 *    source, the endpoint's own address (`ep_addr`). The error can only go to the connection's peer;
 *  - towards the workload (an answer to a packet it sent): the quoted source is the endpoint's own
 *    address. The error comes from the quoted destination (port unreachable) or from a router on the
 *    path, from the router's own address (time exceeded, PMTU's fragmentation needed / packet too big),
 *    which is this host, another node or the world: a workload is on no other workload's path, so an
 *    error from a third party with a workload's identity is not related.
 * Then policy judges everything else: errors quoting another endpoint's connection, or sent anywhere
 * but to the quoted packet's sender. `key` is scratch space (the caller's, to keep the stack small). */
static __always_inline int ct_icmp_related(struct __sk_buff *skb, const struct pkt *p, const __u8 *ep_addr, __u8 dir,
					   __u64 now, struct ct_key *key)
{
	__u32 off = (__u32)p->l4_off + 8, saddr_off, alen, identity;
	__u8 h[12], addrs[32], protocol, qdir;
	__u16 sport = 0, dport = 0;
	struct ct_entry *e;

	__builtin_memset(addrs, 0, sizeof(addrs));
	if (p->family == FAMILY_IPV4) {
		/* version/ihl @0, frag_off @6, protocol @9, saddr @12, daddr @16 */
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0 || (h[0] >> 4) != 4 || (h[0] & 0xf) < 5)
			return 0;
		if (((h[6] << 8) | h[7]) & 0x1fff)
			return 0;
		protocol = h[9];
		saddr_off = off + 12;
		alen = 4;
		off += (h[0] & 0xf) * 4;
	} else {
		/* version @0, next header @6, saddr @8, daddr @24 */
		if (bpf_skb_load_bytes(skb, off, h, 8) < 0 || (h[0] >> 4) != 6)
			return 0;
		protocol = h[6];
		saddr_off = off + 8;
		alen = 16;
		off += 40;
	}
	if (bpf_skb_load_bytes(skb, off, h, 8) < 0)
		return 0;
	switch (protocol) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		sport = (h[0] << 8) | h[1];
		dport = (h[2] << 8) | h[3];
		break;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_:
		if (h[0] == ICMP_ECHO_ || h[0] == ICMPV6_ECHO_REQUEST_)
			sport = (h[4] << 8) | h[5];
		else if (h[0] == ICMP_ECHOREPLY_ || h[0] == ICMPV6_ECHO_REPLY_)
			dport = (h[4] << 8) | h[5];
		else
			return 0;
		break;
	default:
		return 0;
	}
	if (alen == 4) {
		if (bpf_skb_load_bytes(skb, saddr_off, addrs, 4) < 0 || bpf_skb_load_bytes(skb, saddr_off + 4, addrs + 16, 4) < 0)
			return 0;
	} else if (bpf_skb_load_bytes(skb, saddr_off, addrs, 32) < 0) {
		return 0;
	}

	/* quoted source = the error's destination; the endpoint's side of the quoted packet is its own */
	if (!addr_eq(addrs, p->daddr, p->family))
		return 0;
	if (dir == DIR_EGRESS) {
		if (!addr_eq(addrs + 16, p->saddr, p->family) || !addr_eq(addrs + 16, ep_addr, p->family))
			return 0;
	} else {
		if (!addr_eq(addrs, ep_addr, p->family))
			return 0;
		if (!addr_eq(addrs + 16, p->saddr, p->family)) {
			identity = ipcache_identity(p->saddr, p->family);
			if (identity >= IDENTITY_RANGE_LABEL_FIRST && identity < IDENTITY_RANGE_LOCAL_FLAG)
				return 0;
		}
	}

	/* the quoted packet travelled opposite to this error, at the same endpoint */
	qdir = dir == DIR_INGRESS ? DIR_EGRESS : DIR_INGRESS;
	ct_key_fill(key, addrs, addrs + 16, sport, dport, protocol, p->family, qdir);
	e = bpf_map_lookup_elem(&conntrack, key);
	if (!e || ct_expired(e, protocol, now))
		return 0;
	return e->direction == qdir ? 1 : 2;
}
