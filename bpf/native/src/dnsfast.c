// SPDX-License-Identifier: Apache-2.0
/*
 * The DNS proxy's fast path (agent/dns/fast-path.ts): a thread of its own that answers, without the
 * agent's JavaScript thread, the UDP lookups whose outcome that thread already decided.
 *
 * Why: a lookup through the proxy crossed the agent's event loop twice (query in, answer out), and the
 * loop also runs the flows, the API and V8's collections: its stalls of a few ms were the proxy's p99
 * (bench/README §8), while a C forwarder adds a fraction of a millisecond. What the thread may do alone
 * is what the agent told it, and nothing else:
 *
 * - a verdict: (client address, the resolver it addressed as the datapath's `dns_redirect` map says,
 *   the name as text) -> allowed, forwarded to this upstream. Only allowed verdicts are given; the agent
 *   drops them all (a generation) whenever what they were made from changes (policy, workloads, learned
 *   identities, config), and each expires after VERDICT_MAX_AGE_MS in any case;
 * - name plans: (client address, resolver, port) -> every name matching these selectors (Cilium's
 *   matchName / matchPattern, as agent/policy/fqdn.ts matches them), or every name, is allowed and goes
 *   to this upstream: the DNS rules that decide the queries of one workload to one resolver, so a name
 *   never asked before need not wait for the agent's thread either. Given, dropped and aged as verdicts;
 *   a name the thread matches is also checked by the agent again, as every lookup is;
 * - known answers: (name, address) pairs whose address the maps already hold for that name, with the
 *   expiry the agent keeps. An answer is released here only when every address it teaches is known and
 *   stays so for at least KNOWN_MARGIN_MS: learning it would write nothing.
 *
 * Anything else goes to the agent as it came: a query it has no verdict for (or any query the thread
 * cannot read as plainly as codec.ts would: escapes in names, odd flags, more than one question), an
 * answer with something new to learn, an upstream's failure. And every query the thread answered is
 * handed to the agent afterwards (flows, metrics, the learned addresses' expiry), in batches: one wakeup
 * of the agent's loop per wakeup of this thread.
 *
 * Upstream sockets follow agent/dns/upstream-udp.ts: connected to the upstream, random ports from the
 * kernel, each retired after `queries_per_socket` queries; every query under a random id of the proxy's,
 * unique among its socket's queries in flight, and an answer must carry that id and the query's question.
 */
#include "addon.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>

#include "../../include/shared.gen.h"

#define DNS_HEADER 12
/* A name's text as codec.ts writes it: at most 4 characters a wire byte. */
#define NAME_TEXT_MAX (255 * 4 + 1)
/* Names the tables hold: no escapes, so at most 253 characters. */
#define TABLE_NAME_MAX 254
#define FAST_QUERY_MAX 512
#define FAST_ANSWERS_MAX 64
#define FAST_CHAIN_MAX 32
#define FAST_IDS_MAX 64
#define FAST_SOCKETS_MAX 256
#define FAST_RECV_BURST 64
#define VERDICT_MAX_AGE_MS 60000
#define KNOWN_MARGIN_MS 5000
#define SOCKET_IDLE_MS 1000

enum record_kind {
	REC_QUERY = 1,	  /* not taken: the agent answers it as before */
	REC_ANSWERED = 2, /* forwarded and released here (flag SENT) or to be sent by the agent */
	REC_LEARN = 3,	  /* forwarded; the answer teaches something: the agent learns it, then releases it */
	REC_FAILED = 4,	  /* forwarded; the upstream failed: the agent answers SERVFAIL */
};
#define REC_F_SENT 1
#define REC_F_ADDRESSED 2 /* the datapath's dns_redirect entry of the query was read: the resolver below */
/*
 * A record (host byte order): u32 length (the whole record, 8-aligned), u8 kind, u8 flags, u16 client
 * port, u16 upstream port, u16 addressed port, i32 errno (REC_FAILED: 0 = no answer in time), u32 query
 * length, u32 answer length, u64 received (wall clock, ns), char[48] client address, char[48] upstream
 * address, u16 0 x4, char[48] addressed resolver (the query's original destination, as the thread read
 * it from dns_redirect: the agent need not read the map again), all NUL-padded, then the query's bytes
 * and the answer's (the client's id put back).
 */
#define REC_HEADER 184
#define REC_ADDR_TEXT 48
#define REC_ADDRESSED_AT 136

/* ---- the tables the agent fills (shared by the proxies of both families) -------------------------- */

/* Whose queries to which resolver (as dns_redirect has it), and the upstream they go to: what a verdict
 * or a plan is given for. */
struct fast_route {
	uint8_t family;
	uint8_t client[16];
	uint8_t orig[16];
	uint16_t orig_port;
	struct sockaddr_storage upstream;
	socklen_t upstream_len;
};

struct verdict_slot {
	char *name; /* NULL: empty */
	uint64_t hash;
	uint32_t gen;
	int64_t expires_ms;
	struct fast_route route;
};

/* The selectors of a plan, packed: entries of a kind byte ('n' matchName, 'p' matchPattern, 'w' every
 * name) and the selector's text normalised as fqdn.ts does (lower case, trailing dot), each ended by NUL;
 * an empty entry ends the list. */
struct plan_slot {
	char *selectors; /* NULL: empty */
	uint64_t hash;
	uint32_t gen;
	int64_t expires_ms;
	struct fast_route route;
};

struct known_slot {
	char *name;
	uint64_t hash;
	uint32_t gen;
	uint8_t family;
	uint8_t addr[16];
	int64_t expires_ms;
};

struct fast_tables {
	pthread_mutex_t lock;
	atomic_int refs;
	uint32_t verdict_gen, known_gen;
	struct verdict_slot *verdicts;
	size_t vcap, vused;
	struct plan_slot *plans;
	size_t pcap, pused;
	struct known_slot *known;
	size_t kcap, kused;
};

static int64_t now_ms(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t hash_bytes(uint64_t h, const void *data, size_t len)
{
	const uint8_t *p = data;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static uint64_t verdict_hash(uint8_t family, const uint8_t *client, const uint8_t *orig, uint16_t port, const char *name)
{
	uint64_t h = 14695981039346656037ULL;
	h = hash_bytes(h, &family, 1);
	h = hash_bytes(h, client, 16);
	h = hash_bytes(h, orig, 16);
	h = hash_bytes(h, &port, 2);
	return hash_bytes(h, name, strlen(name));
}

static uint64_t known_hash(uint8_t family, const uint8_t *addr, const char *name)
{
	uint64_t h = 14695981039346656037ULL;
	h = hash_bytes(h, &family, 1);
	h = hash_bytes(h, addr, 16);
	return hash_bytes(h, name, strlen(name));
}

static void verdicts_clear(struct fast_tables *t)
{
	for (size_t i = 0; i < t->vcap; i++) {
		free(t->verdicts[i].name);
		t->verdicts[i].name = NULL;
	}
	t->vused = 0;
}

static void known_clear(struct fast_tables *t)
{
	for (size_t i = 0; i < t->kcap; i++) {
		free(t->known[i].name);
		t->known[i].name = NULL;
	}
	t->kused = 0;
}

static bool route_same(const struct fast_route *r, uint8_t family, const uint8_t *client, const uint8_t *orig, uint16_t port)
{
	return r->family == family && r->orig_port == port && !memcmp(r->client, client, 16) && !memcmp(r->orig, orig, 16);
}

static bool verdict_same(const struct verdict_slot *s, uint64_t h, uint8_t family, const uint8_t *client, const uint8_t *orig, uint16_t port, const char *name)
{
	return s->hash == h && route_same(&s->route, family, client, orig, port) && !strcmp(s->name, name);
}

static bool known_same(const struct known_slot *s, uint64_t h, uint8_t family, const uint8_t *addr, const char *name)
{
	return s->hash == h && s->family == family && !memcmp(s->addr, addr, 16) && !strcmp(s->name, name);
}

/* Under t->lock: the route of the verdict for a query, copied out, or false. */
static bool verdict_find(struct fast_tables *t, uint8_t family, const uint8_t *client, const uint8_t *orig, uint16_t port, const char *name, int64_t now,
			 struct fast_route *out)
{
	uint64_t h = verdict_hash(family, client, orig, port, name);
	size_t mask = t->vcap - 1;
	for (size_t i = h & mask, n = 0; n < t->vcap; i = (i + 1) & mask, n++) {
		struct verdict_slot *s = &t->verdicts[i];
		if (!s->name)
			return false;
		if (verdict_same(s, h, family, client, orig, port, name)) {
			if (s->gen != t->verdict_gen || s->expires_ms <= now)
				return false;
			*out = s->route;
			return true;
		}
	}
	return false;
}

/* ---- name plans: FQDN selectors matched as agent/policy/fqdn.ts matches them ----------------------- */

static bool label_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* globMatch (common/glob.ts) of one label: `*` any run of characters, none too; greedy, O(p x t). */
static bool glob_label(const char *p, size_t plen, const char *t, size_t tlen)
{
	size_t pi = 0, ti = 0, star_t = 0;
	long star_p = -1;
	while (ti < tlen) {
		if (pi < plen && p[pi] == '*') {
			star_p = (long)pi++;
			star_t = ti;
		} else if (pi < plen && p[pi] == t[ti]) {
			pi++;
			ti++;
		} else if (star_p >= 0) {
			pi = (size_t)star_p + 1;
			ti = ++star_t;
		} else {
			return false;
		}
	}
	while (pi < plen && p[pi] == '*')
		pi++;
	return pi == plen;
}

/* The labels of a fully qualified text (ends with '.'), the empty last one included. */
static size_t labels_count(const char *s, size_t len)
{
	size_t n = 1;
	for (size_t i = 0; i < len; i++)
		n += s[i] == '.';
	return n;
}

/* A run of labels of DNS characters, each non-empty, ended by '.' (s[0, len) ends with '.'). */
static bool labels_plain(const char *s, size_t len)
{
	size_t run = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '.') {
			if (run == 0)
				return false;
			run = 0;
		} else if (!label_char(s[i])) {
			return false;
		} else {
			run++;
		}
	}
	return run == 0;
}

/*
 * Whether the fully qualified name n[0, nlen) (lower case, [-a-z0-9_.] only, ends with '.') matches a
 * normalised matchPattern: stars only (and a trailing dot) match every name of plain labels or the root;
 * a leading run of two or more stars and a dot matches one or more whole labels; any other star matches
 * a run of characters within one label.
 */
static bool pattern_match(const char *pat, const char *n, size_t nlen)
{
	size_t plen = strlen(pat), stars = 0;
	while (stars < plen && pat[stars] == '*')
		stars++;
	if (stars > 0 && (stars == plen || (stars == plen - 1 && pat[stars] == '.')))
		return (nlen == 1 && n[0] == '.') || labels_plain(n, nlen);
	bool lead = stars >= 2 && stars < plen && pat[stars] == '.';
	const char *rest = lead ? pat + stars + 1 : pat;
	size_t rlen = lead ? plen - stars - 1 : plen;
	size_t parts = labels_count(rest, rlen), labels = labels_count(n, nlen);
	if (lead ? labels < parts + 1 : labels != parts)
		return false;
	/* the labels before the pattern's (lead): one or more, each plain */
	size_t at = 0;
	for (size_t skipped = 0; skipped < labels - parts; skipped++) {
		size_t end = at;
		while (n[end] != '.')
			end++;
		if (end == at)
			return false;
		at = end + 1;
	}
	if (lead && !labels_plain(n, at))
		return false;
	/* part by part, label by label; both end with the empty label after the trailing dot */
	size_t pi = 0;
	for (;;) {
		size_t pe = pi, ne = at;
		while (pe < rlen && rest[pe] != '.')
			pe++;
		while (ne < nlen && n[ne] != '.')
			ne++;
		if (!glob_label(rest + pi, pe - pi, n + at, ne - at))
			return false;
		if (pe >= rlen || ne >= nlen)
			return pe >= rlen && ne >= nlen;
		pi = pe + 1;
		at = ne + 1;
	}
}

/* Whether a plain query name (lower case, no trailing dot) is allowed by a plan's packed selectors. */
static bool plan_allows(const char *selectors, const char *qname)
{
	char fq[TABLE_NAME_MAX + 2];
	size_t qlen = strlen(qname);
	if (qlen >= TABLE_NAME_MAX)
		return false;
	for (size_t i = 0; i < qlen; i++)
		if (!label_char(qname[i]) && qname[i] != '.')
			return false;
	memcpy(fq, qname, qlen);
	fq[qlen] = '.';
	fq[qlen + 1] = 0;
	for (const char *e = selectors; *e; e += strlen(e) + 1) {
		const char *text = e + 1;
		if (e[0] == 'w')
			return true;
		if (e[0] == 'n' && !strcmp(text, fq))
			return true;
		if (e[0] == 'p' && pattern_match(text, fq, qlen + 1))
			return true;
	}
	return false;
}

static uint64_t plan_hash(uint8_t family, const uint8_t *client, const uint8_t *orig, uint16_t port)
{
	return verdict_hash(family, client, orig, port, "");
}

static bool plan_same(const struct plan_slot *s, uint64_t h, uint8_t family, const uint8_t *client, const uint8_t *orig, uint16_t port)
{
	return s->hash == h && route_same(&s->route, family, client, orig, port);
}

static void plans_clear(struct fast_tables *t)
{
	for (size_t i = 0; i < t->pcap; i++) {
		free(t->plans[i].selectors);
		t->plans[i].selectors = NULL;
	}
	t->pused = 0;
}

/* Under t->lock: for a name no verdict names, the route of the plan of its client and resolver if the plan allows the name, or false. */
static bool plan_find(struct fast_tables *t, uint8_t family, const uint8_t *client, const uint8_t *orig, uint16_t port, const char *name, int64_t now,
		      struct fast_route *out)
{
	uint64_t h = plan_hash(family, client, orig, port);
	size_t mask = t->pcap - 1;
	for (size_t i = h & mask, n = 0; n < t->pcap; i = (i + 1) & mask, n++) {
		struct plan_slot *s = &t->plans[i];
		if (!s->selectors)
			return false;
		if (plan_same(s, h, family, client, orig, port)) {
			if (s->gen != t->verdict_gen || s->expires_ms <= now || !plan_allows(s->selectors, name))
				return false;
			*out = s->route;
			return true;
		}
	}
	return false;
}

/* ---- DNS reading, as agent/dns/codec.ts reads it --------------------------------------------------- */

static bool dns_char(uint8_t b)
{
	return (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || (b >= '0' && b <= '9') || b == '-' || b == '_';
}

/*
 * A (possibly compressed) name at `off` of buf[0, len): its text lower-cased without the trailing dot,
 * bytes outside [-a-zA-Z0-9_] as \DDD (codec.ts nameRead, the same limits: pointers strictly backwards,
 * at most 64 of them, labels <= 63, names <= 255 wire bytes). Returns the offset past the name in the
 * original sequence, or -1 for anything malformed. *plain: no escapes.
 */
static long name_read(const uint8_t *buf, size_t len, size_t off, char *out, bool *plain)
{
	size_t pos = off, floor = off, o = 0;
	long next = -1;
	int wire = 1, jumps = 0;

	*plain = true;
	for (;;) {
		if (pos >= len)
			return -1;
		uint8_t l = buf[pos];
		if (l == 0) {
			if (next < 0)
				next = (long)pos + 1;
			break;
		}
		if ((l & 0xc0) == 0xc0) {
			if (pos + 1 >= len)
				return -1;
			size_t target = ((size_t)(l & 0x3f) << 8) | buf[pos + 1];
			if (target >= floor || ++jumps > 64)
				return -1;
			if (next < 0)
				next = (long)pos + 2;
			pos = floor = target;
			continue;
		}
		if ((l & 0xc0) != 0 || l > 63 || pos + 1 + l > len)
			return -1;
		wire += l + 1;
		if (wire > 255)
			return -1;
		if (o > 0)
			out[o++] = '.';
		for (size_t i = pos + 1; i <= pos + l; i++) {
			uint8_t b = buf[i];
			if (dns_char(b)) {
				out[o++] = (char)(b >= 'A' && b <= 'Z' ? b + 0x20 : b);
			} else {
				*plain = false;
				out[o++] = '\\';
				out[o++] = (char)('0' + b / 100);
				out[o++] = (char)('0' + (b / 10) % 10);
				out[o++] = (char)('0' + b % 10);
			}
		}
		pos += 1 + l;
	}
	out[o] = 0;
	return next;
}

static uint16_t rd16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

struct answer_rr {
	uint8_t kind; /* 1 address, 2 cname, 0 other */
	uint8_t family;
	uint8_t addr[16];
	uint16_t owner, target; /* offsets into the message's name texts */
};

/* One message read whole (codec.ts dnsParse): the question and the answer section's A / AAAA / CNAME. */
struct dns_read {
	uint16_t id, flags, qtype, qclass;
	bool plain;
	char qname[NAME_TEXT_MAX];
	int answers;
	struct answer_rr rr[FAST_ANSWERS_MAX];
	/* the answers' names, one after the other */
	char names[FAST_ANSWERS_MAX * 2][TABLE_NAME_MAX];
	int nnames;
};

/* Text into r->names (only plain names the tables could hold), or -1. */
static int name_keep(struct dns_read *r, const char *text, bool plain)
{
	if (!plain || strlen(text) >= TABLE_NAME_MAX || r->nnames >= FAST_ANSWERS_MAX * 2)
		return -1;
	strcpy(r->names[r->nnames], text);
	return r->nnames++;
}

/*
 * Reads a whole message: exactly one question, every record of every section bounds-checked, no
 * trailing bytes. False for anything codec.ts would reject, and for what this path does not take
 * (more than FAST_ANSWERS_MAX answers, names with escapes among the answers).
 */
static bool dns_read(const uint8_t *buf, size_t len, struct dns_read *r)
{
	char text[NAME_TEXT_MAX];
	bool plain;
	long pos;

	if (len < DNS_HEADER)
		return false;
	r->id = rd16(buf);
	r->flags = rd16(buf + 2);
	if (rd16(buf + 4) != 1)
		return false;
	uint16_t counts[3] = { rd16(buf + 6), rd16(buf + 8), rd16(buf + 10) };
	pos = name_read(buf, len, DNS_HEADER, r->qname, &r->plain);
	if (pos < 0 || (size_t)pos + 4 > len)
		return false;
	r->qtype = rd16(buf + pos);
	r->qclass = rd16(buf + pos + 2);
	pos += 4;
	r->answers = 0;
	r->nnames = 0;
	for (int section = 0; section < 3; section++) {
		for (unsigned i = 0; i < counts[section]; i++) {
			long after = name_read(buf, len, (size_t)pos, text, &plain);
			if (after < 0 || (size_t)after + 10 > len)
				return false;
			uint16_t type = rd16(buf + after), klass = rd16(buf + after + 2), rdlen = rd16(buf + after + 8);
			size_t rdata = (size_t)after + 10, end = rdata + rdlen;
			if (end > len)
				return false;
			struct answer_rr a = { 0 };
			if (klass == 1 && type == 1) {
				if (rdlen != 4)
					return false;
				a.kind = 1;
				a.family = FAMILY_IPV4;
				memcpy(a.addr, buf + rdata, 4);
			} else if (klass == 1 && type == 28) {
				if (rdlen != 16)
					return false;
				a.kind = 1;
				a.family = FAMILY_IPV6;
				memcpy(a.addr, buf + rdata, 16);
			} else if (type == 5) {
				char target[NAME_TEXT_MAX];
				bool tplain;
				if (name_read(buf, end, rdata, target, &tplain) != (long)end)
					return false;
				a.kind = 2;
				if (section == 0) {
					int t = name_keep(r, target, tplain);
					if (t < 0)
						return false;
					a.target = (uint16_t)t;
				}
			}
			if (section == 0) {
				if (r->answers >= FAST_ANSWERS_MAX)
					return false;
				int o = name_keep(r, text, plain);
				if (o < 0)
					return false;
				a.owner = (uint16_t)o;
				r->rr[r->answers++] = a;
			}
			pos = (long)end;
		}
	}
	return (size_t)pos == len;
}

/* The last CNAME of `name` among the answers (codec.ts keeps the last one), or -1. */
static int cname_of(const struct dns_read *r, const char *name)
{
	for (int i = r->answers - 1; i >= 0; i--)
		if (r->rr[i].kind == 2 && !strcmp(r->names[r->rr[i].owner], name))
			return r->rr[i].target;
	return -1;
}

/*
 * The name whose address records the answer teaches for the question (codec.ts dnsLearned: the end of
 * the CNAME chain), or NULL when it teaches nothing (an error rcode, a chain that loops or runs past 32).
 */
static const char *learned_name(const struct dns_read *r)
{
	const char *chain[FAST_CHAIN_MAX + 1];
	int n = 0;
	const char *name = r->qname;
	bool chained = false;

	if ((r->flags & 0xf) != 0)
		return NULL;
	for (int i = 0; i < r->answers; i++)
		chained |= r->rr[i].kind == 2;
	if (!chained)
		return name;
	for (;;) {
		for (int i = 0; i < n; i++)
			if (!strcmp(chain[i], name))
				return NULL; /* a loop ends nowhere */
		chain[n++] = name;
		if (n > FAST_CHAIN_MAX)
			return NULL;
		int t = cname_of(r, name);
		if (t < 0)
			return name;
		name = r->names[t];
	}
}

/* ---- the thread ------------------------------------------------------------------------------------ */

struct up_socket {
	int fd; /* -1: free */
	struct sockaddr_storage upstream;
	socklen_t upstream_len;
	int used, inflight;
	int64_t active_ms;
	uint16_t ids[FAST_IDS_MAX];
	int32_t slots[FAST_IDS_MAX]; /* pending slot per id entry, -1: free */
};

struct pending {
	bool busy;
	int sock;
	uint16_t up_id, client_id;
	struct sockaddr_storage client;
	socklen_t client_len;
	struct sockaddr_storage upstream;
	int64_t deadline_ms;
	uint64_t received_ns;
	uint16_t qtype, qclass;
	char qname[TABLE_NAME_MAX];
	struct dns_redirect_value addressed;
	uint16_t query_len;
	uint8_t query[FAST_QUERY_MAX];
};

struct fast_stats {
	atomic_uint_fast64_t answered, learn, failed, handed, unmatched;
	/* f->busy as other threads may read it */
	atomic_int_fast32_t in_flight;
};

struct dns_fast {
	struct fast_tables *tables;
	int client_fd, map_fd, epoll_fd, stop_fd;
	uint8_t family;
	int timeout_ms, queries_per_socket, max_sockets, max_pending;
	pthread_t thread;
	bool started, stopped;
	napi_threadsafe_function tsfn;
	/* records for the agent, filled by the thread, taken by the agent's loop */
	pthread_mutex_t out_lock;
	uint8_t *out;
	size_t out_len, out_cap;
	bool out_signalled;
	/* the thread's own */
	uint8_t *batch;
	size_t batch_len, batch_cap;
	struct up_socket socks[FAST_SOCKETS_MAX];
	struct pending *pend;
	int32_t *free_slots;
	int nfree;
	int busy;
	uint16_t rand_pool[256];
	int rand_at;
	uint8_t rbuf[65536];
	struct dns_read rd;
	struct fast_stats stats;
};

static uint16_t rand16(struct dns_fast *f)
{
	if (f->rand_at <= 0) {
		if (getrandom(f->rand_pool, sizeof(f->rand_pool), 0) != sizeof(f->rand_pool)) {
			/* the kernel's CSPRNG does not fail once seeded; if it did, no weaker source stands in */
			abort();
		}
		f->rand_at = 256;
	}
	return f->rand_pool[--f->rand_at];
}

static void addr_bytes(const struct sockaddr_storage *sa, uint8_t *out, uint16_t *port)
{
	memset(out, 0, 16);
	if (sa->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)sa;
		memcpy(out, &a->sin_addr, 4);
		*port = ntohs(a->sin_port);
	} else {
		const struct sockaddr_in6 *a = (const void *)sa;
		memcpy(out, &a->sin6_addr, 16);
		*port = ntohs(a->sin6_port);
	}
}

static bool sockaddr_same(const struct sockaddr_storage *a, socklen_t alen, const struct sockaddr_storage *b, socklen_t blen)
{
	return alen == blen && !memcmp(a, b, alen);
}

/* A record for the agent, into the thread's batch (posted at the end of the wakeup). */
static void record_add(struct dns_fast *f, uint8_t kind, uint8_t flags, const struct sockaddr_storage *client, const struct sockaddr_storage *upstream,
		       const struct dns_redirect_value *addressed, int32_t err, uint64_t received_ns, const uint8_t *query, size_t qlen,
		       const uint8_t *answer, size_t alen)
{
	size_t need = (REC_HEADER + qlen + alen + 7) & ~(size_t)7;
	uint8_t *r;
	uint16_t port, up_port = 0;
	uint8_t addr[16], up_addr[16];

	if (f->batch_len + need > f->batch_cap) {
		size_t cap = f->batch_cap ? f->batch_cap : 65536;
		while (cap < f->batch_len + need)
			cap *= 2;
		uint8_t *grown = realloc(f->batch, cap);
		if (!grown)
			return; /* dropped: the agent's view of this query is lost, not the query */
		f->batch = grown;
		f->batch_cap = cap;
	}
	r = f->batch + f->batch_len;
	memset(r, 0, REC_HEADER);
	uint32_t len32 = (uint32_t)need, q32 = (uint32_t)qlen, a32 = (uint32_t)alen;
	memcpy(r, &len32, 4);
	r[4] = kind;
	r[5] = flags;
	addr_bytes(client, addr, &port);
	memcpy(r + 6, &port, 2);
	if (upstream) {
		addr_bytes(upstream, up_addr, &up_port);
		inet_ntop(upstream->ss_family, up_addr, (char *)r + 80, REC_ADDR_TEXT);
	}
	memcpy(r + 8, &up_port, 2);
	memcpy(r + 12, &err, 4);
	memcpy(r + 16, &q32, 4);
	memcpy(r + 20, &a32, 4);
	memcpy(r + 24, &received_ns, 8);
	inet_ntop(client->ss_family, addr, (char *)r + 32, REC_ADDR_TEXT);
	if (addressed) {
		/* the entry's family is the client's: a steered packet keeps its family */
		r[5] |= REC_F_ADDRESSED;
		memcpy(r + 10, &addressed->port, 2);
		inet_ntop(client->ss_family, addressed->addr, (char *)r + REC_ADDRESSED_AT, REC_ADDR_TEXT);
	}
	memcpy(r + REC_HEADER, query, qlen);
	if (alen)
		memcpy(r + REC_HEADER + qlen, answer, alen);
	f->batch_len += need;
}

/* The batch to the agent: one call of its callback per wakeup of this thread at most. */
static void batch_post(struct dns_fast *f)
{
	bool signal;

	if (!f->batch_len)
		return;
	pthread_mutex_lock(&f->out_lock);
	if (f->out_len + f->batch_len > f->out_cap) {
		size_t cap = f->out_cap ? f->out_cap : 65536;
		while (cap < f->out_len + f->batch_len)
			cap *= 2;
		uint8_t *grown = realloc(f->out, cap);
		if (!grown) {
			pthread_mutex_unlock(&f->out_lock);
			f->batch_len = 0;
			return;
		}
		f->out = grown;
		f->out_cap = cap;
	}
	memcpy(f->out + f->out_len, f->batch, f->batch_len);
	f->out_len += f->batch_len;
	signal = !f->out_signalled;
	f->out_signalled = true;
	pthread_mutex_unlock(&f->out_lock);
	f->batch_len = 0;
	if (signal)
		napi_call_threadsafe_function(f->tsfn, NULL, napi_tsfn_nonblocking);
}

static uint64_t realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void sock_close(struct dns_fast *f, int i)
{
	struct up_socket *s = &f->socks[i];
	if (s->fd < 0)
		return;
	epoll_ctl(f->epoll_fd, EPOLL_CTL_DEL, s->fd, NULL);
	close(s->fd);
	s->fd = -1;
}

/* A socket for one more query to `up`: one with room, or a new one; -1 when none may be opened. */
static int sock_for(struct dns_fast *f, const struct sockaddr_storage *up, socklen_t uplen, int64_t now)
{
	int open = 0, free_at = -1;

	for (int i = 0; i < FAST_SOCKETS_MAX; i++) {
		struct up_socket *s = &f->socks[i];
		if (s->fd < 0) {
			if (free_at < 0)
				free_at = i;
			continue;
		}
		open++;
		if (!sockaddr_same(&s->upstream, s->upstream_len, up, uplen))
			continue;
		if (s->used < f->queries_per_socket && s->inflight < FAST_IDS_MAX)
			return i;
	}
	if (open >= f->max_sockets || free_at < 0) {
		/* make room: the idle ones go first */
		for (int i = 0; i < FAST_SOCKETS_MAX && open >= f->max_sockets; i++)
			if (f->socks[i].fd >= 0 && f->socks[i].inflight == 0) {
				sock_close(f, i);
				open--;
				if (free_at < 0 || i < free_at)
					free_at = i;
			}
		if (open >= f->max_sockets || free_at < 0)
			return -1;
	}
	int fd = socket(up->ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)up, uplen) < 0) {
		close(fd);
		return -1;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)free_at + 2 };
	if (epoll_ctl(f->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		close(fd);
		return -1;
	}
	struct up_socket *s = &f->socks[free_at];
	s->fd = fd;
	s->upstream = *up;
	s->upstream_len = uplen;
	s->used = 0;
	s->inflight = 0;
	s->active_ms = now;
	for (int k = 0; k < FAST_IDS_MAX; k++)
		s->slots[k] = -1;
	return free_at;
}

static void slot_free(struct dns_fast *f, int32_t slot)
{
	struct pending *p = &f->pend[slot];
	struct up_socket *s = &f->socks[p->sock];
	for (int k = 0; k < FAST_IDS_MAX; k++)
		if (s->slots[k] == slot) {
			s->slots[k] = -1;
			break;
		}
	s->inflight--;
	p->busy = false;
	f->busy--;
	atomic_store(&f->stats.in_flight, f->busy);
	f->free_slots[f->nfree++] = slot;
}

/* Forwards a query the tables allow; false when it cannot be taken here (then the agent takes it). */
static bool forward(struct dns_fast *f, const uint8_t *q, size_t qlen, const struct sockaddr_storage *client, socklen_t client_len,
		    const struct fast_route *v, uint64_t received_ns, int64_t now)
{
	uint8_t out[FAST_QUERY_MAX];
	int si, k;
	uint16_t id;

	if (f->nfree == 0)
		return false;
	si = sock_for(f, &v->upstream, v->upstream_len, now);
	if (si < 0)
		return false;
	struct up_socket *s = &f->socks[si];
	for (k = 0; k < FAST_IDS_MAX && s->slots[k] >= 0; k++)
		;
	if (k == FAST_IDS_MAX)
		return false;
	/* an id no other query in flight on this socket has */
	for (;;) {
		bool taken = false;
		id = rand16(f);
		for (int j = 0; j < FAST_IDS_MAX; j++)
			if (s->slots[j] >= 0 && s->ids[j] == id)
				taken = true;
		if (!taken)
			break;
	}
	memcpy(out, q, qlen);
	out[0] = (uint8_t)(id >> 8);
	out[1] = (uint8_t)id;
	if (send(s->fd, out, qlen, MSG_DONTWAIT) != (ssize_t)qlen)
		return false;
	int32_t slot = f->free_slots[--f->nfree];
	struct pending *p = &f->pend[slot];
	p->busy = true;
	f->busy++;
	atomic_store(&f->stats.in_flight, f->busy);
	p->sock = si;
	p->up_id = id;
	p->client_id = rd16(q);
	p->client = *client;
	p->client_len = client_len;
	p->upstream = v->upstream;
	memcpy(p->addressed.addr, v->orig, 16);
	p->addressed.port = v->orig_port;
	p->deadline_ms = now + f->timeout_ms;
	p->received_ns = received_ns;
	p->qtype = f->rd.qtype;
	p->qclass = f->rd.qclass;
	strcpy(p->qname, f->rd.qname);
	p->query_len = (uint16_t)qlen;
	memcpy(p->query, q, qlen);
	s->ids[k] = id;
	s->slots[k] = slot;
	s->used++;
	s->inflight++;
	s->active_ms = now;
	return true;
}

static void client_read(struct dns_fast *f)
{
	for (int i = 0; i < FAST_RECV_BURST; i++) {
		struct sockaddr_storage from;
		socklen_t fromlen = sizeof(from);
		ssize_t n = recvfrom(f->client_fd, f->rbuf, sizeof(f->rbuf), MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&from, &fromlen);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		if ((size_t)n > sizeof(f->rbuf) || (from.ss_family != AF_INET && from.ss_family != AF_INET6))
			continue; /* cut short: not handed on (udp.c does the same) */
		uint64_t received = realtime_ns();
		int64_t now = now_ms(CLOCK_MONOTONIC);
		struct dns_read *r = &f->rd;
		struct fast_route v;
		struct dns_redirect_key key = { 0 };
		struct dns_redirect_value orig;
		bool taken = false, addressed;
		uint16_t port;
		/* read for every query, taken or not: the agent answers those it is handed by this reading */
		addr_bytes(&from, key.addr, &port);
		key.port = port;
		key.protocol = IPPROTO_UDP;
		key.family = from.ss_family == AF_INET ? FAMILY_IPV4 : FAMILY_IPV6;
		addressed = bpf_map_lookup_elem(f->map_fd, &key, &orig) == 0;
		if (addressed && (size_t)n <= FAST_QUERY_MAX && dns_read(f->rbuf, (size_t)n, r) && r->plain && strlen(r->qname) < TABLE_NAME_MAX &&
		    (r->flags & 0xf800) == 0 /* a query, opcode 0 */) {
			bool hit;
			pthread_mutex_lock(&f->tables->lock);
			int64_t at = now_ms(CLOCK_MONOTONIC);
			hit = verdict_find(f->tables, key.family, key.addr, orig.addr, orig.port, r->qname, at, &v) ||
			      plan_find(f->tables, key.family, key.addr, orig.addr, orig.port, r->qname, at, &v);
			pthread_mutex_unlock(&f->tables->lock);
			taken = hit && forward(f, f->rbuf, (size_t)n, &from, fromlen, &v, received, now);
		}
		if (!taken) {
			atomic_fetch_add(&f->stats.handed, 1);
			record_add(f, REC_QUERY, 0, &from, NULL, addressed ? &orig : NULL, 0, received, f->rbuf, (size_t)n, NULL, 0);
		}
	}
}

/* Whether every address the answer teaches is known for its name, for long enough yet. */
static bool answer_known(struct dns_fast *f, const struct dns_read *r)
{
	const char *name = learned_name(r);
	struct fast_tables *t = f->tables;
	int64_t until = now_ms(CLOCK_REALTIME) + KNOWN_MARGIN_MS;
	bool known = true;

	if (!name)
		return true; /* nothing to learn */
	pthread_mutex_lock(&t->lock);
	for (int i = 0; i < r->answers && known; i++) {
		const struct answer_rr *a = &r->rr[i];
		if (a->kind != 1 || strcmp(r->names[a->owner], name))
			continue;
		uint64_t h = known_hash(a->family, a->addr, r->qname);
		size_t mask = t->kcap - 1;
		known = false;
		for (size_t j = h & mask, n = 0; n < t->kcap; j = (j + 1) & mask, n++) {
			struct known_slot *s = &t->known[j];
			if (!s->name)
				break;
			if (known_same(s, h, a->family, a->addr, r->qname)) {
				known = s->gen == t->known_gen && s->expires_ms > until;
				break;
			}
		}
	}
	pthread_mutex_unlock(&t->lock);
	return known;
}

static void upstream_read(struct dns_fast *f, int si)
{
	struct up_socket *s = &f->socks[si];

	for (int i = 0; i < FAST_RECV_BURST && s->fd >= 0; i++) {
		ssize_t n = recv(s->fd, f->rbuf, sizeof(f->rbuf), MSG_DONTWAIT | MSG_TRUNC);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			/* the upstream refused or is unreachable (a connected socket's ICMP error): every query
			 * on this socket fails, and the socket is not used again */
			int err = errno;
			for (int k = 0; k < FAST_IDS_MAX; k++) {
				int32_t slot = s->slots[k];
				if (slot < 0)
					continue;
				struct pending *p = &f->pend[slot];
				atomic_fetch_add(&f->stats.failed, 1);
				record_add(f, REC_FAILED, 0, &p->client, &p->upstream, &p->addressed, err, p->received_ns, p->query, p->query_len, NULL, 0);
				slot_free(f, slot);
			}
			sock_close(f, si);
			return;
		}
		if (n < DNS_HEADER || (size_t)n > sizeof(f->rbuf)) {
			atomic_fetch_add(&f->stats.unmatched, 1);
			continue;
		}
		uint16_t id = rd16(f->rbuf);
		int32_t slot = -1;
		for (int k = 0; k < FAST_IDS_MAX; k++)
			if (s->slots[k] >= 0 && s->ids[k] == id) {
				slot = s->slots[k];
				break;
			}
		if (slot < 0) {
			atomic_fetch_add(&f->stats.unmatched, 1);
			continue;
		}
		struct pending *p = &f->pend[slot];
		struct dns_read *r = &f->rd;
		s->active_ms = now_ms(CLOCK_MONOTONIC);
		/* an answer to this query: a response, its question; else it is a failure (as the agent's path) */
		if (!dns_read(f->rbuf, (size_t)n, r) || !(r->flags & 0x8000) || strcmp(r->qname, p->qname) || r->qtype != p->qtype || r->qclass != p->qclass) {
			/* the agent reads it again for its log: what it got, if it can */
			atomic_fetch_add(&f->stats.learn, 1);
			f->rbuf[0] = (uint8_t)(p->client_id >> 8);
			f->rbuf[1] = (uint8_t)p->client_id;
			record_add(f, REC_LEARN, 0, &p->client, &p->upstream, &p->addressed, 0, p->received_ns, p->query, p->query_len, f->rbuf, (size_t)n);
			slot_free(f, slot);
			continue;
		}
		f->rbuf[0] = (uint8_t)(p->client_id >> 8);
		f->rbuf[1] = (uint8_t)p->client_id;
		if (answer_known(f, r)) {
			uint8_t flags = 0;
			ssize_t sent;
			do
				sent = sendto(f->client_fd, f->rbuf, (size_t)n, MSG_DONTWAIT, (struct sockaddr *)&p->client, p->client_len);
			while (sent < 0 && errno == EINTR);
			if (sent == n)
				flags = REC_F_SENT;
			atomic_fetch_add(&f->stats.answered, 1);
			record_add(f, REC_ANSWERED, flags, &p->client, &p->upstream, &p->addressed, 0, p->received_ns, p->query, p->query_len, f->rbuf, (size_t)n);
		} else {
			atomic_fetch_add(&f->stats.learn, 1);
			record_add(f, REC_LEARN, 0, &p->client, &p->upstream, &p->addressed, 0, p->received_ns, p->query, p->query_len, f->rbuf, (size_t)n);
		}
		slot_free(f, slot);
	}
}

/* Queries whose upstream did not answer in time fail; sockets used up or idle close. */
static int housekeeping(struct dns_fast *f)
{
	int64_t now = now_ms(CLOCK_MONOTONIC);
	int64_t wait = SOCKET_IDLE_MS;

	/* a scan of the slots (max_pending, a thousand by default) is cheaper than keeping them ordered */
	for (int32_t slot = 0, seen = 0; slot < f->max_pending && seen < f->busy; slot++) {
		struct pending *p = &f->pend[slot];
		if (!p->busy)
			continue;
		seen++;
		if (p->deadline_ms > now) {
			if (p->deadline_ms - now < wait)
				wait = p->deadline_ms - now;
			continue;
		}
		atomic_fetch_add(&f->stats.failed, 1);
		record_add(f, REC_FAILED, 0, &p->client, &p->upstream, &p->addressed, 0, p->received_ns, p->query, p->query_len, NULL, 0);
		slot_free(f, slot);
		seen--;
	}
	for (int i = 0; i < FAST_SOCKETS_MAX; i++) {
		struct up_socket *s = &f->socks[i];
		if (s->fd >= 0 && s->inflight == 0 && (s->used >= f->queries_per_socket || now - s->active_ms >= SOCKET_IDLE_MS))
			sock_close(f, i);
	}
	return wait < 1 ? 1 : (int)wait;
}

static void *fast_thread(void *arg)
{
	struct dns_fast *f = arg;
	struct epoll_event evs[64];
	int wait = SOCKET_IDLE_MS;

	for (;;) {
		int n = epoll_wait(f->epoll_fd, evs, 64, wait);
		bool stop = false;
		for (int i = 0; i < n; i++) {
			uint32_t tag = evs[i].data.u32;
			if (tag == 0)
				stop = true;
			else if (tag == 1)
				client_read(f);
			else if (f->socks[tag - 2].fd >= 0)
				upstream_read(f, (int)tag - 2);
		}
		if (stop)
			break;
		wait = housekeeping(f);
		batch_post(f);
	}
	return NULL;
}

/* ---- the agent's side ------------------------------------------------------------------------------ */

static void tables_unref(struct fast_tables *t)
{
	if (atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	verdicts_clear(t);
	plans_clear(t);
	known_clear(t);
	free(t->verdicts);
	free(t->plans);
	free(t->known);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

static void tables_finalize(napi_env env, void *data, void *hint)
{
	(void)env;
	(void)hint;
	tables_unref(data);
}

static struct fast_tables *tables_arg(napi_env env, napi_value v)
{
	struct fast_tables *t = NULL;
	if (napi_get_value_external(env, v, (void **)&t) != napi_ok || !t) {
		throw_type(env, "expected DNS fast path tables");
		return NULL;
	}
	return t;
}

/* dnsFastTables(verdictSlots, knownSlots) -> handle: the tables the agent fills (sizes: powers of two). */
napi_value dns_fast_tables(napi_env env, napi_callback_info info)
{
	napi_value argv[2], handle;
	uint32_t vcap, kcap;
	struct fast_tables *t;

	if (!get_args(env, info, 2, argv) || !get_u32(env, argv[0], &vcap) || !get_u32(env, argv[1], &kcap))
		return NULL;
	if (vcap < 16 || (vcap & (vcap - 1)) || kcap < 16 || (kcap & (kcap - 1)) || vcap > (1u << 20) || kcap > (1u << 22))
		return throw_type(env, "dnsFastTables: sizes must be powers of two from 16");
	t = calloc(1, sizeof(*t));
	if (!t)
		return throw_errno(env, "DNS_FAST_TABLES", ENOMEM);
	/* a plan per (workload address, resolver): far fewer than the names asked */
	t->pcap = vcap / 8 < 16 ? 16 : vcap / 8;
	t->verdicts = calloc(vcap, sizeof(*t->verdicts));
	t->plans = calloc(t->pcap, sizeof(*t->plans));
	t->known = calloc(kcap, sizeof(*t->known));
	if (!t->verdicts || !t->plans || !t->known) {
		free(t->verdicts);
		free(t->plans);
		free(t->known);
		free(t);
		return throw_errno(env, "DNS_FAST_TABLES", ENOMEM);
	}
	t->vcap = vcap;
	t->kcap = kcap;
	pthread_mutex_init(&t->lock, NULL);
	atomic_init(&t->refs, 1);
	if (napi_create_external(env, t, tables_finalize, NULL, &handle) != napi_ok) {
		tables_unref(t);
		return throw_errno(env, "DNS_FAST_TABLES", ENOMEM);
	}
	return handle;
}

static bool addr_parse(const char *text, uint8_t *family, uint8_t *out)
{
	memset(out, 0, 16);
	if (inet_pton(AF_INET, text, out) == 1) {
		*family = FAMILY_IPV4;
		return true;
	}
	if (inet_pton(AF_INET6, text, out) == 1) {
		*family = FAMILY_IPV6;
		return true;
	}
	return false;
}

/* A name the tables may hold: what the thread's reading makes of a plain name (lower case, no escapes). */
static bool table_name(const char *name)
{
	size_t n = strlen(name);
	if (n >= TABLE_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
			return false;
	}
	return true;
}

/* What dnsFastVerdict and dnsFastPlan are told besides their names: a client, the resolver it addressed
 * and the upstream its queries go to (argv[1..3], argv[5..6]). */
struct route_args {
	struct fast_route r;
	bool same_family; /* the resolver of the client's family: the datapath keys IPv4 in the first 4 bytes */
};

/* False with an exception pending (what: the function's name, for its message). */
static bool route_args_get(napi_env env, napi_value *argv, const char *what, struct route_args *ra)
{
	char client[INET6_ADDRSTRLEN + 2], orig[INET6_ADDRSTRLEN + 2], up[INET6_ADDRSTRLEN + 2], message[96];
	int32_t orig_port, up_port;
	uint8_t orig_family, up_family, uaddr[16];

	memset(ra, 0, sizeof(*ra));
	if (!get_str(env, argv[1], client, sizeof(client)) || !get_str(env, argv[2], orig, sizeof(orig)) || !get_i32(env, argv[3], &orig_port) ||
	    !get_str(env, argv[5], up, sizeof(up)) || !get_i32(env, argv[6], &up_port))
		return false;
	if (!addr_parse(client, &ra->r.family, ra->r.client) || !addr_parse(orig, &orig_family, ra->r.orig) || !addr_parse(up, &up_family, uaddr) ||
	    orig_port < 0 || orig_port > 65535 || up_port <= 0 || up_port > 65535) {
		snprintf(message, sizeof(message), "%s: addresses must be IP addresses, ports 1-65535", what);
		throw_type(env, message);
		return false;
	}
	ra->r.orig_port = (uint16_t)orig_port;
	ra->same_family = orig_family == ra->r.family;
	/* the upstream socket is of the upstream's family */
	if (up_family == FAMILY_IPV4) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ra->r.upstream;
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)up_port);
		memcpy(&a->sin_addr, uaddr, 4);
		ra->r.upstream_len = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ra->r.upstream;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)up_port);
		memcpy(&a->sin6_addr, uaddr, 16);
		ra->r.upstream_len = sizeof(*a);
	}
	return true;
}

/* dnsFastVerdict(tables, client, resolver, resolverPort, name, upstream, upstreamPort) -> bool: queries
 * of `client` to `resolver` for `name` may go to `upstream`. False: not taken (a name the thread would
 * never match). */
napi_value dns_fast_verdict(napi_env env, napi_callback_info info)
{
	napi_value argv[7];
	char name[NAME_TEXT_MAX + 2];
	struct fast_tables *t;
	struct route_args ra;

	if (!get_args(env, info, 7, argv) || !(t = tables_arg(env, argv[0])) || !route_args_get(env, argv, "dnsFastVerdict", &ra) ||
	    !get_str(env, argv[4], name, sizeof(name)))
		return NULL;
	if (!table_name(name) || !ra.same_family)
		return make_bool(env, false);
	const struct fast_route *r = &ra.r;
	uint64_t h = verdict_hash(r->family, r->client, r->orig, r->orig_port, name);
	pthread_mutex_lock(&t->lock);
	if (t->vused * 2 >= t->vcap)
		verdicts_clear(t);
	size_t mask = t->vcap - 1, i = h & mask;
	while (t->verdicts[i].name && !verdict_same(&t->verdicts[i], h, r->family, r->client, r->orig, r->orig_port, name))
		i = (i + 1) & mask;
	struct verdict_slot *s = &t->verdicts[i];
	char *copy = s->name ? s->name : strdup(name);
	if (copy) {
		if (!s->name)
			t->vused++;
		*s = (struct verdict_slot){ .name = copy, .hash = h, .gen = t->verdict_gen, .expires_ms = now_ms(CLOCK_MONOTONIC) + VERDICT_MAX_AGE_MS, .route = *r };
	}
	pthread_mutex_unlock(&t->lock);
	return make_bool(env, copy != NULL);
}

/*
 * The selectors of dnsFastPlan's text (lines of a kind letter and a normalised selector: `n` matchName,
 * `p` matchPattern, `w` alone for every name) packed as plan_slot keeps them, or NULL for a text the
 * thread would not match as fqdn.ts does (throws then).
 */
static char *plan_pack(napi_env env, const char *text, size_t len)
{
	char *out = malloc(len + 2);
	size_t o = 0;
	if (!out) {
		throw_errno(env, "DNS_FAST_PLAN", ENOMEM);
		return NULL;
	}
	for (size_t at = 0; at < len;) {
		size_t end = at;
		while (end < len && text[end] != '\n')
			end++;
		char kind = text[at];
		bool ok = end > at && (kind == 'n' || kind == 'p' || kind == 'w');
		if (ok && kind == 'w')
			ok = end == at + 1;
		if (ok && kind != 'w') {
			/* normalised: [-a-z0-9_.] (and * in a pattern), ending with '.', at most 255 characters */
			ok = end - at >= 2 && end - at - 1 <= 256 && text[end - 1] == '.';
			for (size_t i = at + 1; ok && i < end; i++)
				ok = label_char(text[i]) || text[i] == '.' || (kind == 'p' && text[i] == '*');
		}
		if (!ok) {
			free(out);
			throw_type(env, "DNS fast path: selectors must be lines of n<name>. or p<pattern>. (lower case, trailing dot) or w");
			return NULL;
		}
		memcpy(out + o, text + at, end - at);
		o += end - at;
		out[o++] = 0;
		at = end + 1;
	}
	out[o++] = 0;
	return out;
}

/* A plan's text argument, packed (plan_pack); NULL with an exception pending. */
static char *plan_arg(napi_env env, napi_value v)
{
	size_t len;
	char *text, *packed;
	if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok || len > 1 << 20) {
		throw_type(env, "DNS fast path: selectors must be a string of at most 1 MiB");
		return NULL;
	}
	if (!(text = malloc(len + 1))) {
		throw_errno(env, "DNS_FAST_PLAN", ENOMEM);
		return NULL;
	}
	napi_get_value_string_utf8(env, v, text, len + 1, &len);
	packed = plan_pack(env, text, len);
	free(text);
	return packed;
}

/* dnsFastPlan(tables, client, resolver, resolverPort, selectors, upstream, upstreamPort) -> 0 | 1 | 2:
 * queries of `client` to `resolver` for any name the selectors allow may go to `upstream` (replacing the
 * plan it had). 0: not taken; 2: taken after every other plan was dropped (the table was half full). */
napi_value dns_fast_plan(napi_env env, napi_callback_info info)
{
	napi_value argv[7];
	char *packed;
	struct fast_tables *t;
	struct route_args ra;
	int taken = 1;

	if (!get_args(env, info, 7, argv) || !(t = tables_arg(env, argv[0])) || !route_args_get(env, argv, "dnsFastPlan", &ra))
		return NULL;
	if (!(packed = plan_arg(env, argv[4])))
		return NULL;
	if (!ra.same_family) {
		free(packed);
		return make_i32(env, 0);
	}
	const struct fast_route *r = &ra.r;
	uint64_t h = plan_hash(r->family, r->client, r->orig, r->orig_port);
	pthread_mutex_lock(&t->lock);
	if (t->pused * 2 >= t->pcap) {
		plans_clear(t);
		taken = 2;
	}
	size_t mask = t->pcap - 1, i = h & mask;
	while (t->plans[i].selectors && !plan_same(&t->plans[i], h, r->family, r->client, r->orig, r->orig_port))
		i = (i + 1) & mask;
	struct plan_slot *s = &t->plans[i];
	if (!s->selectors)
		t->pused++;
	free(s->selectors);
	*s = (struct plan_slot){ .selectors = packed, .hash = h, .gen = t->verdict_gen, .expires_ms = now_ms(CLOCK_MONOTONIC) + VERDICT_MAX_AGE_MS, .route = *r };
	pthread_mutex_unlock(&t->lock);
	return make_i32(env, taken);
}

/* dnsFastPlanAllows(selectors, name) -> bool: the thread's matching of one name (lower case, no trailing
 * dot) against a plan's selectors, for tests that hold it against agent/policy/fqdn.ts. */
napi_value dns_fast_plan_allows(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	char name[NAME_TEXT_MAX + 2], *packed;
	bool allowed;

	if (!get_args(env, info, 2, argv) || !get_str(env, argv[1], name, sizeof(name)) || !(packed = plan_arg(env, argv[0])))
		return NULL;
	/* as client_read takes a name: plain text of a length the tables hold */
	allowed = table_name(name) && plan_allows(packed, name);
	free(packed);
	return make_bool(env, allowed);
}

/* dnsFastKnown(tables, name, address, expiresAtMs): the maps hold `address` for `name` until then
 * (wall clock, as the agent's learned cache keeps it). */
napi_value dns_fast_known(napi_env env, napi_callback_info info)
{
	napi_value argv[4];
	char name[NAME_TEXT_MAX + 2], addr[INET6_ADDRSTRLEN + 2];
	double expires;
	uint8_t family, bytes[16];
	struct fast_tables *t;

	if (!get_args(env, info, 4, argv) || !(t = tables_arg(env, argv[0])) || !get_str(env, argv[1], name, sizeof(name)) ||
	    !get_str(env, argv[2], addr, sizeof(addr)) || napi_get_value_double(env, argv[3], &expires) != napi_ok)
		return NULL;
	if (!addr_parse(addr, &family, bytes))
		return throw_type(env, "dnsFastKnown: address must be an IP address");
	if (!table_name(name))
		return make_bool(env, false);
	uint64_t h = known_hash(family, bytes, name);
	pthread_mutex_lock(&t->lock);
	if (t->kused * 2 >= t->kcap)
		known_clear(t);
	size_t mask = t->kcap - 1, i = h & mask;
	while (t->known[i].name && !known_same(&t->known[i], h, family, bytes, name))
		i = (i + 1) & mask;
	struct known_slot *s = &t->known[i];
	char *copy = s->name ? s->name : strdup(name);
	if (copy) {
		if (!s->name)
			t->kused++;
		s->name = copy;
		s->hash = h;
		s->gen = t->known_gen;
		s->family = family;
		memcpy(s->addr, bytes, 16);
		s->expires_ms = (int64_t)expires;
	}
	pthread_mutex_unlock(&t->lock);
	return make_bool(env, copy != NULL);
}

/* dnsFastForget(tables, verdicts, known): drops every verdict and/or every known answer (at once: the
 * thread takes none of them after this returns). */
napi_value dns_fast_forget(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	bool verdicts, known;
	struct fast_tables *t;

	if (!get_args(env, info, 3, argv) || !(t = tables_arg(env, argv[0])) || napi_get_value_bool(env, argv[1], &verdicts) != napi_ok ||
	    napi_get_value_bool(env, argv[2], &known) != napi_ok)
		return NULL;
	pthread_mutex_lock(&t->lock);
	if (verdicts)
		t->verdict_gen++;
	if (known)
		t->known_gen++;
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

static void fast_free(struct dns_fast *f)
{
	for (int i = 0; i < FAST_SOCKETS_MAX; i++)
		if (f->socks[i].fd >= 0)
			close(f->socks[i].fd);
	if (f->epoll_fd >= 0)
		close(f->epoll_fd);
	if (f->stop_fd >= 0)
		close(f->stop_fd);
	if (f->client_fd >= 0)
		close(f->client_fd);
	if (f->tables)
		tables_unref(f->tables);
	pthread_mutex_destroy(&f->out_lock);
	free(f->out);
	free(f->batch);
	free(f->pend);
	free(f->free_slots);
	free(f);
}

/* On the agent's loop: the records the thread posted, as one Buffer to the callback. */
static void call_js(napi_env env, napi_value cb, void *context, void *data)
{
	struct dns_fast *f = context;
	napi_value buf, recv, result;
	uint8_t *taken;
	size_t len;
	void *copy;

	(void)data;
	if (!env || !cb)
		return;
	pthread_mutex_lock(&f->out_lock);
	taken = f->out;
	len = f->out_len;
	f->out = NULL;
	f->out_len = f->out_cap = 0;
	f->out_signalled = false;
	pthread_mutex_unlock(&f->out_lock);
	if (!len || f->stopped) {
		free(taken);
		return;
	}
	if (napi_create_buffer(env, len, &copy, &buf) != napi_ok) {
		free(taken);
		return;
	}
	memcpy(copy, taken, len);
	free(taken);
	napi_get_undefined(env, &recv);
	if (napi_call_function(env, recv, cb, 1, &buf, &result) == napi_pending_exception) {
		napi_value exc;
		napi_get_and_clear_last_exception(env, &exc);
		napi_fatal_exception(env, exc);
	}
}

static void fast_finalize(napi_env env, void *data, void *hint)
{
	struct dns_fast *f = data;
	(void)env;
	(void)hint;
	/* stopped by dnsFastStop, or the agent dropped the handle without it (the process is going) */
	if (f->started && !f->stopped) {
		uint64_t one = 1;
		f->stopped = true;
		if (write(f->stop_fd, &one, sizeof(one)) < 0) {
			/* an eventfd write fails only on overflow: the thread is woken all the same */
		}
		pthread_join(f->thread, NULL);
		napi_release_threadsafe_function(f->tsfn, napi_tsfn_abort);
	}
	fast_free(f);
}

/* dnsFastStart(socketFd, tables, redirectMapFd, timeoutMs, queriesPerSocket, maxSockets, maxPending,
 *              onRecords(buffer)) -> handle: the thread reading the proxy's UDP socket (a duplicate of
 * socketFd: the agent's socket must stop reading it, udpPause). */
napi_value dns_fast_start(napi_env env, napi_callback_info info)
{
	napi_value argv[8], handle, name;
	int32_t sock_fd, map_fd, timeout_ms, qps, max_sockets, max_pending;
	struct fast_tables *t;
	struct dns_fast *f;
	int err;

	if (!get_args(env, info, 8, argv) || !get_i32(env, argv[0], &sock_fd) || !(t = tables_arg(env, argv[1])) || !get_i32(env, argv[2], &map_fd) ||
	    !get_i32(env, argv[3], &timeout_ms) || !get_i32(env, argv[4], &qps) || !get_i32(env, argv[5], &max_sockets) || !get_i32(env, argv[6], &max_pending))
		return NULL;
	if (timeout_ms < 1 || qps < 1 || qps > FAST_IDS_MAX || max_sockets < 1 || max_sockets > FAST_SOCKETS_MAX || max_pending < 1 || max_pending > 65536)
		return throw_type(env, "dnsFastStart: timeoutMs >= 1, queriesPerSocket 1-64, maxSockets 1-256, maxPending 1-65536");
	f = calloc(1, sizeof(*f));
	if (!f)
		return throw_errno(env, "DNS_FAST_START", ENOMEM);
	pthread_mutex_init(&f->out_lock, NULL);
	f->client_fd = f->epoll_fd = f->stop_fd = -1;
	for (int i = 0; i < FAST_SOCKETS_MAX; i++)
		f->socks[i].fd = -1;
	f->map_fd = map_fd;
	f->timeout_ms = timeout_ms;
	f->queries_per_socket = qps;
	f->max_sockets = max_sockets;
	f->max_pending = max_pending;
	f->pend = calloc((size_t)max_pending, sizeof(*f->pend));
	f->free_slots = calloc((size_t)max_pending, sizeof(*f->free_slots));
	f->client_fd = fcntl(sock_fd, F_DUPFD_CLOEXEC, 0);
	f->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	f->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!f->pend || !f->free_slots || f->client_fd < 0 || f->epoll_fd < 0 || f->stop_fd < 0) {
		err = errno ? errno : ENOMEM;
		fast_free(f);
		return throw_errno(env, "DNS_FAST_START", err);
	}
	for (int i = max_pending - 1; i >= 0; i--)
		f->free_slots[f->nfree++] = i;
	atomic_fetch_add(&t->refs, 1);
	f->tables = t;
	struct epoll_event stop_ev = { .events = EPOLLIN, .data.u32 = 0 }, client_ev = { .events = EPOLLIN, .data.u32 = 1 };
	if (epoll_ctl(f->epoll_fd, EPOLL_CTL_ADD, f->stop_fd, &stop_ev) < 0 || epoll_ctl(f->epoll_fd, EPOLL_CTL_ADD, f->client_fd, &client_ev) < 0) {
		err = errno;
		fast_free(f);
		return throw_errno(env, "DNS_FAST_START", err);
	}
	napi_create_string_utf8(env, "kitnet:dns-fast-path", NAPI_AUTO_LENGTH, &name);
	if (napi_create_threadsafe_function(env, argv[7], NULL, name, 0, 1, NULL, NULL, f, call_js, &f->tsfn) != napi_ok) {
		fast_free(f);
		return throw_errno(env, "DNS_FAST_START", ENOMEM);
	}
	/* it keeps no loop alive, as the agent's other sockets */
	napi_unref_threadsafe_function(env, f->tsfn);
	err = pthread_create(&f->thread, NULL, fast_thread, f);
	if (err) {
		napi_release_threadsafe_function(f->tsfn, napi_tsfn_abort);
		fast_free(f);
		return throw_errno(env, "DNS_FAST_START", err);
	}
	f->started = true;
	if (napi_create_external(env, f, fast_finalize, NULL, &handle) != napi_ok)
		return throw_errno(env, "DNS_FAST_START", ENOMEM);
	return handle;
}

static struct dns_fast *fast_arg(napi_env env, napi_value v)
{
	struct dns_fast *f = NULL;
	if (napi_get_value_external(env, v, (void **)&f) != napi_ok || !f) {
		throw_type(env, "expected a DNS fast path handle");
		return NULL;
	}
	return f;
}

/* dnsFastStop(handle): the thread ends (queries it had in flight are dropped: their clients ask again),
 * its sockets close; no callback after this returns. */
napi_value dns_fast_stop(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct dns_fast *f;
	uint64_t one = 1;

	if (!get_args(env, info, 1, argv) || !(f = fast_arg(env, argv[0])))
		return NULL;
	if (!f->started || f->stopped)
		return NULL;
	f->stopped = true;
	if (write(f->stop_fd, &one, sizeof(one)) < 0) {
		/* see fast_finalize */
	}
	pthread_join(f->thread, NULL);
	napi_release_threadsafe_function(f->tsfn, napi_tsfn_abort);
	for (int i = 0; i < FAST_SOCKETS_MAX; i++)
		sock_close(f, i);
	close(f->client_fd);
	f->client_fd = -1;
	return NULL;
}

/* dnsFastStats(handle) -> { answered, learn, failed, handed, unmatched, inFlight }: queries released
 * by the thread, answers handed over to be learned, upstream failures, queries handed over unforwarded,
 * answers that matched no query in flight; queries forwarded and not yet answered or given up on. */
napi_value dns_fast_stats(napi_env env, napi_callback_info info)
{
	napi_value argv[1], obj;
	struct dns_fast *f;

	if (!get_args(env, info, 1, argv) || !(f = fast_arg(env, argv[0])))
		return NULL;
	NAPI_CALL(env, napi_create_object(env, &obj));
	napi_value v;
	napi_create_double(env, (double)atomic_load(&f->stats.answered), &v);
	napi_set_named_property(env, obj, "answered", v);
	napi_create_double(env, (double)atomic_load(&f->stats.learn), &v);
	napi_set_named_property(env, obj, "learn", v);
	napi_create_double(env, (double)atomic_load(&f->stats.failed), &v);
	napi_set_named_property(env, obj, "failed", v);
	napi_create_double(env, (double)atomic_load(&f->stats.handed), &v);
	napi_set_named_property(env, obj, "handed", v);
	napi_create_double(env, (double)atomic_load(&f->stats.unmatched), &v);
	napi_set_named_property(env, obj, "unmatched", v);
	napi_create_double(env, (double)atomic_load(&f->stats.in_flight), &v);
	napi_set_named_property(env, obj, "inFlight", v);
	return obj;
}
