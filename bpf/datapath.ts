// The datapath object as agent/ uses it (KitnetDatapath): the loaded programs and their pinned links,
// and the maps behind them. Every write that can change a verdict bumps the policy revision.
import type { LinkInfo, TestRunResult } from '../common/native.js';
import { native } from '../common/native.js';
import { kcall } from './errors.js';
import { flowReaderOpen } from './flow-reader.js';
import type { KitnetDatapath } from './kitnet-datapath.js';
import type { AttachResult, LinkRole } from './links.js';
import { linkAttach, linkDetach, linkList, linkPinnedInfo } from './links.js';
import type { LoadedObject, ProgName } from './loader.js';
import { FILL_MAP_NAMES, mapCount, type FillMapName } from './map-fill.js';
import type { DatapathConfig } from './maps/config.js';
import { ConfigMap } from './maps/config.js';
import { dump, dumpKey, dumpValue } from './maps/exact.js';
import { dropLimitSuppressed } from './maps/drop-limit.js';
import { DnsSteeringMaps } from './maps/dns.js';
import type { ConntrackEntry } from './maps/conntrack.js';
import { ConntrackMap } from './maps/conntrack.js';
import { EndpointsMap } from './maps/endpoints.js';
import { IpcacheMap } from './maps/ipcache.js';
import type { BpfMap } from './maps/map.js';
import type { Counter, MetricName } from './maps/metrics.js';
import { MetricsMap } from './maps/metrics.js';
import { PolicyMap } from './maps/policy.js';
import { policyEntryOpsPack, policyWritesPack } from './maps/policy-pack.js';
import type { AttachKind, EndpointInfo, FlowEvent, FlowReader, IpcacheEntry, PolicyApplyResult, PolicyEntryOp, PolicyMapEntry, PolicyMapWrite } from './types.js';

/** offsetof(struct __sk_buff, ifindex) — UAPI, stable since 4.x. */
const SKB_IFINDEX_OFFSET = 40;
/** offsetof(struct __sk_buff, ingress_ifindex) — UAPI; BPF_PROG_TEST_RUN copies it into skb_iif. */
const SKB_INGRESS_IFINDEX_OFFSET = 36;
const SKB_CTX_SIZE = 192;

function u32Key(n: number): Buffer {
  const k = Buffer.alloc(4);
  k.writeUInt32LE(n);
  return k;
}

export class DatapathImpl implements KitnetDatapath {
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

  async attach(ep: { ifname: string; ifindex: number; peerIfindex?: number; kind: AttachKind }): Promise<void> {
    await this.attachDetailed(ep);
  }

  async attachDetailed(ep: { ifname: string; ifindex: number; peerIfindex?: number; kind: AttachKind }): Promise<AttachResult[]> {
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
    const id = this.endpoints.get(ifindex)?.endpointId;
    this.verdictWrite(() => this.endpoints.delete(ifindex));
    // its budget and count go with it: an endpoint id given again starts with a whole budget and 0
    if (id !== undefined) this.obj.maps.drop_limit?.delete(u32Key(id));
  }

  dropEventsSuppressed(): Map<number, bigint> {
    this.live();
    const m = this.obj.maps.drop_limit;
    const out = new Map<number, bigint>();
    if (!m) return out;
    const d = dump(m, m.maxEntries);
    for (let i = 0; i < d.count; i++) {
      const n = dropLimitSuppressed(dumpValue(d, i));
      if (n) out.set(dumpKey(d, i).readUInt32LE(0), n);
    }
    return out;
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

  ipcacheUpsertMany(entries: ReadonlyArray<readonly [string, IpcacheEntry]>): void {
    this.live();
    this.verdictWrite(() => this.ipcache.upsertMany(entries));
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
    const reader = flowReaderOpen(this.obj.maps.events.fd, this.metrics, onEvents, (r) => this.readers.delete(r));
    this.readers.add(reader);
    return reader;
  }

  testRun(prog: ProgName, frame: Buffer, opts: { ifindex?: number; ingressIfindex?: number; repeat?: number } = {}): TestRunResult {
    this.live();
    const ctx = Buffer.alloc(SKB_CTX_SIZE);
    ctx.writeUInt32LE(opts.ifindex ?? 1, SKB_IFINDEX_OFFSET);
    ctx.writeUInt32LE(opts.ingressIfindex ?? 0, SKB_INGRESS_IFINDEX_OFFSET);
    return kcall(() => native().progTestRun(this.obj.progFds[prog], frame, ctx, opts.repeat ?? 1));
  }

  close(): void {
    if (this.closed) return;
    for (const r of [...this.readers]) r.close();
    this.closed = true;
    this.obj.close();
  }
}
