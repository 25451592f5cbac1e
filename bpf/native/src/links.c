// SPDX-License-Identifier: Apache-2.0
/*
 * Links: tcx and netkit attach (BPF_LINK_CREATE), in-place program update, detach, link info.
 */
#include "addon.h"

/* linkCreate(progFd, ifindex, attachType) -> link fd. libbpf 1.1 passes unknown attach types (tcx 46/47,
 * netkit 54/55) through to BPF_LINK_CREATE with target_fd = ifindex; relative_fd/expected_revision 0
 * means "append, any revision". */
napi_value link_create(napi_env env, napi_callback_info info)
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
napi_value link_update(napi_env env, napi_callback_info info)
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
napi_value link_detach(napi_env env, napi_callback_info info)
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
napi_value link_info(napi_env env, napi_callback_info info)
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
