/* Per-CPU counters: no atomics needed, userspace sums over CPUs. */
#pragma once

#include "maps.h"

static __always_inline void metric_add(__u32 slot, __u64 bytes)
{
	struct metrics_value *m = bpf_map_lookup_elem(&metrics, &slot);

	if (m) {
		m->packets += 1;
		m->bytes += bytes;
	}
}

static __always_inline __u32 metric_slot(__u8 dir, __u8 verdict)
{
	return (__u32)(dir - 1) * 2 + (verdict - 1);
}
