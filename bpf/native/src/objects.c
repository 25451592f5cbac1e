// SPDX-License-Identifier: Apache-2.0
/*
 * Objects: open + load with pin_root_path, program and map fds, pins, program info, BPF_PROG_TEST_RUN, and
 * flock on pin-root lock files.
 */
#include "addon.h"

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
napi_value object_open(napi_env env, napi_callback_info info)
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
napi_value object_close(napi_env env, napi_callback_info info)
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

napi_value obj_pin(napi_env env, napi_callback_info info)
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

napi_value obj_get(napi_env env, napi_callback_info info)
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

napi_value fd_close(napi_env env, napi_callback_info info)
{
	napi_value argv[1];
	int32_t fd;

	if (!get_args(env, info, 1, argv) || !get_i32(env, argv[0], &fd))
		return NULL;
	if (fd >= 0)
		close(fd);
	return NULL;
}

/* progInfo(fd) -> {id, type, name} */
napi_value prog_info(napi_env env, napi_callback_info info)
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

/* ---------------------------------------------------------------------------------------------- */
/* BPF_PROG_TEST_RUN                                                                                */

/* progTestRun(progFd, data, ctx | null, repeat) -> {retval, duration, data} */
napi_value prog_test_run(napi_env env, napi_callback_info info)
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

/* flockExclusive(fd): flock(fd, LOCK_EX | LOCK_NB). true: this open file now holds the lock; false: another
 * open file (another agent) holds it. Generic like setns; agent/instance-lock.ts keeps one agent per state
 * dir and pin root with it. The kernel drops the lock when the holder's file is closed or it dies, so a
 * crashed agent never leaves a stale lock behind (Node's fs has no flock). */
napi_value flock_exclusive(napi_env env, napi_callback_info info)
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
