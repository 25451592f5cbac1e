/* Common includes and helpers for the kitnet datapath. */
#pragma once

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "shared.gen.h"

#define __always_inline inline __attribute__((always_inline))

#ifndef likely
#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#endif

#define NSEC_PER_SEC 1000000000ULL

static __always_inline int is_zero(const __u8 *a, int n)
{
	__u8 acc = 0;
	int i;

	for (i = 0; i < n; i++)
		acc |= a[i];
	return acc == 0;
}

static __always_inline int bytes_eq(const __u8 *a, const __u8 *b, int n)
{
	__u8 acc = 0;
	int i;

	for (i = 0; i < n; i++)
		acc |= a[i] ^ b[i];
	return acc == 0;
}
