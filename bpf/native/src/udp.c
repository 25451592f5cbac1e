// SPDX-License-Identifier: Apache-2.0
/*
 * UDP sockets that receive into shared slabs (the DNS proxy's, agent/dns/udp-socket.ts).
 *
 * Why: node's dgram gives every datagram an ArrayBuffer of its own, and each young collection of V8
 * then sweeps them one by one: at thousands of lookups a second, half a millisecond or more of some
 * pauses of the agent's thread (bench/README §8), which every query arriving meanwhile waits out. Here
 * datagrams are received one after the other into a slab (one ArrayBuffer for thousands of them, shared
 * by the thread's sockets: the proxy's upstream sockets live for a few dozen answers each) and handed to
 * the callback as views of it; a slab is freed when its last view is.
 *
 * Sends are made at once, on the loop's thread (as dgram's are when the socket buffer has room); a
 * full buffer throws EAGAIN to the caller, which queues (agent/dns/udp-socket.ts).
 */
#include "addon.h"
#include <arpa/inet.h>
#include <netinet/in.h>

/* A slab takes datagrams while this much is free: the largest UDP payload fits whole. */
#define UDP_DATAGRAM_MAX 65536
#define UDP_SLAB_BYTES (256 * 1024)
/* Datagrams taken per wakeup of the loop: one socket cannot starve the others. */
#define UDP_RECV_BURST 64

struct udp_sock {
	napi_env env;
	napi_ref callback;
	napi_async_context async_ctx;
	uv_poll_t poll;
	int fd;
	int family;
	bool closed;
	/* another reader took the socket (udpPause: the DNS proxy's fast path, dnsfast.c) */
	bool paused;
	/* the poll and the agent's handle: the memory is freed when both are gone (the descriptor is closed
	 * at udpClose) */
	int refs;
};

static void sock_unref(struct udp_sock *s)
{
	if (--s->refs > 0)
		return;
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}

/* An address text and port as a sockaddr of the socket's family, or false. */
static bool sockaddr_parse(int family, const char *text, int32_t port, struct sockaddr_storage *out, socklen_t *len)
{
	memset(out, 0, sizeof(*out));
	if (port < 0 || port > 65535)
		return false;
	if (family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)out;
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
		*len = sizeof(*a);
		return inet_pton(AF_INET, text, &a->sin_addr) == 1;
	}
	struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
	a->sin6_family = AF_INET6;
	a->sin6_port = htons((uint16_t)port);
	*len = sizeof(*a);
	return inet_pton(AF_INET6, text, &a->sin6_addr) == 1;
}

static void udp_call(struct udp_sock *s, size_t argc, napi_value *args)
{
	napi_env env = s->env;
	napi_value cb, recv, result;

	if (napi_get_reference_value(env, s->callback, &cb) != napi_ok || !cb || napi_get_global(env, &recv) != napi_ok)
		return;
	if (napi_make_callback(env, s->async_ctx, recv, cb, argc, args, &result) == napi_pending_exception) {
		napi_value exc;
		napi_get_and_clear_last_exception(env, &exc);
		napi_fatal_exception(env, exc);
	}
}

/* The slab being filled on this thread (an env is bound to its thread): a Buffer the callbacks get
 * views of, and where its free space starts. */
static __thread struct {
	napi_ref ref;
	char *data;
	size_t used;
} slab_tls;

/* A slab with room for the largest datagram: the current one, or a new one (the old one lives on in
 * the views the agent still holds). */
static bool slab_ready(napi_env env, napi_value *slab)
{
	void *data;

	if (slab_tls.ref && UDP_SLAB_BYTES - slab_tls.used >= UDP_DATAGRAM_MAX)
		return napi_get_reference_value(env, slab_tls.ref, slab) == napi_ok && *slab;
	if (slab_tls.ref) {
		napi_delete_reference(env, slab_tls.ref);
		slab_tls.ref = NULL;
	}
	if (napi_create_buffer(env, UDP_SLAB_BYTES, &data, slab) != napi_ok || napi_create_reference(env, *slab, 1, &slab_tls.ref) != napi_ok)
		return false;
	slab_tls.data = data;
	slab_tls.used = 0;
	return true;
}

static void udp_on_poll(uv_poll_t *handle, int status, int events)
{
	struct udp_sock *s = handle->data;
	napi_env env = s->env;
	napi_handle_scope scope;

	(void)events;
	/* libuv stops a poll that reports POLLERR (a connected socket's ICMP error): the receive below
	 * takes the error off the socket, and the poll goes on */
	if (status < 0 && !s->closed && !s->paused)
		uv_poll_start(&s->poll, UV_READABLE, udp_on_poll);
	if (s->paused || napi_open_handle_scope(env, &scope) != napi_ok)
		return;
	for (int i = 0; i < UDP_RECV_BURST && !s->closed; i++) {
		struct sockaddr_storage from;
		struct iovec iov;
		struct msghdr h = { .msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov, .msg_iovlen = 1 };
		char text[INET6_ADDRSTRLEN];
		napi_value args[6], slab;
		ssize_t n;
		int port;

		if (!slab_ready(env, &slab))
			break;
		iov = (struct iovec){ .iov_base = slab_tls.data + slab_tls.used, .iov_len = UDP_DATAGRAM_MAX };
		n = recvmsg(s->fd, &h, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			/* a connected socket's pending ICMP error (ECONNREFUSED, EHOSTUNREACH, ...); what is
			 * queued behind it is read at the next wakeup (the poll is level-triggered), so an error
			 * that would not clear cannot spin here */
			napi_get_null(env, &args[0]);
			args[1] = make_i32(env, 0);
			args[2] = make_i32(env, 0);
			napi_get_null(env, &args[3]);
			args[4] = make_i32(env, 0);
			args[5] = make_i32(env, errno);
			udp_call(s, 6, args);
			break;
		}
		/* never larger than the room it had, but a datagram cut short is not handed on */
		if (h.msg_flags & MSG_TRUNC)
			continue;
		if (from.ss_family == AF_INET) {
			struct sockaddr_in *a = (struct sockaddr_in *)&from;
			inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
			port = ntohs(a->sin_port);
		} else if (from.ss_family == AF_INET6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&from;
			inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
			port = ntohs(a->sin6_port);
		} else {
			continue;
		}
		args[0] = slab;
		args[1] = make_i32(env, (int32_t)slab_tls.used);
		args[2] = make_i32(env, (int32_t)n);
		/* the next datagram starts 8-byte aligned after this one */
		slab_tls.used += ((size_t)n + 7) & ~(size_t)7;
		if (napi_create_string_latin1(env, text, NAPI_AUTO_LENGTH, &args[3]) != napi_ok)
			break;
		args[4] = make_i32(env, port);
		args[5] = make_i32(env, 0);
		udp_call(s, 6, args);
	}
	napi_close_handle_scope(env, scope);
}

static void udp_on_close(uv_handle_t *handle)
{
	struct udp_sock *s = handle->data;

	napi_delete_reference(s->env, s->callback);
	napi_async_destroy(s->env, s->async_ctx);
	sock_unref(s);
}

static void udp_handle_finalize(napi_env env, void *data, void *hint)
{
	(void)env;
	(void)hint;
	sock_unref(data);
}

/* udpOpen(address, port, connectAddress, connectPort, recvBufferBytes,
 *         callback(slab, offset, length, address, port, errno)) -> handle:
 * a UDP socket of the address's family bound to address:port (port 0: any), connected to
 * connectAddress:connectPort unless connectAddress is ''. The callback gets each datagram as
 * slab[offset, offset + length) and its source, or (null, 0, 0, null, 0, errno) for a receive error.
 * Unreferenced: it keeps no loop alive. */
napi_value udp_open(napi_env env, napi_callback_info info)
{
	napi_value argv[6], handle, name;
	char addr[INET6_ADDRSTRLEN + 2], caddr[INET6_ADDRSTRLEN + 2];
	int32_t port, cport, rcvbuf;
	struct sockaddr_storage sa;
	socklen_t salen;
	uv_loop_t *loop;
	struct udp_sock *s;
	int fd, err, family, one = 1;

	if (!get_args(env, info, 6, argv) || !get_str(env, argv[0], addr, sizeof(addr)) || !get_i32(env, argv[1], &port) ||
	    !get_str(env, argv[2], caddr, sizeof(caddr)) || !get_i32(env, argv[3], &cport) || !get_i32(env, argv[4], &rcvbuf))
		return NULL;
	family = strchr(addr, ':') ? AF_INET6 : AF_INET;
	if (!sockaddr_parse(family, addr, port, &sa, &salen))
		return throw_type(env, "udpOpen: address must be an IP address and port 0-65535");
	NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
	fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return throw_errno(env, "UDP_SOCKET", errno);
	if ((family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)) < 0) ||
	    bind(fd, (struct sockaddr *)&sa, salen) < 0) {
		err = errno;
		close(fd);
		return throw_errno(env, "UDP_BIND", err);
	}
	if (caddr[0]) {
		if (!sockaddr_parse(family, caddr, cport, &sa, &salen)) {
			close(fd);
			return throw_type(env, "udpOpen: connectAddress must be an IP address of the bound address's family and connectPort 0-65535");
		}
		if (connect(fd, (struct sockaddr *)&sa, salen) < 0) {
			err = errno;
			close(fd);
			return throw_errno(env, "UDP_CONNECT", err);
		}
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return throw_errno(env, "UDP_SOCKET", ENOMEM);
	}
	s->env = env;
	s->fd = fd;
	s->family = family;
	err = uv_poll_init(loop, &s->poll, fd);
	if (err) {
		close(fd);
		free(s);
		return throw_errno(env, "UV_POLL_INIT", -err);
	}
	s->poll.data = s;
	s->refs = 1; /* the poll's */
	napi_create_reference(env, argv[5], 1, &s->callback);
	napi_create_string_utf8(env, "kitnet:udp-socket", NAPI_AUTO_LENGTH, &name);
	napi_async_init(env, NULL, name, &s->async_ctx);
	err = uv_poll_start(&s->poll, UV_READABLE, udp_on_poll);
	if (err) {
		s->closed = true;
		uv_close((uv_handle_t *)&s->poll, udp_on_close);
		return throw_errno(env, "UV_POLL_START", -err);
	}
	uv_unref((uv_handle_t *)&s->poll);
	if (napi_create_external(env, s, udp_handle_finalize, NULL, &handle) != napi_ok) {
		s->closed = true;
		uv_close((uv_handle_t *)&s->poll, udp_on_close);
		return throw_errno(env, "UDP_SOCKET", ENOMEM);
	}
	s->refs++; /* the handle's */
	return handle;
}

static struct udp_sock *sock_arg(napi_env env, napi_value v)
{
	struct udp_sock *s = NULL;

	if (napi_get_value_external(env, v, (void **)&s) != napi_ok || !s) {
		throw_type(env, "expected a UDP socket handle");
		return NULL;
	}
	return s;
}

/* udpSend(handle, data, address, port): one datagram, now (address '' on a connected socket). */
napi_value udp_send(napi_env env, napi_callback_info info)
{
	napi_value argv[4];
	char addr[INET6_ADDRSTRLEN + 2];
	int32_t port;
	struct udp_sock *s;
	struct sockaddr_storage to;
	socklen_t tolen = 0;
	void *data;
	size_t len;
	ssize_t n;

	if (!get_args(env, info, 4, argv) || !(s = sock_arg(env, argv[0])) || !get_buf(env, argv[1], &data, &len, false) ||
	    !get_str(env, argv[2], addr, sizeof(addr)) || !get_i32(env, argv[3], &port))
		return NULL;
	if (s->closed)
		return throw_errno(env, "UDP_SEND", EBADF);
	if (addr[0] && !sockaddr_parse(s->family, addr, port, &to, &tolen))
		return throw_type(env, "udpSend: address must be an IP address of the socket's family and port 0-65535");
	do
		n = sendto(s->fd, data, len, MSG_DONTWAIT, tolen ? (struct sockaddr *)&to : NULL, tolen);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return throw_errno(env, "UDP_SEND", errno);
	return NULL;
}

/* udpLocalPort(handle) -> the port the socket is bound to. */
napi_value udp_local_port(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct udp_sock *s;
	struct sockaddr_storage sa;
	socklen_t len = sizeof(sa);

	if (!get_args(env, info, 1, argv) || !(s = sock_arg(env, argv[0])))
		return NULL;
	if (s->closed)
		return throw_errno(env, "UDP_LOCAL_PORT", EBADF);
	if (getsockname(s->fd, (struct sockaddr *)&sa, &len) < 0)
		return throw_errno(env, "UDP_LOCAL_PORT", errno);
	return make_i32(env, ntohs(sa.ss_family == AF_INET ? ((struct sockaddr_in *)&sa)->sin_port : ((struct sockaddr_in6 *)&sa)->sin6_port));
}

/* udpPause(handle) -> fd: the socket's datagrams are no longer read here (its callback gets none);
 * sends go on. The descriptor is for the reader that takes over (dnsFastStart duplicates it); it stays
 * the socket's, closed by udpClose. */
napi_value udp_pause(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct udp_sock *s;

	if (!get_args(env, info, 1, argv) || !(s = sock_arg(env, argv[0])))
		return NULL;
	if (s->closed)
		return throw_errno(env, "UDP_PAUSE", EBADF);
	if (!s->paused) {
		s->paused = true;
		uv_poll_stop(&s->poll);
	}
	return make_i32(env, s->fd);
}

/* udpClose(handle): no more callbacks, and the socket is closed now (its port free at once). */
napi_value udp_close(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct udp_sock *s;

	if (!get_args(env, info, 1, argv) || !(s = sock_arg(env, argv[0])))
		return NULL;
	if (!s->closed) {
		s->closed = true;
		uv_poll_stop(&s->poll);
		uv_close((uv_handle_t *)&s->poll, udp_on_close);
		/* libuv has taken the descriptor out of its epoll set: it may be closed now */
		close(s->fd);
		s->fd = -1;
	}
	return NULL;
}
