import type { Logger } from 'pino';
import { addressParse } from '../ipam.js';
import type { WorkloadRecord } from '../store/types.js';
import type { ClusterSession } from './session.js';

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
 */
export class IpcachePublisher {
  /** Key -> the value this node wrote. */
  private readonly mine = new Map<string, string>();

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

  /** Writes (or updates) the workload's entries. */
  async publish(rec: WorkloadRecord): Promise<void> {
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

  /** Deletes the workload's entries where they are still this node's. */
  async withdraw(rec: WorkloadRecord): Promise<void> {
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
