// Loads the native addon (built from bpf/native: libbpf, setns, the netlink link monitor) and types its
// surface. Below bpf/ and netkit/, which both use it: bpf/ for objects, maps, links and ring buffers,
// netkit/ for setns (common/ns.ts) and its link monitor. Raw errors carry errno/code/op/libbpfLog;
// bpf/errors.ts turns them into KernelError.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

export interface LinkInfo {
  type: number;
  id: number;
  progId: number;
  /** tcx / netkit links: the device's ifindex, 0 once the device is gone. */
  ifindex: number;
  attachType: number;
}
export interface ProgInfo {
  id: number;
  type: number;
  name: string;
}
export interface MapInfo {
  id: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
  name: string;
}
export interface TestRunResult {
  retval: number;
  /** Average run time in ns per repetition. */
  duration: number;
  data: Buffer;
}
declare const handleBrand: unique symbol;
export type NativeHandle = { readonly [handleBrand]: true };

export interface NativeBpf {
  /** `sizes` overrides max_entries of named maps before the load (e.g. a smaller `events` ring). */
  objectOpen(path: string, pinRoot: string, sizes?: Record<string, number>): { handle: NativeHandle; progs: Record<string, number>; maps: Record<string, number> };
  objectClose(handle: NativeHandle): void;
  objPin(fd: number, path: string): void;
  objGet(path: string): number;
  fdClose(fd: number): void;
  linkCreate(progFd: number, ifindex: number, attachType: number): number;
  linkUpdate(linkFd: number, progFd: number): void;
  linkDetach(linkFd: number): void;
  linkInfo(fd: number): LinkInfo;
  progInfo(fd: number): ProgInfo;
  mapInfo(fd: number): MapInfo;
  mapUpdate(fd: number, key: Buffer, value: Buffer, flags: number): void;
  mapLookup(fd: number, key: Buffer, valueOut: Buffer): boolean;
  mapDelete(fd: number, key: Buffer): boolean;
  mapNextKey(fd: number, key: Buffer | null, nextOut: Buffer): boolean;
  /**
   * Ordered writes in one call: ops[i] 1 = update(keys[i], values[i]), 2 = delete(keys[i]); packed buffers.
   * `results` (one byte per op), if given: 1 where an applied op created (update) or removed (delete) its
   * key, 0 where it replaced a value or found nothing to delete.
   */
  mapBatchApply(
    fd: number,
    ops: Buffer,
    keys: Buffer,
    values: Buffer,
    keySize: number,
    valueSize: number,
    flags: number,
    results?: Buffer,
  ): { upserted: number; deleted: number; missing: number };
  /**
   * Every key updated in one BPF_MAP_UPDATE_BATCH syscall (used on hash maps; LPM tries have the op only on newer kernels).
   * Returns the count; an error carries `index`, the number of keys updated before it.
   */
  mapUpdateBatch(fd: number, keys: Buffer, values: Buffer, keySize: number, valueSize: number, flags: number): number;
  /** Every entry in one call, keys and values packed back to back. */
  mapDump(fd: number, keySize: number, valueSize: number, maxEntries: number): { count: number; keys: Buffer; values: Buffer };
  /**
   * Like mapDump, through BPF_MAP_LOOKUP_BATCH: a syscall per 4,096 entries (hashes, LPM tries, arrays).
   * A kernel or map type without batch lookups throws op BPF_MAP_LOOKUP_BATCH, code EINVAL (before
   * Linux 5.6) or EOPNOTSUPP, before reading any entry: fall back to mapDump then.
   */
  mapDumpBatch(fd: number, keySize: number, valueSize: number, maxEntries: number): { count: number; keys: Buffer; values: Buffer };
  numPossibleCpus(): number;
  progTestRun(progFd: number, data: Buffer, ctx: Buffer | null, repeat: number): TestRunResult;
  /** The callback gets one Buffer per wakeup: records framed as [u32 len][u32 0][payload padded to 8]. */
  ringbufOpen(mapFd: number, onBatch: (batch: Buffer) => void): NativeHandle;
  ringbufClose(handle: NativeHandle): void;
  ringbufRef(handle: NativeHandle, ref: boolean): void;
  /** setns(2) for the calling (main) thread; nstype e.g. CLONE_NEWNET = 0x40000000. */
  setns(fd: number, nstype: number): void;
  /** ioctl(NS_GET_NSTYPE): the CLONE_NEW* type of the namespace behind an nsfs fd. */
  nsType(fd: number): number;
  /** SO_NETNS_COOKIE of the network namespace behind an nsfs fd (a socket made inside it; Linux 5.14). */
  netnsCookie(fd: number): bigint;
  /** flock(fd, LOCK_EX | LOCK_NB): true when taken, false when another open file holds it. */
  flockExclusive(fd: number): boolean;
  /**
   * A netlink multicast listener on the event loop (unreferenced): each datagram to `onData`, null
   * when the kernel dropped events (ENOBUFS). rcvbufBytes uses SO_RCVBUFFORCE where permitted.
   */
  netlinkMonitorOpen(protocol: number, groups: number, rcvbufBytes: number, onData: (datagram: Buffer | null) => void): NativeHandle;
  netlinkMonitorClose(handle: NativeHandle): void;
  /**
   * An AF_PACKET socket (unreferenced) in the calling thread's network namespace: IPv4 UDP frames to
   * `udpDstPort` only (a kernel socket filter) on `recvIfname`, arriving (seen before tcx ingress) or
   * `outgoing` (seen before the device's transmit), one Ethernet frame per callback. Sends go out of
   * `sendIfname`, past the qdisc and tcx egress. `udpDstPort` 0: ICMPv6 router solicitations instead.
   * At most `burst` frames at once, then `perSecond`, reach onFrame (the rest wait in the socket's
   * queue, and the kernel drops what does not fit).
   */
  packetOpen(recvIfname: string, sendIfname: string, udpDstPort: number, outgoing: boolean, burst: number, perSecond: number, onFrame: (frame: Buffer) => void): NativeHandle;
  packetSend(handle: NativeHandle, frame: Buffer): void;
  packetClose(handle: NativeHandle): void;
  /**
   * A UDP socket (unreferenced) bound to address:port, connected to connectAddress:connectPort unless
   * connectAddress is ''. Each datagram reaches onDatagram as slab[offset, offset + length) (a slab the
   * thread's sockets share: bpf/native/src/udp.c), or (null, 0, 0, null, 0, errno) for a receive error
   * such as a connected socket's ECONNREFUSED.
   */
  udpOpen(address: string, port: number, connectAddress: string, connectPort: number, recvBufferBytes: number, onDatagram: (slab: Buffer | null, offset: number, length: number, address: string | null, port: number, errno: number) => void): NativeHandle;
  /** Sends one datagram now (address '' on a connected socket); throws with the errno (EAGAIN: the socket buffer is full). */
  udpSend(handle: NativeHandle, data: Uint8Array, address: string, port: number): void;
  udpLocalPort(handle: NativeHandle): number;
  /** No more callbacks; the socket closes. */
  udpClose(handle: NativeHandle): void;
  /** Its datagrams are no longer read (sends go on); returns the descriptor for the reader taking over. */
  udpPause(handle: NativeHandle): number;
  /** The DNS fast path's tables (bpf/native/src/dnsfast.c): verdict and known-answer slots, powers of two. */
  dnsFastTables(verdictSlots: number, knownSlots: number): NativeHandle;
  /** Queries of `client` to `resolver`:`resolverPort` for `name` may go to `upstream`; false: a name the thread never takes. */
  dnsFastVerdict(tables: NativeHandle, client: string, resolver: string, resolverPort: number, name: string, upstream: string, upstreamPort: number): boolean;
  /**
   * Queries of `client` to `resolver`:`resolverPort` for any name `selectors` allow (DnsFastTables.plan)
   * may go to `upstream`. 0: not taken; 2: taken after every other plan was dropped (the table was half full).
   */
  dnsFastPlan(tables: NativeHandle, client: string, resolver: string, resolverPort: number, selectors: string, upstream: string, upstreamPort: number): 0 | 1 | 2;
  /** The fast path's matching of one name against a plan's selectors (for tests). */
  dnsFastPlanAllows(selectors: string, name: string): boolean;
  /** The maps hold `address` for `name` until `expiresAtMs` (wall clock). */
  dnsFastKnown(tables: NativeHandle, name: string, address: string, expiresAtMs: number): boolean;
  /** Drops every verdict and / or every known answer, at once. */
  dnsFastForget(tables: NativeHandle, verdicts: boolean, known: boolean): void;
  /** The thread reading a paused UDP socket's descriptor (duplicated); records reach onRecords in batches. */
  dnsFastStart(socketFd: number, tables: NativeHandle, redirectMapFd: number, timeoutMs: number, queriesPerSocket: number, maxSockets: number, maxPending: number, onRecords: (batch: Buffer) => void): NativeHandle;
  /** The thread ends and its sockets close; no callback after it returns. */
  dnsFastStop(handle: NativeHandle): void;
  dnsFastStats(handle: NativeHandle): { answered: number; learn: number; failed: number; handed: number; unmatched: number; inFlight: number };
}

/** Where bash bpf/build.sh puts the addon; KITNET_BPF_ADDON overrides (packaging). */
export const ADDON_PATH =
  process.env.KITNET_BPF_ADDON ?? fileURLToPath(new URL('../../bpf/native/build/Release/kitnet_bpf.node', import.meta.url));

let cached: NativeBpf | undefined;

export function native(): NativeBpf {
  if (cached) return cached;
  try {
    cached = createRequire(import.meta.url)(ADDON_PATH) as NativeBpf;
  } catch (err) {
    throw new Error(`cannot load the kitnet BPF addon at ${ADDON_PATH}: run \`bash bpf/build.sh\` (needs libbpf-dev, node-gyp)`, {
      cause: err,
    });
  }
  return cached;
}
