import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { addressParse, cidrContains, cidrParse, type Cidr } from '../ipam.js';
import { cidrOverlaps, cidrWithin } from './node-cidr.js';
import type { ClusterSession } from './session.js';
import { jsonObjectParse } from './json-value.js';
import { PrefixFollower, type KeyMeta, type PrefixChange, type PrefixSink } from './prefix-follower.js';

/** Cilium's node prefix (pkg/node/store): `<prefix>/<cluster>/<node name>`. */
export const NODES_PREFIX = 'cilium/state/nodes/v1';
/**
 * This node's entry overwritten (or deleted) by someone else is written again at once; more than this
 * many times within the window (two hosts under one nodeName, or a hostile writer in a loop), at most
 * once per REWRITE_SLOW_MS, so two writers do not trade writes at etcd's speed.
 */
const REWRITE_BURST = 5;
const REWRITE_WINDOW_MS = 10_000;
const REWRITE_SLOW_MS = 1000;
/** A node entry is a few hundred bytes; anything far larger is not one (and is not parsed). */
export const NODE_VALUE_MAX_BYTES = 16 * 1024;
/** A Kubernetes node name (DNS subdomain), as Cilium's node names are: also safe as a key segment. */
const NODE_NAME_RE = /^[a-zA-Z0-9]([-a-zA-Z0-9._]{0,251}[a-zA-Z0-9])?$/;

export function nodeNameProblem(name: string): string | undefined {
  return NODE_NAME_RE.test(name) ? undefined : `"${name.slice(0, 80)}" is not a node name: letters, digits, "-", "." and "_", starting and ending with a letter or digit, at most 253 characters`;
}

const BITS = { 4: 32, 6: 128 } as const;

/** Go's net.IPNet as JSON: the IP as text and the mask as bytes, base64 (Cilium's cidr.CIDR). */
function ipNetJson(c: Cidr | undefined): { IP: string; Mask: string } | null {
  if (!c) return null;
  const bytes = BITS[c.family] / 8;
  const mask = Buffer.alloc(bytes);
  for (let i = 0; i < c.prefixLength; i++) mask[i >> 3]! |= 0x80 >> (i & 7);
  return { IP: c.text.split('/')[0]!, Mask: mask.toString('base64') };
}

/** The inverse, for values written by anyone: undefined unless a well-formed network with a contiguous mask. */
function ipNetParse(v: unknown): Cidr | undefined | 'bad' {
  if (v === null || v === undefined) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) return 'bad';
  const { IP, Mask } = v as { IP?: unknown; Mask?: unknown };
  if (typeof IP !== 'string' || typeof Mask !== 'string' || Mask.length > 32) return 'bad';
  let ip;
  try {
    ip = addressParse(IP);
  } catch {
    return 'bad';
  }
  const mask = Buffer.from(Mask, 'base64');
  if (mask.length !== BITS[ip.family] / 8) return 'bad';
  const bits = [...mask].map((b) => b.toString(2).padStart(8, '0')).join('');
  if (!/^1*0*$/.test(bits)) return 'bad';
  const cidr = cidrParse(`${ip.text}/${bits.indexOf('0') === -1 ? bits.length : bits.indexOf('0')}`);
  return cidr.network === ip.value ? cidr : 'bad';
}

export interface LocalNode {
  name: string;
  cluster: string;
  clusterId: number;
  /** Addresses other nodes route through: at most one IPv4 and one IPv6. */
  addresses: string[];
  ipv4Cidr: Cidr;
  ipv6Cidr: Cidr;
}

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** Cilium's nodeTypes.Node as JSON, in Go's field order (what Cilium's own agents write). */
export function nodeJson(n: LocalNode, boot = bootId()): string {
  return JSON.stringify({
    Name: n.name,
    Cluster: n.cluster,
    IPAddresses: n.addresses.map((ip) => ({ Type: 'InternalIP', IP: ip })),
    IPv4AllocCIDR: ipNetJson(n.ipv4Cidr),
    IPv4SecondaryAllocCIDRs: null,
    IPv6AllocCIDR: ipNetJson(n.ipv6Cidr),
    IPv6SecondaryAllocCIDRs: null,
    IPv4HealthIP: '',
    IPv6HealthIP: '',
    IPv4IngressIP: '',
    IPv6IngressIP: '',
    ClusterID: n.clusterId,
    Source: 'local',
    EncryptionKey: 0,
    Labels: null,
    Annotations: null,
    NodeIdentity: 0,
    WireguardPubKey: '',
    BootID: boot,
  });
}

/** Another node as accepted: where to route its CIDRs (a family without both is not routed). */
export interface PeerNode {
  name: string;
  ipv4?: string;
  ipv6?: string;
  ipv4Cidr?: Cidr;
  ipv6Cidr?: Cidr;
}

export interface NodeJudgeRules {
  self: LocalNode;
  /** The cluster pools: a peer's CIDRs lie inside them (they are carved from them). */
  pools: { 4: Cidr; 6: Cidr };
}

export type NodeVerdict = { peer: PeerNode } | { own: true } | { reason: string };

/**
 * One `cilium/state/nodes/v1/<cluster>/<name>` key and value, judged. Anyone with write access to etcd
 * may have written it, and what it says becomes routes in this host's main table, so: size, JSON
 * shape, the name matching the key, this cluster, CIDRs inside the cluster pools and clear of this
 * node's own, addresses that are neither this node's nor inside the pools nor special.
 */
export function nodeValueJudge(key: string, value: string, rules: NodeJudgeRules): NodeVerdict {
  const keyName = key.slice(`${NODES_PREFIX}/${rules.self.cluster}/`.length);
  if (value.length > NODE_VALUE_MAX_BYTES) return { reason: `value is ${value.length} bytes, more than a node entry's ${NODE_VALUE_MAX_BYTES}` };
  const nameProblem = nodeNameProblem(keyName);
  if (nameProblem) return { reason: `key: ${nameProblem}` };
  if (keyName === rules.self.name) return { own: true };
  const json = jsonObjectParse(value);
  if ('reason' in json) return json;
  const o = json.object;
  if (o.Name !== keyName) return { reason: `Name ${JSON.stringify(o.Name)?.slice(0, 80)} does not match the key` };
  if (o.Cluster !== rules.self.cluster) return { reason: `Cluster ${JSON.stringify(o.Cluster)?.slice(0, 80)} is not this cluster` };
  if (o.ClusterID !== undefined && o.ClusterID !== rules.self.clusterId) return { reason: `ClusterID ${JSON.stringify(o.ClusterID)?.slice(0, 20)} is not this cluster's ${rules.self.clusterId}` };
  const peer: PeerNode = { name: keyName };
  for (const family of [4, 6] as const) {
    const field = family === 4 ? 'IPv4AllocCIDR' : 'IPv6AllocCIDR';
    const cidr = ipNetParse(o[field]);
    if (cidr === 'bad') return { reason: `${field} is not a network {IP, Mask (base64)}` };
    if (!cidr) continue;
    if (cidr.family !== family) return { reason: `${field} ${cidr.text} is not IPv${family}` };
    if (!cidrWithin(cidr, rules.pools[family])) return { reason: `${field} ${cidr.text} is outside the cluster pool ${rules.pools[family].text}` };
    const own = family === 4 ? rules.self.ipv4Cidr : rules.self.ipv6Cidr;
    if (cidrOverlaps(cidr, own)) return { reason: `${field} ${cidr.text} overlaps this node's own ${own.text}` };
    if (family === 4) peer.ipv4Cidr = cidr;
    else peer.ipv6Cidr = cidr;
  }
  if (!Array.isArray(o.IPAddresses) || o.IPAddresses.length > 16) return { reason: 'IPAddresses is not a list of at most 16 addresses' };
  const own = new Set(rules.self.addresses.map((a) => addressParse(a).text));
  for (const a of o.IPAddresses as unknown[]) {
    if (!a || typeof a !== 'object') return { reason: 'IPAddresses holds a value that is not {Type, IP}' };
    const { Type, IP } = a as { Type?: unknown; IP?: unknown };
    if (Type !== 'InternalIP' || typeof IP !== 'string') continue;
    let ip;
    try {
      ip = addressParse(IP);
    } catch {
      return { reason: `InternalIP ${JSON.stringify(IP).slice(0, 60)} is not an IP address` };
    }
    const problem = routableProblem(ip.text, ip.family, ip.value, rules.pools[ip.family]);
    if (problem) return { reason: `InternalIP ${ip.text} ${problem}` };
    if (own.has(ip.text)) return { reason: `InternalIP ${ip.text} is this node's own address` };
    if (ip.family === 4) peer.ipv4 ??= ip.text;
    else peer.ipv6 ??= ip.text;
  }
  if (!peer.ipv4 && !peer.ipv6) return { reason: 'no InternalIP address to route through' };
  return { peer };
}

/** Why an address cannot be a next hop for a node's CIDR; undefined when it can. */
function routableProblem(text: string, family: 4 | 6, value: bigint, pool: Cidr): string | undefined {
  if (cidrContains(pool, family, value)) return `is inside the cluster pool ${pool.text} (a workload's address, not a node's)`;
  const special = family === 4
    ? ['0.0.0.0/8', '127.0.0.0/8', '169.254.0.0/16', '224.0.0.0/3']
    : ['::/127', '::ffff:0:0/96', 'fe80::/10', 'ff00::/8'];
  const hit = special.map(cidrParse).find((c) => cidrContains(c, family, value));
  return hit ? `is in ${hit.text} (unspecified, loopback, link-local or multicast)` : text ? undefined : 'is empty';
}

/** A peer as text, for change detection. */
function peerText(p: PeerNode | undefined): string {
  return p ? [p.name, p.ipv4, p.ipv6, p.ipv4Cidr?.text, p.ipv6Cidr?.text].join(' ') : '';
}

/** What the registry feeds: peers new or changed, and names of peers gone. */
export interface NodeSink {
  apply(set: readonly PeerNode[], gone: readonly string[]): void;
}

/**
 * This node in the cluster's node list, and every other node from it. The own entry is written under
 * the node lease (it goes when the node dies, within the lease TTL), again when the lease is renewed,
 * and deleted on a clean stop. The others are followed as a PrefixFollower's sink (a list, then a watch
 * from the list's revision; a broken watch lists again and the difference is handed over). Hostile or
 * broken entries are ignored with a log line.
 */
export class NodeRegistry implements PrefixSink {
  private readonly accepted = new Map<string, PeerNode>();
  private readonly follower: PrefixFollower;
  private closed = false;
  private sink: NodeSink | undefined;
  /** Others who follow the node list (the Hubble peer service): told of every change after the sink. */
  private readonly followers = new Set<NodeSink['apply']>();
  /** Entries ignored since the start, and node arrivals/departures seen. */
  readonly counts = { ignored: 0, added: 0, removed: 0 };
  private readonly key: string;
  /** The own entry as last written: a Put of another value or under another lease is someone else's. */
  private written: { value: string; lease: string } | undefined;
  /** When the own entry was found overwritten or deleted (within REWRITE_WINDOW_MS). */
  private displacedAt: number[] = [];
  private rewriteTimer: NodeJS.Timeout | undefined;
  private slowLoggedAt = 0;
  private readonly onRenew = () => void this.publish().catch((err: unknown) => this.log.warn({ err }, 'node entry not written again; the next lease renewal or relist retries'));

  constructor(
    private readonly session: ClusterSession,
    private readonly rules: NodeJudgeRules,
    private readonly log: Logger,
  ) {
    this.key = `${NODES_PREFIX}/${rules.self.cluster}/${rules.self.name}`;
    this.follower = new PrefixFollower(session.client, `${NODES_PREFIX}/${rules.self.cluster}/`, this, log, { meta: true });
  }

  /** Refuses a start whose node name another live node holds (two hosts would share a CIDR claim). */
  async nameCheck(): Promise<void> {
    const kv = (await this.session.client.get(this.key).exec()).kvs[0];
    if (!kv) return;
    let other: string[] = [];
    try {
      other = ((JSON.parse(kv.value.toString('utf8')) as { IPAddresses?: Array<{ IP?: string }> }).IPAddresses ?? []).map((a) => String(a.IP));
    } catch {
      // unreadable: not a node's entry to respect
    }
    const mine = new Set(this.rules.self.addresses);
    // The previous run of this node (same address, an older lease) is taken over.
    if (kv.lease !== '0' && other.length > 0 && !other.some((a) => mine.has(a))) {
      throw new Error(`nodeName: node "${this.rules.self.name}" is already in cluster ${this.rules.self.cluster} with address ${other.join(', ').slice(0, 200)} (another host, alive); give this host its own nodeName`);
    }
  }

  async publish(): Promise<void> {
    const lease = await this.session.nodeLeaseId();
    const value = nodeJson(this.rules.self);
    this.written = { value, lease };
    await this.session.client.put(this.key).value(value).lease(lease).exec();
  }

  /**
   * The own key as etcd has it now. Anything but this node's last write (another value, another lease,
   * or the key deleted while this node lives) is written over again: a hostile or confused writer
   * cannot move this node's entry (and every other host's routes to its CIDRs) elsewhere for longer
   * than one round trip through the watch.
   */
  private ownSeen(value: string | undefined, meta: KeyMeta | undefined): void {
    if (this.closed || !this.written) return;
    if (value === this.written.value && (!meta || meta.lease === this.written.lease)) return;
    const now = Date.now();
    this.displacedAt = this.displacedAt.filter((t) => now - t < REWRITE_WINDOW_MS);
    this.displacedAt.push(now);
    const seen = { key: this.key, node: this.rules.self.name, value: value?.slice(0, 200), lease: meta?.lease };
    if (this.displacedAt.length <= REWRITE_BURST) {
      this.log.warn(seen, value === undefined
        ? 'this node\'s entry was deleted (by another writer, or with a lost lease); written again'
        : 'this node\'s entry was overwritten by another writer (another value or lease); written again');
      this.onRenew();
      return;
    }
    if (this.rewriteTimer) return;
    if (now - this.slowLoggedAt >= REWRITE_WINDOW_MS) {
      this.slowLoggedAt = now;
      this.log.error({ ...seen, times: this.displacedAt.length, windowMs: REWRITE_WINDOW_MS }, `this node's entry keeps being overwritten or deleted by another writer (another host with nodeName "${this.rules.self.name}", or a hostile writer); written again at most once a second`);
    }
    this.rewriteTimer = setTimeout(() => {
      this.rewriteTimer = undefined;
      if (!this.closed) this.onRenew();
    }, REWRITE_SLOW_MS).unref();
  }

  async start(sink: NodeSink): Promise<void> {
    this.sink = sink;
    await this.publish();
    this.session.on('nodeLeaseRenewed', this.onRenew);
    await this.follower.start();
  }

  peers(): PeerNode[] {
    return [...this.accepted.values()];
  }

  private judge(key: string, value: string): PeerNode | undefined {
    const verdict = nodeValueJudge(key, value, this.rules);
    if ('reason' in verdict) {
      this.counts.ignored++;
      this.log.warn({ key: key.slice(0, 300), value: value.slice(0, 200), reason: verdict.reason }, 'cluster node entry ignored');
      return undefined;
    }
    if ('own' in verdict) return undefined;
    // Two peers claiming overlapping CIDRs: the one accepted first keeps them.
    for (const other of this.accepted.values()) {
      if (other.name === verdict.peer.name) continue;
      for (const [mine, theirs] of [[verdict.peer.ipv4Cidr, other.ipv4Cidr], [verdict.peer.ipv6Cidr, other.ipv6Cidr]] as const) {
        if (mine && theirs && cidrOverlaps(mine, theirs)) {
          this.counts.ignored++;
          this.log.warn({ key, reason: `${mine.text} overlaps node ${other.name}'s ${theirs.text}` }, 'cluster node entry ignored');
          return undefined;
        }
      }
    }
    return verdict.peer;
  }

  private nameOf(key: string): string {
    return key.slice(`${NODES_PREFIX}/${this.rules.self.cluster}/`.length);
  }

  private hand(set: PeerNode[], gone: string[], listed = false): void {
    for (const name of gone) {
      if (!this.accepted.delete(name)) continue;
      this.counts.removed++;
      this.log.info({ node: name }, 'cluster node left (its entry was deleted or its lease expired)');
    }
    const changed = set.filter((p) => peerText(this.accepted.get(p.name)) !== peerText(p));
    for (const p of changed) {
      if (!this.accepted.has(p.name)) {
        this.counts.added++;
        this.log.info({ node: p.name, ipv4: p.ipv4, ipv6: p.ipv6, ipv4Cidr: p.ipv4Cidr?.text, ipv6Cidr: p.ipv6Cidr?.text }, 'cluster node joined');
      }
      this.accepted.set(p.name, p);
    }
    // After a list the sink hears even of no change: it then knows the whole cluster.
    if (changed.length || gone.length || listed) this.sink?.apply(changed, gone);
    if (changed.length || gone.length) for (const f of this.followers) f(changed, gone);
  }

  /** Calls `fn` with the nodes that joined or changed and the names of those that left; returns the unsubscribe. */
  subscribe(fn: NodeSink['apply']): () => void {
    this.followers.add(fn);
    return () => this.followers.delete(fn);
  }

  async resync(all: ReadonlyMap<string, string>, _revision?: bigint, meta?: ReadonlyMap<string, KeyMeta>): Promise<void> {
    const listed = new Map<string, PeerNode>();
    // Judged against what stays accepted, so an overlap is settled the same way as by the watch.
    for (const [key, value] of all) {
      const p = this.judge(key, value);
      if (p) listed.set(p.name, p);
    }
    this.hand([...listed.values()], [...this.accepted.keys()].filter((n) => !listed.has(n)), true);
    this.ownSeen(all.get(this.key), meta?.get(this.key));
  }

  async change(changes: readonly PrefixChange[]): Promise<void> {
    for (const c of changes) {
      if (c.key === this.key) {
        this.ownSeen(c.value, c.meta);
        continue;
      }
      const peer = c.value !== undefined ? this.judge(c.key, c.value) : undefined;
      // A value that turned bad withdraws what the node had.
      if (peer) this.hand([peer], []);
      else this.hand([], [this.nameOf(c.key)]);
    }
  }

  /** Stops following; the own entry is deleted, so other nodes drop their routes here at once. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.rewriteTimer);
    this.session.off('nodeLeaseRenewed', this.onRenew);
    await this.follower.close();
    await this.session.client.delete().key(this.key).exec().catch((err: unknown) => this.log.warn({ err }, 'node entry not deleted; it goes with the lease'));
  }
}
