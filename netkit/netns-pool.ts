// Per-namespace netlink sockets (or helpers), pooled for a short idle time and checked by namespace
// inode before reuse.
import { transportOpen, type PooledTransport } from './netns-transport.js';
import { Rtnl } from './socket.js';

/**
 * Per-namespace sockets (or helpers) are kept for a short idle time so that create + observe of one
 * endpoint open one, not several; never longer, because an open socket or helper pins its namespace
 * (and the workload's devices in it) after the namespace's owner deletes it.
 */
export const NETNS_HELPER_IDLE_MS = 500;

interface PoolEntry {
  transport: Promise<PooledTransport>;
  users: number;
  timer?: NodeJS.Timeout;
}
const pool = new Map<string, PoolEntry>();

function poolDrop(path: string, e: PoolEntry): void {
  if (pool.get(path) === e) pool.delete(path);
  if (e.timer) clearTimeout(e.timer);
  e.transport.then((t) => t.close(), () => undefined);
}

async function poolAcquire(netnsPath: string, inode: number): Promise<{ e: PoolEntry; t: PooledTransport }> {
  let e = pool.get(netnsPath);
  if (e) {
    const t = await e.transport.catch(() => undefined);
    // the path may now name another namespace (deleted and re-created): never reuse across that
    if (!t || t.dead || (inode && t.inode && t.inode !== inode)) {
      if (e.users === 0) poolDrop(netnsPath, e);
      else pool.delete(netnsPath);
      e = undefined;
    }
  }
  if (!e) {
    const entry: PoolEntry = { transport: transportOpen(netnsPath), users: 0 };
    entry.transport.catch(() => { if (pool.get(netnsPath) === entry) pool.delete(netnsPath); });
    pool.set(netnsPath, entry);
    e = entry;
  }
  e.users++;
  if (e.timer) { clearTimeout(e.timer); delete e.timer; }
  try {
    const t = await e.transport;
    t.setRef(true);
    return { e, t };
  } catch (err) {
    e.users--;
    throw err;
  }
}

function poolRelease(netnsPath: string, e: PoolEntry, t: PooledTransport): void {
  e.users--;
  if (e.users > 0) return;
  if (pool.get(netnsPath) !== e || t.dead) { t.close(); return; }
  t.setRef(false);
  e.timer = setTimeout(() => poolDrop(netnsPath, e), NETNS_HELPER_IDLE_MS);
  e.timer.unref();
}

/** Closes every idle namespace socket / helper now (tests, shutdown). */
export function netnsHelpersClose(): void {
  for (const [path, e] of pool) if (e.users === 0) poolDrop(path, e);
}

/**
 * Runs `fn` with a socket inside the namespace at `netnsPath` (validated by the caller; `inode` from
 * netnsPathValidate guards against a path that was re-bound to another namespace).
 */
export async function withNetns<T>(netnsPath: string, fn: (nl: Rtnl) => Promise<T>, inode = 0): Promise<T> {
  const { e, t } = await poolAcquire(netnsPath, inode);
  const nl = new Rtnl({
    exchange: (type, flags, payload) => t.exchange(type, flags, payload),
    sysctlWrite: (path, value) => t.sysctlWrite(path, value),
    close: () => undefined,
  }, netnsPath);
  try {
    return await fn(nl);
  } finally {
    poolRelease(netnsPath, e, t);
  }
}
