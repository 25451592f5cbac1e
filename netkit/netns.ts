// Network namespaces: named ones under /var/run/netns (made like `ip netns add`), and checking that
// a path handed to kitnet really is a network namespace before any device is moved into it.
import { execFile } from 'node:child_process';
import { closeSync, constants as fsConstants, fstatSync, openSync, readFileSync, statSync, statfsSync } from 'node:fs';
import { readlink, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { CLONE_NEWNET, NS_TYPE_NAMES, netnsCookie, nsType } from '../common/ns.js';
import { EndpointSpecError } from './errors.js';

const execFileP = promisify(execFile);

export const NETNS_RUN_DIR = '/var/run/netns';
/** statfs f_type of nsfs (linux/magic.h NSFS_MAGIC). */
const NSFS_MAGIC = 0x6e736673;

export function netnsNameValidate(name: string): string {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name) || name === '.' || name === '..') {
    throw new EndpointSpecError('netns', `invalid netns name "${name}" (letters, digits, "_", "-", "." only, at most 64)`);
  }
  return name;
}

export function netnsPathOf(name: string): string {
  return `${NETNS_RUN_DIR}/${netnsNameValidate(name)}`;
}

/**
 * How to reach the host's mount namespace: empty when kitnet already is in it, else an nsenter prefix.
 *
 * A systemd service with ProtectSystem=, PrivateTmp= and the like runs in a mount namespace of its
 * own. A namespace bind-mounted there (`ip netns add`) is invisible on the host, where the operator
 * and the hypervisor (`ip netns exec NAME qemu ...`) look for it, and goes away with the agent's
 * process. So kitnet makes and removes its namespace mounts in PID 1's mount namespace; they
 * propagate from there into the service's (the host's /run is a shared mount), at the same path.
 * Entering needs CAP_SYS_ADMIN and CAP_SYS_CHROOT; reading /proc/1/ns/mnt needs CAP_SYS_PTRACE.
 */
let hostMountNs: Promise<string[]> | undefined;
export function hostMountNsPrefix(): Promise<string[]> {
  return (hostMountNs ??= (async () => {
    const self = await readlink('/proc/self/ns/mnt');
    let init: string;
    try {
      init = await readlink('/proc/1/ns/mnt');
    } catch {
      // PID 1 is not ours to inspect (a container whose init belongs to another user namespace):
      // whatever mount namespace we are in is the only one we can use.
      return [];
    }
    return init === self ? [] : ['nsenter', '--target', '1', '--mount', '--'];
  })());
}

async function ipNetns(args: string[]): Promise<void> {
  const prefix = await hostMountNsPrefix();
  const [cmd, ...argv] = [...prefix, 'ip', 'netns', ...args];
  try {
    await execFileP(cmd!, argv, { timeout: 10_000 });
  } catch (err) {
    const e = err as { stderr?: string; message?: string };
    const why = (e.stderr ?? e.message ?? '').trim();
    const hint = prefix.length && /nsenter: .*(Operation not permitted|Permission denied)/.test(why)
      ? ' (kitnet runs in a mount namespace of its own and makes namespaces in PID 1\'s: it needs CAP_SYS_ADMIN and CAP_SYS_CHROOT; see packaging/kitnet.service)'
      : '';
    throw new Error(`${prefix.length ? 'in the host mount namespace: ' : ''}ip netns ${args.join(' ')} failed: ${why}${hint}`, { cause: err });
  }
}

/**
 * Creates a named namespace (bind-mounted at /var/run/netns/NAME, in the host's mount namespace) and
 * returns its path.
 */
export async function netnsCreate(name: string): Promise<string> {
  const path = netnsPathOf(name);
  await ipNetns(['add', name]);
  if ((await hostMountNsPrefix()).length) {
    // Made in PID 1's mount namespace: it must have reached ours too, or no device can go in.
    try {
      await netnsPathValidate(path);
    } catch (err) {
      await ipNetns(['delete', name]).catch(() => undefined);
      throw new EndpointSpecError('netns',
        `namespace ${name} was made in the host's mount namespace but does not show in kitnet's (${(err as Error).message}); ` +
        `is ${NETNS_RUN_DIR} (or /run) a shared mount on the host? (findmnt -o TARGET,PROPAGATION /run)`, err);
    }
  }
  return path;
}

/** Deletes a named namespace; false if it did not exist. Devices inside go with it. */
export async function netnsDelete(name: string): Promise<boolean> {
  const path = netnsPathOf(name);
  try {
    await stat(path);
  } catch {
    return false;
  }
  await ipNetns(['delete', name]);
  return true;
}

/**
 * Throws an {@link EndpointSpecError} unless `path` is a network namespace: it must exist, live on
 * nsfs (a bind mount or /proc/PID/ns/net) and be of type net. Returns the namespace inode (same
 * inode = same namespace).
 *
 * Synchronous inside: stat, statfs, open and one ioctl take microseconds, a thread-pool round trip
 * each took 0.2-0.5 ms (and tens of ms under load). Nothing is opened before statfs says nsfs, so a
 * FIFO or a device node given as the path is never opened. The type comes from NS_GET_NSTYPE: a
 * bind mount (`ip netns add`) is not a magic link, so its name does not tell.
 */
export async function netnsPathValidate(path: string): Promise<number> {
  const fd = netnsPathOpen(path);
  try {
    return fstatSync(fd).ino;
  } finally {
    closeSync(fd);
  }
}

/**
 * Which namespace a file is. Device and inode tell two namespaces alive at the same time apart, but
 * not a namespace from one made after it was freed: the kernel hands a freed namespace's inode number
 * to the next namespace made. The cookie (SO_NETNS_COOKIE) is never given twice until the host
 * reboots, and `boot` says which boot it is of: together they name one namespace for good.
 */
export interface NetnsId {
  dev: number;
  ino: number;
  /** SO_NETNS_COOKIE, in decimal (a u64). Absent when the kernel did not tell, and in records of releases before it. */
  cookie?: string;
  /** /proc/sys/kernel/random/boot_id when the cookie was read: cookies start again at every boot. */
  boot?: string;
}

/**
 * Whether two ids are the same namespace: by device and inode, which is exact only for two namespaces
 * alive at once (a path read now against the agent's or PID 1's own, two paths read now); with both
 * cookies, they must match too. A stored id against a path read now is {@link netnsBindingCheck}'s.
 */
export const netnsIdEqual = (a: NetnsId | undefined, b: NetnsId | undefined): boolean =>
  !!a && !!b && a.dev === b.dev && a.ino === b.ino && (a.cookie === undefined || b.cookie === undefined || (a.cookie === b.cookie && a.boot === b.boot));

let bootId: string | undefined;
/** This boot's id; it cannot change while the process runs. */
export function netnsBootId(): string {
  return (bootId ??= readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
}

/**
 * The cookie and boot of the namespace behind an open nsfs fd; neither when they cannot be read (the
 * kernel older than 5.14, the addon missing, the fd no network namespace): the caller decides what
 * an id without one may do.
 */
function netnsFdCookie(fd: number): Pick<NetnsId, 'cookie' | 'boot'> {
  try {
    return { cookie: netnsCookie(fd).toString(), boot: netnsBootId() };
  } catch {
    return {};
  }
}

/** The id of the namespace behind an open fd (the very file handed to the kernel): device, inode and cookie. */
export function netnsFdId(fd: number): NetnsId {
  const st = fstatSync(fd);
  return { dev: st.dev, ino: st.ino, ...netnsFdCookie(fd) };
}

/**
 * Is `found` (read from a path now) still the namespace `expected` (stored when the workload was
 * registered)? undefined: yes. `replaced`: no, and the one registered into is gone (or never to be
 * used again). `unknown`: the cookie could not be read now, so this cannot be told: neither use nor
 * remove, try again. An expected id without a cookie (an older release's record) is compared by device
 * and inode only; the reconciler proves or refuses those (agent/reconciler.ts).
 */
export function netnsBindingCheck(path: string, expected: NetnsId, found: NetnsId): { replaced: string } | { unknown: string } | undefined {
  if (expected.dev !== found.dev || expected.ino !== found.ino) {
    return { replaced: `its network namespace path ${path} now names another namespace (nsfs ${found.dev}:${found.ino}) than the one it was registered into (${expected.dev}:${expected.ino}): that one is gone` };
  }
  if (expected.cookie === undefined) return undefined;
  if (found.cookie === undefined || found.boot === undefined) {
    return { unknown: `cannot read the cookie of the network namespace at ${path} (SO_NETNS_COOKIE, Linux >= 5.14), so whether it is still the one the workload was registered into cannot be told` };
  }
  if (found.boot !== expected.boot) {
    return { replaced: `the host has rebooted since the workload was registered: the network namespace it was registered into is gone, and ${path} names one made since` };
  }
  if (found.cookie !== expected.cookie) {
    return { replaced: `its network namespace path ${path} now names another namespace (cookie ${found.cookie}) than the one it was registered into (cookie ${expected.cookie}), made after it with the same nsfs inode ${found.dev}:${found.ino} (the kernel reuses a freed namespace's inode number): that one is gone` };
  }
  return undefined;
}

/**
 * Throws unless `found` is the namespace `expected` says the path must be: the path of a workload that
 * was registered into another namespace (a /proc/PID path after the PID was reused, a bind mount
 * replaced, even by a namespace that got the same inode number) is never a place to make its device in.
 */
export function netnsIdExpect(path: string, expected: NetnsId | undefined, found: NetnsId): void {
  if (!expected) return;
  const check = netnsBindingCheck(path, expected, found);
  if (!check) return;
  throw new EndpointSpecError('netnsPath', `${'replaced' in check ? check.replaced : check.unknown}; nothing is made in it`);
}

/**
 * The namespaces no workload may be put in: the agent's own and PID 1's (the host's). `init` is
 * undefined when PID 1's namespace cannot be read (a container whose init is not ours to inspect);
 * a path to it cannot be opened then either.
 */
export function netnsReservedIds(): { agent: NetnsId; init: NetnsId | undefined } {
  const id = (p: string): NetnsId | undefined => {
    try {
      const st = statSync(p);
      return { dev: st.dev, ino: st.ino };
    } catch {
      return undefined;
    }
  };
  const agent = id('/proc/self/ns/net');
  if (!agent) throw new Error('cannot read /proc/self/ns/net (is /proc mounted?)');
  return { agent, init: id('/proc/1/ns/net') };
}

/**
 * As {@link netnsPathValidate}, returning the namespace's id: device, inode and cookie (the cookie costs
 * a socket made inside the namespace, ~15 us; netnsPathValidate does not read it).
 */
export async function netnsPathId(path: string): Promise<NetnsId> {
  const fd = netnsPathOpen(path);
  try {
    return netnsFdId(fd);
  } finally {
    closeSync(fd);
  }
}

/** Opens `path` after checking that it is a network namespace (see netnsPathValidate); the caller closes the fd. */
function netnsPathOpen(path: string): number {
  if (typeof path !== 'string' || !path.startsWith('/')) {
    throw new EndpointSpecError('netnsPath', `netns path "${path}" must be an absolute path`);
  }
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    const code = (err as { code?: string }).code;
    const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' || code === 'EPERM' ? 'is not accessible (run as root)' : `cannot be read (${code})`;
    throw new EndpointSpecError('netnsPath', `netns path ${path} ${why}`, err);
  }
  if (statfsSync(path).type !== NSFS_MAGIC) {
    throw new EndpointSpecError('netnsPath',
      `netns path ${path} is not a namespace file (not on nsfs${st.isFile() && st.size === 0 ? '; a /var/run/netns entry whose namespace is gone?' : ''})`);
  }
  let fd: number;
  try {
    fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (err) {
    throw new EndpointSpecError('netnsPath', `netns path ${path} cannot be opened (${(err as { code?: string }).code})`, err);
  }
  try {
    let type: number;
    try {
      type = nsType(fd);
    } catch (err) {
      throw new EndpointSpecError('netnsPath', `netns path ${path}: the kernel does not say which namespace it is (${(err as { code?: string }).code})`, err);
    }
    if (type !== CLONE_NEWNET) {
      throw new EndpointSpecError('netnsPath', `netns path ${path} is a ${NS_TYPE_NAMES[type] ?? `0x${type.toString(16)}`} namespace, not a network namespace`);
    }
    return fd;
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}
