import type { Logger } from 'pino';
import { addressParse } from '../ipam.js';
import type { IpcacheLocalView } from '../policy/ipcache-sync.js';
import type { IpcacheWatchSink, RemoteIpcacheEntry } from './ipcache-watcher.js';

/** What the remote ipcache writes into: the BPF ipcache and the policy universe, under the agent's mutex. */
export interface RemoteIpcacheTarget {
  /** Runs `fn` under the agent's mutex (the lock of every change of desired state). */
  exclusive<T>(fn: () => Promise<T>): Promise<T>;
  /**
   * This host's part of the ipcache right now (agent/policy/ipcache-sync.ts, the same view its sync
   * writes by): keys it owns (its workloads' addresses, its destinations) a remote entry never takes;
   * what it wishes at a key (a policy CIDR's identity) is written back when the remote entry there goes.
   */
  local(): IpcacheLocalView;
  ipcacheUpsert(cidr: string, entry: { identity: number; hostId: number }): void;
  ipcacheDelete(cidr: string): void;
  /** Host entries of other nodes in the BPF ipcache (host field not 0), e.g. left by the previous run. */
  ipcacheRemoteList(): Array<[cidr: string, identity: number, hostId?: number]>;
  /**
   * The table of who holds each address when several sources share the BPF ipcache, and this
   * source's place in it (rank 0: this cluster, which wins over peers, rank 1). Without one the
   * source is alone.
   */
  owners?: { table: IpcacheOwners; rank: number; name: string };
  /**
   * The labels of a cluster identity (`id/<n>`), undefined when etcd has none or they do not parse,
   * a reason when they are refused (clusterLabelsProblem).
   */
  identityLabels(id: number): Promise<string[] | { reason: string } | undefined>;
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
 * An identity whose labels were missing or refused is not read again for this long: any writer of the
 * etcd can name thousands of them, and each would cost an etcd read at every list.
 */
const REFUSED_IDENTITY_TTL_MS = 60_000;
/** Identities named in one refusal warning (the rest are counted). */
const REFUSED_LOGGED_MAX = 5;

type IpcacheValue = { identity: number; hostId: number };
interface Claim {
  source: object;
  name: string;
  rank: number;
  seq: number;
  value: IpcacheValue;
}

/**
 * One BPF ipcache, several remote sources (this cluster, each peer cluster): one holder per address.
 * A source claims the addresses it accepted; the holder is the claim of the lowest rank (this
 * cluster's before a peer's) and, within a rank, the first made. Only the holder's value is in the
 * map; a source withdrawing its claim never removes another's entry: the next claim takes over, or
 * the entry goes when none is left.
 */
export class IpcacheOwners {
  private readonly claims = new Map<string, Claim[]>();
  private seq = 0;

  /** The source whose value the map holds for an address. */
  holder(ip: string): object | undefined {
    return this.claims.get(ip)?.[0]?.source;
  }

  /**
   * A source's claim, new or changed: `write` when its value is to be written (it holds the address),
   * with `displaced` naming a holder it took the address from; `heldBy` when another keeps it.
   */
  claim(ip: string, source: object, rank: number, name: string, value: IpcacheValue): { write?: IpcacheValue; displaced?: string; heldBy?: string } {
    const list = this.claims.get(ip) ?? [];
    const before = list[0];
    const mine = list.find((c) => c.source === source);
    if (mine) mine.value = value;
    else list.push({ source, name, rank, seq: ++this.seq, value });
    list.sort((a, b) => a.rank - b.rank || a.seq - b.seq);
    this.claims.set(ip, list);
    const now = list[0]!;
    if (now.source !== source) return { heldBy: now.name };
    // Written even when unchanged: a claim handed over again may be one whose write failed.
    return before && before.source !== source ? { write: value, displaced: before.name } : { write: value };
  }

  /** A source's claim withdrawn: the next claim's value to write, or the entry to delete (only when it held it). */
  release(ip: string, source: object): { write?: IpcacheValue; to?: string; remove?: true } {
    const list = this.claims.get(ip);
    const i = list?.findIndex((c) => c.source === source) ?? -1;
    if (!list || i < 0) return {};
    list.splice(i, 1);
    if (list.length === 0) this.claims.delete(ip);
    if (i !== 0) return {};
    return list[0] ? { write: list[0].value, to: list[0].name } : { remove: true };
  }
}

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
  /** Identities refused or without labels, until when (performance.now()) they are not read again. */
  private readonly refused = new Map<number, number>();
  /** What a flow names for a remote address: its workload (namespace, pod name); labels come from `known`. */
  private readonly peers = new Map<string, { identity: number; namespace: string; podName: string }>();

  /** Who holds each address of the shared map, and this source's rank and name there. */
  private readonly owners: NonNullable<RemoteIpcacheTarget['owners']>;

  constructor(
    private readonly target: RemoteIpcacheTarget,
    private readonly log: Logger,
  ) {
    this.owners = target.owners ?? { table: new IpcacheOwners(), rank: 0, name: 'this source' };
  }

  private holds(ip: string): boolean {
    return this.owners.table.holder(ip) === this;
  }

  /**
   * Takes over the remote entries the BPF ipcache holds from before (pinned maps outlive the agent):
   * returns their addresses, for the first list to remove those no longer in etcd.
   */
  adopt(): string[] {
    const out: string[] = [];
    for (const [cidr, identity, hostId = 1] of this.target.ipcacheRemoteList()) {
      const slash = cidr.indexOf('/');
      const ip = cidr.slice(0, slash);
      if (cidr.slice(slash + 1) !== (ip.includes(':') ? '128' : '32') || this.written.has(ip)) continue;
      const held = this.owners.table.holder(ip);
      if (held && held !== this) continue;
      this.owners.table.claim(ip, this, this.owners.rank, this.owners.name, { identity, hostId });
      this.written.set(ip, identity);
      this.refs.set(identity, (this.refs.get(identity) ?? 0) + 1);
      out.push(ip);
    }
    return out;
  }

  /** The identity of a remote address, if this host maps one from this source. */
  identityOf(ip: string): number | undefined {
    return this.holds(ip) ? this.written.get(ip) : undefined;
  }

  /** Addresses this source holds in the map (not those another source holds). */
  size(): number {
    let n = 0;
    for (const ip of this.written.keys()) if (this.holds(ip)) n++;
    return n;
  }

  /** The remote workload at an address, as flows name it; undefined when this host maps none from this source. */
  peerOf(ip: string): { identity: number; namespace: string; podName: string; labels: readonly string[] } | undefined {
    const p = this.holds(ip) ? this.peers.get(ip) : undefined;
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

  async apply(set: readonly RemoteIpcacheEntry[], gone: readonly string[]): Promise<void> {
    // The labels of new identities are read before the agent's mutex is taken: etcd reads (thousands,
    // when a hostile writer names that many identities) must not hold every registration meanwhile.
    const now = performance.now();
    const read = new Map<number, string[] | { reason: string } | undefined | 'failed'>();
    for (const id of new Set(set.map((e) => e.identity))) {
      if (this.known.has(id) || (this.refused.get(id) ?? 0) > now) continue;
      read.set(id, await this.target.identityLabels(id).catch((err: unknown) => {
        this.log.warn({ err, identity: id }, 'cannot read a remote identity\'s labels; policies do not select it until the next list');
        return 'failed' as const;
      }));
    }
    return this.target.exclusive(async () => {
      const local = this.target.local();
      // Identities first: an entry naming an identity never reaches the datapath before its rules.
      const joining = new Map<number, readonly string[] | undefined>();
      const ignored: Array<{ identity: number; reason: string }> = [];
      for (const [id, labels] of read) {
        if (labels === 'failed' || this.known.has(id)) continue;
        const reason = !labels
          ? 'no label key in etcd (or not one in Cilium\'s format)'
          : !Array.isArray(labels)
            ? labels.reason
            : labels.some((l) => l.startsWith('reserved:'))
              ? `reserved labels (${labels.filter((l) => l.startsWith('reserved:')).join(', ')})`
              : undefined;
        if (reason) {
          this.identitiesIgnored++;
          this.refused.set(id, now + REFUSED_IDENTITY_TTL_MS);
          ignored.push({ identity: id, reason });
          continue;
        }
        joining.set(id, labels as string[]);
      }
      if (ignored.length) {
        this.log.warn({ count: ignored.length, first: ignored.slice(0, REFUSED_LOGGED_MAX) },
          `${ignored.length} remote identities ignored (policies do not select them by labels); not read again for ${REFUSED_IDENTITY_TTL_MS / 1000} s`);
      }
      for (const [id, until] of this.refused) if (until <= now) this.refused.delete(id);
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
        if (local.owns(hostCidr(e.ip))) {
          this.log.warn({ ip: e.ip, hostIP: e.hostIP, identity: e.identity }, 'another node claims an address this host owns (a workload\'s or the host\'s own); ignored');
          // A claim taken before this host owned the address holds nothing now (the sync wrote over it).
          if (this.written.has(e.ip)) {
            drop(e.ip);
            this.owners.table.release(e.ip, this);
          }
          continue;
        }
        drop(e.ip);
        const claim = this.owners.table.claim(e.ip, this, this.owners.rank, this.owners.name, { identity: e.identity, hostId: remoteHostId(e.hostIP) });
        try {
          if (claim.write) this.target.ipcacheUpsert(hostCidr(e.ip), claim.write);
        } catch (err) {
          // Not taken (a full map): no claim stays behind to shadow another source's entry.
          this.owners.table.release(e.ip, this);
          throw err;
        }
        if (claim.displaced) this.log.warn({ ip: e.ip, hostIP: e.hostIP, identity: e.identity, from: claim.displaced }, `address held by ${claim.displaced} taken over by ${this.owners.name}: this cluster's entries win over a peer cluster's`);
        if (claim.heldBy) this.log.warn({ ip: e.ip, hostIP: e.hostIP, identity: e.identity, heldBy: claim.heldBy }, `address already held by ${claim.heldBy}: the entry of ${this.owners.name} is not mapped while it holds it`);
        this.written.set(e.ip, e.identity);
        this.peers.set(e.ip, { identity: e.identity, namespace: e.namespace, podName: e.podName });
        this.refs.set(e.identity, (this.refs.get(e.identity) ?? 0) + 1);
      }
      for (const ip of gone) {
        if (!this.written.has(ip)) continue;
        drop(ip);
        // Only the holder's withdrawal touches the map: the next claim's value, or the entry goes.
        const next = this.owners.table.release(ip, this);
        if (local.owns(hostCidr(ip))) continue;
        if (next.write) {
          this.target.ipcacheUpsert(hostCidr(ip), next.write);
          this.log.info({ ip, to: next.to }, `address withdrawn by ${this.owners.name}; ${next.to ?? 'the next source'} holds it now`);
        } else if (next.remove) {
          // This host's wish for the key (a policy's toCIDR /32) comes back; the sync left it to the remote entry.
          const wish = local.wish(hostCidr(ip));
          if (wish === undefined) this.target.ipcacheDelete(hostCidr(ip));
          else this.target.ipcacheUpsert(hostCidr(ip), { identity: wish, hostId: 0 });
        }
      }
      const leaving = new Map<number, undefined>();
      // Every known identity no address refers to (also those a failed earlier batch left behind).
      for (const id of this.known.keys()) if (!this.refs.has(id)) leaving.set(id, undefined);
      if (leaving.size) await this.target.remoteIdentitiesUpdate(leaving);
      for (const id of leaving.keys()) this.known.delete(id);
    });
  }
}
