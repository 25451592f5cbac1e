/* Remote address -> identity. Unknown addresses are the world: WORLD_IPV4 (9) / WORLD_IPV6 (10), the
 * dual-stack reserved identities of Cilium >= 1.15, so policy can tell the families apart; the agent's
 * policy compiler treats the `world` entity as {2, 9, 10}. */
#pragma once

#include "maps.h"
#include "parse.h"

/* Host entries come from the `ipcache_exact` hash (the common case: workload and node addresses), other
 * prefixes (CIDRs) from the LPM trie, which also answers when the hash does not know the address. A hash
 * hit equals the trie's answer (maps.h), so this is the trie's longest match either way. */
static __always_inline __u32 ipcache_identity(const __u8 *addr, __u8 family)
{
	struct ipcache_key k;
	struct ipcache_value *v;

	/* zeroed: the hash compares every byte of the key (the trie only the prefix) */
	__builtin_memset(&k, 0, sizeof(k));
	k.family = family;
	if (family == FAMILY_IPV4) {
		k.prefixlen = IPCACHE_PREFIX_V4_HOST;
		__builtin_memcpy(k.addr, addr, 4);
	} else {
		k.prefixlen = IPCACHE_PREFIX_V6_HOST;
		__builtin_memcpy(k.addr, addr, 16);
	}
	v = bpf_map_lookup_elem(&ipcache_exact, &k);
	if (!v)
		v = bpf_map_lookup_elem(&ipcache, &k);
	if (v)
		return v->identity;
	return family == FAMILY_IPV4 ? IDENTITY_WORLD_IPV4 : IDENTITY_WORLD_IPV6;
}

/* The identity of the sender of a packet towards a workload. The host's identity (always allowed on
 * ingress: allow-localhost) stands for the host's own sockets; a packet the host forwarded only claims a
 * host address (a LAN machine spoofing the host's global IPv6 address, which Linux forwards, or one
 * owning an address the host does not deliver locally): it is the world's. */
static __always_inline __u32 ipcache_source_identity(const struct pkt *p)
{
	__u32 identity = ipcache_identity(p->saddr, p->family);

	if (identity == IDENTITY_HOST && p->forwarded)
		return p->family == FAMILY_IPV4 ? IDENTITY_WORLD_IPV4 : IDENTITY_WORLD_IPV6;
	return identity;
}

/* The identity a workload address has in the ipBlock view (IPCACHE_FAMILY_IPBLOCK, shared.gen.h): that
 * of the longest Kubernetes NetworkPolicy ipBlock prefix (or except) covering it, 0 when none does.
 * Only the trie holds that view (no host entries in `ipcache_exact`). */
static __always_inline __u32 ipblock_identity(const __u8 *addr, __u8 family)
{
	struct ipcache_key k;
	struct ipcache_value *v;

	__builtin_memset(&k, 0, sizeof(k));
	k.family = family | IPCACHE_FAMILY_IPBLOCK;
	if (family == FAMILY_IPV4) {
		k.prefixlen = IPCACHE_PREFIX_V4_HOST;
		__builtin_memcpy(k.addr, addr, 4);
	} else {
		k.prefixlen = IPCACHE_PREFIX_V6_HOST;
		__builtin_memcpy(k.addr, addr, 16);
	}
	v = bpf_map_lookup_elem(&ipcache, &k);
	return v ? v->identity : 0;
}
