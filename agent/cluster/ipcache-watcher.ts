import type { Watcher } from 'etcd3';
import type { Logger } from 'pino';
import { labelCompare, labelFormat } from '../../common/labels.js';
import { addressParse, cidrContains, type Cidr } from '../ipam.js';
import { kvstoreLabelsKeyParse } from './cilium-labels.js';
import { IDENTITIES_PREFIX } from './identity-allocator.js';
import { inRange, type IdentityRange } from './identity-range.js';
import { IPCACHE_PREFIX } from './ipcache-publisher.js';
import type { ClusterSession } from './session.js';
import { jsonObjectParse } from './json-value.js';

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
  /** The cluster's identity range: a remote workload's identity lies in it. */
  range: IdentityRange;
  /** This host's pools: addresses in them are this host's to give, never another node's. */
  localPools: readonly Cidr[];
}

export type IpcacheValueVerdict = { entry: RemoteIpcacheEntry } | { own: true } | { reason: string };

/**
 * One `cilium/state/ip/v1/default/<ip>` key and value, judged: another node's entry, this node's own,
 * or a reason to ignore it. Values come from any writer of the etcd (and, later, peer clusters), so
 * everything is checked: JSON shape, the IP matching its key (as Cilium's decoder requires), host
 * addresses only (CIDR entries are not mapped yet), the identity in the cluster's range, and the
 * address outside this host's pools.
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
  } catch {
    return { reason: 'IP or HostIP is not an IP address' };
  }
  if (ip !== suffix) return { reason: `IP ${ip} does not match the key` };
  if (hostIP === addressParse(rules.nodeIP).text) return { own: true };
  if (typeof o.ID !== 'number' || !inRange(rules.range, o.ID)) return { reason: `identity ${String(o.ID)} is outside the cluster's range ${rules.range.min}-${rules.range.max}` };
  const a = addressParse(ip);
  const pool = rules.localPools.find((p) => cidrContains(p, a.family, a.value));
  if (pool) return { reason: `address is in this host's pool ${pool.text}: another node cannot hold it` };
  const text = (x: unknown) => (typeof x === 'string' ? x : '');
  return { entry: { ip, identity: o.ID, hostIP, namespace: text(o.K8sNamespace), podName: text(o.K8sPodName) } };
}

/** What the watcher feeds: a batch of entries new or changed, and addresses no longer remote. */
export interface IpcacheWatchSink {
  apply(set: readonly RemoteIpcacheEntry[], gone: readonly string[]): Promise<void>;
}

/** Pause before listing again after a failed list or a broken watch (etcd unreachable: no tight loop). */
const RELIST_DELAY_MS = 1000;

/**
 * Follows the cluster ipcache into a sink: a list, then a watch from the list's revision; when the
 * watch breaks (compaction, etcd unreachable) it lists again and hands over only the difference.
 * Entries of this node are skipped; bad or hostile ones are ignored with a log line and counted.
 */
export class IpcacheWatcher {
  /** Accepted entries by address (what the sink holds). */
  private readonly accepted = new Map<string, RemoteIpcacheEntry>();
  private watcher: Watcher | undefined;
  /** Bumped on every (re)start: events of an older watch are dropped. */
  private generation = 0;
  private closed = false;
  private queue: Promise<void> = Promise.resolve();
  private sink: IpcacheWatchSink | undefined;
  private retry: NodeJS.Timeout | undefined;
  /** Values ignored since the start (bad JSON, foreign identities, addresses of this host's pools). */
  ignored = 0;
  /** Lists done (the first, and one per broken watch). */
  lists = 0;

  constructor(
    /** This cluster's session, or a peer cluster's client (only `client` is used: read-only). */
    private readonly session: Pick<ClusterSession, 'client'>,
    private readonly rules: IpcacheWatchRules,
    private readonly log: Logger,
  ) {}

  /**
   * Starts following; resolves after the first list reached the sink (or failed: retried in the
   * background). `held`: addresses the sink holds already (adopted from a previous run).
   */
  async start(sink: IpcacheWatchSink, held: Iterable<string> = []): Promise<void> {
    this.sink = sink;
    // What the sink holds from before: the first list hands over these again or removes them.
    for (const ip of held) this.accepted.set(ip, { ip, identity: 0, hostIP: '', namespace: '', podName: '' });
    await this.run();
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

  private async run(): Promise<void> {
    if (this.closed) return;
    const generation = ++this.generation;
    this.cancel();
    try {
      const client = this.session.client;
      const res = await client.getAll().prefix(`${IPCACHE_PREFIX}/`).exec();
      if (generation !== this.generation || this.closed) return;
      this.lists++;
      const listed = new Map<string, RemoteIpcacheEntry>();
      for (const kv of res.kvs) {
        const e = this.judge(kv.key.toString('utf8'), kv.value.toString('utf8'));
        if (e) listed.set(e.ip, e);
      }
      const gone = [...this.accepted.keys()].filter((ip) => !listed.has(ip));
      const set = [...listed.values()].filter((e) => !sameEntry(this.accepted.get(e.ip), e));
      await this.hand(set, gone);
      const watcher = await client.watch().prefix(`${IPCACHE_PREFIX}/`).startRevision(String(BigInt(res.header.revision) + 1n)).create();
      if (generation !== this.generation || this.closed) {
        await watcher.cancel().catch(() => undefined);
        return;
      }
      this.watcher = watcher;
      watcher.on('data', (r) => {
        if (generation !== this.generation) return;
        const batchSet = new Map<string, RemoteIpcacheEntry>();
        const batchGone = new Set<string>();
        for (const ev of r.events) {
          const key = ev.kv.key.toString('utf8');
          const ip = key.slice(IPCACHE_PREFIX.length + 1);
          const e = ev.type === 'Put' ? this.judge(key, ev.kv.value.toString('utf8')) : undefined;
          // A key whose value turned bad or became this node's is no longer a remote entry.
          if (e) {
            batchSet.set(e.ip, e);
            batchGone.delete(e.ip);
            continue;
          }
          const addr = canonical(ip);
          if (addr === undefined) continue;
          batchGone.add(addr);
          batchSet.delete(addr);
        }
        const set = [...batchSet.values()].filter((x) => !sameEntry(this.accepted.get(x.ip), x));
        const gone = [...batchGone].filter((ip) => this.accepted.has(ip));
        void this.hand(set, gone).catch((err: unknown) => this.log.error({ err }, 'cluster ipcache change not applied; listing again'));
      });
      const broken = (err: unknown) => {
        if (generation !== this.generation || this.closed) return;
        this.log.warn({ err }, 'cluster ipcache watch broken (etcd unreachable or compacted); listing again');
        this.later();
      };
      watcher.on('error', broken);
      watcher.on('disconnected', broken);
    } catch (err) {
      if (generation !== this.generation || this.closed) return;
      this.log.warn({ err }, 'cannot list the cluster ipcache; trying again');
      this.later();
    }
  }

  private later(): void {
    clearTimeout(this.retry);
    this.retry = setTimeout(() => void this.run(), RELIST_DELAY_MS).unref();
  }

  /** Hands a difference to the sink, one batch at a time; `accepted` follows what the sink took. */
  private hand(set: readonly RemoteIpcacheEntry[], gone: readonly string[]): Promise<void> {
    if (set.length === 0 && gone.length === 0) return this.queue;
    const sink = this.sink;
    const next = this.queue.then(async () => {
      if (!sink) return;
      try {
        await sink.apply(set, gone);
      } catch (err) {
        // The sink may hold part of it: list again, which hands over everything that differs.
        this.later();
        throw err;
      }
      for (const ip of gone) this.accepted.delete(ip);
      for (const e of set) this.accepted.set(e.ip, e);
    });
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Resolves when every change seen so far reached the sink (for tests and orderly stops). */
  settled(): Promise<void> {
    return this.queue;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.generation++;
    clearTimeout(this.retry);
    this.cancel();
    await this.queue;
  }

  /**
   * Drops the current watch without waiting: etcd3's cancel waits for etcd's answer, which never comes
   * while the connection is down; the generation counter already ignores the old watch's events.
   */
  private cancel(): void {
    const old = this.watcher;
    this.watcher = undefined;
    void old?.cancel().catch(() => undefined);
  }
}

function sameEntry(a: RemoteIpcacheEntry | undefined, b: RemoteIpcacheEntry): boolean {
  return !!a && a.identity === b.identity && a.hostIP === b.hostIP && a.namespace === b.namespace && a.podName === b.podName;
}

function canonical(ip: string): string | undefined {
  try {
    return addressParse(ip).text;
  } catch {
    return undefined;
  }
}

/**
 * The labels of cluster identities other nodes allocated (`id/<n>`, Cilium's label key), formatted as
 * the store keeps identity labels; undefined when the key is absent or not a label key.
 */
export async function remoteIdentityLabels(session: ClusterSession, id: number): Promise<string[] | undefined> {
  const value = await session.client.get(`${IDENTITIES_PREFIX}/id/${id}`).string();
  if (value === null) return undefined;
  const labels = kvstoreLabelsKeyParse(value);
  return labels && [...labels].sort(labelCompare).map(labelFormat);
}
