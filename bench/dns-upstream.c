// The DNS upstream of dns-agent.bench (--upstream=c): the same answers as its Node server (upstreamServe:
// one A record, TTL 60, 198.18.0.0/15 numbered by the order names are first asked), from C, so that the
// resolver sharing the bench's two cores is a process as light as a real one (dnsmasq, unbound) and not a
// Node process with its own collections. Single-threaded: recvmmsg, answer, sendmmsg.
//
//   cc -O2 -o /tmp/kb-dns-upstream bench/dns-upstream.c && /tmp/kb-dns-upstream 10.247.255.53
//
// Prints "ready" once bound. Queries are the bench's own (no compression in the question); anything that
// does not parse as one question is dropped.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define MSG_MAX 512
#define TABLE_SIZE (1u << 20) // names; the bench asks ~5,000 per round and tree

struct slot {
	uint32_t hash;
	uint32_t number; // 0: empty
	char *name;
};

static struct slot table[TABLE_SIZE];
static uint32_t names_seen;

static uint32_t fnv1a(const unsigned char *s, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ s[i]) * 16777619u;
	return h;
}

// The number of a name (lowercased wire form), given on first sight; 0 when the table is full.
static uint32_t name_number(const unsigned char *wire, size_t n)
{
	char key[MSG_MAX];
	for (size_t i = 0; i < n; i++)
		key[i] = (wire[i] >= 'A' && wire[i] <= 'Z') ? wire[i] + 32 : wire[i];
	uint32_t h = fnv1a((unsigned char *)key, n);
	for (uint32_t i = h & (TABLE_SIZE - 1), probes = 0; probes < TABLE_SIZE; i = (i + 1) & (TABLE_SIZE - 1), probes++) {
		struct slot *s = &table[i];
		if (!s->number) {
			if (names_seen + 1 >= TABLE_SIZE / 2)
				return 0;
			s->hash = h;
			s->name = malloc(n + 1);
			if (!s->name)
				return 0;
			memcpy(s->name, key, n);
			s->name[n] = 0;
			s->number = ++names_seen;
			return s->number;
		}
		if (s->hash == h && strlen(s->name) == n && !memcmp(s->name, key, n))
			return s->number;
	}
	return 0;
}

// Builds the answer to `q` (len bytes) in `out`; returns its length, 0 to drop the query.
static size_t answer(const unsigned char *q, size_t len, unsigned char *out)
{
	if (len < 12 + 5 || len > MSG_MAX - 16)
		return 0;
	size_t o = 12;
	while (o < len && q[o] != 0) {
		if (q[o] & 0xc0)
			return 0;
		o += 1 + q[o];
	}
	if (o + 5 > len)
		return 0;
	uint32_t n = name_number(q + 12, o - 12);
	if (!n)
		return 0;
	size_t qend = o + 5;
	memcpy(out, q, qend);
	out[2] = 0x81, out[3] = 0x80;		    // response, RD, RA, NOERROR
	out[4] = 0, out[5] = 1, out[6] = 0, out[7] = 1; // 1 question, 1 answer
	memset(out + 8, 0, 4);
	const unsigned char rr[16] = { 0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, (unsigned char)(18 + (n >> 16)), (unsigned char)(n >> 8), (unsigned char)n };
	memcpy(out + qend, rr, sizeof rr);
	return qend + sizeof rr;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s IPV4_ADDRESS (binds UDP port 53 there)\n", argv[0]);
		return 2;
	}
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	int buf = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
	struct sockaddr_in at = { .sin_family = AF_INET, .sin_port = htons(53) };
	if (inet_pton(AF_INET, argv[1], &at.sin_addr) != 1) {
		fprintf(stderr, "%s: not an IPv4 address\n", argv[1]);
		return 2;
	}
	if (bind(fd, (struct sockaddr *)&at, sizeof at) < 0) {
		perror("bind");
		return 1;
	}
	printf("ready\n");
	fflush(stdout);

	static unsigned char in[BATCH][MSG_MAX], out[BATCH][MSG_MAX];
	struct sockaddr_in from[BATCH];
	struct iovec iov_in[BATCH], iov_out[BATCH];
	struct mmsghdr rx[BATCH], tx[BATCH];
	for (;;) {
		for (int i = 0; i < BATCH; i++) {
			iov_in[i] = (struct iovec){ in[i], MSG_MAX };
			rx[i] = (struct mmsghdr){ .msg_hdr = { .msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov_in[i], .msg_iovlen = 1 } };
		}
		int got = recvmmsg(fd, rx, BATCH, MSG_WAITFORONE, NULL);
		if (got < 0) {
			perror("recvmmsg");
			return 1;
		}
		int n = 0;
		for (int i = 0; i < got; i++) {
			size_t len = answer(in[i], rx[i].msg_len, out[n]);
			if (!len)
				continue;
			iov_out[n] = (struct iovec){ out[n], len };
			tx[n] = (struct mmsghdr){ .msg_hdr = { .msg_name = &from[i], .msg_namelen = rx[i].msg_hdr.msg_namelen, .msg_iov = &iov_out[n], .msg_iovlen = 1 } };
			n++;
		}
		for (int sent = 0; sent < n;) {
			int r = sendmmsg(fd, tx + sent, n - sent, 0);
			if (r <= 0)
				break; // a full buffer: the bench counts these lookups as lost
			sent += r;
		}
	}
}
