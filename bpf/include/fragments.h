/* IP fragments: only the first fragment carries the L4 header, but conntrack and policy need its ports
 * for every fragment. The first fragment records them per datagram (addresses, protocol, identification);
 * later fragments borrow them. A later fragment that arrives before its first (reordering) or after
 * the entry was evicted keeps has_l4 = 0: policy then matches it by protocol only. */
#pragma once

#include "maps.h"
#include "metrics.h"
#include "parse.h"

static __always_inline void frag_track(struct pkt *p)
{
	struct frag_value *v, fresh;
	struct frag_key k;

	__builtin_memset(&k, 0, sizeof(k));
	__builtin_memcpy(k.saddr, p->saddr, 16);
	__builtin_memcpy(k.daddr, p->daddr, 16);
	k.id = p->frag_id;
	k.protocol = p->protocol;
	k.family = p->family;

	if (p->has_l4) {
		/* first fragment */
		__builtin_memset(&fresh, 0, sizeof(fresh));
		fresh.sport = p->sport;
		fresh.dport = p->dport;
		fresh.icmp_id = p->icmp_id;
		fresh.icmp_type = p->icmp_type;
		bpf_map_update_elem(&fragments, &k, &fresh, BPF_ANY);
		return;
	}
	v = bpf_map_lookup_elem(&fragments, &k);
	if (!v) {
		metric_add(METRIC_FRAG_UNKNOWN, 0);
		return;
	}
	p->sport = v->sport;
	p->dport = v->dport;
	p->icmp_id = v->icmp_id;
	p->icmp_type = v->icmp_type;
	p->has_l4 = 1;
	p->l4_from_frag = 1;
}
