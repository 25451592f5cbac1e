import { EventEmitter } from 'node:events';
import type { Etcd3, Lease } from 'etcd3';
import type { Logger } from 'pino';

/** Cilium's LockLeaseTTL: a crashed holder's locks go after this long. */
export const LOCK_LEASE_TTL_SECONDS = 25;
/** Cilium's default kvstore lease TTL (--kvstore-lease-ttl): a vanished node's keys go after this long. */
export const NODE_LEASE_TTL_SECONDS = 15 * 60;
/** Pause before granting a lost lease again (etcd may be unreachable: no tight loop). */
const REGRANT_DELAY_MS = 1000;
/** How long close waits for a keepalive's answer before closing anyway (etcd may be unreachable). */
const KEEPALIVE_ANSWER_WAIT_MS = 2000;

/**
 * This node's standing in etcd: the lease its node-owned keys (identity `value/` keys, later ipcache
 * and node entries) live under, kept alive while the agent runs, and a separate short lease for locks,
 * as Cilium keeps them. When the agent dies the keys go with the lease.
 *
 * A lease can be lost while the agent lives (etcd unreachable longer than the TTL, or the event loop
 * blocked that long): it is granted again, and `nodeLeaseRenewed` tells the owners of node keys to
 * write them again under the new one.
 */
export class ClusterSession extends EventEmitter<{ nodeLeaseRenewed: [leaseId: string] }> {
  private nodeLease: Lease;
  private lockLease: Lease;
  private closed = false;
  /** Keepalives a lease sent that etcd has not answered yet: see keepaliveAnswered. */
  private readonly unanswered = new WeakMap<Lease, number>();

  private constructor(
    readonly client: Etcd3,
    private readonly log: Logger,
    private readonly nodeTtl: number,
  ) {
    super();
    this.nodeLease = this.leaseMake('node');
    this.lockLease = this.leaseMake('lock');
  }

  static async open(client: Etcd3, log: Logger, nodeLeaseTtlSeconds = NODE_LEASE_TTL_SECONDS): Promise<ClusterSession> {
    const s = new ClusterSession(client, log, nodeLeaseTtlSeconds);
    try {
      await Promise.all([s.nodeLeaseId(), s.lockLeaseId()]);
    } catch (err) {
      await s.close();
      throw err;
    }
    return s;
  }

  /** The node lease's id (waits for its grant). */
  nodeLeaseId(): Promise<string> {
    return this.nodeLease.grant();
  }

  lockLeaseId(): Promise<string> {
    return this.lockLease.grant();
  }

  private leaseMake(which: 'node' | 'lock'): Lease {
    const lease = this.client.lease(which === 'node' ? this.nodeTtl : LOCK_LEASE_TTL_SECONDS);
    lease.on('keepaliveFired', () => this.unanswered.set(lease, (this.unanswered.get(lease) ?? 0) + 1));
    lease.on('keepaliveSucceeded', () => this.unanswered.set(lease, 0));
    lease.on('keepaliveFailed', () => this.unanswered.set(lease, 0));
    lease.on('lost', (err) => {
      if (this.closed) return;
      this.log.warn({ err, lease: which }, `etcd ${which} lease lost; granting a new one`);
      setTimeout(() => {
        if (this.closed) return;
        const next = this.leaseMake(which);
        if (which === 'lock') {
          this.lockLease = next;
          return;
        }
        this.nodeLease = next;
        next.grant().then(
          (id) => this.emit('nodeLeaseRenewed', id),
          () => undefined, // lost again: the next 'lost' retries
        );
      }, REGRANT_DELAY_MS).unref();
    });
    return lease;
  }

  /** Stops the keepalives; with `revoke`, deletes this node's leased keys at once (else they expire). */
  async close(opts: { revoke?: boolean } = {}): Promise<void> {
    this.closed = true;
    for (const lease of [this.nodeLease, this.lockLease]) {
      await this.keepaliveAnswered(lease);
      if (opts.revoke) await lease.revoke().catch(() => undefined);
      else lease.release();
    }
    this.client.close();
  }

  /**
   * Waits (briefly) for the answer to a keepalive in flight. etcd3 re-arms a lease's keepalive
   * timeout, a timer of the lease's TTL (15 minutes for the node lease), whenever an answer arrives,
   * even one arriving after the lease was closed: closed between a keepalive and its answer, the
   * lease would hold the process open that long. Once the client is closed no answer arrives.
   */
  private async keepaliveAnswered(lease: Lease): Promise<void> {
    if (!this.unanswered.get(lease)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        lease.off('keepaliveSucceeded', done).off('keepaliveFailed', done);
        resolve();
      };
      const timer = setTimeout(done, KEEPALIVE_ANSWER_WAIT_MS).unref();
      lease.on('keepaliveSucceeded', done).on('keepaliveFailed', done);
    });
  }
}
