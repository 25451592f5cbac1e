// The datapath's public surface for agent/: load the object (maps pinned and reused), attach endpoints
// with pinned links, write endpoint/ipcache state, read flow events. Everything kernel-facing throws
// KernelError (common/kernel-error.ts) with a hint.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type {
  AttachKind,
  Datapath,
  EndpointInfo,
  FlowEvent,
  FlowReader,
  IpcacheEntry,
  PolicyApplyResult,
  PolicyEntryOp,
  PolicyMapEntry,
  PolicyMapWrite,
} from './types.js';
import { PIN_ROOT_DEFAULT } from './types.js';
import { kcall } from './errors.js';
import { flowDecodeBatch, monotonicToWallOffsetNs } from './flow-decode.js';
import type { AttachResult, LinkRole } from './links.js';
import { linkAttach, linkDetach, linkList, linkPinnedInfo } from './links.js';
import type { LoadedObject, ProgName } from './loader.js';
import { objectLoad, pinPaths, pinRootCheck } from './loader.js';
import type { DatapathConfig } from './maps/config.js';
import { ConfigMap } from './maps/config.js';
import { DnsSteeringMaps } from './maps/dns.js';
import type { ConntrackEntry } from './maps/conntrack.js';
import { ConntrackMap } from './maps/conntrack.js';
import { EndpointsMap } from './maps/endpoints.js';
import { dump as exactDump } from './maps/exact.js';
import type { BpfMap } from './maps/map.js';
import { IpcacheMap } from './maps/ipcache.js';
import type { Counter, MetricName } from './maps/metrics.js';
import { METRIC_SLOTS, MetricsMap } from './maps/metrics.js';
import { PolicyMap, policyEntryOpsPack, policyWritesPack } from './maps/policy.js';
import type { LinkInfo, NativeHandle, TestRunResult } from '../common/native.js';
import { native } from '../common/native.js';

export * from './types.js';
export type { AttachResult, LinkRole } from './links.js';
export { LINK_ROLES, progForRole } from './links.js';
export type { DatapathConfig } from './maps/config.js';
export type { DnsSteeringMaps, DnsProxyAddress } from './maps/dns.js';
export type { ConntrackEntry } from './maps/conntrack.js';
export type { Counter, MetricName } from './maps/metrics.js';
export type { LinkInfo, TestRunResult } from '../common/native.js';
export type { ProgName } from './loader.js';
/** Whether a pin root lies on bpffs (statfs only): the agent checks it with its config, before the lock. */
export { pinRootCheck } from './loader.js';
export { KernelError, UnsupportedFeatureError } from '../common/kernel-error.js';
export { VerifierError } from './errors.js';
export { DROP_REASON, DROP_REASON_DESC } from './layout.gen.js';
/** endpoint_info.flags for endpointUpsert: anti-spoofing (source IP / MAC must be the workload's), L3 device. */
export { EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC, EP_F_NO_L2 } from './layout.gen.js';
/** Gateways of every workload (169.254.1.1, fe80::1): the datapath answers ARP / NS for them (EndpointInfo.hostMac). */
export { GATEWAY_IPV4, GATEWAY_IPV6 } from './layout.gen.js';
/** Policy map layout constants (struct policy_key / policy_value, prefix lengths, capacity). */
export {
  POLICY_F_DENY,
  POLICY_KEY,
  POLICY_VALUE,
  POLICY_MAP_MAX,
  POLICY_PREFIX_ANY_PROTO,
  POLICY_PREFIX_PROTO,
  POLICY_PREFIX_FULL,
} from './layout.gen.js';
export { PolicyApplyError, policyEntryDecode } from './maps/policy.js';

/** The maps whose fill `kitnet status` and /metrics report. */
export const FILL_MAP_NAMES = ['endpoints', 'ipcache', 'ipcache_exact', 'policy', 'policy_exact', 'policy_wild', 'conntrack'] as const;
export type FillMapName = (typeof FILL_MAP_NAMES)[number];

const BPF_MAP_TYPE_LRU_HASH = 9;

/** Entries in a map: hashes (LRU too) in batch syscalls, other maps key by key. */
function mapCount(m: BpfMap): number {
  try {
    if (m.type === BPF_MAP_TYPE_LRU_HASH) return native().mapDumpBatch(m.fd, m.keySize, m.valueSize, m.maxEntries).count;
  } catch {
    // a kernel without batch ops for LRU hashes: the plain dump below
  }
  return exactDump(m, m.maxEntries).count;
}

/** The contract plus what operators, tests and benchmarks need beyond it. */
export interface KitnetDatapath extends Datapath {
  /** Like attach(), reporting per program whether a pinned link was adopted. */
  attachDetailed(ep: { ifname: string; ifindex: number; kind: AttachKind }): Promise<AttachResult[]>;
  /** Kernel view of a device's pinned links by role (link id, program id, ifindex; 0 = device gone). */
  linkInfo(ifname: string): Partial<Record<LinkRole, LinkInfo>>;
  /** The address index the netkit primary-side program finds endpoints with: [address, host ifindex]. */
  endpointAddrList(): Array<[string, number]>;
  /** The `endpoints` entry under one ifindex (one lookup, where endpointList dumps the map). */
  endpointGet(ifindex: number): EndpointInfo | undefined;
  /** Ids of the programs loaded by this instance. */
  progIds(): Readonly<Record<ProgName, number>>;
  /** The DNS steering maps (bpf/maps/dns.ts); undefined for an object without them (an earlier release). */
  dnsSteering?(): DnsSteeringMaps | undefined;
  configGet(): DatapathConfig;
  configSet(cfg: Partial<DatapathConfig>): DatapathConfig;
  metricsRead(): Record<MetricName, Counter>;
  conntrackList(): ConntrackEntry[];
  conntrackFlush(): number;
  /**
   * The exact-match hashes in front of the ipcache and policy tries (bpf/maps/exact.ts) compared with
   * the tries' full-length entries: one line per difference, empty when they agree; undefined when the
   * loaded object has no such hashes (an earlier release).
   */
  exactCheck(): string[] | undefined;
  /** What exactSync at load found to repair (hash entries added / removed); undefined if not run. */
  readonly exactRepaired:
    | { ipcache: { added: number; removed: number }; policy: { added: number; removed: number }; policyWild: { added: number; removed: number } }
    | undefined;
  /** Whether the datapath trusts `policy_exact` / `policy_wild` to be complete (set once they are filled at load). */
  exactComplete(): boolean;
  /** max_entries of each map that fills with state (from the kernel's map info). */
  mapCapacity(): Record<FillMapName, number>;
  /**
   * Entries in each such map and its max_entries. Hashes are counted in BPF_MAP_LOOKUP_BATCH dumps;
   * a trie has no batch ops (the policy trie takes ~3 µs an entry), so a caller that keeps count of
   * one passes it in `known`.
   */
  mapFill(known?: Partial<Record<FillMapName, number>>): Array<{ map: FillMapName; entries: number; capacity: number }>;
  /**
   * BPF_PROG_TEST_RUN: run a program on a crafted frame (Ethernet first). `ifindex` selects the device the
   * skb appears on (and so the `endpoints` entry); default 1 (lo).
   */
  testRun(prog: ProgName, frame: Buffer, opts?: { ifindex?: number; repeat?: number }): TestRunResult;
}

/** offsetof(struct __sk_buff, ifindex) — UAPI, stable since 4.x. */
const SKB_IFINDEX_OFFSET = 40;
const SKB_CTX_SIZE = 192;

class DatapathImpl implements KitnetDatapath {
  private readonly endpoints: EndpointsMap;
  private readonly ipcache: IpcacheMap;
  private readonly policy: PolicyMap;
  private readonly conntrack: ConntrackMap;
  private readonly metrics: MetricsMap;
  private readonly config: ConfigMap;
  private readonly readers = new Set<FlowReader>();
  private closed = false;
  exactRepaired: KitnetDatapath['exactRepaired'];

  constructor(
    private readonly obj: LoadedObject,
    exactSync = true,
  ) {
    this.endpoints = new EndpointsMap(obj.maps.endpoints, obj.maps.endpoint_addrs);
    this.ipcache = new IpcacheMap(obj.maps.ipcache, obj.maps.ipcache_exact);
    this.policy = new PolicyMap(obj.maps.policy, obj.maps.policy_exact, obj.maps.policy_wild);
    this.conntrack = new ConntrackMap(obj.maps.conntrack);
    this.metrics = new MetricsMap(obj.maps.metrics);
    this.config = new ConfigMap(obj.maps.config);
    // First load on this pin root: write the defaults so the datapath and `configGet` agree. A previous
    // agent's settings (pinned) are kept.
    if (!this.config.isSet()) this.config.set({});
    if (exactSync && this.ipcache.exact && this.policy.exact) {
      // The exact-match maps are filled from the pinned tries before any program of this object is
      // attached: after an upgrade that created them they are empty, after a downgrade and back they
      // may be stale. The tries are complete and the agent's state; the hashes follow. While this runs,
      // programs already attached (a restart) ask the trie on every miss (CFG_F_EXACT_COMPLETE clear).
      this.config.exactCompleteSet(false);
      const policy = this.policy.sync()!;
      this.exactRepaired = { ipcache: this.ipcache.exact.sync(), policy: policy.exact, policyWild: policy.wild };
      if (this.policy.wild) this.config.exactCompleteSet(true);
    }
    // Connections tracked before this load (by this object's predecessor, perhaps of a layout without a
    // revision: 0 there) are checked by policy again on their next packet in the original direction.
    this.config.policyRevisionBump();
  }

  /**
   * Runs a write that can change a verdict, then bumps the policy revision, also when the write failed
   * half-way: established connections are checked again (bpf/include/conntrack.h).
   */
  private verdictWrite<T>(write: () => T): T {
    try {
      return write();
    } finally {
      this.config.policyRevisionBump();
    }
  }

  get pinRoot(): string {
    return this.obj.pinRoot;
  }

  private live(): void {
    if (this.closed) throw new Error('datapath is closed');
  }

  async attach(ep: { ifname: string; ifindex: number; kind: AttachKind }): Promise<void> {
    await this.attachDetailed(ep);
  }

  async attachDetailed(ep: { ifname: string; ifindex: number; kind: AttachKind }): Promise<AttachResult[]> {
    this.live();
    return linkAttach(this.obj.pinRoot, ep, this.obj.progFds, this.obj.progIds);
  }

  async detach(ifname: string): Promise<void> {
    linkDetach(this.obj.pinRoot, ifname);
  }

  async attachedList(): Promise<string[]> {
    return linkList(this.obj.pinRoot);
  }

  linkInfo(ifname: string): Partial<Record<LinkRole, LinkInfo>> {
    return linkPinnedInfo(this.obj.pinRoot, ifname);
  }

  progIds(): Readonly<Record<ProgName, number>> {
    return this.obj.progIds;
  }

  endpointUpsert(ifindex: number, info: EndpointInfo): void {
    this.live();
    this.verdictWrite(() => this.endpoints.upsert(ifindex, info));
  }

  endpointDelete(ifindex: number): void {
    this.live();
    this.verdictWrite(() => this.endpoints.delete(ifindex));
  }

  endpointList(): Array<[number, EndpointInfo]> {
    this.live();
    return this.endpoints.list();
  }

  dnsSteering(): DnsSteeringMaps | undefined {
    const m = this.obj.maps;
    return m.dns_proxy && m.dns_endpoints && m.dns_redirect ? new DnsSteeringMaps(m.dns_proxy, m.dns_endpoints, m.dns_redirect) : undefined;
  }

  endpointGet(ifindex: number): EndpointInfo | undefined {
    this.live();
    return this.endpoints.get(ifindex);
  }

  endpointAddrList(): Array<[string, number]> {
    this.live();
    return this.endpoints.addrList();
  }

  ipcacheUpsert(cidr: string, entry: IpcacheEntry): void {
    this.live();
    this.verdictWrite(() => this.ipcache.upsert(cidr, entry));
  }

  ipcacheDelete(cidr: string): void {
    this.live();
    this.verdictWrite(() => this.ipcache.delete(cidr));
  }

  ipcacheList(): Array<[string, IpcacheEntry]> {
    this.live();
    return this.ipcache.list();
  }

  policyApply(ops: readonly PolicyMapWrite[]): PolicyApplyResult;
  policyApply(endpointId: number, ops: readonly PolicyEntryOp[]): PolicyApplyResult;
  policyApply(a: number | readonly PolicyMapWrite[], b?: readonly PolicyEntryOp[]): PolicyApplyResult {
    this.live();
    if (typeof a === 'number') return this.verdictWrite(() => this.policy.apply(policyEntryOpsPack(a, b ?? [])));
    return this.verdictWrite(() => this.policy.apply(policyWritesPack(a)));
  }

  policyList(endpointId?: number): PolicyMapEntry[] {
    this.live();
    return this.policy.list(endpointId);
  }

  policyClear(endpointId?: number): number {
    this.live();
    return this.verdictWrite(() => this.policy.clear(endpointId));
  }

  configGet(): DatapathConfig {
    this.live();
    return this.config.get();
  }

  configSet(cfg: Partial<DatapathConfig>): DatapathConfig {
    this.live();
    return this.config.set(cfg);
  }

  metricsRead(): Record<MetricName, Counter> {
    this.live();
    return this.metrics.readAll();
  }

  conntrackList(): ConntrackEntry[] {
    this.live();
    return this.conntrack.list();
  }

  conntrackFlush(): number {
    this.live();
    return this.conntrack.flush();
  }

  private fillMaps(): Array<[FillMapName, BpfMap]> {
    this.live();
    const out: Array<[FillMapName, BpfMap]> = [];
    for (const name of FILL_MAP_NAMES) {
      const m = this.obj.maps[name];
      if (m) out.push([name, m]);
    }
    return out;
  }

  mapCapacity(): Record<FillMapName, number> {
    return Object.fromEntries(this.fillMaps().map(([name, m]) => [name, m.maxEntries])) as Record<FillMapName, number>;
  }

  mapFill(known: Partial<Record<FillMapName, number>> = {}): Array<{ map: FillMapName; entries: number; capacity: number }> {
    return this.fillMaps().map(([map, m]) => ({ map, entries: known[map] ?? mapCount(m), capacity: m.maxEntries }));
  }

  exactComplete(): boolean {
    this.live();
    return this.config.exactComplete();
  }

  exactCheck(): string[] | undefined {
    this.live();
    const ip = this.ipcache.exactDiff();
    const pol = this.policy.exactDiff();
    if (!ip || !pol) return undefined;
    const pe = (e: PolicyMapEntry) =>
      `endpoint ${e.endpointId} ${e.direction} identity ${e.identity} protocol ${e.protocol} port ${e.port}${e.deny ? ' deny' : ''}`;
    return [
      ...pol.wild.map((w) => `policy_wild counts ${w.have} shorter entries for endpoint ${w.entry.endpointId} ${w.entry.direction} identity ${w.entry.identity}, the trie has ${w.want}`),
      ...ip.missing.map((c) => `ipcache_exact lacks ${c} (or holds another value)`),
      ...ip.extra.map((c) => `ipcache_exact holds ${c}, the ipcache trie does not`),
      ...pol.missing.map((e) => `policy_exact lacks ${pe(e)} (or holds another value)`),
      ...pol.extra.map((e) => `policy_exact holds ${pe(e)}, the policy trie does not`),
    ];
  }

  /**
   * One reader per ring buffer: its consumer position is shared, so two readers would split the events.
   * The agent's flow pipeline fans out to its own subscribers.
   */
  flowsRead(onEvents: (events: FlowEvent[]) => void): FlowReader {
    this.live();
    const wallOffset = monotonicToWallOffsetNs();
    const metrics = this.metrics;
    const handle: NativeHandle = kcall(() =>
      native().ringbufOpen(this.obj.maps.events.fd, (batch) => {
        const events = flowDecodeBatch(batch, wallOffset);
        if (events.length) onEvents(events);
      }),
    );
    let open = true;
    const reader: FlowReader = {
      lostEvents: () => metrics.read(METRIC_SLOTS.EVENTS_LOST).packets,
      close: () => {
        if (!open) return;
        open = false;
        this.readers.delete(reader);
        native().ringbufClose(handle);
      },
    };
    this.readers.add(reader);
    return reader;
  }

  testRun(prog: ProgName, frame: Buffer, opts: { ifindex?: number; repeat?: number } = {}): TestRunResult {
    this.live();
    const ctx = Buffer.alloc(SKB_CTX_SIZE);
    ctx.writeUInt32LE(opts.ifindex ?? 1, SKB_IFINDEX_OFFSET);
    return kcall(() => native().progTestRun(this.obj.progFds[prog], frame, ctx, opts.repeat ?? 1));
  }

  close(): void {
    if (this.closed) return;
    for (const r of [...this.readers]) r.close();
    this.closed = true;
    this.obj.close();
  }
}

/**
 * Load the datapath object. Maps are created under `<pinRoot>/maps` on first load and reused afterwards,
 * so endpoint, ipcache and conntrack state survive agent restarts; already pinned links are adopted by
 * attach(). Throws KernelError (VerifierError for a rejected program) with a hint.
 */
export async function datapathLoad(
  opts: {
    pinRoot?: string;
    objectPath?: string;
    /** Size of the flow event ring buffer (a power of two, at least a page); default EVENTS_RINGBUF_BYTES. */
    eventsRingBytes?: number;
    /**
     * Fill the exact-match hashes from the tries at load (default true). Off only for readers that
     * must see the maps as they were left (test/helpers/consistency.ts checks them with exactCheck).
     */
    exactSync?: boolean;
    /**
     * max_entries of maps that fill with state, instead of the generated sizes (capacity tests: a small
     * policy map fills with a few workloads). Only for a fresh pin root: libbpf refuses a pinned map of
     * another size.
     */
    mapSizes?: Partial<Record<FillMapName, number>>;
  } = {},
): Promise<KitnetDatapath> {
  const pinRoot = opts.pinRoot ?? PIN_ROOT_DEFAULT;
  const sizes: Record<string, number> = { ...opts.mapSizes };
  if (opts.eventsRingBytes !== undefined) {
    const b = opts.eventsRingBytes;
    if (b < 4096 || (b & (b - 1)) !== 0) throw new RangeError(`eventsRingBytes ${b} must be a power of two of at least 4096`);
    sizes.events = b;
    // The ring only carries events to a reader; a pinned ring of another size is dropped rather
    // than refused (events written while no agent reads are lost either way).
    rmSync(join(pinPaths(pinRoot).maps, 'events'), { force: true });
  }
  const obj = objectLoad(pinRoot, opts.objectPath, sizes);
  try {
    return new DatapathImpl(obj, opts.exactSync ?? true);
  } catch (err) {
    obj.close();
    throw err;
  }
}

/** Detach every pinned link and remove every pin under pinRoot (maps go with their last user). Idempotent. */
export async function datapathUnpinAll(pinRoot: string = PIN_ROOT_DEFAULT): Promise<void> {
  if (!existsSync(pinRoot)) return;
  pinRootCheck(pinRoot);
  for (const ifname of linkList(pinRoot)) linkDetach(pinRoot, ifname);
  rmSync(pinRoot, { recursive: true, force: true });
}
