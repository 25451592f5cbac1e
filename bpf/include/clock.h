/* The packet's time for conntrack: bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC at tick resolution), which
 * only moves when jiffies do. jiffies is one load (the verifier inlines bpf_jiffies64 on x86-64 and other
 * 64-bit JITs), the per-CPU array lookup is inlined too, so most packets get the clock without a helper
 * call: on this kind of host every call returns through the SRSO safe-RET thunk (~15-20 ns a packet).
 * The clock is read once per tick and CPU. A CPU that sees the new jiffies a moment before the timekeeper
 * has advanced the clock keeps the old value for one more tick (4 ms at HZ=250): conntrack ages entries
 * in seconds and compares times signed (ct_expired), so this is below its resolution. */
#pragma once

#include "maps.h"

static __always_inline __u64 clock_coarse_ns(void)
{
	struct clock_cache *c;
	__u32 zero = 0;
	__u64 j;

	c = bpf_map_lookup_elem(&clock_cache, &zero);
	if (!c)
		return bpf_ktime_get_coarse_ns();
	j = bpf_jiffies64();
	if (c->jiffies != j || !c->coarse_ns) {
		c->coarse_ns = bpf_ktime_get_coarse_ns();
		c->jiffies = j;
	}
	return c->coarse_ns;
}
