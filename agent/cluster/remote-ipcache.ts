import type { Logger } from 'pino';
import { addressParse } from '../ipam.js';
import type { IpcacheWatchSink, RemoteIpcacheEntry } from './ipcache-watcher.js';

/** What the remote ipcache writes into: the BPF ipcache and the policy universe, under the agent's mutex. */
export interface RemoteIpcacheTarget {
  /** Runs `fn` under the agent's mutex (the lock of every change of desired state). */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  /** Addresses of this host's workloads right now (never overwritten by a remote entry). */
  localAddresses(): ReadonlySet<string>;
  ipcacheUpsert(cidr: string, entry: { identity: number; hostId: number }): void;
  ipcacheDelete(cidr: string): void;
  /** Host entries of other nodes in the BPF ipcache (host field not 0), e.g. left by the previous run. */
  ipcacheRemoteList(): Array<[cidr: string, identity: number]>;
  /** The labels of a cluster identity (`id/<n>`), undefined when etcd has none or they do not parse. */
  identityLabels(id: number): Promise<string[] | undefined>;
  /** Identities joining (labels) or leaving (undefined) the policy universe. */
  remoteIdentitiesUpdate(changes: ReadonlyMap<number, readonly string[] | undefined>): Promise<unknown>;
}

/**
 * The ipcache value's host field for a remote node: its IPv4 address as a number, or for an IPv6 node
 * a hash of it (the datapath only tells local (0) from remote; the number names the node in dumps).
 */
export function remoteHostId(hostIP: string): number {
  const a = addressParse(hostIP);
  if (a.family === 4) return Number(a.value) || 1;
  let h = 0x811c9dc5;
  for (const c of a.text) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h || 1;
}

const hostCidr = (ip: string) => `${ip}/${ip.includes(':') ? 128 : 32}`;

/**
 * Other nodes' workload addresses in this host's BPF ipcache, and their identities in the policy
 * universe. An identity joins when the first address referring to it comes and leaves with the last;
 * its labels come from the identity's master key. Identities whose labels claim the `reserved` source
 * are not taken (a remote writer could otherwise pose as this host's reserved identities).
 */
export class RemoteIpcache implements IpcacheWatchSink {
  /** Remote address -> identity, as written into the BPF ipcache. */
  private readonly written = new Map<string, number>();
  /** Identity -> how many remote addresses refer to it. */
  private readonly refs = new Map<number, number>();
  /** Identities whose labels are in the policy universe, with those labels (flows name them). */
  private readonly known = new Map<number, string[]>();
  /** Identity labels refused or missing (counted, logged). */
  identitiesIgnored = 0;
  /** What a flow names for a remote address: its workload (namespace, pod name); labels come from `known`. */
  private readonly peers = new Map<string, { identity: number; namespace: string; podName: string }>();

  constructor(
    private readonly target: RemoteIpcacheTarget,
    private readonly log: Logger,
  ) {}

  /**
   * Takes over the remote entries the BPF ipcache holds from before (pinned maps outlive the agent):
   * returns their addresses, for the first list to remove those no longer in etcd.
   */
  adopt(): string[] {
    const out: string[] = [];
    for (const [cidr, identity] of this.target.ipcacheRemoteList()) {
      const slash = cidr.indexOf('/');
      const ip = cidr.slice(0, slash);
      if (cidr.slice(slash + 1) !== (ip.includes(':') ? '128' : '32') || this.written.has(ip)) continue;
      this.written.set(ip, identity);
      this.refs.set(identity, (this.refs.get(identity) ?? 0) + 1);
      out.push(ip);
    }
    return out;
  }

  /** The identity of a remote address, if this host maps one. */
  identityOf(ip: string): number | undefined {
    return this.written.get(ip);
  }

  size(): number {
    return this.written.size;
  }

  /** The remote workload at an address, as flows name it; undefined when this host maps none. */
  peerOf(ip: string): { identity: number; namespace: string; podName: string; labels: readonly string[] } | undefined {
    const p = this.peers.get(ip);
    return p && { ...p, labels: this.known.get(p.identity) ?? [] };
  }

  /** A remote identity's labels, while addresses refer to it. */
  labelsOf(id: number): string[] | undefined {
    return this.known.get(id);
  }

  /** Remote identities in the policy universe. */
  identityCount(): number {
    return this.known.size;
  }

  apply(set: readonly RemoteIpcacheEntry[], gone: readonly string[]): Promise<void> {
    return this.target.exclusive(async () => {
      const local = this.target.localAddresses();
      // Identities first: an entry naming an identity never reaches the datapath before its rules.
      const fresh = [...new Set(set.map((e) => e.identity))].filter((id) => !this.known.has(id));
      const joining = new Map<number, readonly string[] | undefined>();
      for (const id of fresh) {
        const labels = await this.target.identityLabels(id).catch((err: unknown) => {
          this.log.warn({ err, identity: id }, 'cannot read a remote identity\'s labels; policies do not select it until the next list');
          return undefined;
        });
        if (!labels || labels.some((l) => l.startsWith('reserved:'))) {
          this.identitiesIgnored++;
          if (labels) this.log.warn({ identity: id, labels }, 'remote identity with reserved labels ignored');
          else this.log.warn({ identity: id }, 'remote identity has no label key in etcd (or not one in Cilium\'s format); policies do not select it by labels');
          continue;
        }
        joining.set(id, labels);
      }
      // Known only once the policy took them (a failed write is handed over again by a new list).
      if (joining.size) await this.target.remoteIdentitiesUpdate(joining);
      for (const [id, labels] of joining) this.known.set(id, [...(labels ?? [])]);
      const drop = (ip: string) => {
        const id = this.written.get(ip);
        if (id === undefined) return;
        this.written.delete(ip);
        this.peers.delete(ip);
        const n = (this.refs.get(id) ?? 1) - 1;
        if (n > 0) this.refs.set(id, n);
        else this.refs.delete(id);
      };
      for (const e of set) {
        if (local.has(e.ip)) {
          this.log.warn({ ip: e.ip, hostIP: e.hostIP, identity: e.identity }, 'another node claims an address of this host\'s workload; ignored');
          continue;
        }
        drop(e.ip);
        this.target.ipcacheUpsert(hostCidr(e.ip), { identity: e.identity, hostId: remoteHostId(e.hostIP) });
        this.written.set(e.ip, e.identity);
        this.peers.set(e.ip, { identity: e.identity, namespace: e.namespace, podName: e.podName });
        this.refs.set(e.identity, (this.refs.get(e.identity) ?? 0) + 1);
      }
      for (const ip of gone) {
        if (!this.written.has(ip)) continue;
        drop(ip);
        if (!local.has(ip)) this.target.ipcacheDelete(hostCidr(ip));
      }
      const leaving = new Map<number, undefined>();
      // Every known identity no address refers to (also those a failed earlier batch left behind).
      for (const id of this.known.keys()) if (!this.refs.has(id)) leaving.set(id, undefined);
      if (leaving.size) await this.target.remoteIdentitiesUpdate(leaving);
      for (const id of leaving.keys()) this.known.delete(id);
    });
  }
}
