import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import { addressParse, cidrContains, cidrParse, type Cidr } from '../ipam.js';
import { cidrOverlaps, cidrWithin, NODE_CIDRS_PREFIX } from './node-cidr.js';
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
/**
 * An entry whose CIDR no claim names yet is not taken, and logged as ignored only if it still has none
 * this long after it came: its node wrote the claim first, but the claims' watch may bring it later.
 */
const CLAIM_GRACE_MS = 2000;
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
 * node's own, addresses that are neither this node's nor inside the pools nor special. Whether the
 * node claimed its CIDRs is the registry's question (nodeClaimProblem): the claims change apart.
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

/** A per-node CIDR claim as read from `kitnet/state/node-cidrs/v1/<cluster>/<cidr>` (value: the node's name). */
export interface NodeCidrClaim {
  cidr: Cidr;
  node: string;
  /** etcd's create revision: who claimed first. */
  createRevision: bigint;
  /** Writes since its creation: a claim is created once and never rewritten (1). */
  version: bigint;
}

/** What a claim gives its CIDR: the node owning it, or why the claim owns nothing. */
export type ClaimOwner = { node: string } | { reason: string };

/** A claim key's CIDR in its canonical text (the only form nodes write); undefined for any other key. */
export function claimKeyCidr(key: string, cluster: string): Cidr | undefined {
  const text = key.slice(`${NODE_CIDRS_PREFIX}/${cluster}/`.length);
  try {
    const cidr = cidrParse(text);
    return cidr.text === text ? cidr : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The claims settled, by CIDR text. Claims are create-only, so the first claimant owns a CIDR: a claim
 * rewritten after its creation owns nothing, nor does one overlapping a claim created before it (both,
 * when created in one revision). Nodes claim only blocks no claim overlaps, so sound claims never
 * overlap: owned CIDRs are disjoint. O(claims log claims): per family, sorted, the claims containing
 * each one are those still open on a stack (CIDRs nest or are disjoint).
 */
export function nodeClaimsSettle(claims: Iterable<NodeCidrClaim>): Map<string, ClaimOwner> {
  const out = new Map<string, ClaimOwner>();
  const sorted = [...claims].sort((a, b) => a.cidr.family - b.cidr.family || (a.cidr.network < b.cidr.network ? -1 : a.cidr.network > b.cidr.network ? 1 : a.cidr.prefixLength - b.cidr.prefixLength));
  const open: Array<{ c: NodeCidrClaim; end: bigint }> = [];
  const voids = (c: NodeCidrClaim, reason: string) => {
    if (!out.has(c.cidr.text) || !('reason' in out.get(c.cidr.text)!)) out.set(c.cidr.text, { reason });
  };
  const who = (c: NodeCidrClaim) => `node ${JSON.stringify(c.node.slice(0, 80))}'s claim ${c.cidr.text}`;
  for (const c of sorted) {
    if (!out.has(c.cidr.text)) out.set(c.cidr.text, c.version > 1n ? { reason: `it was rewritten after its creation (version ${c.version}; claims are create-only)` } : { node: c.node });
    while (open.length && (open[open.length - 1]!.c.cidr.family !== c.cidr.family || open[open.length - 1]!.end <= c.cidr.network)) open.pop();
    for (const { c: outer } of open) {
      if (outer.createRevision < c.createRevision) voids(c, `it overlaps ${who(outer)}, made earlier (the first claimant owns a CIDR)`);
      else if (outer.createRevision > c.createRevision) voids(outer, `it overlaps ${who(c)}, made earlier (the first claimant owns a CIDR)`);
      else {
        voids(c, `it overlaps ${who(outer)}, made in the same revision`);
        voids(outer, `it overlaps ${who(c)}, made in the same revision`);
      }
    }
    open.push({ c, end: c.cidr.network + (1n << BigInt(BITS[c.cidr.family] - c.cidr.prefixLength)) });
  }
  return out;
}

/**
 * Why a peer may not have its CIDRs (undefined: it may): each must be claimed by the peer's own name
 * under the cluster's claims, the claim owning it. `missing`: no claim key at all, which a watcher can
 * see for a moment (the claim is written first, but its watch may bring it later).
 */
export function nodeClaimProblem(peer: PeerNode, owners: ReadonlyMap<string, ClaimOwner>, cluster: string): { reason: string; cidr: string; missing?: true } | undefined {
  for (const [field, cidr] of [['IPv4AllocCIDR', peer.ipv4Cidr], ['IPv6AllocCIDR', peer.ipv6Cidr]] as const) {
    if (!cidr) continue;
    const claimKey = `${NODE_CIDRS_PREFIX}/${cluster}/${cidr.text}`;
    const owner = owners.get(cidr.text);
    if (!owner) return { cidr: cidr.text, missing: true, reason: `${field} ${cidr.text} is claimed by no node (no key ${claimKey}; a node claims its CIDRs before it announces them)` };
    if ('reason' in owner) return { cidr: cidr.text, reason: `${field} ${cidr.text}: its claim ${claimKey} owns nothing: ${owner.reason}` };
    if (owner.node !== peer.name) return { cidr: cidr.text, reason: `${field} ${cidr.text} is claimed by node ${JSON.stringify(owner.node.slice(0, 80))} (${claimKey}), not by ${peer.name}` };
  }
  return undefined;
}

/** What the registry feeds: peers new or changed, and names of peers gone. */
export interface NodeSink {
  apply(set: readonly PeerNode[], gone: readonly string[]): void;
}

/**
 * This node in the cluster's node list, and every other node from it. The own entry is written under
 * the node lease (it goes when the node dies, within the lease TTL), again when the lease is renewed
 * or someone else writes over it, and deleted on a clean stop. The others are followed as a
 * PrefixFollower's sink (a list, then a watch from the list's revision; a broken watch lists again and
 * the difference is handed over), and so are the CIDR claims: an entry is taken only if each CIDR it
 * announces is claimed by its node, and every entry is judged again when the claims change. Hostile
 * or broken entries are ignored with a log line (once per value and reason).
 */
export class NodeRegistry implements PrefixSink {
  private readonly accepted = new Map<string, PeerNode>();
  private readonly follower: PrefixFollower;
  private readonly claimsFollower: PrefixFollower;
  private readonly claimsPrefix: string;
  /** The claims by key, as read; `owners` is what they settle to. */
  private readonly claims = new Map<string, NodeCidrClaim>();
  private owners = new Map<string, ClaimOwner>();
  private claimsListed = false;
  private nodesListed = false;
  /** Every other key under the nodes prefix: its value judged on its own (claims aside), and since when. */
  private readonly entries = new Map<string, { value: string; verdict: NodeVerdict; since: number }>();
  /** Per key, the refusal last logged: a re-judge with the same value and reason is not told again. */
  private readonly reported = new Map<string, { value: string; reason: string }>();
  /** Judges again when an entry's claim-less grace ends. */
  private graceTimer: NodeJS.Timeout | undefined;
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
    this.claimsPrefix = `${NODE_CIDRS_PREFIX}/${rules.self.cluster}/`;
    this.claimsFollower = new PrefixFollower(session.client, this.claimsPrefix, {
      resync: async (all, _revision, meta) => {
        this.claims.clear();
        for (const [key, value] of all) this.claimSet(key, value, meta?.get(key));
        this.claimsListed = true;
        this.owners = nodeClaimsSettle(this.claims.values());
        this.settle(true);
      },
      change: async (changes) => {
        for (const c of changes) this.claimSet(c.key, c.value, c.meta);
        this.owners = nodeClaimsSettle(this.claims.values());
        this.settle(false);
      },
    }, log, { meta: true });
  }

  private claimSet(key: string, value: string | undefined, meta: KeyMeta | undefined): void {
    const cidr = claimKeyCidr(key, this.rules.self.cluster);
    if (value === undefined || !cidr || !meta) this.claims.delete(key);
    else this.claims.set(key, { cidr, node: value, createRevision: meta.createRevision, version: meta.version });
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
    // The claims first: entries listed before them would all be refused (and their routes removed).
    await this.claimsFollower.start();
    await this.follower.start();
  }

  peers(): PeerNode[] {
    return [...this.accepted.values()];
  }

  /**
   * Every entry judged against the claims as they are now, and the difference handed over (with
   * `listed`, even none: the sink then knows the whole cluster). Nothing before both prefixes were
   * listed once. Two accepted entries never overlap: each accepted CIDR is one its node's claim owns,
   * and owned CIDRs are disjoint (nodeClaimsSettle), whatever the order entries arrive or are listed in.
   */
  private settle(listed: boolean): void {
    if (this.closed || !this.claimsListed || !this.nodesListed) return;
    clearTimeout(this.graceTimer);
    const now = Date.now();
    let wake: number | undefined;
    const next = new Map<string, PeerNode>();
    for (const [key, e] of this.entries) {
      const name = this.nameOf(key);
      let refusal: { reason: string; cidr?: string; missing?: true } | undefined;
      if ('reason' in e.verdict) refusal = e.verdict;
      else if ('peer' in e.verdict) refusal = nodeClaimProblem(e.verdict.peer, this.owners, this.rules.self.cluster);
      else continue;
      if (!refusal && 'peer' in e.verdict) {
        next.set(name, e.verdict.peer);
        this.reported.delete(key);
        continue;
      }
      if (!refusal) continue;
      // No claim yet: its watch may be a moment behind this entry's. Not taken meanwhile, told only after.
      if (refusal.missing && now - e.since < CLAIM_GRACE_MS) {
        wake = Math.min(wake ?? Infinity, e.since + CLAIM_GRACE_MS);
        continue;
      }
      const last = this.reported.get(key);
      if (last && last.value === e.value && last.reason === refusal.reason) continue;
      this.reported.set(key, { value: e.value, reason: refusal.reason });
      this.counts.ignored++;
      this.log.warn({ key: key.slice(0, 300), node: name.slice(0, 80), cidr: refusal.cidr, value: e.value.slice(0, 200), reason: refusal.reason }, 'cluster node entry ignored');
    }
    for (const key of this.reported.keys()) if (!this.entries.has(key)) this.reported.delete(key);
    if (wake !== undefined) this.graceTimer = setTimeout(() => this.settle(false), Math.max(0, wake - now) + 10).unref();
    this.hand([...next.values()], [...this.accepted.keys()].filter((n) => !next.has(n)), listed);
  }

  /** One key under the nodes prefix as it is now (undefined: deleted), judged on its own. */
  private entrySet(key: string, value: string | undefined): void {
    if (value === undefined) {
      this.entries.delete(key);
      return;
    }
    // An oversized value (refused for its size) is kept as its head and length only.
    const kept = value.length > NODE_VALUE_MAX_BYTES ? `${value.slice(0, 200)}… (${value.length} bytes)` : value;
    if (this.entries.get(key)?.value === kept) return;
    this.entries.set(key, { value: kept, verdict: nodeValueJudge(key, value, this.rules), since: Date.now() });
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
    for (const key of [...this.entries.keys()]) if (!all.has(key)) this.entrySet(key, undefined);
    for (const [key, value] of all) if (key !== this.key) this.entrySet(key, value);
    this.nodesListed = true;
    this.settle(true);
    this.ownSeen(all.get(this.key), meta?.get(this.key));
  }

  async change(changes: readonly PrefixChange[]): Promise<void> {
    for (const c of changes) {
      if (c.key === this.key) {
        this.ownSeen(c.value, c.meta);
        continue;
      }
      // A value that turned bad withdraws what the node had.
      this.entrySet(c.key, c.value);
    }
    this.settle(false);
  }

  /** Stops following; the own entry is deleted, so other nodes drop their routes here at once. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.rewriteTimer);
    clearTimeout(this.graceTimer);
    this.session.off('nodeLeaseRenewed', this.onRenew);
    await this.follower.close();
    await this.claimsFollower.close();
    await this.session.client.delete().key(this.key).exec().catch((err: unknown) => this.log.warn({ err }, 'node entry not deleted; it goes with the lease'));
  }
}
