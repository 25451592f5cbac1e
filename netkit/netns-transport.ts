// Netlink transports into another network namespace. The default opens the socket in-process: the
// main thread enters the namespace with setns(2) (native addon, see common/ns.ts) just for the
// synchronous socket()/bind() calls and switches straight back; no other JS runs in between. The
// fallback is a helper process started with `nsenter --net=PATH` (netns-worker.ts), used only when the
// addon cannot be loaded or KITNET_NETNS_TRANSPORT=helper is set.
import { spawn } from 'node:child_process';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { closeSync, fstatSync, openSync, writeSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import netlinkPkg from 'netlink';
import { CLONE_NEWNET, setns, setnsAvailable } from '../common/ns.js';
import { netlinkRequest, sysctlPathCheck, type NlMessage } from './socket.js';

const { createNetlink, Protocol } = netlinkPkg;

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

export interface PooledTransport {
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
    return netlinkRequest(this.sock, type, payload, flags);
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

/** Opens a transport into the namespace at `netnsPath`, of the kind netnsTransportKind picks. */
export function transportOpen(netnsPath: string): Promise<PooledTransport> {
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
