/* Map definitions. Every map is pinned by name under <pinRoot>/maps so a restarted agent reuses it
 * (libbpf pin_root_path) and the datapath keeps its state while the agent is down. Layouts come from
 * shared.gen.h; sizes from the same generator. */
#pragma once

#include "common.h"

/* ifindex of the host-side device -> endpoint. Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ENDPOINTS_MAP_MAX);
	__type(key, __u32);
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

/* Workload address -> ifindex of its host-side device, for the one place where skb->ifindex is not the
 * host side: netkit runs the primary's program with skb->dev already switched to the peer (whose ifindex
 * is only meaningful inside the workload's namespace). Written by the agent with every endpoints entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ENDPOINT_ADDRS_MAP_MAX);
	__type(key, struct endpoint_addr_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoint_addrs SEC(".maps");

/* Remote address (longest prefix) -> identity and host. Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, IPCACHE_MAP_MAX);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache SEC(".maps");

/* The host entries of `ipcache` (IPv4 /32, IPv6 /128), the same keys and values byte for byte, in a hash:
 * one hashed bucket instead of a walk down the trie, whose depth grows with its size. Looked up first;
 * the trie only on a miss. A hit is exactly what the trie would return (nothing is longer than a host
 * prefix), so the result is the same whichever map answers. The agent keeps this a subset of the trie
 * (bpf/maps/ipcache.ts): the trie stays complete, so programs of an older object, which only know the
 * trie, and a hash that is still empty (just created by an upgrade, until the loader fills it from the
 * trie) give the right answer too. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, IPCACHE_EXACT_MAP_MAX);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* memory follows use, like the trie's */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache_exact SEC(".maps");

/* Policy: (endpoint, remote identity, direction, protocol, port prefix) -> allow / deny. Written by the
 * agent from the policy compiler's entries; see policy.h for the lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, POLICY_MAP_MAX);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

/* The POLICY_PREFIX_FULL entries of `policy` (exact protocol and port), keys and values byte for byte,
 * in a hash in front of the trie, as `ipcache_exact` is for the ipcache (same rules: a hit is the trie's
 * longest match, the trie is complete, see policy.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLICY_EXACT_MAP_MAX);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_exact SEC(".maps");

/* Which (endpoint, identity, direction) have policy entries shorter than POLICY_PREFIX_FULL (any
 * protocol, a port range): key = struct policy_key with prefixlen POLICY_PREFIX_ANY_PROTO, protocol and
 * port 0; value = how many such entries the trie holds for it. A full-length lookup that misses
 * `policy_exact` can only match one of those in the trie: where this map has no entry the trie walk
 * (deep in a big trie, and the usual case for the identity-0 lookup) is skipped. Only trusted once the
 * loader has filled it (CFG_F_EXACT_COMPLETE, see policy.h); the writers count up before writing the
 * trie and down after (bpf/maps/policy.ts), so it never misses a triple the trie has. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLICY_WILD_MAP_MAX);
	__type(key, struct policy_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_wild SEC(".maps");

/* Connection tracking for v4 and v6; LRU so a full table evicts the coldest flows instead of failing.
 * Flags and size from the generator; the loader migrates a pinned map of another flags or size. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CONNTRACK_MAP_MAX);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(map_flags, CONNTRACK_MAP_FLAGS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} conntrack SEC(".maps");

/* First fragment's ports per fragmented datagram, so later fragments follow their connection. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FRAGMENTS_MAP_MAX);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fragments SEC(".maps");

/* Flow events (struct flow_event) for the agent's reader. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RINGBUF_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* endpoint_id -> its drop event budgets, one per direction, and the drops over each it did not report
 * (events.h, drop_event_admit).
 * Entries are made by the datapath on an endpoint's first drop and deleted by the agent with the
 * endpoint. Not pinned: a budget is worth nothing across loads, and the agent reads the counts from the
 * object it loaded (they start again at 0 with the agent, as its other counters do). LRU so that a full
 * map forgets a stale budget instead of reporting every drop of a new endpoint. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DROP_LIMIT_MAP_MAX);
	__type(key, __u32);
	__type(value, struct drop_limit);
} drop_limit SEC(".maps");

/* When the reader of `events` is woken (events.h): a timer and the time it is due. BPF-internal (the
 * agent never reads it); pinned because a timer needs a map that user space holds, also while the agent
 * is down and its pinned links keep the programs running. */
struct events_wakeup {
	struct bpf_timer timer;
	__u64 due_ns;       /* bpf_ktime_get_ns() the pending wakeup is due at; 0 = none pending */
	__u64 cons_pos;     /* reader's position at the last timer wakeup: unchanged = reader away */
	__u64 forced_ns;    /* last wakeup forced because the ring was half full */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct events_wakeup);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events_wakeup SEC(".maps");

/* The coarse clock as last read on this CPU, and the jiffies it was read at (clock.h). BPF-internal and
 * not pinned: a cache, fresh with every object (the programs hold it as long as they run). */
struct clock_cache {
	__u64 jiffies;
	__u64 coarse_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clock_cache);
} clock_cache SEC(".maps");

/* Per-CPU counters, indexed by METRIC_*. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, METRICS_MAP_MAX);
	__type(key, __u32);
	__type(value, struct metrics_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} metrics SEC(".maps");

/* Runtime configuration, one entry at key 0. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CONFIG_MAP_MAX);
	__type(key, __u32);
	__type(value, struct dp_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} config SEC(".maps");
