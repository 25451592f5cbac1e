/* Remote address -> identity. Unknown addresses are the world: WORLD_IPV4 (9) / WORLD_IPV6 (10), the
 * dual-stack reserved identities of Cilium >= 1.15, so policy can tell the families apart; the agent's
 * policy compiler treats the `world` entity as {2, 9, 10}. */
#pragma once

#include "maps.h"

static __always_inline __u32 ipcache_identity(const __u8 *addr, __u8 family)
{
	struct ipcache_key k;
	struct ipcache_value *v;

	__builtin_memset(&k, 0, sizeof(k));
	/* the key's prefix also covers family + padding (32 bits) */
	k.prefixlen = 32 + (family == FAMILY_IPV4 ? 32 : 128);
	k.family = family;
	__builtin_memcpy(k.addr, addr, 16);
	v = bpf_map_lookup_elem(&ipcache, &k);
	if (v)
		return v->identity;
	return family == FAMILY_IPV4 ? IDENTITY_WORLD_IPV4 : IDENTITY_WORLD_IPV6;
}
