// SPDX-License-Identifier: Apache-2.0
/*
 * kitnet bench load generator, compiled at bench time (cc -O2) and run inside network namespaces.
 *
 *   loadgen tcp-server PORT              accept and close, forever (each accepted socket is closed at once)
 *   loadgen tcp-conn   ADDR PORT SECS [CONCURRENCY]
 *                                        new connections: connect, then close with RST (SO_LINGER 0);
 *                                        prints "conns=N secs=S rate=R errors=E". CONCURRENCY (default 1:
 *                                        one blocking connect after the other) > 1 keeps that many
 *                                        non-blocking connects in flight, so the client's own wait for
 *                                        each handshake no longer bounds the rate (the host's CPU does)
 *   loadgen udp-server PORT              echo every datagram
 *   loadgen udp-rr     ADDR PORT SECS    1-byte request/response, one in flight; prints
 *                                        "n=N mean_us=M p50_us=P p99_us=Q lost=L"
 * ADDR may be IPv4 or IPv6.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int addr_parse(const char *s, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, s, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		*len = sizeof(*a4);
		return AF_INET;
	}
	if (inet_pton(AF_INET6, s, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		*len = sizeof(*a6);
		return AF_INET6;
	}
	fprintf(stderr, "bad address %s\n", s);
	exit(2);
}

static int listener(int type, int port)
{
	int fd = socket(AF_INET6, type, 0), one = 1, zero = 0;
	struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any };
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("bind");
		exit(1);
	}
	if (type == SOCK_STREAM && listen(fd, 4096) < 0) {
		perror("listen");
		exit(1);
	}
	return fd;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* A non-blocking connect to dst; -1 (counted as an error by the caller) when it failed at once. */
static int conn_start(int fam, const struct sockaddr_storage *dst, socklen_t dlen)
{
	int fd = socket(fam, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)dst, dlen) == 0 || errno == EINPROGRESS)
		return fd;
	close(fd);
	return -1;
}

static void conn_reset(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

/* tcp-conn with `conc` connects in flight: each one that completes (writable, SO_ERROR 0) counts, is
 * reset at once and replaced by a new one. */
static int tcp_conn_concurrent(int fam, const struct sockaddr_storage *dst, socklen_t dlen, double secs, int conc)
{
	struct pollfd *p = calloc(conc, sizeof(*p));
	long conns = 0, errors = 0;
	double t0 = now(), end = t0 + secs, t;

	if (!p)
		return 1;
	for (int i = 0; i < conc; i++) {
		p[i].fd = conn_start(fam, dst, dlen);
		p[i].events = POLLOUT;
	}
	while ((t = now()) < end) {
		int ready = poll(p, conc, 100);
		if (ready < 0 && errno != EINTR)
			break;
		for (int i = 0; i < conc && ready > 0; i++) {
			int err = 0;
			socklen_t el = sizeof(err);
			if (p[i].fd < 0 || !p[i].revents)
				continue;
			ready--;
			if (getsockopt(p[i].fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0)
				conns++;
			else
				errors++;
			conn_reset(p[i].fd);
			p[i].fd = conn_start(fam, dst, dlen);
			p[i].revents = 0;
		}
		/* slots whose connect failed at once get a new try on the next turn */
		for (int i = 0; i < conc; i++) {
			if (p[i].fd < 0) {
				errors++;
				p[i].fd = conn_start(fam, dst, dlen);
			}
		}
	}
	for (int i = 0; i < conc; i++)
		if (p[i].fd >= 0)
			conn_reset(p[i].fd);
	t = now() - t0;
	printf("conns=%ld secs=%.3f rate=%.1f errors=%ld\n", conns, t, conns / t, errors);
	free(p);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: see the comment at the top of loadgen.c\n");
		return 2;
	}
	const char *mode = argv[1];
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(mode, "tcp-server")) {
		int l = listener(SOCK_STREAM, atoi(argv[2]));
		printf("ready\n");
		for (;;) {
			int c = accept(l, NULL, NULL);
			if (c >= 0)
				close(c);
		}
	}
	if (!strcmp(mode, "udp-server")) {
		int s = listener(SOCK_DGRAM, atoi(argv[2]));
		char buf[2048];
		struct sockaddr_storage from;
		printf("ready\n");
		for (;;) {
			socklen_t fl = sizeof(from);
			ssize_t n = recvfrom(s, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fl);
			if (n > 0)
				sendto(s, buf, n, 0, (struct sockaddr *)&from, fl);
		}
	}
	if (argc < 5)
		return 2;
	struct sockaddr_storage dst;
	socklen_t dlen;
	int fam = addr_parse(argv[2], atoi(argv[3]), &dst, &dlen);
	double secs = atof(argv[4]);
	if (!strcmp(mode, "tcp-conn") && argc > 5 && atoi(argv[5]) > 1)
		return tcp_conn_concurrent(fam, &dst, dlen, secs, atoi(argv[5]));
	if (!strcmp(mode, "tcp-conn")) {
		long conns = 0, errors = 0;
		struct linger lg = { .l_onoff = 1, .l_linger = 0 };
		double t0 = now(), end = t0 + secs, t;
		while ((t = now()) < end) {
			int fd = socket(fam, SOCK_STREAM, 0);
			if (connect(fd, (struct sockaddr *)&dst, dlen) == 0)
				conns++;
			else
				errors++;
			setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
			close(fd);
		}
		t = now() - t0;
		printf("conns=%ld secs=%.3f rate=%.1f errors=%ld\n", conns, t, conns / t, errors);
		return 0;
	}
	if (!strcmp(mode, "udp-rr")) {
		int fd = socket(fam, SOCK_DGRAM, 0);
		connect(fd, (struct sockaddr *)&dst, dlen);
		size_t cap = 1 << 22, n = 0;
		long lost = 0;
		double *lat = malloc(cap * sizeof(double)), end = now() + secs;
		char b = 'x', r;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		while (now() < end && n < cap) {
			double t = now();
			send(fd, &b, 1, 0);
			if (poll(&p, 1, 200) == 1 && recv(fd, &r, 1, 0) == 1)
				lat[n++] = (now() - t) * 1e6;
			else
				lost++;
		}
		double sum = 0;
		for (size_t i = 0; i < n; i++)
			sum += lat[i];
		qsort(lat, n, sizeof(double), cmp_double);
		printf("n=%zu mean_us=%.2f p50_us=%.2f p99_us=%.2f lost=%ld\n", n, n ? sum / n : 0, n ? lat[n / 2] : 0,
		       n ? lat[(size_t)(n * 0.99)] : 0, lost);
		return 0;
	}
	fprintf(stderr, "unknown mode %s\n", mode);
	return 2;
}
