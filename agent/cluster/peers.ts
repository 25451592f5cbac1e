import type { Etcd3 } from 'etcd3';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { EtcdTlsPrepared } from '../config-preflight.js';
import type { Cidr } from '../ipam.js';
import { etcdClientCreate } from './etcd-client.js';
import { clusterIdentityRange, type IdentityRange } from './identity-range.js';
import { IpcacheWatcher, specialOverlap, type NodeBinding } from './ipcache-watcher.js';
import { cidrOverlaps } from './node-cidr.js';
import { HEARTBEAT_KEY, kvstoreTimestampParse } from './mesh-markers.js';
import { ID_PREFIX, NODES_PREFIX, nodeSummaryParse, peerIdentityJudge, peerNodeBindingParse, type NodeSummary } from './peer-formats.js';
import { PrefixMirror, type MirrorState } from './prefix-mirror.js';
import { RemoteIpcache, type RemoteIpcacheTarget } from './remote-ipcache.js';
import type { HostAddressTest } from './host-addresses.js';

export type PeerConfig = NonNullable<Config['cluster']>['peers'][number];

/** How long a status read waits for a peer's etcd. */
const STATUS_DEADLINE_MS = 2000;

export interface PeerStatus {
  name: string;
  id: number;
  endpoints: string[];
  /** synced: every prefix listed and watched; unreachable: its etcd does not answer (entries kept); connecting: first list under way. */
  state: MirrorState;
  lastError: string | null;
  /** The peer's `cilium/.heartbeat` (its agents write it every minute), when readable. */
  heartbeat: { at: string; ageSeconds: number } | null;
  identities: number;
  ipcacheEntries: number;
  /** Entries refused: out-of-range or malformed identities, bad ipcache values, addresses of this cluster's pools or this host's. */
  ignored: { identities: number; ipcache: number; nodes: number };
  nodes: NodeSummary[];
}

/** What the agent hands a peer: its own node address, the cluster's pools, its addresses, and where remote entries go. */
export interface PeerContext {
  nodeIP: string;
  /** This cluster's pools: a peer never holds an address in them. */
  clusterPools: readonly Cidr[];
  /** This host's own addresses: never a peer's. */
  hostAddresses: () => HostAddressTest;
  /** The agent's ipcache and policy target, with a peer's identity labels and its range (for adoption). */
  target(identityLabels: RemoteIpcacheTarget['identityLabels'], range: IdentityRange, name: string): RemoteIpcacheTarget;
}

/**
 * A Cilium cluster read read-only, the way Cilium agents read a ClusterMesh peer: its identities
 * (`id/` keys), pod addresses (ipcache) and nodes. Accepted pods become ipcache entries and identities
 * in this host's policy universe, selected by their labels (with the peer's cluster label). Nothing is
 * ever written to the peer's etcd. When the peer's etcd goes away its entries stay as they were; when it
 * answers again every prefix is listed afresh and the difference applied.
 */
export class PeerCluster {
  readonly name: string;
  readonly range: IdentityRange;
  private readonly client: Etcd3;
  private readonly identities: PrefixMirror;
  private readonly nodes: PrefixMirror;
  /** Accepted identity labels by number. */
  private readonly labels = new Map<number, string[]>();
  private readonly watcher: IpcacheWatcher;
  readonly ipcache: RemoteIpcache;
  identitiesIgnored = 0;
  nodesIgnored = 0;
  /** The peer's accepted nodes by key, which its ipcache entries are bound to. */
  private readonly bindings = new Map<string, NodeBinding>();
  private readonly nodesListeners = new Set<() => void>();

  constructor(
    private readonly config: PeerConfig,
    tls: EtcdTlsPrepared | undefined,
    ctx: PeerContext,
    private readonly log: Logger,
  ) {
    this.name = config.name;
    this.range = clusterIdentityRange(config.id);
    this.client = etcdClientCreate(config.etcd, tls);
    this.identities = new PrefixMirror(this.client, ID_PREFIX, log, (key, value) => this.identityChanged(key, value));
    this.nodes = new PrefixMirror(this.client, `${NODES_PREFIX}/${config.name}/`, log, (key, value) => {
      this.bindings.delete(key);
      for (const fn of this.nodesListeners) fn();
      if (value === undefined) return;
      const node = peerNodeBindingParse(key, value, { clusterPools: ctx.clusterPools, specialOverlap, overlaps: cidrOverlaps });
      if ('reason' in node) {
        this.nodesIgnored++;
        this.log.warn({ peer: this.name, key: key.slice(0, 200), reason: node.reason }, 'peer cluster node ignored');
        return;
      }
      this.bindings.set(key, node);
    });
    // A peer's entry is bound to the peer's node its HostIP names and to that node's pod CIDRs: an
    // address outside every pod CIDR the peer publishes (8.8.8.8) is never a peer pod's.
    this.watcher = new IpcacheWatcher(
      { client: this.client },
      {
        nodeIP: ctx.nodeIP,
        range: this.range,
        localPools: ctx.clusterPools,
        peer: config.name,
        hostAddresses: ctx.hostAddresses,
        nodes: () => [...this.bindings.values()],
        nodesChanged: (fn) => (this.nodesListeners.add(fn), () => void this.nodesListeners.delete(fn)),
      },
      log.child({ peer: config.name }),
    );
    this.ipcache = new RemoteIpcache(ctx.target((id) => this.labelsOf(id), this.range, `peer cluster ${config.name}`), log.child({ peer: config.name }));
  }

  private identityChanged(key: string, value: string | undefined): void {
    const id = Number(key.slice(ID_PREFIX.length));
    if (value === undefined) {
      this.labels.delete(id);
      return;
    }
    const verdict = peerIdentityJudge(key, value, { name: this.name, range: this.range });
    if ('reason' in verdict) {
      this.labels.delete(id);
      this.identitiesIgnored++;
      this.log.warn({ peer: this.name, key: key.slice(0, 200), value: value.slice(0, 200), reason: verdict.reason }, 'peer cluster identity ignored');
      return;
    }
    this.labels.set(verdict.id, verdict.labels);
  }

  /** A peer identity's labels: from the watched `id/` keys, else read at once (an address may come first). */
  private async labelsOf(id: number): Promise<string[] | { reason: string } | undefined> {
    const known = this.labels.get(id);
    if (known) return known;
    const key = `${ID_PREFIX}${id}`;
    const value = await this.client.get(key).string();
    if (value === null) return undefined;
    const verdict = peerIdentityJudge(key, value, { name: this.name, range: this.range });
    return 'labels' in verdict ? verdict.labels : { reason: verdict.reason };
  }

  /** Lists identities and nodes, then the ipcache (its entries need the identities' labels). */
  async start(): Promise<void> {
    await Promise.all([this.identities.start(), this.nodes.start()]);
    await this.watcher.start(this.ipcache, this.ipcache.adopt());
    this.log.info({ peer: this.name, identities: this.labels.size, ipcacheEntries: this.ipcache.size(), state: this.identities.state }, 'peer cluster followed');
  }

  /** Remote entries and ignored values, for metrics. */
  counts(): { remote: number; ignored: number } {
    return { remote: this.ipcache.size(), ignored: this.identitiesIgnored + this.nodesIgnored + this.watcher.ignored + this.ipcache.identitiesIgnored };
  }

  async status(): Promise<PeerStatus> {
    let heartbeat: PeerStatus['heartbeat'] = null;
    let reachable = true;
    let lastError: string | null = this.identities.lastError ?? this.nodes.lastError ?? null;
    try {
      const value = await this.client.get(HEARTBEAT_KEY).options({ deadline: Date.now() + STATUS_DEADLINE_MS }).string();
      const at = value === null ? undefined : kvstoreTimestampParse(value);
      if (at) heartbeat = { at: at.toISOString(), ageSeconds: Math.max(0, Math.round((Date.now() - at.getTime()) / 1000)) };
    } catch (err) {
      reachable = false;
      lastError = (err as Error).message;
    }
    const states = [this.identities.state, this.nodes.state];
    const state: MirrorState = !reachable || states.includes('unreachable') ? 'unreachable' : states.every((s) => s === 'synced') ? 'synced' : 'connecting';
    const nodes: NodeSummary[] = [];
    for (const [key, value] of this.nodes.entries()) {
      const n = nodeSummaryParse(key, value);
      if (!('reason' in n)) nodes.push(n);
    }
    return {
      name: this.name,
      id: this.config.id,
      endpoints: this.config.etcd.endpoints,
      state,
      lastError,
      heartbeat,
      identities: this.labels.size,
      ipcacheEntries: this.ipcache.size(),
      ignored: { identities: this.identitiesIgnored, ipcache: this.watcher.ignored + this.ipcache.identitiesIgnored, nodes: this.nodesIgnored },
      nodes: nodes.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)),
    };
  }

  async close(): Promise<void> {
    await Promise.all([this.identities.close(), this.nodes.close(), this.watcher.close()]);
    this.client.close();
  }
}
