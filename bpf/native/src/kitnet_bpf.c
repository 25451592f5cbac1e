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
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
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

/* ---------------------------------------------------------------------------------------------- */
/* libbpf log capture: keep the tail of what libbpf printed during the current call.               */

#define LOG_CAP (64 * 1024)
static char log_buf[LOG_CAP];
static size_t log_len;

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

static void log_reset(void)
{
	log_len = 0;
	log_buf[0] = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* N-API helpers.                                                                                   */

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

/* Throw Error{message, errno, code, op, libbpfLog}; err is a positive errno. Returns NULL. */
static napi_value throw_errno(napi_env env, const char *op, int err)
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

static napi_value throw_type(napi_env env, const char *msg)
{
	napi_throw_type_error(env, NULL, msg);
	return NULL;
}

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv)
{
	size_t argc = want;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
		napi_throw_type_error(env, NULL, "missing arguments");
		return false;
	}
	return true;
}

static bool get_i32(napi_env env, napi_value v, int32_t *out)
{
	if (napi_get_value_int32(env, v, out) != napi_ok) {
		napi_throw_type_error(env, NULL, "expected a number");
		return false;
	}
	return true;
}

static bool get_u32(napi_env env, napi_value v, uint32_t *out)
{
	if (napi_get_value_uint32(env, v, out) != napi_ok) {
		napi_throw_type_error(env, NULL, "expected a number");
		return false;
	}
	return true;
}

/* Caller-provided buffer; NULL/undefined allowed when nullable. */
static bool get_buf(napi_env env, napi_value v, void **data, size_t *len, bool nullable)
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

static bool get_str(napi_env env, napi_value v, char *out, size_t cap)
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

static napi_value make_i32(napi_env env, int32_t x)
{
	napi_value v;
	napi_create_int32(env, x, &v);
	return v;
}

static napi_value make_u32(napi_env env, uint32_t x)
{
	napi_value v;
	napi_create_uint32(env, x, &v);
	return v;
}

static napi_value make_bool(napi_env env, bool x)
{
	napi_value v;
	napi_get_boolean(env, x, &v);
	return v;
}

static void set_u32(napi_env env, napi_value obj, const char *name, uint32_t x)
{
	napi_set_named_property(env, obj, name, make_u32(env, x));
}

/* ---------------------------------------------------------------------------------------------- */
/* Objects: open + load with pin_root_path, then hand out program and map fds.                      */

struct obj_handle {
	struct bpf_object *obj;
};

static void obj_finalize(napi_env env, void *data, void *hint)
{
	struct obj_handle *h = data;
	if (h->obj)
		bpf_object__close(h->obj);
	free(h);
}

/* Applies {mapName: maxEntries} between open and load (e.g. a smaller ring buffer). */
static bool map_sizes_apply(napi_env env, struct bpf_object *obj, napi_value sizes)
{
	napi_valuetype t;
	napi_value names, key, val;
	uint32_t n, i, entries;
	char name[256];
	struct bpf_map *map;
	int err;

	if (napi_typeof(env, sizes, &t) != napi_ok || t != napi_object)
		return true;
	if (napi_get_property_names(env, sizes, &names) != napi_ok || napi_get_array_length(env, names, &n) != napi_ok)
		return false;
	for (i = 0; i < n; i++) {
		if (napi_get_element(env, names, i, &key) != napi_ok || !get_str(env, key, name, sizeof(name)) ||
		    napi_get_property(env, sizes, key, &val) != napi_ok || napi_get_value_uint32(env, val, &entries) != napi_ok)
			return false;
		map = bpf_object__find_map_by_name(obj, name);
		if (!map) {
			throw_errno(env, "BPF_MAP_RESIZE", ENOENT);
			return false;
		}
		err = bpf_map__set_max_entries(map, entries);
		if (err) {
			throw_errno(env, "BPF_MAP_RESIZE", -err);
			return false;
		}
	}
	return true;
}

/* objectOpen(path, pinRoot, sizes?) -> { handle, progs: {name: fd}, maps: {name: fd} } */
static napi_value object_open(napi_env env, napi_callback_info info)
{
	napi_value argv[3], result, progs, maps, handle;
	char path[4096], pin_root[4096];
	struct bpf_program *prog;
	struct bpf_map *map;
	struct obj_handle *h;
	size_t argc = 3;
	int err;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) {
		napi_throw_type_error(env, NULL, "missing arguments");
		return NULL;
	}
	if (!get_str(env, argv[0], path, sizeof(path)) || !get_str(env, argv[1], pin_root, sizeof(pin_root)))
		return NULL;

	log_reset();
	LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = pin_root);
	struct bpf_object *obj = bpf_object__open_file(path, &opts);
	if (!obj)
		return throw_errno(env, "BPF_OBJECT_OPEN", errno);
	if (argc >= 3 && !map_sizes_apply(env, obj, argv[2])) {
		bpf_object__close(obj);
		return NULL;
	}
	err = bpf_object__load(obj);
	if (err) {
		bpf_object__close(obj);
		return throw_errno(env, "BPF_PROG_LOAD", -err);
	}

	h = calloc(1, sizeof(*h));
	if (!h) {
		bpf_object__close(obj);
		return throw_errno(env, "BPF_OBJECT_OPEN", ENOMEM);
	}
	h->obj = obj;
	NAPI_CALL(env, napi_create_external(env, h, obj_finalize, NULL, &handle));
	NAPI_CALL(env, napi_create_object(env, &result));
	NAPI_CALL(env, napi_create_object(env, &progs));
	NAPI_CALL(env, napi_create_object(env, &maps));
	bpf_object__for_each_program(prog, obj)
		napi_set_named_property(env, progs, bpf_program__name(prog), make_i32(env, bpf_program__fd(prog)));
	bpf_object__for_each_map(map, obj)
		napi_set_named_property(env, maps, bpf_map__name(map), make_i32(env, bpf_map__fd(map)));
	napi_set_named_property(env, result, "handle", handle);
	napi_set_named_property(env, result, "progs", progs);
	napi_set_named_property(env, result, "maps", maps);
	return result;
}

/* objectClose(handle): closes every program and map fd of the object (pins stay). */
static napi_value object_close(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct obj_handle *h;

	if (!get_args(env, info, 1, argv))
		return NULL;
	if (napi_get_value_external(env, argv[0], (void **)&h) != napi_ok)
		return throw_type(env, "expected an object handle");
	if (h->obj) {
		bpf_object__close(h->obj);
		h->obj = NULL;
	}
	return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* fds, pins, links.                                                                                */

static napi_value obj_pin(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	int32_t fd;
	char path[4096];

	if (!get_args(env, info, 2, argv) || !get_i32(env, argv[0], &fd) || !get_str(env, argv[1], path, sizeof(path)))
		return NULL;
	log_reset();
	if (bpf_obj_pin(fd, path))
		return throw_errno(env, "BPF_OBJ_PIN", errno);
	return NULL;
}

static napi_value obj_get(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	char path[4096];

	if (!get_args(env, info, 1, argv) || !get_str(env, argv[0], path, sizeof(path)))
		return NULL;
	log_reset();
	int fd = bpf_obj_get(path);
	if (fd < 0)
		return throw_errno(env, "BPF_OBJ_GET", errno);
	return make_i32(env, fd);
}

static napi_value fd_close(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	int32_t fd;

	if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd))
		return NULL;
	if (fd >= 0)
		close(fd);
	return NULL;
}

/* linkCreate(progFd, ifindex, attachType) -> link fd. libbpf 1.1 passes unknown attach types (tcx 46/47,
 * netkit 54/55) through to BPF_LINK_CREATE with target_fd = ifindex; relative_fd/expected_revision 0
 * means "append, any revision". */
static napi_value link_create(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	int32_t prog_fd, ifindex, attach_type;

	if (!get_args(env, info, 3, argv) || !get_i32(env, argv[0], &prog_fd) || !get_i32(env, argv[1], &ifindex) ||
	    !get_i32(env, argv[2], &attach_type))
		return NULL;
	log_reset();
	int fd = bpf_link_create(prog_fd, ifindex, (enum bpf_attach_type)attach_type, NULL);
	if (fd < 0)
		return throw_errno(env, "BPF_LINK_CREATE", -fd);
	return make_i32(env, fd);
}

/* linkUpdate(linkFd, newProgFd): atomically replace the program behind a link. */
static napi_value link_update(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	int32_t link_fd, prog_fd;

	if (!get_args(env, info, 2, argv) || !get_i32(env, argv[0], &link_fd) || !get_i32(env, argv[1], &prog_fd))
		return NULL;
	log_reset();
	int err = bpf_link_update(link_fd, prog_fd, NULL);
	if (err < 0)
		return throw_errno(env, "BPF_LINK_UPDATE", -err);
	return NULL;
}

/* linkDetach(linkFd): detach now (BPF_LINK_DETACH) instead of whenever the last reference goes — the
 * final put of a link is deferred to a workqueue, so "unpin" alone detaches a little later. */
static napi_value link_detach(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	int32_t link_fd;

	if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &link_fd))
		return NULL;
	log_reset();
	int err = bpf_link_detach(link_fd);
	if (err < 0)
		return throw_errno(env, "BPF_LINK_DETACH", -err);
	return NULL;
}

/* Raw bpf_link_info as the kernel writes it; the system headers predate tcx/netkit, whose union member
 * is {__u32 ifindex; __u32 attach_type;} at offset 16 (after type, id, prog_id and alignment). */
struct link_info_raw {
	uint32_t type;
	uint32_t id;
	uint32_t prog_id;
	uint32_t pad;
	uint32_t u32s[60];
};

/* linkInfo(fd) -> {type, id, progId, ifindex, attachType} (ifindex/attachType meaningful for tcx/netkit) */
static napi_value link_info(napi_env env, napi_callback_info info)
{
	napi_value argv[1], obj;
	int32_t fd;
	struct link_info_raw li;
	uint32_t len = sizeof(li);

	if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd))
		return NULL;
	memset(&li, 0, sizeof(li));
	if (bpf_obj_get_info_by_fd(fd, &li, &len))
		return throw_errno(env, "BPF_OBJ_GET_INFO_BY_FD", errno);
	NAPI_CALL(env, napi_create_object(env, &obj));
	set_u32(env, obj, "type", li.type);
	set_u32(env, obj, "id", li.id);
	set_u32(env, obj, "progId", li.prog_id);
	set_u32(env, obj, "ifindex", li.u32s[0]);
	set_u32(env, obj, "attachType", li.u32s[1]);
	return obj;
}

/* progInfo(fd) -> {id, type, name} */
static napi_value prog_info(napi_env env, napi_callback_info info)
{
	napi_value argv[1], obj, v;
	int32_t fd;
	struct bpf_prog_info pi;
	uint32_t len = sizeof(pi);

	if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd))
		return NULL;
	memset(&pi, 0, sizeof(pi));
	if (bpf_obj_get_info_by_fd(fd, &pi, &len))
		return throw_errno(env, "BPF_OBJ_GET_INFO_BY_FD", errno);
	NAPI_CALL(env, napi_create_object(env, &obj));
	set_u32(env, obj, "id", pi.id);
	set_u32(env, obj, "type", pi.type);
	napi_create_string_utf8(env, pi.name, strnlen(pi.name, sizeof(pi.name)), &v);
	napi_set_named_property(env, obj, "name", v);
	return obj;
}

/* mapInfo(fd) -> {id, type, keySize, valueSize, maxEntries, flags, name} */
static napi_value map_info(napi_env env, napi_callback_info info)
{
	napi_value argv[1], obj, v;
	int32_t fd;
	struct bpf_map_info mi;
	uint32_t len = sizeof(mi);

	if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd))
		return NULL;
	memset(&mi, 0, sizeof(mi));
	if (bpf_obj_get_info_by_fd(fd, &mi, &len))
		return throw_errno(env, "BPF_OBJ_GET_INFO_BY_FD", errno);
	NAPI_CALL(env, napi_create_object(env, &obj));
	set_u32(env, obj, "id", mi.id);
	set_u32(env, obj, "type", mi.type);
	set_u32(env, obj, "keySize", mi.key_size);
	set_u32(env, obj, "valueSize", mi.value_size);
	set_u32(env, obj, "maxEntries", mi.max_entries);
	set_u32(env, obj, "flags", mi.map_flags);
	napi_create_string_utf8(env, mi.name, strnlen(mi.name, sizeof(mi.name)), &v);
	napi_set_named_property(env, obj, "name", v);
	return obj;
}

/* ---------------------------------------------------------------------------------------------- */
/* Map element access. Buffer sizes are checked by the TypeScript wrapper (bpf/maps/map.ts), which  */
/* knows key/value sizes from mapInfo; the kernel reads exactly key_size / value_size bytes.         */

/* mapUpdate(fd, key, value, flags) */
static napi_value map_update(napi_env env, napi_callback_info info)
{
	napi_value argv[4];
	int32_t fd;
	uint32_t flags;
	void *key, *value;
	size_t klen, vlen;

	if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &fd) || !get_buf(env, argv[1], &key, &klen, false) ||
	    !get_buf(env, argv[2], &value, &vlen, false) || !get_u32(env, argv[3], &flags))
		return NULL;
	if (bpf_map_update_elem(fd, key, value, flags))
		return throw_errno(env, "BPF_MAP_UPDATE_ELEM", errno);
	return NULL;
}

/* mapLookup(fd, key, valueOut) -> found */
static napi_value map_lookup(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	int32_t fd;
	void *key, *value;
	size_t klen, vlen;

	if (!get_args(env, info, 3, argv) || !get_i32(env, argv[0], &fd) || !get_buf(env, argv[1], &key, &klen, false) ||
	    !get_buf(env, argv[2], &value, &vlen, false))
		return NULL;
	if (bpf_map_lookup_elem(fd, key, value)) {
		if (errno == ENOENT)
			return make_bool(env, false);
		return throw_errno(env, "BPF_MAP_LOOKUP_ELEM", errno);
	}
	return make_bool(env, true);
}

/* mapDelete(fd, key) -> existed */
static napi_value map_delete(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	int32_t fd;
	void *key;
	size_t klen;

	if (!get_args(env, info, 2, argv) || !get_i32(env, argv[0], &fd) || !get_buf(env, argv[1], &key, &klen, false))
		return NULL;
	if (bpf_map_delete_elem(fd, key)) {
		if (errno == ENOENT)
			return make_bool(env, false);
		return throw_errno(env, "BPF_MAP_DELETE_ELEM", errno);
	}
	return make_bool(env, true);
}

/* mapNextKey(fd, key | null, nextOut) -> found (false at the end) */
static napi_value map_next_key(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	int32_t fd;
	void *key, *next;
	size_t klen, nlen;

	if (!get_args(env, info, 3, argv) || !get_i32(env, argv[0], &fd) || !get_buf(env, argv[1], &key, &klen, true) ||
	    !get_buf(env, argv[2], &next, &nlen, false))
		return NULL;
	if (bpf_map_get_next_key(fd, key, next)) {
		if (errno == ENOENT)
			return make_bool(env, false);
		return throw_errno(env, "BPF_MAP_GET_NEXT_KEY", errno);
	}
	return make_bool(env, true);
}

/* mapBatchApply(fd, ops, keys, values, keySize, valueSize, flags, results?) -> {upserted, deleted, missing}
 * One call for many writes, in order: ops[i] is 1 (update keys[i] with values[i], flags) or 2 (delete
 * keys[i]; a missing key counts in `missing`). Keys and values are packed back to back (values has a
 * slot for every op; delete slots are ignored). Works for every map type, LPM tries included (which have
 * no kernel batch ops). On failure, ops before the failing one stay applied and the error carries
 * `index`. With `results` (a buffer of one byte per op) each applied op reports whether it changed the
 * set of keys: 1 = an update created its key (flags BPF_ANY: tried with BPF_NOEXIST first, then as a
 * replacement) or a delete removed one, 0 = an update replaced a value or a delete found nothing. */
static napi_value map_batch_apply(napi_env env, napi_callback_info info)
{
	napi_value argv[8], obj;
	int32_t fd;
	uint32_t ksz, vsz, flags, upserted = 0, deleted = 0, missing = 0;
	void *ops_v, *keys_v, *values_v, *results_v = NULL;
	size_t nops, klen, vlen, rlen = 0;
	size_t argc = 8;
	napi_valuetype rtype = napi_undefined;

	NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	if (argc < 7)
		return throw_type(env, "mapBatchApply: expected at least 7 arguments");
	if (!get_i32(env, argv[0], &fd) || !get_buf(env, argv[1], &ops_v, &nops, false) ||
	    !get_buf(env, argv[2], &keys_v, &klen, false) || !get_buf(env, argv[3], &values_v, &vlen, false) ||
	    !get_u32(env, argv[4], &ksz) || !get_u32(env, argv[5], &vsz) || !get_u32(env, argv[6], &flags))
		return NULL;
	if (argc >= 8)
		NAPI_CALL(env, napi_typeof(env, argv[7], &rtype));
	if (rtype != napi_undefined && rtype != napi_null) {
		if (!get_buf(env, argv[7], &results_v, &rlen, false))
			return NULL;
		if (rlen != nops)
			return throw_type(env, "mapBatchApply: results must have one byte per op");
	}
	if (!ksz || !vsz || klen != nops * ksz || vlen != nops * vsz)
		return throw_type(env, "mapBatchApply: keys/values do not match ops x key/value size");
	const uint8_t *ops = ops_v;
	uint8_t *results = results_v;
	const char *keys = keys_v, *values = values_v;
	log_reset();
	for (size_t i = 0; i < nops; i++) {
		const char *key = keys + i * ksz;
		int err = 0;
		const char *op = "BPF_MAP_UPDATE_ELEM";

		if (ops[i] == 1) {
			uint8_t created = 0;

			if (results && flags == BPF_ANY) {
				if (bpf_map_update_elem(fd, key, values + i * vsz, BPF_NOEXIST) == 0)
					created = 1;
				else if (errno != EEXIST)
					err = errno;
				else if (bpf_map_update_elem(fd, key, values + i * vsz, BPF_ANY))
					err = errno;
			} else if (bpf_map_update_elem(fd, key, values + i * vsz, flags)) {
				err = errno;
			}
			if (!err) {
				upserted++;
				if (results)
					results[i] = created;
			}
		} else if (ops[i] == 2) {
			op = "BPF_MAP_DELETE_ELEM";
			if (bpf_map_delete_elem(fd, key)) {
				if (errno == ENOENT) {
					missing++;
					if (results)
						results[i] = 0;
				} else {
					err = errno;
				}
			} else {
				deleted++;
				if (results)
					results[i] = 1;
			}
		} else {
			return throw_type(env, "mapBatchApply: op must be 1 (update) or 2 (delete)");
		}
		if (err) {
			throw_errno(env, op, err);
			napi_value exc;
			napi_get_and_clear_last_exception(env, &exc);
			napi_set_named_property(env, exc, "index", make_u32(env, (uint32_t)i));
			napi_throw(env, exc);
			return NULL;
		}
	}
	NAPI_CALL(env, napi_create_object(env, &obj));
	set_u32(env, obj, "upserted", upserted);
	set_u32(env, obj, "deleted", deleted);
	set_u32(env, obj, "missing", missing);
	return obj;
}

/* mapUpdateBatch(fd, keys, values, keySize, valueSize, flags) -> count: every key updated in one
 * BPF_MAP_UPDATE_BATCH syscall (hash maps; not LPM tries, which have no batch ops). On failure, the
 * keys before `index` are updated and the error carries it. */
static napi_value map_update_batch(napi_env env, napi_callback_info info)
{
	napi_value argv[6], exc;
	int32_t fd;
	uint32_t ksz, vsz, flags;
	void *keys, *values;
	size_t klen, vlen;

	if (!get_args(env, info, 6, argv) || !get_i32(env, argv[0], &fd) || !get_buf(env, argv[1], &keys, &klen, false) ||
	    !get_buf(env, argv[2], &values, &vlen, false) || !get_u32(env, argv[3], &ksz) || !get_u32(env, argv[4], &vsz) ||
	    !get_u32(env, argv[5], &flags))
		return NULL;
	if (!ksz || !vsz || klen % ksz || vlen != klen / ksz * vsz)
		return throw_type(env, "mapUpdateBatch: keys/values do not match key/value size");
	__u32 count = (__u32)(klen / ksz);
	LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = flags);
	log_reset();
	if (count && bpf_map_update_batch(fd, keys, values, &count, &opts)) {
		int err = errno;
		throw_errno(env, "BPF_MAP_UPDATE_BATCH", err);
		napi_get_and_clear_last_exception(env, &exc);
		napi_set_named_property(env, exc, "index", make_u32(env, count));
		napi_throw(env, exc);
		return NULL;
	}
	return make_u32(env, count);
}

/* {count, keys, values} of a map dump: n keys of ksz bytes and n values of vsz bytes, copied into
 * Buffers; NULL if N-API could not make them. */
static napi_value dump_result(napi_env env, size_t n, uint32_t ksz, uint32_t vsz, const char *keys, const char *values)
{
	napi_value obj, kb, vb;

	if (napi_create_object(env, &obj) != napi_ok || napi_create_buffer_copy(env, n * ksz, keys, NULL, &kb) != napi_ok ||
	    napi_create_buffer_copy(env, n * vsz, values, NULL, &vb) != napi_ok)
		return NULL;
	set_u32(env, obj, "count", (uint32_t)n);
	napi_set_named_property(env, obj, "keys", kb);
	napi_set_named_property(env, obj, "values", vb);
	return obj;
}

/* mapDump(fd, keySize, valueSize, maxEntries) -> {count, keys, values}: every entry, packed back to back,
 * in one call (get_next_key + lookup in a loop). Keys deleted while dumping are skipped. valueSize is
 * the lookup size (per-CPU maps: rounded size x CPUs). */
static napi_value map_dump(napi_env env, napi_callback_info info)
{
	napi_value argv[4], obj;
	int32_t fd;
	uint32_t ksz, vsz, max;
	size_t cap = 1024, n = 0;
	char *keys = NULL, *values = NULL, *cursor = NULL;
	const char *op = "MAP_DUMP";
	int err = ENOMEM;

	if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &fd) || !get_u32(env, argv[1], &ksz) ||
	    !get_u32(env, argv[2], &vsz) || !get_u32(env, argv[3], &max))
		return NULL;
	if (!ksz || !vsz)
		return throw_type(env, "mapDump: zero key or value size");
	log_reset();
	keys = malloc(cap * ksz);
	values = malloc(cap * vsz);
	cursor = malloc(ksz);
	if (!keys || !values || !cursor)
		goto fail;
	/* bounded: a map rewritten concurrently could otherwise restart the walk forever */
	for (size_t steps = 0; steps < (size_t)max * 2 + 16 && n < max; steps++) {
		if (n == cap) {
			char *nk = realloc(keys, cap * 2 * ksz), *nv;
			if (!nk)
				goto fail;
			keys = nk;
			nv = realloc(values, cap * 2 * vsz);
			if (!nv)
				goto fail;
			values = nv;
			cap *= 2;
		}
		/* the kernel reads the previous key before writing the next, so one buffer serves as both */
		if (bpf_map_get_next_key(fd, steps ? cursor : NULL, cursor)) {
			if (errno == ENOENT)
				break;
			err = errno;
			op = "BPF_MAP_GET_NEXT_KEY";
			goto fail;
		}
		if (bpf_map_lookup_elem(fd, cursor, values + n * vsz)) {
			if (errno == ENOENT)
				continue; /* deleted meanwhile: skip it */
			err = errno;
			op = "BPF_MAP_LOOKUP_ELEM";
			goto fail;
		}
		memcpy(keys + n * ksz, cursor, ksz);
		n++;
	}
	free(cursor);
	cursor = NULL;
	obj = dump_result(env, n, ksz, vsz, keys, values);
	if (!obj)
		goto fail;
	free(keys);
	free(values);
	return obj;
fail:
	free(keys);
	free(values);
	free(cursor);
	return throw_errno(env, op, err);
}

/* mapDumpBatch(fd, keySize, valueSize, maxEntries) -> {count, keys, values}: like mapDump, in
 * BPF_MAP_LOOKUP_BATCH syscalls of up to 4096 entries (hash maps; LPM tries have no batch ops). */
static napi_value map_dump_batch(napi_env env, napi_callback_info info)
{
	napi_value argv[4], obj;
	int32_t fd;
	uint32_t ksz, vsz, max;
	size_t cap = 4096, n = 0;
	char *keys = NULL, *values = NULL;
	__u64 in_batch = 0, out_batch = 0;
	const char *op = "BPF_MAP_LOOKUP_BATCH";
	int err = ENOMEM, first = 1;

	if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &fd) || !get_u32(env, argv[1], &ksz) ||
	    !get_u32(env, argv[2], &vsz) || !get_u32(env, argv[3], &max))
		return NULL;
	if (!ksz || !vsz)
		return throw_type(env, "mapDumpBatch: zero key or value size");
	log_reset();
	keys = malloc(cap * ksz);
	values = malloc(cap * vsz);
	if (!keys || !values)
		goto fail;
	for (;;) {
		__u32 count = 4096;
		LIBBPF_OPTS(bpf_map_batch_opts, opts);

		if (n + count > cap) {
			char *nk = realloc(keys, cap * 2 * ksz), *nv;
			if (!nk)
				goto fail;
			keys = nk;
			nv = realloc(values, cap * 2 * vsz);
			if (!nv)
				goto fail;
			values = nv;
			cap *= 2;
		}
		/* hash maps: the batch tokens are bucket numbers (u32); 8 bytes leave room */
		int rc = bpf_map_lookup_batch(fd, first ? NULL : &in_batch, &out_batch, keys + n * ksz, values + n * vsz, &count, &opts);
		int e = rc ? errno : 0;
		first = 0;
		n += count;
		if (e == ENOENT)
			break; /* the last batch (count may be > 0) */
		if (e) {
			err = e;
			goto fail;
		}
		if (n >= max)
			break;
		in_batch = out_batch;
	}
	if (n > max)
		n = max;
	obj = dump_result(env, n, ksz, vsz, keys, values);
	if (!obj)
		goto fail;
	free(keys);
	free(values);
	return obj;
fail:
	free(keys);
	free(values);
	return throw_errno(env, op, err);
}

static napi_value num_possible_cpus(napi_env env, napi_callback_info info)
{
	int n = libbpf_num_possible_cpus();
	if (n < 0)
		return throw_errno(env, "NUM_POSSIBLE_CPUS", -n);
	return make_i32(env, n);
}

/* ---------------------------------------------------------------------------------------------- */
/* BPF_PROG_TEST_RUN                                                                                */

/* progTestRun(progFd, data, ctx | null, repeat) -> {retval, duration, data} */
static napi_value prog_test_run(napi_env env, napi_callback_info info)
{
	napi_value argv[4], obj, out;
	int32_t fd;
	uint32_t repeat;
	void *data, *ctx, *out_data;
	size_t dlen, clen;

	if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &fd) || !get_buf(env, argv[1], &data, &dlen, false) ||
	    !get_buf(env, argv[2], &ctx, &clen, true) || !get_u32(env, argv[3], &repeat))
		return NULL;
	/* room for programs that grow the packet (encapsulation, later) */
	size_t out_cap = dlen + 256;
	NAPI_CALL(env, napi_create_buffer(env, out_cap, &out_data, &out));
	LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = data, .data_size_in = (uint32_t)dlen, .data_out = out_data,
		    .data_size_out = (uint32_t)out_cap, .ctx_in = ctx, .ctx_size_in = (uint32_t)clen, .repeat = (int)repeat);
	log_reset();
	int err = bpf_prog_test_run_opts(fd, &opts);
	if (err < 0)
		return throw_errno(env, "BPF_PROG_TEST_RUN", -err);
	NAPI_CALL(env, napi_create_object(env, &obj));
	napi_set_named_property(env, obj, "retval", make_i32(env, (int32_t)opts.retval));
	set_u32(env, obj, "duration", opts.duration);
	napi_value slice;
	NAPI_CALL(env, napi_create_buffer_copy(env, opts.data_size_out, out_data, NULL, &slice));
	napi_set_named_property(env, obj, "data", slice);
	return obj;
}

/* ---------------------------------------------------------------------------------------------- */
/* Ring buffer reader on the libuv loop.                                                            */

struct rb_reader {
	napi_env env;
	napi_ref callback;
	napi_async_context async_ctx;
	struct ring_buffer *rb;
	uv_poll_t poll;
	char *buf;
	size_t len, cap;
	bool oom;
	bool closed;
};

static int rb_sample(void *ctx, void *data, size_t size)
{
	struct rb_reader *r = ctx;
	size_t need = 8 + ((size + 7) & ~(size_t)7);

	if (r->len + need > r->cap) {
		size_t cap = r->cap ? r->cap : 64 * 1024;
		while (cap < r->len + need)
			cap *= 2;
		char *nb = realloc(r->buf, cap);
		if (!nb) {
			r->oom = true;
			return -ENOMEM; /* stop consuming; the rest stays in the ring for the next wakeup */
		}
		r->buf = nb;
		r->cap = cap;
	}
	uint32_t hdr[2] = { (uint32_t)size, 0 };
	memcpy(r->buf + r->len, hdr, 8);
	memcpy(r->buf + r->len + 8, data, size);
	memset(r->buf + r->len + 8 + size, 0, need - 8 - size);
	r->len += need;
	return 0;
}

static void rb_deliver(struct rb_reader *r)
{
	napi_env env = r->env;
	napi_handle_scope scope;
	napi_value buf, cb, recv, result;

	if (napi_open_handle_scope(env, &scope) != napi_ok)
		return;
	if (napi_create_buffer_copy(env, r->len, r->buf, NULL, &buf) == napi_ok &&
	    napi_get_reference_value(env, r->callback, &cb) == napi_ok && cb &&
	    /* napi_make_callback needs an object receiver (undefined throws) */
	    napi_get_global(env, &recv) == napi_ok) {
		napi_status st = napi_make_callback(env, r->async_ctx, recv, cb, 1, &buf, &result);
		if (st == napi_pending_exception) {
			napi_value exc;
			/* an exception in the JS handler is the application's bug: surface it as uncaught */
			napi_get_and_clear_last_exception(env, &exc);
			napi_fatal_exception(env, exc);
		}
	}
	napi_close_handle_scope(env, scope);
}

static void rb_on_poll(uv_poll_t *handle, int status, int events)
{
	struct rb_reader *r = handle->data;

	if (r->closed)
		return;
	r->len = 0;
	r->oom = false;
	ring_buffer__consume(r->rb);
	/* shrink a staging buffer blown up by one burst */
	if (r->len)
		rb_deliver(r);
	if (r->cap > 4 * 1024 * 1024 && r->len < r->cap / 8) {
		free(r->buf);
		r->buf = NULL;
		r->cap = 0;
	}
}

static void rb_on_close(uv_handle_t *handle)
{
	struct rb_reader *r = handle->data;

	/* only now is the epoll fd no longer watched by libuv, so it may be closed */
	ring_buffer__free(r->rb);
	napi_delete_reference(r->env, r->callback);
	napi_async_destroy(r->env, r->async_ctx);
	free(r->buf);
	free(r);
}

static void rb_close(struct rb_reader *r)
{
	if (r->closed)
		return;
	r->closed = true;
	uv_poll_stop(&r->poll);
	uv_close((uv_handle_t *)&r->poll, rb_on_close);
}

/* ringbufOpen(mapFd, callback(batch: Buffer)) -> handle */
static napi_value ringbuf_open(napi_env env, napi_callback_info info)
{
	napi_value argv[2], handle, name;
	int32_t map_fd;
	uv_loop_t *loop;
	struct rb_reader *r;
	int err;

	if (!get_args(env, info, 2, argv) || !get_i32(env, argv[0], &map_fd))
		return NULL;
	r = calloc(1, sizeof(*r));
	if (!r)
		return throw_errno(env, "RINGBUF_OPEN", ENOMEM);
	r->env = env;
	log_reset();
	r->rb = ring_buffer__new(map_fd, rb_sample, r, NULL);
	if (!r->rb) {
		err = errno;
		free(r);
		return throw_errno(env, "RINGBUF_OPEN", err);
	}
	NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
	err = uv_poll_init(loop, &r->poll, ring_buffer__epoll_fd(r->rb));
	if (err) {
		ring_buffer__free(r->rb);
		free(r);
		return throw_errno(env, "UV_POLL_INIT", -err);
	}
	r->poll.data = r;
	napi_create_reference(env, argv[1], 1, &r->callback);
	napi_create_string_utf8(env, "kitnet:ringbuf", NAPI_AUTO_LENGTH, &name);
	napi_async_init(env, NULL, name, &r->async_ctx);
	err = uv_poll_start(&r->poll, UV_READABLE, rb_on_poll);
	if (err) {
		rb_close(r);
		return throw_errno(env, "UV_POLL_START", -err);
	}
	/* No finalizer frees the reader: it lives until ringbufClose (a reader that is never closed keeps
	 * the loop alive, like any open socket). */
	NAPI_CALL(env, napi_create_external(env, r, NULL, NULL, &handle));
	return handle;
}

static napi_value ringbuf_close(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	struct rb_reader *r;

	if (!get_args(env, info, 1, argv))
		return NULL;
	if (napi_get_value_external(env, argv[0], (void **)&r) != napi_ok)
		return throw_type(env, "expected a ring buffer handle");
	rb_close(r);
	return NULL;
}

/* ringbufRef(handle, ref): whether the open reader keeps the event loop alive. */
static napi_value ringbuf_ref(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	struct rb_reader *r;
	bool ref;

	if (!get_args(env, info, 2, argv))
		return NULL;
	if (napi_get_value_external(env, argv[0], (void **)&r) != napi_ok || napi_get_value_bool(env, argv[1], &ref) != napi_ok)
		return throw_type(env, "expected (handle, boolean)");
	if (!r->closed) {
		if (ref)
			uv_ref((uv_handle_t *)&r->poll);
		else
			uv_unref((uv_handle_t *)&r->poll);
	}
	return NULL;
}

/* setns(fd, nstype): moves the CALLING thread (the JS main thread) into the namespace behind fd. Generic;
 * used by netkit/socket.ts to open a netlink socket inside a workload's network namespace and switch
 * back at once (a socket stays in the namespace it was created in). */
static napi_value ns_set(napi_env env, napi_callback_info info)
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
static napi_value ns_type(napi_env env, napi_callback_info info)
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

/* flockExclusive(fd): flock(fd, LOCK_EX | LOCK_NB). true: this open file now holds the lock; false: another
 * open file (another agent) holds it. Generic like setns; agent/instance-lock.ts keeps one agent per state
 * dir and pin root with it. The kernel drops the lock when the holder's file is closed or it dies, so a
 * crashed agent never leaves a stale lock behind (Node's fs has no flock). */
static napi_value flock_exclusive(napi_env env, napi_callback_info info)
{
	napi_value argv[1], result;
	int32_t fd;

	if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd))
		return NULL;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno != EWOULDBLOCK)
			return throw_errno(env, "flock", errno);
		napi_get_boolean(env, false, &result);
		return result;
	}
	napi_get_boolean(env, true, &result);
	return result;
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
static napi_value netlink_monitor_open(napi_env env, napi_callback_info info)
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

static napi_value netlink_monitor_close(napi_env env, napi_callback_info info)
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
		{ "nsType", ns_type },
		{ "flockExclusive", flock_exclusive },
		{ "netlinkMonitorOpen", netlink_monitor_open }, { "netlinkMonitorClose", netlink_monitor_close },
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
