// SPDX-License-Identifier: Apache-2.0
/*
 * kitnet_bpf: a thin N-API binding over libbpf. It exposes what libbpf does and nothing more; policy
 * (what to pin where, how to adopt links) lives in the TypeScript files of bpf/.
 *
 * Errors: every failure throws an Error with `errno` (number), `code` (errno name), `op` (the libbpf /
 * syscall operation) and `libbpfLog` (libbpf's warnings during the call, e.g. the verifier log), which
 * bpf/errors.ts turns into a KernelError with a hint (loaded by common/native.ts).
 *
 * Ring buffers are read on the libuv loop: the ring buffer's epoll fd is watched with a uv_poll_t, each
 * wakeup drains everything with ring_buffer__consume into one staging buffer, and JS gets ONE Buffer
 * per wakeup. Records in that Buffer are framed as [u32 length][u32 0][payload, padded to 8 bytes].
 *
 * Files by concern: addon.c (this: libbpf log capture, N-API helpers, the export table), objects.c
 * (objects, fds, pins, program info, test runs, flock), maps.c, links.c, ringbuf.c, netns.c (setns,
 * nsType, the rtnetlink listener); addon.h declares what they share.
 */
#include "addon.h"

/* ---------------------------------------------------------------------------------------------- */
/* libbpf log capture: keep the tail of what libbpf printed during the current call.               */

char log_buf[LOG_CAP];
size_t log_len;

static int log_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	if (log_len >= LOG_CAP - 1) {
		/* keep the tail: the verifier's conclusion is at the end */
		memmove(log_buf, log_buf + LOG_CAP / 2, LOG_CAP / 2);
		log_len = LOG_CAP / 2;
	}
	int n = vsnprintf(log_buf + log_len, LOG_CAP - log_len, fmt, args);
	if (n > 0)
		log_len += (size_t)n < LOG_CAP - log_len ? (size_t)n : LOG_CAP - 1 - log_len;
	return 0;
}

void log_reset(void)
{
	log_len = 0;
	log_buf[0] = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* N-API helpers.                                                                                   */


/* Throw Error{message, errno, code, op, libbpfLog}; err is a positive errno. Returns NULL. */
napi_value throw_errno(napi_env env, const char *op, int err)
{
	char msg[256];
	const char *name;
	napi_value error, message, v;

	if (err < 0)
		err = -err;
	name = strerrorname_np(err);
	snprintf(msg, sizeof(msg), "%s: %s (%s)", op, name ? name : "E?", strerror(err));
	napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
	napi_create_error(env, NULL, message, &error);
	napi_create_int32(env, err, &v);
	napi_set_named_property(env, error, "errno", v);
	napi_create_string_utf8(env, name ? name : "", NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, error, "code", v);
	napi_create_string_utf8(env, op, NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, error, "op", v);
	napi_create_string_utf8(env, log_buf, log_len, &v);
	napi_set_named_property(env, error, "libbpfLog", v);
	napi_throw(env, error);
	return NULL;
}

napi_value throw_type(napi_env env, const char *msg)
{
	napi_throw_type_error(env, NULL, msg);
	return NULL;
}

bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv)
{
	size_t argc = want;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
		napi_throw_type_error(env, NULL, "missing arguments");
		return false;
	}
	return true;
}

bool get_i32(napi_env env, napi_value v, int32_t *out)
{
	if (napi_get_value_int32(env, v, out) != napi_ok) {
		napi_throw_type_error(env, NULL, "expected a number");
		return false;
	}
	return true;
}

bool get_u32(napi_env env, napi_value v, uint32_t *out)
{
	if (napi_get_value_uint32(env, v, out) != napi_ok) {
		napi_throw_type_error(env, NULL, "expected a number");
		return false;
	}
	return true;
}

/* Caller-provided buffer; NULL/undefined allowed when nullable. */
bool get_buf(napi_env env, napi_value v, void **data, size_t *len, bool nullable)
{
	napi_valuetype t;
	bool is_buf = false;

	napi_typeof(env, v, &t);
	if (nullable && (t == napi_null || t == napi_undefined)) {
		*data = NULL;
		*len = 0;
		return true;
	}
	napi_is_buffer(env, v, &is_buf);
	if (!is_buf || napi_get_buffer_info(env, v, data, len) != napi_ok) {
		napi_throw_type_error(env, NULL, "expected a Buffer");
		return false;
	}
	return true;
}

bool get_str(napi_env env, napi_value v, char *out, size_t cap)
{
	size_t n;
	if (napi_get_value_string_utf8(env, v, out, cap, &n) != napi_ok) {
		napi_throw_type_error(env, NULL, "expected a string");
		return false;
	}
	if (n >= cap - 1) {
		napi_throw_range_error(env, NULL, "string too long");
		return false;
	}
	return true;
}

napi_value make_i32(napi_env env, int32_t x)
{
	napi_value v;
	napi_create_int32(env, x, &v);
	return v;
}

napi_value make_u32(napi_env env, uint32_t x)
{
	napi_value v;
	napi_create_uint32(env, x, &v);
	return v;
}

napi_value make_bool(napi_env env, bool x)
{
	napi_value v;
	napi_get_boolean(env, x, &v);
	return v;
}

void set_u32(napi_env env, napi_value obj, const char *name, uint32_t x)
{
	napi_set_named_property(env, obj, name, make_u32(env, x));
}

/* ---------------------------------------------------------------------------------------------- */

static napi_value init(napi_env env, napi_value exports)
{
	static const struct {
		const char *name;
		napi_callback fn;
	} fns[] = {
		{ "objectOpen", object_open },	 { "objectClose", object_close },
		{ "objPin", obj_pin },		 { "objGet", obj_get },
		{ "fdClose", fd_close },	 { "linkCreate", link_create },
		{ "linkUpdate", link_update },	 { "linkInfo", link_info },
		{ "linkDetach", link_detach },
		{ "progInfo", prog_info },	 { "mapInfo", map_info },
		{ "mapUpdate", map_update },	 { "mapLookup", map_lookup },
		{ "mapDelete", map_delete },	 { "mapNextKey", map_next_key },
		{ "mapBatchApply", map_batch_apply }, { "mapDump", map_dump },
		{ "mapUpdateBatch", map_update_batch }, { "mapDumpBatch", map_dump_batch },
		{ "numPossibleCpus", num_possible_cpus }, { "progTestRun", prog_test_run },
		{ "ringbufOpen", ringbuf_open }, { "ringbufClose", ringbuf_close },
		{ "ringbufRef", ringbuf_ref },	 { "setns", ns_set },
		{ "nsType", ns_type },	 { "netnsCookie", netns_cookie },
		{ "flockExclusive", flock_exclusive },
		{ "netlinkMonitorOpen", netlink_monitor_open }, { "netlinkMonitorClose", netlink_monitor_close },
		{ "packetOpen", packet_open }, { "packetSend", packet_send }, { "packetClose", packet_close },
		{ "udpOpen", udp_open }, { "udpSend", udp_send }, { "udpLocalPort", udp_local_port },
		{ "udpClose", udp_close }, { "udpPause", udp_pause },
		{ "dnsFastTables", dns_fast_tables }, { "dnsFastVerdict", dns_fast_verdict },
		{ "dnsFastKnown", dns_fast_known }, { "dnsFastForget", dns_fast_forget },
		{ "dnsFastStart", dns_fast_start }, { "dnsFastStop", dns_fast_stop },
		{ "dnsFastStats", dns_fast_stats }, { "dnsFastPlan", dns_fast_plan },
		{ "dnsFastPlanAllows", dns_fast_plan_allows },
	};

	libbpf_set_print(log_print);
	for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		napi_value f;
		NAPI_CALL(env, napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f));
		NAPI_CALL(env, napi_set_named_property(env, exports, fns[i].name, f));
	}
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
