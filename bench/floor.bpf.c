// SPDX-License-Identifier: Apache-2.0
/* The floor for bench/datapath.bench.ts: a tc program that does nothing, run through BPF_PROG_TEST_RUN
 * beside kitnet's programs, so the table shows what the test harness itself costs per packet.
 * Compiled at bench time (clang -target bpf); not part of the datapath. */
#include <linux/bpf.h>

__attribute__((section("tc"), used)) int floor_next(struct __sk_buff *skb)
{
	return -1; /* TCX_NEXT */
}

char _license[] __attribute__((section("license"), used)) = "GPL";
