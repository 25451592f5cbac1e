// flock(2) from the native addon, generic like ns.ts: Node's fs cannot take a lock that the kernel
// releases when its holder dies. agent/instance-lock.ts uses it to keep one agent per host.
import { native } from '../common/native.js';

/**
 * Takes an exclusive flock on an open file without waiting: true when this open file now holds it,
 * false when another open file does. Throws an Error with errno/code for anything else.
 */
export function flockExclusive(fd: number): boolean {
  return native().flockExclusive(fd);
}
