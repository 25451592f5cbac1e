import type { Logger } from 'pino';
import { addressParse } from '../ipam.js';
import type { WorkloadRecord } from '../store/types.js';
import type { ClusterSession } from './session.js';

/** Pause before writing again what etcd did not take, doubling up to the cap while it still does not. */
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30_000;

/** Cilium's ipcache prefix (pkg/ipcache/kvstore.go); `default` is literal (the address space). */
export const IPCACHE_PREFIX = 'cilium/state/ip/v1/default';

/**
 * Cilium's identity.IPIdentityPair as JSON, byte for byte: Go's field order; `Mask` null for a host
 * address; `NamedPorts` left out when empty (omitempty), as Cilium writes it.
 */
export function ipIdentityPairJson(p: {
  ip: string;
  hostIP: string;
  id: number;
  namespace: string;
  podName: string;
  namedPorts?: ReadonlyArray<{ name: string; port: number; protocol: string }>;
}): string {
  return JSON.stringify({
    IP: p.ip,
    Mask: null,
    HostIP: p.hostIP,
    ID: p.id,
    Key: 0,
    Metadata: '',
    K8sNamespace: p.namespace,
    K8sPodName: p.podName,
    ...(p.namedPorts?.length ? { NamedPorts: p.namedPorts.map((n) => ({ Name: n.name, Port: n.port, Protocol: n.protocol })) } : {}),
  });
}

/** The HostIP of an ipcache value, if it is one (values written by others are data, not trusted). */
function hostIpOf(value: string): string | undefined {
  try {
    const v: unknown = JSON.parse(value);
    return v && typeof v === 'object' && typeof (v as { HostIP?: unknown }).HostIP === 'string' ? (v as { HostIP: string }).HostIP : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Publishes this node's workload addresses to the cluster's ipcache in Cilium's layout, under the
 * node lease, so other hosts (and Cilium agents) map them to the workload's identity and to this
 * node. An address another node has published is not overwritten (pools must not overlap between
 * hosts until IPAM is per node): the conflict is logged. Withdrawal deletes only this node's entry.
 *
 * A change etcd does not take (unreachable, no quorum) fails for the caller and is kept: it is written
 * again, with backoff, until etcd takes it or a later change of the workload replaces it, so a
 * workload registered or removed during an outage reaches the other hosts once etcd is back.
 */
export class IpcachePublisher {
  /** Key -> the value this node wrote. */
  private readonly mine = new Map<string, string>();
  /** Per workload (namespace/name), its last change that etcd did not take. */
  private readonly unsettled = new Map<string, { rec: WorkloadRecord; how: 'publish' | 'withdraw' }>();
  /** Per workload, the tail of its chain of changes (a retry never overtakes a later change). */
  private readonly busy = new Map<string, Promise<unknown>>();
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = RETRY_MIN_MS;
  private closed = false;

  constructor(
    private readonly session: ClusterSession,
    private readonly hostIP: string,
    private readonly log: Logger,
  ) {
    session.on('nodeLeaseRenewed', () => void this.republish());
  }

  private entries(rec: WorkloadRecord): Array<[string, string]> {
    return [rec.ipv4, rec.ipv6]
      .filter((a) => a)
      .map((a) => {
        const ip = addressParse(a).text;
        const json = ipIdentityPairJson({ ip, hostIP: this.hostIP, id: rec.identity, namespace: rec.spec.namespace, podName: rec.spec.name, namedPorts: rec.spec.ports });
        return [`${IPCACHE_PREFIX}/${ip}`, json];
      });
  }

  /** Writes (or updates) the workload's entries; when etcd does not take them, again later until it does. */
  publish(rec: WorkloadRecord): Promise<void> {
    return this.change(rec, 'publish');
  }

  /** Deletes the workload's entries where they are still this node's; when etcd does not take it, again later. */
  withdraw(rec: WorkloadRecord): Promise<void> {
    return this.change(rec, 'withdraw');
  }

  /** Stops writing again what etcd did not take (the agent stops). */
  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
  }

  private change(rec: WorkloadRecord, how: 'publish' | 'withdraw'): Promise<void> {
    const id = `${rec.spec.namespace}/${rec.spec.name}`;
    return this.serialised(id, async () => {
      this.unsettled.delete(id);
      try {
        await (how === 'publish' ? this.publishOnce(rec) : this.withdrawOnce(rec));
      } catch (err) {
        this.unsettled.set(id, { rec, how });
        this.retryLater();
        throw err;
      }
    });
  }

  private serialised(id: string, fn: () => Promise<void>): Promise<void> {
    const next = (this.busy.get(id) ?? Promise.resolve()).then(fn, fn);
    const tail = next.catch(() => undefined);
    this.busy.set(id, tail);
    void tail.then(() => {
      if (this.busy.get(id) === tail) this.busy.delete(id);
    });
    return next;
  }

  private retryLater(): void {
    if (this.retryTimer || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.retryUnsettled();
    }, this.retryDelay).unref();
    this.retryDelay = Math.min(RETRY_MAX_MS, this.retryDelay * 2);
  }

  private async retryUnsettled(): Promise<void> {
    let written = 0;
    for (const [id, entry] of [...this.unsettled]) {
      if (this.closed) return;
      await this.serialised(id, async () => {
        if (this.unsettled.get(id) !== entry) return; // replaced by a later change meanwhile
        await (entry.how === 'publish' ? this.publishOnce(entry.rec) : this.withdrawOnce(entry.rec));
        this.unsettled.delete(id);
        written++;
      }).catch((err: unknown) => this.log.debug({ err, workload: id }, 'cluster ipcache change still not taken by etcd; retrying later'));
    }
    if (written > 0) this.log.info({ workloads: written, left: this.unsettled.size }, 'cluster ipcache changes written after etcd did not take them');
    if (this.unsettled.size > 0) this.retryLater();
    else this.retryDelay = RETRY_MIN_MS;
  }

  private async publishOnce(rec: WorkloadRecord): Promise<void> {
    const { client } = this.session;
    const leaseId = await this.session.nodeLeaseId();
    for (const [key, json] of this.entries(rec)) {
      const previous = this.mine.get(key);
      // Create-only, or replace what this node wrote itself.
      const txn = previous === undefined ? client.if(key, 'Create', '==', 0) : client.if(key, 'Value', '==', previous);
      const res = await txn.then(client.put(key).value(json).lease(leaseId)).else(client.get(key)).commit();
      if (res.succeeded) {
        this.mine.set(key, json);
        continue;
      }
      const current = res.responses[0]?.response_range?.kvs[0]?.value.toString('utf8');
      // This node's entry from before a restart (under the old lease): take it over under the new one.
      if (current !== undefined && hostIpOf(current) === this.hostIP) {
        const retake = await client.if(key, 'Value', '==', current).then(client.put(key).value(json).lease(leaseId)).commit();
        if (retake.succeeded) {
          this.mine.set(key, json);
          continue;
        }
      }
      this.log.error({ key, current: current?.slice(0, 200), workload: `${rec.spec.namespace}/${rec.spec.name}` }, 'another node publishes this address in the cluster ipcache; not overwritten (give each host its own pool)');
    }
  }

  private async withdrawOnce(rec: WorkloadRecord): Promise<void> {
    const { client } = this.session;
    for (const [key] of this.entries(rec)) {
      const previous = this.mine.get(key);
      if (previous === undefined) continue;
      await client.if(key, 'Value', '==', previous).then(client.delete().key(key)).commit();
      this.mine.delete(key);
    }
  }

  /** After a new node lease: this node's entries again under it. */
  private async republish(): Promise<void> {
    const leaseId = await this.session.nodeLeaseId().catch(() => undefined);
    if (leaseId === undefined) return;
    for (const [key, json] of this.mine) {
      const res = await this.session.client.if(key, 'Create', '==', 0).then(this.session.client.put(key).value(json).lease(leaseId)).commit().catch(() => undefined);
      if (!res?.succeeded) this.log.warn({ key }, 'cluster ipcache entry not written again under the new lease (taken meanwhile or etcd unreachable)');
    }
  }
}
