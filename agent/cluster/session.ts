import type { Etcd3, Lease } from 'etcd3';
import type { Logger } from 'pino';

/** Cilium's LockLeaseTTL: a crashed holder's locks go after this long. */
export const LOCK_LEASE_TTL_SECONDS = 25;
/** Cilium's default kvstore lease TTL (--kvstore-lease-ttl): a vanished node's keys go after this long. */
export const NODE_LEASE_TTL_SECONDS = 15 * 60;

/**
 * This node's standing in etcd: the lease its node-owned keys (identity `value/` keys, later ipcache
 * and node entries) live under, kept alive while the agent runs, and a separate short lease for locks,
 * as Cilium keeps them. When the agent dies the keys go with the lease.
 */
export class ClusterSession {
  private constructor(
    readonly client: Etcd3,
    readonly nodeLease: Lease,
    readonly lockLease: Lease,
    readonly nodeLeaseId: string,
  ) {}

  static async open(client: Etcd3, log: Logger, nodeLeaseTtlSeconds = NODE_LEASE_TTL_SECONDS): Promise<ClusterSession> {
    const nodeLease = client.lease(nodeLeaseTtlSeconds);
    const lockLease = client.lease(LOCK_LEASE_TTL_SECONDS);
    for (const [what, lease] of [['node', nodeLease], ['lock', lockLease]] as const) {
      // Re-creating a lost lease with all of this node's keys is #14 item 8; until then say it loudly.
      lease.on('lost', (err) => log.error({ err, lease: what }, `etcd ${what} lease lost: this node's keys under it are gone from the cluster`));
    }
    const [nodeLeaseId] = await Promise.all([nodeLease.grant(), lockLease.grant()]);
    return new ClusterSession(client, nodeLease, lockLease, nodeLeaseId);
  }

  /** Stops the keepalives; with `revoke`, deletes this node's leased keys at once (else they expire). */
  async close(opts: { revoke?: boolean } = {}): Promise<void> {
    for (const lease of [this.nodeLease, this.lockLease]) {
      if (opts.revoke) await lease.revoke().catch(() => undefined);
      else lease.release();
    }
    this.client.close();
  }
}
