// rtnetlink sockets: one in kitnet's own namespace (shared, lazily opened) and one per foreign
// namespace. A netlink socket belongs to the namespace it was opened in, so a foreign namespace's
// socket is opened in-process: the main thread enters the namespace with setns(2) (native addon, see
// common/ns.ts) just for the synchronous socket()/bind() calls and switches straight back; no other JS
// runs in between. That costs ~0.1 ms instead of the ~250 ms of the fallback, a helper process started
// with `nsenter --net=PATH` (netns-worker.ts), used only when the addon cannot be loaded or
// KITNET_NETNS_TRANSPORT=helper is set. Both speak raw netlink messages; encoding, decoding and errno
// mapping stay here in the agent process.
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { closeSync, fstatSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import netlinkPkg from 'netlink';
import { CLONE_NEWNET, setns, setnsAvailable } from '../common/ns.js';
import type { DeviceRef } from '../common/kernel-error.js';
import { KernelError, errnoNumber } from '../common/kernel-error.js';
import { kernelErrorFromReply, netlinkErrorParse } from './errors.js';
import { NLM_F_DUMP, NLMSG_ERROR, RTM_NAMES } from './uapi.js';

const { createNetlink, Protocol } = netlinkPkg;

export const REQUEST_TIMEOUT_MS = 5000;

export interface NlMessage {
  type: number;
  flags: number;
  data: Buffer;
}

/** Sends one request and returns every reply message (errors included) for its sequence number. */
export interface NlTransport {
  exchange(type: number, flags: number, payload: Buffer): Promise<NlMessage[]>;
  /** Writes a sysctl (path relative to /proc/sys) in the transport's namespace. */
  sysctlWrite(path: string, value: string): Promise<void>;
  close(): void;
}

function sysctlPathCheck(path: string): string {
  if (!/^net\/[A-Za-z0-9_.\-/]+$/.test(path) || path.includes('..')) {
    throw new Error(`refusing to write sysctl outside /proc/sys/net: ${path}`);
  }
  return `/proc/sys/${path}`;
}

function transportError(op: string, err: unknown, device?: DeviceRef): KernelError {
  const e = err as { errno?: number; code?: string; message?: string };
  let errno = typeof e?.code === 'string' ? errnoNumber(e.code) : undefined;
  if (errno === undefined && typeof e?.errno === 'number') errno = Math.abs(e.errno);
  if (errno === undefined && /timeout/i.test(e?.message ?? '')) errno = errnoNumber('ETIMEDOUT');
  return new KernelError({ op, errno: errno ?? errnoNumber('EIO') ?? 5, device, hint: e?.message, cause: err });
}

/** A netlink socket in the calling process's network namespace. */
class LocalTransport implements NlTransport {
  private readonly sock = createNetlink(Protocol.ROUTE);

  async exchange(type: number, flags: number, payload: Buffer): Promise<NlMessage[]> {
    const [msgs] = await this.sock.request(type, payload, { flags, checkError: false, timeout: REQUEST_TIMEOUT_MS });
    return msgs.map((m) => ({ type: m.type, flags: m.flags, data: m.data }));
  }

  async sysctlWrite(path: string, value: string): Promise<void> {
    // synchronous: a /proc/sys write is microseconds, a thread-pool round trip per call is not
    writeFileSync(sysctlPathCheck(path), value);
  }

  close(): void {
    this.sock.close();
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

const WORKER_PATH = fileURLToPath(new URL('./netns-worker.js', import.meta.url));

/** fd of kitnet's own network namespace (the main thread's), held open to switch back to. */
let homeNetnsFd: number | undefined;

/**
 * Runs `fn` (synchronous!) with the main thread inside the network namespace behind `nsFd`, then
 * switches back. Failing to switch back would leave every later socket in the wrong namespace, so
 * that aborts the process.
 */
function inNetnsSync<T>(nsFd: number, fn: () => T): T {
  homeNetnsFd ??= openSync('/proc/thread-self/ns/net', 'r');
  setns(nsFd, CLONE_NEWNET);
  try {
    return fn();
  } finally {
    try {
      setns(homeNetnsFd, CLONE_NEWNET);
    } catch (err) {
      process.stderr.write(`kitnet: cannot return to its own network namespace after setns: ${String(err)}\n`);
      process.abort();
    }
  }
}

/** Which transport foreign namespaces use: in-process setns (default) or the nsenter helper. */
function netnsTransportKind(): 'setns' | 'helper' {
  if (process.env.KITNET_NETNS_TRANSPORT === 'helper') return 'helper';
  return setnsAvailable() ? 'setns' : 'helper';
}

interface PooledTransport {
  exchange(type: number, flags: number, payload: Buffer): Promise<NlMessage[]>;
  sysctlWrite(path: string, value: string): Promise<void>;
  readonly inode: number;
  readonly dead: boolean;
  setRef(ref: boolean): void;
  close(): void;
}

/**
 * A netlink socket opened inside another namespace by the main thread (setns window). The open fd of
 * the namespace is kept for sysctl writes, which go through /proc/sys opened inside the same window
 * (/proc/sys/net resolves to the namespace of the task that opens the file).
 */
class SetnsTransport implements PooledTransport {
  private readonly sock: ReturnType<typeof createNetlink>;
  private readonly nsFd: number;
  readonly inode: number;
  private closed = false;

  constructor(readonly netnsPath: string) {
    this.nsFd = openSync(netnsPath, 'r');
    try {
      this.inode = fstatSync(this.nsFd).ino;
      this.sock = inNetnsSync(this.nsFd, () => createNetlink(Protocol.ROUTE));
    } catch (err) {
      closeSync(this.nsFd);
      throw err;
    }
  }

  async exchange(type: number, flags: number, payload: Buffer): Promise<NlMessage[]> {
    if (this.closed) throw new Error(`netlink socket for ${this.netnsPath} is closed`);
    const [msgs] = await this.sock.request(type, payload, { flags, checkError: false, timeout: REQUEST_TIMEOUT_MS });
    return msgs.map((m) => ({ type: m.type, flags: m.flags, data: m.data }));
  }

  async sysctlWrite(path: string, value: string): Promise<void> {
    const full = sysctlPathCheck(path);
    if (this.closed) throw new Error(`netlink socket for ${this.netnsPath} is closed`);
    const fd = inNetnsSync(this.nsFd, () => openSync(full, 'w'));
    try {
      writeSync(fd, value);
    } finally {
      closeSync(fd);
    }
  }

  get dead(): boolean {
    return this.closed;
  }

  setRef(): void {
    // the socket holds the loop only while a request is pending
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.sock.close();
    closeSync(this.nsFd);
  }
}

/** A netlink socket inside another network namespace, held by a helper process. */
class NetnsTransport implements PooledTransport {
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private stderr = '';
  private exited: Error | undefined;
  /** Inode of the namespace the helper actually runs in (from its ready line). */
  inode = 0;
  readonly ready: Promise<void>;

  constructor(readonly netnsPath: string) {
    this.child = spawn('nsenter', [`--net=${netnsPath}`, '--', process.execPath, WORKER_PATH], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr.on('data', (d: Buffer) => { this.stderr = (this.stderr + d.toString()).slice(-2000); });
    let readyResolve!: () => void;
    let readyReject!: (e: Error) => void;
    this.ready = new Promise((res, rej) => { readyResolve = res; readyReject = rej; });
    this.ready.catch(() => undefined);
    const lines = createInterface({ input: this.child.stdout });
    lines.on('line', (line) => {
      let msg: { id?: number; ready?: boolean; inode?: number; ok?: unknown; error?: { message: string; code?: string; errno?: number } };
      try { msg = JSON.parse(line); } catch { return; }
      if (msg.ready) { this.inode = msg.inode ?? 0; readyResolve(); return; }
      const p = msg.id !== undefined ? this.pending.get(msg.id) : undefined;
      if (!p || msg.id === undefined) return;
      this.pending.delete(msg.id);
      if (msg.error) p.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code, errno: msg.error.errno }));
      else p.resolve(msg.ok);
    });
    const fail = (why: string): void => {
      this.exited = new Error(`netns helper for ${netnsPath} ${why}${this.stderr ? `: ${this.stderr.trim()}` : ''}`);
      readyReject(this.exited);
      for (const p of this.pending.values()) p.reject(this.exited);
      this.pending.clear();
    };
    this.child.on('error', (e) => fail(`could not start (${e.message})`));
    this.child.on('exit', (code, signal) => fail(`exited (${signal ?? `code ${code}`})`));
  }

  private call(req: Record<string, unknown>): Promise<unknown> {
    if (this.exited) return Promise.reject(this.exited);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.stdin.write(`${JSON.stringify({ id, ...req })}\n`);
    });
  }

  async exchange(type: number, flags: number, payload: Buffer): Promise<NlMessage[]> {
    const out = (await this.call({ kind: 'nl', type, flags, data: payload.toString('base64') })) as
      { type: number; flags: number; data: string }[];
    return out.map((m) => ({ type: m.type, flags: m.flags, data: Buffer.from(m.data, 'base64') }));
  }

  async sysctlWrite(path: string, value: string): Promise<void> {
    sysctlPathCheck(path);
    await this.call({ kind: 'sysctl', path, value });
  }

  get dead(): boolean {
    return this.exited !== undefined;
  }

  /** Whether the helper may keep kitnet's event loop alive (only while someone uses it). */
  setRef(ref: boolean): void {
    const streams = [this.child.stdin, this.child.stdout, this.child.stderr] as unknown as { ref(): void; unref(): void }[];
    if (ref) { this.child.ref(); streams.forEach((x) => x.ref()); } else { this.child.unref(); streams.forEach((x) => x.unref()); }
  }

  close(): void {
    if (!this.exited) this.child.stdin.end();
  }
}

/**
 * rtnetlink requests with kernel errors mapped to {@link KernelError}. `netns` labels errors with
 * the namespace the socket lives in.
 *
 * request() hands its message to the transport before its first await (the netlink socket sends it
 * at once or queues it behind earlier ones; the nsenter helper gets it as the next line), so requests
 * started one after another without awaiting reach the kernel in that order, and the kernel handles
 * each completely as it is sent: see {@link requestsPipelined}.
 */
export class Rtnl {
  constructor(private readonly transport: NlTransport, readonly netns?: string) {}

  private deviceRef(device?: DeviceRef): DeviceRef | undefined {
    if (!this.netns) return device;
    return { ...(device ?? {}), netns: device?.netns ?? this.netns };
  }

  /** A doit request (NLM_F_REQUEST|NLM_F_ACK added). Returns the non-error replies. */
  async request(type: number, flags: number, payload: Buffer, device?: DeviceRef, op = RTM_NAMES[type] ?? `RTM_${type}`): Promise<NlMessage[]> {
    let msgs: NlMessage[];
    try {
      msgs = await this.transport.exchange(type, flags, payload);
    } catch (err) {
      throw transportError(op, err, this.deviceRef(device));
    }
    const out: NlMessage[] = [];
    for (const m of msgs) {
      if (m.type === NLMSG_ERROR) {
        const reply = netlinkErrorParse(m.data, m.flags);
        if (reply.errno !== 0) throw kernelErrorFromReply(op, reply, this.deviceRef(device));
        continue;
      }
      out.push(m);
    }
    return out;
  }

  /** A dump request: every object of the kind, filtered by the header where the kernel supports it. */
  dump(type: number, payload: Buffer, device?: DeviceRef): Promise<NlMessage[]> {
    return this.request(type, NLM_F_DUMP, payload, device);
  }

  sysctlWrite(path: string, value: string): Promise<void> {
    return this.transport.sysctlWrite(path, value);
  }

  close(): void {
    this.transport.close();
  }
}

/**
 * Starts every call at once and waits for all of them: one round trip for a sequence of requests
 * on one socket instead of one each. The calls must each issue a single request synchronously
 * (the netkit/ helpers such as linkSet, addressAdd, routeAdd do); the kernel runs them in the order
 * given, so a request may depend on the ones before it (a route through a device set up before).
 * Unlike awaiting them one by one, the requests after a failed one still run: use it where any
 * failure means the whole object is rolled back. Throws the first failure in order.
 */
export async function requestsPipelined(calls: ReadonlyArray<() => Promise<unknown>>): Promise<void> {
  const settled = await Promise.allSettled(calls.map((call) => call()));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
}

let hostRtnl: Rtnl | undefined;

/** The shared socket in kitnet's own (host) namespace. Never close it. */
export function rtnlHost(): Rtnl {
  hostRtnl ??= new Rtnl(new LocalTransport());
  return hostRtnl;
}

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

function transportOpen(netnsPath: string): Promise<PooledTransport> {
  if (netnsTransportKind() === 'setns') {
    try {
      return Promise.resolve(new SetnsTransport(netnsPath));
    } catch (err) {
      return Promise.reject(err);
    }
  }
  const t = new NetnsTransport(netnsPath);
  return t.ready.then(() => t, (err: unknown) => { t.close(); throw err; });
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
