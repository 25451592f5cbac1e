import type { Logger } from 'pino';
import { labelCompare, labelFormat } from '../../common/labels.js';
import { addressParse, cidrContains, cidrParse, type Cidr } from '../ipam.js';
import { kvstoreLabelsKeyParse } from './cilium-labels.js';
import { IDENTITIES_PREFIX } from './identity-allocator.js';
import { inRange, type IdentityRange } from './identity-range.js';
import { IPCACHE_PREFIX } from './ipcache-publisher.js';
import type { ClusterSession } from './session.js';
import { jsonObjectParse } from './json-value.js';
import type { PeerNode } from './node-registry.js';
import { cidrOverlaps } from './node-cidr.js';
import { clusterLabelsProblem } from './peer-formats.js';
import { PrefixFollower, type PrefixChange, type PrefixSink } from './prefix-follower.js';
import type { HostAddressTest } from './host-addresses.js';

/** Another node's workload address, as accepted from the cluster ipcache. */
export interface RemoteIpcacheEntry {
  ip: string;
  identity: number;
  /** The node carrying the address. */
  hostIP: string;
  namespace: string;
  podName: string;
}

export interface IpcacheWatchRules {
  /** This node's address: entries naming it are this node's own (published by it). */
  nodeIP: string;
  /** The range of the cluster written in this etcd: a remote workload's identity lies in it. */
  range: IdentityRange;
  /**
   * Addresses never another's: this node's CIDRs (this host's pools) when following this cluster;
   * this cluster's pools when following a peer cluster (a peer never holds this cluster's addresses).
   */
  localPools: readonly Cidr[];
  /**
   * This cluster's pools (ipam.ipv4Pool / ipv6Pool, which node CIDRs are carved from), when
   * following this cluster: another node's workload address lies in them. Unset for a peer cluster.
   */
  clusterPools?: readonly Cidr[];
  /** A peer cluster's name, when following one (for the reasons given). */
  peer?: string;
  /** This host's own addresses (canonical): never a remote workload's. */
  hostAddresses: () => HostAddressTest;
  /**
   * The nodes of the cluster written in this etcd (for this cluster: as the node registry accepted
   * them, CIDRs claimed): an entry's HostIP must name one and its address lie in that node's CIDRs.
   * An address no known node's CIDR covers is bound to no node yet: any writer could claim it, so it
   * waits for its node (`nodesChanged` judges every entry again).
   */
  nodes?: () => readonly NodeBinding[];
  /**
   * Calls `fn` whenever `nodes` changes (returns the unsubscribe): every entry is judged again by a
   * new list, so an entry taken before its address's node was known goes when the node comes.
   */
  nodesChanged?: (fn: () => void) => () => void;
}

/** A node as entries are bound to it: the addresses a HostIP names it by, and its pod CIDRs. */
export interface NodeBinding {
  name: string;
  addresses: readonly string[];
  cidrs: readonly Cidr[];
}

/** A node of this cluster as the node registry accepted it, as entries are bound to it. */
export function peerNodeBinding(n: PeerNode): NodeBinding {
  return { name: n.name, addresses: [n.ipv4, n.ipv6].filter((a): a is string => !!a), cidrs: [n.ipv4Cidr, n.ipv6Cidr].filter((c): c is Cidr => !!c) };
}

/** How long after a change of the node list the ipcache is listed and judged again (changes coalesce). */
const REJUDGE_DELAY_MS = 200;

/** Addresses never a workload's: unspecified, loopback, link-local, multicast and broadcast. */
const SPECIAL: ReadonlyArray<[Cidr, string]> = ([
  ['0.0.0.0/8', 'unspecified'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link-local'],
  ['224.0.0.0/4', 'multicast'],
  ['240.0.0.0/4', 'reserved, with the broadcast 255.255.255.255'],
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['fe80::/10', 'link-local'],
  ['ff00::/8', 'multicast'],
] as const).map(([c, what]) => [cidrParse(c), what]);

/** The special range a CIDR overlaps (a peer node's pod CIDR never may), as `range (what)`. */
export function specialOverlap(c: Cidr): string | undefined {
  const hit = SPECIAL.find(([s]) => cidrOverlaps(s, c));
  return hit && `${hit[0].text} (${hit[1]})`;
}

/** Why an address cannot be a remote workload's for these rules; undefined when it can. */
function addressProblem(ip: string, hostIP: string, rules: IpcacheWatchRules): string | undefined {
  const a = addressParse(ip);
  const special = SPECIAL.find(([c]) => cidrContains(c, a.family, a.value));
  if (special) return `address ${ip} is in ${special[0].text} (${special[1]}): never a workload's`;
  if (rules.hostAddresses().has(ip)) return `address ${ip} is this host's own: its entry is this host's (reserved:host)`;
  const pool = rules.localPools.find((p) => cidrContains(p, a.family, a.value));
  if (pool) {
    return rules.peer === undefined
      ? `address ${ip} is in this host's pool ${pool.text}: another node cannot hold it`
      : `address ${ip} is in this cluster's pool ${pool.text}: peer cluster ${rules.peer} cannot hold it`;
  }
  if (rules.clusterPools && !rules.clusterPools.some((p) => cidrContains(p, a.family, a.value))) {
    return `address ${ip} is outside the cluster's pools ${rules.clusterPools.map((p) => p.text).join(', ')}: not a workload address of this cluster`;
  }
  const nodes = rules.nodes?.();
  if (!nodes) return undefined;
  const covers = (n: NodeBinding) => n.cidrs.some((c) => cidrContains(c, a.family, a.value));
  const named = nodes.find((n) => n.addresses.includes(hostIP));
  const holder = nodes.find(covers);
  if (!named) {
    const of = rules.peer === undefined ? 'no node this host knows (a node entry with the CIDRs it claimed)' : `no node of peer cluster ${rules.peer} (its node entries)`;
    return `HostIP ${hostIP} names ${of}${holder ? `, and the address is in node ${holder.name}'s CIDR` : ': an address no known node holds waits for its node'}`;
  }
  if (!covers(named)) {
    const own = named.cidrs.filter((c) => c.family === a.family).map((c) => c.text).join(', ') || '(none)';
    return `address ${ip} is outside the CIDR ${own} of node ${named.name}, which HostIP ${hostIP} names`;
  }
  const other = nodes.find((n) => n !== named && covers(n));
  if (other) return `address ${ip} is in node ${other.name}'s CIDR, but HostIP ${hostIP} is not that node`;
  return undefined;
}

export type IpcacheValueVerdict = { entry: RemoteIpcacheEntry } | { own: true } | { reason: string };

/**
 * One `cilium/state/ip/v1/default/<ip>` key and value, judged: another node's entry, this node's own,
 * or a reason to ignore it. Values come from any writer of the etcd (and, later, peer clusters), so
 * everything is checked: JSON shape, the IP matching its key (as Cilium's decoder requires), host
 * addresses only (CIDR entries are not mapped yet), the identity in the cluster's range, and the
 * address: never special (loopback, multicast, ...) nor this host's own nor in this host's pools;
 * for this cluster inside the cluster's pools and, when HostIP names a known node, in its CIDRs.
 */
export function ipcacheValueJudge(key: string, value: string, rules: IpcacheWatchRules): IpcacheValueVerdict {
  const suffix = key.slice(IPCACHE_PREFIX.length + 1);
  const json = jsonObjectParse(value);
  if ('reason' in json) return json;
  const o = json.object;
  if (typeof o.IP !== 'string' || typeof o.HostIP !== 'string') return { reason: 'IP or HostIP is not a string' };
  if (o.Mask !== null && o.Mask !== undefined) return { reason: 'CIDR entries (Mask set) are not mapped by kitnet' };
  let ip: string;
  let hostIP: string;
  try {
    ip = addressParse(o.IP).text;
    hostIP = addressParse(o.HostIP).text;
  } catch (err) {
    return { reason: `IP or HostIP is not an IP address: ${(err as Error).message}` };
  }
  if (ip !== suffix) return { reason: `IP ${ip} does not match the key (the key must be the address in its canonical text)` };
  if (hostIP === addressParse(rules.nodeIP).text) return { own: true };
  if (typeof o.ID !== 'number' || !inRange(rules.range, o.ID)) return { reason: `identity ${String(o.ID)} is outside the cluster's range ${rules.range.min}-${rules.range.max}` };
  const problem = addressProblem(ip, hostIP, rules);
  if (problem) return { reason: problem };
  const text = (x: unknown) => (typeof x === 'string' ? x : '');
  return { entry: { ip, identity: o.ID, hostIP, namespace: text(o.K8sNamespace), podName: text(o.K8sPodName) } };
}

/** What the watcher feeds: a batch of entries new or changed, and addresses no longer remote. */
export interface IpcacheWatchSink {
  apply(set: readonly RemoteIpcacheEntry[], gone: readonly string[]): Promise<void>;
}

/**
 * Follows the cluster ipcache into a sink, as a PrefixFollower's sink (a list, then a watch from the
 * list's revision; a broken watch lists again): every list and every watch batch is handed over as
 * the difference to what the sink holds. Entries of this node are skipped; bad or hostile ones are
 * ignored with a log line and counted.
 */
export class IpcacheWatcher implements PrefixSink {
  /** Accepted entries by address (what the sink holds). */
  private readonly accepted = new Map<string, RemoteIpcacheEntry>();
  private readonly follower: PrefixFollower;
  private sink: IpcacheWatchSink | undefined;
  /** Values ignored since the start (bad JSON, foreign identities, addresses of this host's pools). */
  ignored = 0;
  private unsubscribe: (() => void) | undefined;

  constructor(
    /** This cluster's session, or a peer cluster's client (only `client` is used: read-only). */
    session: Pick<ClusterSession, 'client'>,
    private readonly rules: IpcacheWatchRules,
    private readonly log: Logger,
  ) {
    this.follower = new PrefixFollower(session.client, `${IPCACHE_PREFIX}/`, this, log);
  }

  /**
   * Starts following; resolves after the first list reached the sink (or failed: retried in the
   * background). `held`: addresses the sink holds already (adopted from a previous run).
   */
  async start(sink: IpcacheWatchSink, held: Iterable<string> = []): Promise<void> {
    this.sink = sink;
    this.unsubscribe = this.rules.nodesChanged?.(() => this.follower.relistLater(REJUDGE_DELAY_MS));
    // What the sink holds from before: the first list hands over these again or removes them.
    for (const ip of held) this.accepted.set(ip, { ip, identity: 0, hostIP: '', namespace: '', podName: '' });
    await this.follower.start();
  }

  /** Lists done (the first, and one per broken watch). */
  get lists(): number {
    return this.follower.lists;
  }

  size(): number {
    return this.accepted.size;
  }

  private judge(key: string, value: string): RemoteIpcacheEntry | undefined {
    const verdict = ipcacheValueJudge(key, value, this.rules);
    if ('entry' in verdict) return verdict.entry;
    if ('reason' in verdict) {
      this.ignored++;
      this.log.warn({ key, value: value.slice(0, 200), reason: verdict.reason }, 'cluster ipcache entry ignored');
    }
    return undefined;
  }

  async resync(all: ReadonlyMap<string, string>): Promise<void> {
    const listed = new Map<string, RemoteIpcacheEntry>();
    for (const [key, value] of all) {
      const e = this.judge(key, value);
      if (e) listed.set(e.ip, e);
    }
    const gone = [...this.accepted.keys()].filter((ip) => !listed.has(ip));
    const set = [...listed.values()].filter((e) => !sameEntry(this.accepted.get(e.ip), e));
    await this.hand(set, gone);
  }

  async change(changes: readonly PrefixChange[]): Promise<void> {
    const batchSet = new Map<string, RemoteIpcacheEntry>();
    const batchGone = new Set<string>();
    for (const c of changes) {
      const e = c.value !== undefined ? this.judge(c.key, c.value) : undefined;
      // A key whose value turned bad or became this node's is no longer a remote entry.
      if (e) {
        batchSet.set(e.ip, e);
        batchGone.delete(e.ip);
        continue;
      }
      // Only the key of an address's canonical text speaks for it: `…/167772161` or `…/10.1` (another
      // text of 10.0.0.1) never withdraws the entry of `…/10.0.0.1`.
      const addr = canonicalKey(c.key.slice(IPCACHE_PREFIX.length + 1));
      if (addr === undefined) continue;
      batchGone.add(addr);
      batchSet.delete(addr);
    }
    const set = [...batchSet.values()].filter((x) => !sameEntry(this.accepted.get(x.ip), x));
    const gone = [...batchGone].filter((ip) => this.accepted.has(ip));
    await this.hand(set, gone);
  }

  /**
   * Hands a difference to the sink; `accepted` follows what the sink took. When the sink throws it may
   * hold part of it: the follower lists again, which hands over everything that differs.
   */
  private async hand(set: readonly RemoteIpcacheEntry[], gone: readonly string[]): Promise<void> {
    if ((set.length === 0 && gone.length === 0) || !this.sink) return;
    await this.sink.apply(set, gone);
    for (const ip of gone) this.accepted.delete(ip);
    for (const e of set) this.accepted.set(e.ip, e);
  }

  /** Resolves when every change seen so far reached the sink (for tests and orderly stops). */
  settled(): Promise<void> {
    return this.follower.settled();
  }

  close(): Promise<void> {
    this.unsubscribe?.();
    return this.follower.close();
  }
}

function sameEntry(a: RemoteIpcacheEntry | undefined, b: RemoteIpcacheEntry): boolean {
  return !!a && a.identity === b.identity && a.hostIP === b.hostIP && a.namespace === b.namespace && a.podName === b.podName;
}

/** The address a key suffix names, when the suffix is its canonical text; undefined otherwise. */
function canonicalKey(suffix: string): string | undefined {
  try {
    return addressParse(suffix).text === suffix ? suffix : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The labels of cluster identities other nodes allocated (`id/<n>`, Cilium's label key), formatted as
 * the store keeps identity labels; undefined when the key is absent or not a label key; a reason when
 * they are refused as a peer's would be (sources only this host gives, or a cluster label naming
 * another cluster than `cluster`, this one: a node of it posing as a peer).
 */
export async function remoteIdentityLabels(session: ClusterSession, id: number, cluster: string): Promise<string[] | { reason: string } | undefined> {
  const value = await session.client.get(`${IDENTITIES_PREFIX}/id/${id}`).string();
  if (value === null) return undefined;
  const labels = kvstoreLabelsKeyParse(value);
  if (!labels) return undefined;
  const problem = clusterLabelsProblem(labels, cluster);
  return problem ? { reason: problem } : [...labels].sort(labelCompare).map(labelFormat);
}
