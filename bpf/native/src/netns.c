// SPDX-License-Identifier: Apache-2.0
/*
 * Namespaces and netlink: setns, nsType and netnsCookie for netkit/ (common/ns.ts), and the rtnetlink
 * multicast listener behind netkit/monitor.ts.
 */
#include "addon.h"

/* setns(fd, nstype): moves the CALLING thread (the JS main thread) into the namespace behind fd. Generic;
 * used by netkit/socket.ts to open a netlink socket inside a workload's network namespace and switch
 * back at once (a socket stays in the namespace it was created in). */
napi_value ns_set(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	int32_t fd, nstype;

	if (!get_args(env, info, 2, argv) || !get_i32(env, argv[0], &fd) || !get_i32(env, argv[1], &nstype))
		return NULL;
	if (setns(fd, nstype) < 0)
		return throw_errno(env, "setns", errno);
	return NULL;
}

/* nsType(fd): the CLONE_NEW* type of the namespace behind an nsfs fd (NS_GET_NSTYPE, Linux 4.11).
 * A bind-mounted namespace (ip netns add) is not a magic link, so only this ioctl tells its type. */
napi_value ns_type(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	int32_t fd;
	int type;

	if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd))
		return NULL;
	type = ioctl(fd, NS_GET_NSTYPE);
	if (type < 0)
		return throw_errno(env, "NS_GET_NSTYPE", errno);
	return make_i32(env, type);
}

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71 /* asm-generic/socket.h, Linux 5.14 */
#endif

/* netnsCookie(fd) -> BigInt: the cookie of the network namespace behind an nsfs fd (SO_NETNS_COOKIE).
 * Why not the nsfs inode: the kernel hands a freed namespace's inode number to the next namespace made,
 * so (st_dev, st_ino) names "a namespace alive now", not "the one a workload was registered into";
 * a cookie is never given twice until reboot. The option reads the namespace of a socket, so one is
 * made inside: the calling thread enters the namespace for socket() alone and comes straight back (as
 * netkit/netns-transport.ts does), no thread hop. Not coming back would leave every later socket of
 * this thread in the wrong namespace: that aborts. */
napi_value netns_cookie(napi_env env, napi_callback_info info)
{
	static __thread int home = -1; /* this thread's own namespace, to come back to */
	napi_value argv[1], out;
	int32_t fd;
	int sock, err;
	uint64_t cookie = 0;
	socklen_t len = sizeof(cookie);

	if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd))
		return NULL;
	if (home < 0) {
		home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
		if (home < 0)
			return throw_errno(env, "open /proc/thread-self/ns/net", errno);
	}
	if (setns(fd, CLONE_NEWNET) < 0)
		return throw_errno(env, "setns", errno);
	sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	err = errno;
	if (setns(home, CLONE_NEWNET) < 0) {
		fprintf(stderr, "kitnet: cannot return to its own network namespace after setns: %s\n", strerror(errno));
		abort();
	}
	if (sock < 0)
		return throw_errno(env, "socket", err);
	if (getsockopt(sock, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) < 0) {
		err = errno;
		close(sock);
		return throw_errno(env, "SO_NETNS_COOKIE", err);
	}
	close(sock);
	NAPI_CALL(env, napi_create_bigint_uint64(env, cookie, &out));
	return out;
}

/* ---------------------------------------------------------------------------------------------- */
/* A netlink multicast listener (rtnetlink groups) on the event loop. Generic like setns; used by
 * netkit/monitor.ts. It exists because the `netlink` package aborts the process when its socket
 * reports an error (ENOBUFS after a burst of events: it builds an exception from a NULL syscall
 * name inside a libuv callback). Here an overflow is an ordinary event: the callback gets null. */

struct nl_monitor {
	napi_env env;
	napi_ref callback;
	napi_async_context async_ctx;
	uv_poll_t poll;
	int fd;
	bool closed;
};

static void nlm_call(struct nl_monitor *m, const char *data, size_t len, bool overflow)
{
	napi_env env = m->env;
	napi_handle_scope scope;
	napi_value arg, cb, recv, result;

	if (napi_open_handle_scope(env, &scope) != napi_ok)
		return;
	bool ok = overflow ? napi_get_null(env, &arg) == napi_ok : napi_create_buffer_copy(env, len, data, NULL, &arg) == napi_ok;
	if (ok && napi_get_reference_value(env, m->callback, &cb) == napi_ok && cb && napi_get_global(env, &recv) == napi_ok) {
		napi_status st = napi_make_callback(env, m->async_ctx, recv, cb, 1, &arg, &result);
		if (st == napi_pending_exception) {
			napi_value exc;
			napi_get_and_clear_last_exception(env, &exc);
			napi_fatal_exception(env, exc);
		}
	}
	napi_close_handle_scope(env, scope);
}

static void nlm_on_poll(uv_poll_t *handle, int status, int events)
{
	struct nl_monitor *m = handle->data;
	static char buf[65536];

	(void)status;
	(void)events;
	/* Bounded per wakeup, so a flood of events cannot starve the loop. */
	for (int i = 0; i < 64 && !m->closed; i++) {
		ssize_t n = recv(m->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOBUFS) {
				/* the kernel dropped events: the socket stays usable, the caller resyncs */
				nlm_call(m, NULL, 0, true);
				continue;
			}
			break; /* EAGAIN: drained */
		}
		nlm_call(m, buf, (size_t)n, false);
	}
}

static void nlm_on_close(uv_handle_t *handle)
{
	struct nl_monitor *m = handle->data;

	close(m->fd);
	napi_delete_reference(m->env, m->callback);
	napi_async_destroy(m->env, m->async_ctx);
	free(m);
}

/* netlinkMonitorOpen(protocol, groups, rcvbufBytes, callback(Buffer | null)) -> handle; unreferenced. */
napi_value netlink_monitor_open(napi_env env, napi_callback_info info)
{
	napi_value argv[4], handle, name;
	int32_t protocol, groups, rcvbuf;
	struct sockaddr_nl addr = { .nl_family = AF_NETLINK };
	uv_loop_t *loop;
	struct nl_monitor *m;
	int fd, err;

	if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &protocol) || !get_i32(env, argv[1], &groups) ||
	    !get_i32(env, argv[2], &rcvbuf))
		return NULL;
	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
	if (fd < 0)
		return throw_errno(env, "NETLINK_SOCKET", errno);
	/* FORCE goes past net.core.rmem_max (CAP_NET_ADMIN); without the capability, the capped size */
	if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	addr.nl_groups = (uint32_t)groups;
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		err = errno;
		close(fd);
		return throw_errno(env, "NETLINK_BIND", err);
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		close(fd);
		return throw_errno(env, "NETLINK_MONITOR", ENOMEM);
	}
	m->env = env;
	m->fd = fd;
	NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
	err = uv_poll_init(loop, &m->poll, fd);
	if (err) {
		close(fd);
		free(m);
		return throw_errno(env, "UV_POLL_INIT", -err);
	}
	m->poll.data = m;
	napi_create_reference(env, argv[3], 1, &m->callback);
	napi_create_string_utf8(env, "kitnet:netlink-monitor", NAPI_AUTO_LENGTH, &name);
	napi_async_init(env, NULL, name, &m->async_ctx);
	err = uv_poll_start(&m->poll, UV_READABLE, nlm_on_poll);
	if (err) {
		m->closed = true;
		uv_close((uv_handle_t *)&m->poll, nlm_on_close);
		return throw_errno(env, "UV_POLL_START", -err);
	}
	/* a monitor alone must not keep the process alive */
	uv_unref((uv_handle_t *)&m->poll);
	NAPI_CALL(env, napi_create_external(env, m, NULL, NULL, &handle));
	return handle;
}

napi_value netlink_monitor_close(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct nl_monitor *m;

	if (!get_args(env, info, 1, argv))
		return NULL;
	if (napi_get_value_external(env, argv[0], (void **)&m) != napi_ok)
		return throw_type(env, "expected a netlink monitor handle");
	if (!m->closed) {
		m->closed = true;
		uv_poll_stop(&m->poll);
		uv_close((uv_handle_t *)&m->poll, nlm_on_close);
	}
	return NULL;
}
