// SPDX-License-Identifier: Apache-2.0
/*
 * Ring buffer reader on the libuv loop (one Buffer per wakeup).
 */
#include "addon.h"

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
napi_value ringbuf_open(napi_env env, napi_callback_info info)
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

napi_value ringbuf_close(napi_env env, napi_callback_info info)
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
napi_value ringbuf_ref(napi_env env, napi_callback_info info)
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
