// SPDX-License-Identifier: Apache-2.0
/*
 * Maps: info, element access, batched apply, batched updates, dumps.
 */
#include "addon.h"

/* mapInfo(fd) -> {id, type, keySize, valueSize, maxEntries, flags, name} */
napi_value map_info(napi_env env, napi_callback_info info)
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
napi_value map_update(napi_env env, napi_callback_info info)
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
napi_value map_lookup(napi_env env, napi_callback_info info)
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
napi_value map_delete(napi_env env, napi_callback_info info)
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
napi_value map_next_key(napi_env env, napi_callback_info info)
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
napi_value map_batch_apply(napi_env env, napi_callback_info info)
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
napi_value map_update_batch(napi_env env, napi_callback_info info)
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
napi_value map_dump(napi_env env, napi_callback_info info)
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

/* The kernel's ENOTSUPP (include/linux/errno.h), which userspace headers lack: a map type without the op. */
#define KERNEL_ENOTSUPP 524
#define DUMP_BATCH 4096

/* mapDumpBatch(fd, keySize, valueSize, maxEntries) -> {count, keys, values}: like mapDump, in
 * BPF_MAP_LOOKUP_BATCH syscalls of up to 4096 entries. The batch token's size depends on the map type:
 * hashes (kernel/bpf/hashtab.c) read and write a u32 bucket number, while the generic batch lookup of
 * the other types (LPM tries, arrays: generic_map_lookup_batch in kernel/bpf/syscall.c) reads and
 * writes the last key it visited, key_size bytes. So the tokens are max(keySize, 8)-byte buffers.
 * The dump ends with ENOENT, which comes with the last batch (partial, or empty: then the generic
 * lookup writes no token). A kernel without batch lookups (before 5.6: EINVAL) or a map type without
 * them (the kernel's ENOTSUPP, thrown as EOPNOTSUPP) fails the first call, before any entry: the
 * error's op is BPF_MAP_LOOKUP_BATCH, and callers fall back to mapDump. */
napi_value map_dump_batch(napi_env env, napi_callback_info info)
{
	napi_value argv[4], obj;
	int32_t fd;
	uint32_t ksz, vsz, max;
	size_t cap = DUMP_BATCH, n = 0, tsz;
	char *keys = NULL, *values = NULL, *in_batch = NULL, *out_batch = NULL;
	const char *op = "BPF_MAP_LOOKUP_BATCH";
	int err = ENOMEM, first = 1;
	__u32 want = DUMP_BATCH;

	if (!get_args(env, info, 4, argv) || !get_i32(env, argv[0], &fd) || !get_u32(env, argv[1], &ksz) ||
	    !get_u32(env, argv[2], &vsz) || !get_u32(env, argv[3], &max))
		return NULL;
	if (!ksz || !vsz)
		return throw_type(env, "mapDumpBatch: zero key or value size");
	log_reset();
	tsz = ksz > 8 ? ksz : 8;
	keys = malloc(cap * ksz);
	values = malloc(cap * vsz);
	in_batch = calloc(1, tsz);
	out_batch = calloc(1, tsz);
	if (!keys || !values || !in_batch || !out_batch)
		goto fail;
	while (n < max) {
		__u32 count = want;
		LIBBPF_OPTS(bpf_map_batch_opts, opts);

		while (n + count > cap) {
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
		int rc = bpf_map_lookup_batch(fd, first ? NULL : in_batch, out_batch, keys + n * ksz, values + n * vsz, &count, &opts);
		int e = rc ? errno : 0;

		if (e && e != ENOENT)
			count = 0; /* the kernel reports entries copied before a failure, but they end nothing */
		n += count;
		if (e == ENOENT)
			break; /* the last batch, count entries (maybe 0) */
		if (e == ENOSPC && want < (1u << 20)) {
			/* hashes: one bucket holds more entries than asked for; ask for more (same token) */
			want *= 2;
			continue;
		}
		if (e) {
			err = e == KERNEL_ENOTSUPP ? EOPNOTSUPP : e;
			goto fail;
		}
		first = 0;
		/* the next batch starts after this one's token */
		char *t = in_batch;
		in_batch = out_batch;
		out_batch = t;
	}
	if (n > max)
		n = max;
	obj = dump_result(env, n, ksz, vsz, keys, values);
	if (!obj)
		goto fail;
	free(keys);
	free(values);
	free(in_batch);
	free(out_batch);
	return obj;
fail:
	free(keys);
	free(values);
	free(in_batch);
	free(out_batch);
	return throw_errno(env, op, err);
}

napi_value num_possible_cpus(napi_env env, napi_callback_info info)
{
	int n = libbpf_num_possible_cpus();
	if (n < 0)
		return throw_errno(env, "NUM_POSSIBLE_CPUS", -n);
	return make_i32(env, n);
}
