// SPDX-License-Identifier: Apache-2.0
/*
 * A packet (AF_PACKET) socket bound to one device, read on the libuv loop: behind agent/addressing/
 * (DHCP for VM guests). Node's dgram cannot bind to a device, and the guest's first DHCPDISCOVER
 * (source 0.0.0.0) is dropped by the datapath's anti-spoofing at tcx ingress; a packet socket sees
 * frames before tcx ingress (taps run first in __netif_receive_skb_core), so the agent serves the
 * guest without a hole in the datapath. A classic BPF filter keeps only what the caller asks for
 * (UDP to one port over IPv4 or IPv6), so the agent never wakes for the guest's other traffic. Frames are sent
 * with PACKET_QDISC_BYPASS: straight to the device, past tcx egress (the reply comes from the
 * gateway, which the guest's policy does not govern).
 *
 * Devices are named and resolved in the calling thread's namespace. `outgoing` reads frames leaving
 * a device instead (seen before its transmit runs); a socket made inside another namespace would keep
 * that namespace alive, which is why the agent serves VMs from the host side.
 *
 * A guest decides how many frames reach its socket, so each socket hands the agent at most `burst`
 * frames at once and `perSecond` after that: beyond it the socket stops being polled until the budget
 * refills, its queue fills and the kernel drops the rest. A flooding guest costs the agent nothing more
 * than that (and costs only its own DHCP service).
 */
#include "addon.h"
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>

struct pkt_sock {
	napi_env env;
	napi_ref callback;
	napi_async_context async_ctx;
	uv_poll_t poll;
	uv_timer_t resume; /* restarts the poll once the budget has refilled */
	int open_handles;  /* poll and timer: freed when both are closed */
	double tokens, burst, per_second;
	uint64_t refilled_ms;
	int fd;
	int send_ifindex;
	bool outgoing;
	bool closed;
};

static void ps_call(struct pkt_sock *s, const char *data, size_t len)
{
	napi_env env = s->env;
	napi_handle_scope scope;
	napi_value arg, cb, recv, result;

	if (napi_open_handle_scope(env, &scope) != napi_ok)
		return;
	if (napi_create_buffer_copy(env, len, data, NULL, &arg) == napi_ok &&
	    napi_get_reference_value(env, s->callback, &cb) == napi_ok && cb && napi_get_global(env, &recv) == napi_ok) {
		napi_status st = napi_make_callback(env, s->async_ctx, recv, cb, 1, &arg, &result);
		if (st == napi_pending_exception) {
			napi_value exc;
			napi_get_and_clear_last_exception(env, &exc);
			napi_fatal_exception(env, exc);
		}
	}
	napi_close_handle_scope(env, scope);
}

static void ps_on_poll(uv_poll_t *handle, int status, int events);

static void ps_on_resume(uv_timer_t *timer)
{
	struct pkt_sock *s = timer->data;

	if (!s->closed)
		uv_poll_start(&s->poll, UV_READABLE, ps_on_poll);
}

/* One frame's worth of budget, or false (and the poll paused until there is one again). */
static bool ps_take_token(struct pkt_sock *s)
{
	uint64_t now = uv_now(s->poll.loop);
	double t = s->tokens + (double)(now - s->refilled_ms) * s->per_second / 1000.0;

	s->tokens = t > s->burst ? s->burst : t;
	s->refilled_ms = now;
	if (s->tokens >= 1) {
		s->tokens -= 1;
		return true;
	}
	uv_poll_stop(&s->poll);
	uv_timer_start(&s->resume, ps_on_resume, (uint64_t)((1 - s->tokens) * 1000 / s->per_second) + 1, 0);
	return false;
}

static void ps_on_poll(uv_poll_t *handle, int status, int events)
{
	struct pkt_sock *s = handle->data;
	static char buf[2048];

	(void)status;
	(void)events;
	/* Bounded per wakeup, so a flood from one guest cannot starve the loop. */
	for (int i = 0; i < 32 && !s->closed && ps_take_token(s); i++) {
		struct sockaddr_ll from;
		socklen_t fromlen = sizeof(from);
		ssize_t n = recvfrom(s->fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC, (struct sockaddr *)&from, &fromlen);
		if (n < 0) {
			s->tokens += 1; /* nothing read: the token is not spent */
			if (errno == EINTR)
				continue;
			break; /* EAGAIN: drained */
		}
		/* one direction only (our own sends are outgoing on a host device), and nothing larger than
		 * any DHCP message accepted */
		if ((from.sll_pkttype == PACKET_OUTGOING) != s->outgoing || (size_t)n > sizeof(buf)) {
			s->tokens += 1;
			continue;
		}
		ps_call(s, buf, (size_t)n);
	}
}

static void ps_on_close(uv_handle_t *handle)
{
	struct pkt_sock *s = handle->data;

	if (--s->open_handles > 0)
		return;
	close(s->fd);
	napi_delete_reference(s->env, s->callback);
	napi_async_destroy(s->env, s->async_ctx);
	free(s);
}

/* packetOpen(recvIfname, sendIfname, udpDstPort, outgoing, burst, perSecond, callback(Buffer)) -> handle;
 * unreferenced. At most burst frames at once, then perSecond, reach the callback.
 * UDP frames to udpDstPort only (IPv4: no non-first fragments; IPv6: UDP right after the fixed
 * header, as DHCPv6 clients send it), or with udpDstPort 0 ICMPv6 router
 * solicitations (no extension headers), received on recvIfname in one direction (outgoing = leaving
 * the device, else arriving); sends go out of sendIfname. */
napi_value packet_open(napi_env env, napi_callback_info info)
{
	napi_value argv[7], handle, name;
	char recv_name[IF_NAMESIZE + 1], send_name[IF_NAMESIZE + 1]; /* get_str takes cap - 2 characters */
	int32_t port, burst, per_second;
	bool outgoing;
	unsigned int ifindex, send_ifindex;
	uv_loop_t *loop;
	struct pkt_sock *s;
	int fd, err, one = 1;

	if (!get_args(env, info, 7, argv) || !get_str(env, argv[0], recv_name, sizeof(recv_name)) ||
	    !get_str(env, argv[1], send_name, sizeof(send_name)) || !get_i32(env, argv[2], &port) ||
	    !get_i32(env, argv[4], &burst) || !get_i32(env, argv[5], &per_second))
		return NULL;
	if (napi_get_value_bool(env, argv[3], &outgoing) != napi_ok)
		return throw_type(env, "packetOpen: outgoing must be a boolean");
	if (port < 0 || port > 65535)
		return throw_type(env, "packetOpen: port must be 0-65535");
	if (burst < 1 || per_second < 1)
		return throw_type(env, "packetOpen: burst and perSecond must be at least 1");
	ifindex = if_nametoindex(recv_name);
	if (!ifindex)
		return throw_errno(env, "PACKET_DEVICE", errno);
	send_ifindex = if_nametoindex(send_name);
	if (!send_ifindex)
		return throw_errno(env, "PACKET_DEVICE", errno);
	struct sock_filter code[] = {
		BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 12),			    /* ethertype */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IP, 0, 7),
		BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 23),			    /* IP protocol */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, 0, 11),
		BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 20),			    /* flags + fragment offset */
		BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x1fff, 9, 0),	    /* a non-first fragment */
		BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 14),			    /* X = IP header length */
		BPF_STMT(BPF_LD | BPF_H | BPF_IND, 16),			    /* UDP destination port */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)port, 5, 6),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IPV6, 0, 5),     /* IPv6 (DHCPv6): */
		BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 20),			    /* next header: UDP, no extension headers */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, 0, 3),
		BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 56),			    /* UDP destination port */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)port, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, 0xffff),
		BPF_STMT(BPF_RET | BPF_K, 0),
	};
	struct sock_filter rs[] = {
		BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 12),			    /* ethertype */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IPV6, 0, 5),
		BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 20),			    /* next header */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_ICMPV6, 0, 3),
		BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 54),			    /* ICMPv6 type */
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 133, 0, 1),		    /* router solicitation */
		BPF_STMT(BPF_RET | BPF_K, 0xffff),
		BPF_STMT(BPF_RET | BPF_K, 0),
	};
	struct sock_fprog prog = port ? (struct sock_fprog){ .len = sizeof(code) / sizeof(code[0]), .filter = code } :
					(struct sock_fprog){ .len = sizeof(rs) / sizeof(rs[0]), .filter = rs };
	/* protocol 0 at socket(): nothing is queued before the filter is in place and the bind names the
	 * device and protocol */
	fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return throw_errno(env, "PACKET_SOCKET", errno);
	struct sockaddr_ll addr = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)ifindex };
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0 ||
	    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		err = errno;
		close(fd);
		return throw_errno(env, "PACKET_BIND", err);
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return throw_errno(env, "PACKET_SOCKET", ENOMEM);
	}
	s->env = env;
	s->fd = fd;
	s->send_ifindex = (int)send_ifindex;
	s->outgoing = outgoing;
	NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
	err = uv_poll_init(loop, &s->poll, fd);
	if (err) {
		close(fd);
		free(s);
		return throw_errno(env, "UV_POLL_INIT", -err);
	}
	s->poll.data = s;
	s->open_handles = 1;
	uv_timer_init(loop, &s->resume); /* cannot fail */
	s->resume.data = s;
	s->open_handles++;
	uv_unref((uv_handle_t *)&s->resume);
	s->burst = burst;
	s->per_second = per_second;
	s->tokens = burst;
	s->refilled_ms = uv_now(loop);
	napi_create_reference(env, argv[6], 1, &s->callback);
	napi_create_string_utf8(env, "kitnet:packet-socket", NAPI_AUTO_LENGTH, &name);
	napi_async_init(env, NULL, name, &s->async_ctx);
	err = uv_poll_start(&s->poll, UV_READABLE, ps_on_poll);
	if (err) {
		s->closed = true;
		uv_close((uv_handle_t *)&s->resume, ps_on_close);
		uv_close((uv_handle_t *)&s->poll, ps_on_close);
		return throw_errno(env, "UV_POLL_START", -err);
	}
	uv_unref((uv_handle_t *)&s->poll);
	NAPI_CALL(env, napi_create_external(env, s, NULL, NULL, &handle));
	return handle;
}

/* packetSend(handle, frame): one whole Ethernet frame out of the send device. */
napi_value packet_send(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	struct pkt_sock *s;
	void *data;
	size_t len;

	if (!get_args(env, info, 2, argv))
		return NULL;
	if (napi_get_value_external(env, argv[0], (void **)&s) != napi_ok)
		return throw_type(env, "expected a packet socket handle");
	if (!get_buf(env, argv[1], &data, &len, false))
		return NULL;
	if (s->closed)
		return throw_errno(env, "PACKET_SEND", EBADF);
	struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = s->send_ifindex, .sll_halen = ETH_ALEN };
	if (len >= ETH_ALEN)
		memcpy(to.sll_addr, data, ETH_ALEN);
	if (sendto(s->fd, data, len, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof(to)) < 0)
		return throw_errno(env, "PACKET_SEND", errno);
	return NULL;
}

napi_value packet_close(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct pkt_sock *s;

	if (!get_args(env, info, 1, argv))
		return NULL;
	if (napi_get_value_external(env, argv[0], (void **)&s) != napi_ok)
		return throw_type(env, "expected a packet socket handle");
	if (!s->closed) {
		s->closed = true;
		uv_poll_stop(&s->poll);
		uv_close((uv_handle_t *)&s->resume, ps_on_close);
		uv_close((uv_handle_t *)&s->poll, ps_on_close);
	}
	return NULL;
}
