/* Flow events into the `events` ring buffer. A failed reservation (ring full because the agent is slow
 * or down) is counted in METRIC_EVENTS_LOST, which the agent reports as lost events. */
#pragma once

#include "maps.h"
#include "metrics.h"
#include "parse.h"

/* Everything the datapath decided about one packet; filled step by step, then reported. */
struct flow_ctx {
	const struct pkt *p;
	__u32 ifindex;
	__u32 endpoint_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 len;
	__u16 drop_reason;
	__u8 direction;
	__u8 verdict;
	__u8 is_reply;
	__u8 reason;
};

static __always_inline void event_emit(const struct flow_ctx *c)
{
	struct flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	const struct pkt *p = c->p;

	if (!e) {
		metric_add(METRIC_EVENTS_LOST, 0);
		return;
	}
	/* ring buffer memory is not zeroed: clear the padding too */
	__builtin_memset(e, 0, sizeof(*e));
	e->time_ns = bpf_ktime_get_ns();
	e->ifindex = c->ifindex;
	e->endpoint_id = c->endpoint_id;
	e->src_identity = c->src_identity;
	e->dst_identity = c->dst_identity;
	e->length = c->len;
	__builtin_memcpy(e->saddr, p->saddr, 16);
	__builtin_memcpy(e->daddr, p->daddr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->drop_reason = c->drop_reason;
	e->direction = c->direction;
	e->family = p->family;
	e->protocol = p->protocol;
	e->icmp_type = p->icmp_type;
	e->icmp_code = p->icmp_code;
	e->tcp_flags = p->tcp_flags;
	e->verdict = c->verdict;
	e->is_reply = c->is_reply;
	e->reason = c->reason;
	e->ethertype = p->eth_proto;
	bpf_ringbuf_submit(e, 0);
	metric_add(METRIC_EVENTS_SENT, 0);
}
