/* Flow events into the `events` ring buffer. A failed reservation (ring full because the agent is slow
 * or down) is counted in METRIC_EVENTS_LOST, which the agent reports as lost events. */
#pragma once

#include "maps.h"
#include "metrics.h"
#include "parse.h"

/* Waking the reader. A plain submit wakes the reader (irq_work, a self-IPI: ~6 us in this VM) whenever
 * the reader has caught up, i.e. for nearly every event when events are rare and the agent is quick. So
 * events are submitted without a wakeup, and a timer wakes the reader EVENTS_WAKEUP_DELAY_NS after the
 * first event it has not seen: at most one wakeup per delay, and every event reaches the reader within
 * about that delay. A ring at least half full wakes the reader at once (at most every 100 us), so bursts
 * are not lost to a sleeping reader. If the timer cannot be armed, the submit wakes as before. */
/* 4 ms rather than 1: each wakeup costs the agent some 30-50 us (epoll, the addon's copy and callback)
 * whatever it brings; at ~20k connections/s between two workloads the reader's CPU per connection fell
 * by about 30 % (netpath, bench/README section 2), and a flow still reaches Hubble within a few ms. */
#define EVENTS_WAKEUP_DELAY_NS 4000000ULL
/* The reader did not move since the last timer wakeup (agent down or stuck): look again this much later. */
#define EVENTS_WAKEUP_IDLE_NS 10000000ULL
/* Ring half full: wake at once, but not more often than this (a reader that lags behind is awake
 * anyway; a wakeup per event would make every packet pay for the slow reader). */
#define EVENTS_WAKEUP_FULL_GAP_NS 100000ULL
/* A wakeup due this long ago that never ran (timer lost): arm again. */
#define EVENTS_WAKEUP_STALE_NS 50000000ULL

#ifndef CLOCK_MONOTONIC
#define CLOCK_MONOTONIC 1
#endif

/* Forces a wakeup: a discarded 8-byte record, committed with BPF_RB_FORCE_WAKEUP (the reader skips it). */
static __always_inline void events_wake_now(void)
{
	void *rec = bpf_ringbuf_reserve(&events, 8, 0);

	if (rec)
		bpf_ringbuf_discard(rec, BPF_RB_FORCE_WAKEUP);
}

/* Timer callback. The pending mark is cleared before looking at the ring, so a producer that still saw
 * it had already reserved its record (producer position moved): the ring is not empty here and the timer
 * is armed again. It keeps firing while unread data is there (a record may still be uncommitted when the
 * reader looks), slower while the reader does not move. */
static int events_wakeup_fire(void *map, __u32 *key, struct events_wakeup *w)
{
	__u64 cons, delay = EVENTS_WAKEUP_DELAY_NS;

	__sync_lock_test_and_set(&w->due_ns, 0);
	if (!bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA))
		return 0;
	cons = bpf_ringbuf_query(&events, BPF_RB_CONS_POS);
	if (cons == w->cons_pos)
		delay = EVENTS_WAKEUP_IDLE_NS;
	w->cons_pos = cons;
	events_wake_now();
	if (__sync_val_compare_and_swap(&w->due_ns, 0, bpf_ktime_get_ns() + delay) == 0)
		bpf_timer_start(&w->timer, delay, 0);
	return 0;
}

/* Flags for the submit of a record already reserved (so the timer callback sees it): a forced wakeup when
 * the ring is half full (at most every EVENTS_WAKEUP_FULL_GAP_NS); no wakeup when a timer wakeup is
 * pending or could be armed; otherwise (no timer) the default wakeup, as before. */
static __always_inline __u64 events_wakeup_flags(__u64 now)
{
	struct events_wakeup *w;
	__u32 zero = 0;
	__u64 due;

	w = bpf_map_lookup_elem(&events_wakeup, &zero);
	if (!w)
		return 0;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) / 2 &&
	    (__s64)(now - w->forced_ns) >= (__s64)EVENTS_WAKEUP_FULL_GAP_NS) {
		w->forced_ns = now;
		return BPF_RB_FORCE_WAKEUP;
	}
	/* otherwise the timer: a recent forced wakeup may have come before this record */
	due = w->due_ns;
	if (due && (__s64)(now - due) < (__s64)EVENTS_WAKEUP_STALE_NS)
		return BPF_RB_NO_WAKEUP;
	if (__sync_val_compare_and_swap(&w->due_ns, due, now + EVENTS_WAKEUP_DELAY_NS) != due)
		return BPF_RB_NO_WAKEUP; /* another CPU armed it just now */
	bpf_timer_init(&w->timer, &events_wakeup, CLOCK_MONOTONIC); /* -EBUSY once initialised: fine */
	if (bpf_timer_set_callback(&w->timer, events_wakeup_fire) == 0 &&
	    bpf_timer_start(&w->timer, EVENTS_WAKEUP_DELAY_NS, 0) == 0)
		return BPF_RB_NO_WAKEUP;
	__sync_lock_test_and_set(&w->due_ns, 0);
	return 0;
}

/* Whether a drop of this endpoint in this direction may be reported: each endpoint has one budget per
 * direction (dp_config.drop_events_rate per second, drop_events_burst at once, each), so drops of
 * packets to the workload (DIR_INGRESS: what others send it, which anyone may flood) never use up the
 * budget of what it sent itself and was denied (DIR_EGRESS), nor the other way round. A budget is a GCRA,
 * one word (drop_limit.ingress_tat_ns / egress_tat_ns) that every CPU advances with a compare-and-swap,
 * so the bound holds however many CPUs drop for the endpoint: at most burst + rate * t events in any t
 * seconds and direction. A drop over the budget only reads the word and counts itself (per endpoint and
 * direction, and in METRIC_DROP_EVENTS_SUPPRESSED). Only drops that would be reported get here:
 * forwarded traffic never pays for it. A lost race is tried again a few times, then the drop counts as
 * suppressed: the bound is the promise, not the last event. */
#define DROP_LIMIT_CAS_TRIES 4

static __always_inline int drop_event_admit(__u32 endpoint_id, __u8 direction)
{
	__u64 rate = DROP_EVENTS_RATE_DEFAULT, burst = DROP_EVENTS_BURST_DEFAULT, interval, tolerance, now, tat, base;
	struct drop_limit *b, fresh = {};
	struct dp_config *cfg;
	__u64 *tat_ns, *suppressed;
	__u32 zero = 0;
	int i;

	cfg = bpf_map_lookup_elem(&config, &zero);
	if (cfg && (cfg->flags & CFG_F_SET)) {
		if (cfg->drop_events_rate)
			rate = cfg->drop_events_rate;
		if (cfg->drop_events_burst)
			burst = cfg->drop_events_burst;
	}
	if (rate == DROP_EVENTS_UNLIMITED)
		return 1;
	b = bpf_map_lookup_elem(&drop_limit, &endpoint_id);
	if (!b) {
		bpf_map_update_elem(&drop_limit, &endpoint_id, &fresh, BPF_NOEXIST); /* -EEXIST: another CPU made it */
		b = bpf_map_lookup_elem(&drop_limit, &endpoint_id);
		if (!b)
			return 1; /* no budget to keep: report as before */
	}
	/* what the workload sent is egress; everything else (to it, or of no direction) ingress */
	if (direction == DIR_EGRESS) {
		tat_ns = &b->egress_tat_ns;
		suppressed = &b->egress_suppressed;
	} else {
		tat_ns = &b->ingress_tat_ns;
		suppressed = &b->ingress_suppressed;
	}
	interval = NSEC_PER_SEC / rate;
	tolerance = interval * (burst - 1);
	now = bpf_ktime_get_ns();
	for (i = 0; i < DROP_LIMIT_CAS_TRIES; i++) {
		tat = *(volatile __u64 *)tat_ns;
		base = (__s64)(tat - now) > 0 ? tat : now;
		if (base - now > tolerance)
			break;
		if (__sync_val_compare_and_swap(tat_ns, tat, base + interval) == tat)
			return 1;
	}
	__sync_fetch_and_add(suppressed, 1);
	metric_add(METRIC_DROP_EVENTS_SUPPRESSED, 0);
	return 0;
}

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
	__u64 now;

	if (!e) {
		metric_add(METRIC_EVENTS_LOST, 0);
		return;
	}
	/* ring buffer memory is not zeroed: clear the padding too */
	__builtin_memset(e, 0, sizeof(*e));
	now = bpf_ktime_get_ns();
	e->time_ns = now;
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
	bpf_ringbuf_submit(e, events_wakeup_flags(now));
	metric_add(METRIC_EVENTS_SENT, 0);
}
