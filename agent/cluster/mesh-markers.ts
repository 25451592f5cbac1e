import type { Logger } from 'pino';
import type { ClusterSession } from './session.js';

/**
 * The keys a Cilium agent reads before it takes a remote cluster (pkg/kvstore, pkg/clustermesh): the
 * cluster's config, a sync canary per state prefix, and the heartbeat. With them a kitnet cluster's
 * etcd can be added to a Cilium ClusterMesh like another Cilium cluster's.
 */
export const HEARTBEAT_KEY = 'cilium/.heartbeat';

/** The state prefixes a reader waits for (each gets its canary once this node wrote all of its share). */
export const SYNCED_PREFIXES = {
  nodes: 'cilium/state/nodes/v1',
  identities: 'cilium/state/identities/v1',
  ip: 'cilium/state/ip/v1',
} as const;
export type SyncedPrefix = keyof typeof SYNCED_PREFIXES;

export const clusterConfigKey = (cluster: string): string => `cilium/cluster-config/${cluster}`;
export const syncedKey = (cluster: string, prefix: SyncedPrefix): string => `cilium/synced/${cluster}/${SYNCED_PREFIXES[prefix]}`;

/**
 * Cilium's CiliumClusterConfig as JSON: the id, and the capabilities that tell a reader to wait for the
 * sync canaries (else it takes a partial listing as complete) and how many clusters a mesh may hold.
 */
export function clusterConfigJson(id: number): string {
  return JSON.stringify({ id, capabilities: { syncedCanaries: true, maxConnectedClusters: 255 } });
}

/** Go's time.RFC3339 in UTC, whole seconds: what Cilium writes into the heartbeat and the canaries. */
export function kvstoreTimestamp(at = new Date()): string {
  return at.toISOString().replace(/\.\d+Z$/, 'Z');
}

/** A heartbeat or canary value back to a time; undefined when it is not one (written by someone else). */
export function kvstoreTimestampParse(value: string): Date | undefined {
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(value)) return undefined;
  const t = new Date(value);
  return Number.isNaN(t.getTime()) ? undefined : t;
}

/**
 * Writes the cluster config at once, the canaries when the agent says a prefix is complete, and the
 * heartbeat every `heartbeatMs`, all under this node's lease as Cilium's agents do. Every kitnet node
 * writes them (the same values): when one node goes, its lease takes its copies with it and the next
 * tick of another node writes them again (config and canaries are only written where missing or
 * different, the heartbeat always).
 */
export class MeshMarkers {
  private readonly canaries = new Map<SyncedPrefix, string>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private writing: Promise<void> | undefined;
  /** A tick came while a write was under way (a canary to add): write once more after it. */
  private again = false;
  /** When this node last wrote the heartbeat (undefined: not yet, or every write failed). */
  lastHeartbeat: Date | undefined;
  /** Ticks whose writes failed (etcd unreachable): logged, retried by the next tick. */
  failures = 0;

  constructor(
    private readonly session: ClusterSession,
    private readonly cluster: { name: string; id: number; heartbeatMs: number },
    private readonly log: Logger,
  ) {
    session.on('nodeLeaseRenewed', () => void this.tick());
  }

  /** Writes the cluster config and the first heartbeat, then keeps the heartbeat going. */
  async start(): Promise<void> {
    await this.write();
    this.timer = setInterval(() => void this.tick(), this.cluster.heartbeatMs).unref();
  }

  /** The canaries written so far, by prefix (for status). */
  synced(): ReadonlyMap<SyncedPrefix, string> {
    return this.canaries;
  }

  /**
   * This node's share of `prefix` is in etcd: its canary is written (once; later calls keep the first
   * time). A failure is logged and the next heartbeat tick writes it.
   */
  async markSynced(prefix: SyncedPrefix): Promise<void> {
    if (this.closed || this.canaries.has(prefix)) return;
    this.canaries.set(prefix, kvstoreTimestamp());
    await this.tick();
  }

  private async tick(): Promise<void> {
    if (this.closed) return;
    // One write at a time: with etcd slow or away, ticks do not pile up behind the call deadline.
    if (this.writing) {
      this.again = true;
      return this.writing;
    }
    this.writing = (async () => {
      do {
        this.again = false;
        try {
          await this.write();
        } catch (err) {
          this.failures++;
          this.log.warn({ err, cluster: this.cluster.name }, 'cannot write the ClusterMesh heartbeat, config or sync canaries; the next tick retries');
        }
      } while (this.again && !this.closed);
    })().finally(() => (this.writing = undefined));
    return this.writing;
  }

  private async write(): Promise<void> {
    const { client } = this.session;
    const lease = await this.session.nodeLeaseId();
    const config = clusterConfigKey(this.cluster.name);
    const json = clusterConfigJson(this.cluster.id);
    await client.if(config, 'Value', '==', json).else(client.put(config).value(json).lease(lease)).commit();
    for (const [prefix, at] of this.canaries) {
      const key = syncedKey(this.cluster.name, prefix);
      await client.if(key, 'Create', '==', 0).then(client.put(key).value(at).lease(lease)).commit();
    }
    const now = new Date();
    await client.put(HEARTBEAT_KEY).value(kvstoreTimestamp(now)).lease(lease).exec();
    this.lastHeartbeat = now;
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
  }
}
