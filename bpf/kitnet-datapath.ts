import type { LinkInfo, TestRunResult } from '../common/native.js';
import type { AttachResult, LinkRole } from './links.js';
import type { ProgName } from './loader.js';
import type { FillMapName } from './map-fill.js';
import type { DatapathConfig } from './maps/config.js';
import type { DnsSteeringMaps } from './maps/dns.js';
import type { ConntrackEntry } from './maps/conntrack.js';
import type { Counter, MetricName } from './maps/metrics.js';
import type { AttachKind, Datapath, EndpointInfo, IpcacheEntry } from './types.js';

/** The contract plus what operators, tests and benchmarks need beyond it. */
export interface KitnetDatapath extends Datapath {
  /** Like attach(), reporting per program whether a pinned link was adopted. */
  attachDetailed(ep: { ifname: string; ifindex: number; peerIfindex?: number; kind: AttachKind }): Promise<AttachResult[]>;
  /** Kernel view of a device's pinned links by role (link id, program id, ifindex; 0 = device gone). */
  linkInfo(ifname: string): Partial<Record<LinkRole, LinkInfo>>;
  /** The address index the netkit primary-side program finds endpoints with: [address, host ifindex]. */
  endpointAddrList(): Array<[string, number]>;
  /**
   * Several ipcache entries in one verdict write: one policy revision bump for all of them (the DNS
   * proxy learns addresses in bursts). On an error, some entries may have been written.
   */
  ipcacheUpsertMany(entries: ReadonlyArray<readonly [string, IpcacheEntry]>): void;
  /** The `endpoints` entry under one ifindex (one lookup, where endpointList dumps the map). */
  endpointGet(ifindex: number): EndpointInfo | undefined;
  /** Ids of the programs loaded by this instance. */
  progIds(): Readonly<Record<ProgName, number>>;
  /** The DNS steering maps (bpf/maps/dns.ts); undefined for an object without them (an earlier release). */
  dnsSteering?(): DnsSteeringMaps | undefined;
  configGet(): DatapathConfig;
  configSet(cfg: Partial<DatapathConfig>): DatapathConfig;
  metricsRead(): Record<MetricName, Counter>;
  /**
   * Per endpoint id, the drops not reported by an event because they were over the endpoint's drop event
   * budget in their direction (bpf/include/events.h), both directions together, since this object was
   * loaded; endpoints without any are left out.
   */
  dropEventsSuppressed(): Map<number, bigint>;
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
   * skb appears on (and so the `endpoints` entry); default 1 (lo). `ingressIfindex` is the device it came
   * in on (skb_iif): 0, the default, for a packet of the host's own; else a received (forwarded) one.
   */
  testRun(prog: ProgName, frame: Buffer, opts?: { ifindex?: number; ingressIfindex?: number; repeat?: number }): TestRunResult;
}
