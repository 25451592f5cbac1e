import { labelCompare, labelFormat, type Label } from '../../common/labels.js';
import { addressParse, cidrParse, type Cidr } from '../ipam.js';
import { CLUSTER_LABEL, kvstoreLabelsKeyParse } from './cilium-labels.js';
import { IDENTITIES_PREFIX } from './identity-allocator.js';
import { inRange, type IdentityRange } from './identity-range.js';
import { jsonObjectParse } from './json-value.js';

/**
 * Judging what another cluster's etcd holds. Everything there is data from another administrator:
 * shapes are checked, numbers held to the cluster's range, labels to Cilium's format, and nothing may
 * pose as this host's reserved identities or as another cluster.
 */

export const ID_PREFIX = `${IDENTITIES_PREFIX}/id/`;
export const NODES_PREFIX = 'cilium/state/nodes/v1';

export type PeerIdentityVerdict = { id: number; labels: string[] } | { reason: string };

/**
 * One `cilium/state/identities/v1/id/<n>` key of cluster `cluster`: its number in the cluster's range,
 * its value a Cilium label key; labels as the store formats them (`source:key=value`, sorted). Cilium
 * gives every identity of a cluster the cluster label: a value naming another cluster is refused (it
 * would be selected as that cluster's), a value without one gets it.
 */
export function peerIdentityJudge(key: string, value: string, cluster: { name: string; range: IdentityRange }): PeerIdentityVerdict {
  const suffix = key.startsWith(ID_PREFIX) ? key.slice(ID_PREFIX.length) : '';
  if (!/^[1-9]\d{0,9}$/.test(suffix)) return { reason: `key ${key.slice(0, 120)} is not ${ID_PREFIX}<number>` };
  const id = Number(suffix);
  if (!inRange(cluster.range, id)) return { reason: `identity ${id} is outside cluster ${cluster.name}'s range ${cluster.range.min}-${cluster.range.max}` };
  const labels = kvstoreLabelsKeyParse(value);
  if (!labels || labels.length === 0) return { reason: 'value is not a Cilium label key (source:key=value; ...)' };
  const problem = clusterLabelsProblem(labels, cluster.name);
  if (problem) return { reason: problem };
  if (!labels.some((l) => l.key === CLUSTER_LABEL)) labels.push({ source: 'k8s', key: CLUSTER_LABEL, value: cluster.name });
  return { id, labels: [...labels].sort(labelCompare).map(labelFormat) };
}

/** Label sources only this host gives: its reserved identities, and CIDR and FQDN identities (node-local, never in etcd). */
const HOST_ONLY_SOURCES: ReadonlySet<string> = new Set(['reserved', 'cidr', 'fqdn']);

/**
 * Why the labels of an identity of cluster `cluster` (this one or a peer, read from its etcd) cannot
 * be taken: a source only this host gives (a writer could pose as this host's reserved identities or
 * match CIDR and FQDN selectors), or a cluster label naming another cluster (it would be selected as
 * that cluster's). Undefined when they can.
 */
export function clusterLabelsProblem(labels: readonly Label[], cluster: string): string | undefined {
  const hostOnly = labels.find((l) => HOST_ONLY_SOURCES.has(l.source));
  if (hostOnly) return `${hostOnly.source} labels are this host's own (${labelFormat(hostOnly).slice(0, 80)}): an identity in etcd never carries them`;
  const named = labels.filter((l) => l.key === CLUSTER_LABEL);
  if (named.some((l) => l.value !== cluster)) return `labels name another cluster (${named.map((l) => l.value.slice(0, 40)).join(', ')}) than ${cluster}`;
  return undefined;
}

/** A node of a cluster as status shows it. */
export interface NodeSummary {
  name: string;
  cluster: string;
  addresses: Array<{ type: string; ip: string }>;
  ipv4AllocCIDR?: string;
  ipv6AllocCIDR?: string;
}

/** Go's net.IPNet as JSON ({IP, Mask: base64}) to `ip/len`; undefined when it is not one. */
export function goIpNetParse(v: unknown): string | undefined {
  if (!v || typeof v !== 'object') return undefined;
  const { IP, Mask } = v as { IP?: unknown; Mask?: unknown };
  if (typeof IP !== 'string' || typeof Mask !== 'string') return undefined;
  let ip: string;
  try {
    ip = addressParse(IP).text;
  } catch {
    return undefined;
  }
  const mask = Buffer.from(Mask, 'base64');
  if (!(mask.length === 16 || (mask.length === 4 && !ip.includes(':')))) return undefined;
  let bits = 0;
  for (const byte of mask) for (let b = 7; b >= 0; b--) bits += (byte >> b) & 1;
  return `${ip}/${mask.length === 16 && !ip.includes(':') ? bits - 96 : bits}`;
}

/**
 * One `cilium/state/nodes/v1/<cluster>/<node>` value (Cilium's node JSON, Go field names), read
 * defensively: Name and Cluster must be set (as Cilium's decoder requires) and match the key;
 * addresses that do not parse are left out.
 */
export function nodeSummaryParse(key: string, value: string): NodeSummary | { reason: string } {
  const json = jsonObjectParse(value);
  if ('reason' in json) return json;
  const o = json.object;
  if (typeof o.Name !== 'string' || !o.Name || typeof o.Cluster !== 'string' || !o.Cluster) return { reason: 'Name or Cluster is empty' };
  if (key !== `${NODES_PREFIX}/${o.Cluster}/${o.Name}`) return { reason: `key does not match the node's Cluster/Name (${o.Cluster}/${o.Name})` };
  const addresses = (Array.isArray(o.IPAddresses) ? o.IPAddresses : []).flatMap((a: unknown) => {
    const { Type, IP } = (a && typeof a === 'object' ? a : {}) as { Type?: unknown; IP?: unknown };
    if (typeof Type !== 'string' || typeof IP !== 'string') return [];
    try {
      return [{ type: Type.slice(0, 32), ip: addressParse(IP).text }];
    } catch {
      return [];
    }
  });
  const v4 = goIpNetParse(o.IPv4AllocCIDR);
  const v6 = goIpNetParse(o.IPv6AllocCIDR);
  return { name: o.Name.slice(0, 253), cluster: o.Cluster.slice(0, 32), addresses, ...(v4 ? { ipv4AllocCIDR: v4 } : {}), ...(v6 ? { ipv6AllocCIDR: v6 } : {}) };
}

/**
 * A peer's node as its ipcache entries are bound to it: the addresses it publishes (a HostIP names
 * one) and its pod CIDRs (IPv4/IPv6 AllocCIDR and the secondary ones, as Cilium's node JSON carries
 * them). A CIDR inside this cluster's pools, or over a special range (loopback, multicast, ... and so
 * any CIDR as wide as 0.0.0.0/0), refuses the node: its pods would take addresses that are never a
 * peer's.
 */
export function peerNodeBindingParse(
  key: string,
  value: string,
  rules: { clusterPools: readonly Cidr[]; specialOverlap: (c: Cidr) => string | undefined; overlaps: (a: Cidr, b: Cidr) => boolean },
): { name: string; addresses: string[]; cidrs: Cidr[] } | { reason: string } {
  const node = nodeSummaryParse(key, value);
  if ('reason' in node) return node;
  const o = JSON.parse(value) as Record<string, unknown>;
  const texts = [node.ipv4AllocCIDR, node.ipv6AllocCIDR];
  for (const field of ['IPv4SecondaryAllocCIDRs', 'IPv6SecondaryAllocCIDRs']) {
    const list = o[field];
    if (list === null || list === undefined) continue;
    if (!Array.isArray(list) || list.length > 64) return { reason: `${field} is not a list of at most 64 networks` };
    for (const n of list) {
      const text = goIpNetParse(n);
      if (!text) return { reason: `${field} holds something that is not a network {IP, Mask (base64)}` };
      texts.push(text);
    }
  }
  const cidrs: Cidr[] = [];
  for (const text of texts) {
    if (!text) continue;
    let c: Cidr;
    try {
      c = cidrParse(text);
    } catch (err) {
      return { reason: `pod CIDR ${text} does not parse: ${(err as Error).message}` };
    }
    const pool = rules.clusterPools.find((p) => rules.overlaps(p, c));
    if (pool) return { reason: `pod CIDR ${c.text} overlaps this cluster's pool ${pool.text}` };
    const special = rules.specialOverlap(c);
    if (special) return { reason: `pod CIDR ${c.text} overlaps ${special}: never a pod's` };
    cidrs.push(c);
  }
  return { name: node.name, addresses: node.addresses.map((a) => a.ip), cidrs };
}
