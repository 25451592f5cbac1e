// setns(2) for the main thread, from the native addon (common/native.ts). Generic (any namespace type); netkit/netns-transport.ts
// uses it to open netlink sockets inside workload network namespaces without a helper process.
import { native } from './native.js';

/** linux/sched.h CLONE_NEWNET. */
export const CLONE_NEWNET = 0x40000000;

/** linux/sched.h namespace types by CLONE_NEW* flag, for messages. */
export const NS_TYPE_NAMES: Readonly<Record<number, string>> = {
  0x00020000: 'mnt', 0x02000000: 'cgroup', 0x04000000: 'uts', 0x08000000: 'ipc', 0x10000000: 'user',
  0x20000000: 'pid', 0x40000000: 'net', 0x00000080: 'time',
};

/** The CLONE_NEW* type of the namespace behind an nsfs fd (throws an Error with errno/code). */
export function nsType(fd: number): number {
  return native().nsType(fd);
}

/**
 * The cookie of the network namespace behind an nsfs fd (SO_NETNS_COOKIE): unlike its inode number,
 * never given to another namespace until the host reboots. Throws an Error with errno/code on failure
 * (ENOPROTOOPT: Linux < 5.14).
 */
export function netnsCookie(fd: number): bigint {
  return native().netnsCookie(fd);
}

/** Moves the calling thread into the namespace behind `fd`. Throws an Error with errno/code on failure. */
export function setns(fd: number, nstype: number): void {
  native().setns(fd, nstype);
}

/** Whether the addon (and with it setns) can be loaded in this process. */
export function setnsAvailable(): boolean {
  try {
    return typeof native().setns === 'function';
  } catch {
    return false;
  }
}
