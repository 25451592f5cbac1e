// setns(2) for the main thread, from the native addon. Generic (any namespace type); netkit/socket.ts
// uses it to open netlink sockets inside workload network namespaces without a helper process.
import { native } from './native.js';

/** linux/sched.h CLONE_NEWNET. */
export const CLONE_NEWNET = 0x40000000;

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
