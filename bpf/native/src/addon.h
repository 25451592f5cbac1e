// SPDX-License-Identifier: Apache-2.0
/* Shared by the addon's files: includes, the N-API call macro, error and argument helpers, and the
 * functions each file exports to the table in addon.c. */
#ifndef KITNET_ADDON_H
#define KITNET_ADDON_H

#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/nsfs.h>
#include <linux/netlink.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <node_api.h>
#include <uv.h>

#define LOG_CAP (64 * 1024)
/* The tail of what libbpf printed during the current call (addon.c). */
extern char log_buf[LOG_CAP];
extern size_t log_len;
void log_reset(void);

#define NAPI_CALL(env, call)                                                                   \
	do {                                                                                   \
		if ((call) != napi_ok) {                                                       \
			const napi_extended_error_info *ei = NULL;                             \
			napi_get_last_error_info((env), &ei);                                  \
			bool pending = false;                                                  \
			napi_is_exception_pending((env), &pending);                            \
			if (!pending)                                                          \
				napi_throw_error((env), NULL,                                  \
						 ei && ei->error_message ? ei->error_message : \
									   "N-API call failed"); \
			return NULL;                                                           \
		}                                                                              \
	} while (0)

napi_value throw_errno(napi_env env, const char *op, int err);
napi_value throw_type(napi_env env, const char *msg);
bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv);
bool get_i32(napi_env env, napi_value v, int32_t *out);
bool get_u32(napi_env env, napi_value v, uint32_t *out);
bool get_buf(napi_env env, napi_value v, void **data, size_t *len, bool nullable);
bool get_str(napi_env env, napi_value v, char *out, size_t cap);
napi_value make_i32(napi_env env, int32_t x);
napi_value make_u32(napi_env env, uint32_t x);
napi_value make_bool(napi_env env, bool x);
void set_u32(napi_env env, napi_value obj, const char *name, uint32_t x);

/* objects.c */
napi_value object_open(napi_env env, napi_callback_info info);
napi_value object_close(napi_env env, napi_callback_info info);
napi_value obj_pin(napi_env env, napi_callback_info info);
napi_value obj_get(napi_env env, napi_callback_info info);
napi_value fd_close(napi_env env, napi_callback_info info);
napi_value prog_info(napi_env env, napi_callback_info info);
napi_value prog_test_run(napi_env env, napi_callback_info info);
napi_value flock_exclusive(napi_env env, napi_callback_info info);
/* links.c */
napi_value link_create(napi_env env, napi_callback_info info);
napi_value link_update(napi_env env, napi_callback_info info);
napi_value link_detach(napi_env env, napi_callback_info info);
napi_value link_info(napi_env env, napi_callback_info info);
/* maps.c */
napi_value map_info(napi_env env, napi_callback_info info);
napi_value map_update(napi_env env, napi_callback_info info);
napi_value map_lookup(napi_env env, napi_callback_info info);
napi_value map_delete(napi_env env, napi_callback_info info);
napi_value map_next_key(napi_env env, napi_callback_info info);
napi_value map_batch_apply(napi_env env, napi_callback_info info);
napi_value map_update_batch(napi_env env, napi_callback_info info);
napi_value map_dump(napi_env env, napi_callback_info info);
napi_value map_dump_batch(napi_env env, napi_callback_info info);
napi_value num_possible_cpus(napi_env env, napi_callback_info info);
/* ringbuf.c */
napi_value ringbuf_open(napi_env env, napi_callback_info info);
napi_value ringbuf_close(napi_env env, napi_callback_info info);
napi_value ringbuf_ref(napi_env env, napi_callback_info info);
/* netns.c */
napi_value ns_set(napi_env env, napi_callback_info info);
napi_value ns_type(napi_env env, napi_callback_info info);
napi_value netns_cookie(napi_env env, napi_callback_info info);
napi_value netlink_monitor_open(napi_env env, napi_callback_info info);
napi_value netlink_monitor_close(napi_env env, napi_callback_info info);

/* packet.c */
napi_value packet_open(napi_env env, napi_callback_info info);
napi_value packet_send(napi_env env, napi_callback_info info);
napi_value packet_close(napi_env env, napi_callback_info info);
/* udp.c */
napi_value udp_open(napi_env env, napi_callback_info info);
napi_value udp_send(napi_env env, napi_callback_info info);
napi_value udp_local_port(napi_env env, napi_callback_info info);
napi_value udp_close(napi_env env, napi_callback_info info);
napi_value udp_pause(napi_env env, napi_callback_info info);
/* dnsfast.c */
napi_value dns_fast_tables(napi_env env, napi_callback_info info);
napi_value dns_fast_verdict(napi_env env, napi_callback_info info);
napi_value dns_fast_known(napi_env env, napi_callback_info info);
napi_value dns_fast_plan(napi_env env, napi_callback_info info);
napi_value dns_fast_plan_allows(napi_env env, napi_callback_info info);
napi_value dns_fast_forget(napi_env env, napi_callback_info info);
napi_value dns_fast_start(napi_env env, napi_callback_info info);
napi_value dns_fast_stop(napi_env env, napi_callback_info info);
napi_value dns_fast_stats(napi_env env, napi_callback_info info);

#endif
