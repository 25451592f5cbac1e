/**
 * The policy model shared by the parser, the compiler and the tracer.
 *
 * Parsing turns NetworkPolicy / CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy documents into
 * `ParsedPolicy` objects whose `rules` are already normalised to one internal form (selectors with
 * explicit label sources and the implicit namespace restrictions applied, ports and protocols as
 * numbers), so the compiler does not need to know which kind a rule came from.
 */

import type { FqdnSelector } from './fqdn.js';

export const POLICY_KINDS = ['NetworkPolicy', 'CiliumNetworkPolicy', 'CiliumClusterwideNetworkPolicy'] as const;
export type PolicyKind = (typeof POLICY_KINDS)[number];

export type Direction = 'ingress' | 'egress';

/** IANA protocol numbers the policy language can name. 0 = any protocol. */
export const Proto = { ANY: 0, ICMP: 1, TCP: 6, UDP: 17, SCTP: 132, ICMPV6: 58 } as const;

/** PortMatch.protocol for Cilium's `ANY` in toPorts: TCP, UDP and SCTP (not ICMP). */
export const PROTO_ANY_L4 = -1;

export type SelectorOperator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';

/**
 * One requirement on a label. `source` is a label source (`k8s`, `reserved`, `cidr`, ...) or `any`,
 * which matches a label of that key from every source (Cilium's `any:` prefix).
 */
export interface SelectorRequirement {
  source: string;
  key: string;
  operator: SelectorOperator;
  values: string[];
}

/** A normalised label selector: all requirements must hold (AND). No requirements = selects all. */
export interface Selector {
  requirements: SelectorRequirement[];
}

export type EntityName =
  | 'all'
  | 'world'
  | 'world-ipv4'
  | 'world-ipv6'
  | 'cluster'
  | 'host'
  | 'remote-node'
  | 'init'
  | 'health'
  | 'unmanaged'
  | 'kube-apiserver'
  | 'ingress'
  | 'none';

/** An L3 peer of a rule section. */
export type Peer =
  | { kind: 'selector'; selector: Selector }
  | { kind: 'entity'; entity: EntityName }
  | CidrPeer;

/**
 * A CIDR peer (`cidr` minus `except`). It always selects the CIDR identities of addresses outside the
 * cluster. With `selectsWorkloads` (Kubernetes NetworkPolicy `ipBlock`) it also selects the workload
 * addresses it covers, per address through the ipBlock view (cidr.ts, ipBlockView), and whole workload
 * identities whose addresses it all covers (compile.ts, Universe.blockSelects); without it
 * (CiliumNetworkPolicy CIDR rules, cilium#9209) workload addresses are never selected by it.
 */
export interface CidrPeer {
  kind: 'cidr';
  cidr: string;
  except: string[];
  selectsWorkloads?: boolean;
}

/**
 * An L4 match: `protocol` is a protocol number or PROTO_ANY_L4 (TCP+UDP+SCTP).
 * `port` is a number (0 = all ports of the protocol) or a named port; `endPort` makes a range.
 * For ICMP/ICMPv6, `port` is the ICMP type (see map-key.ts).
 */
export interface PortMatch {
  protocol: number;
  port: number | string;
  endPort?: number;
  /**
   * Cilium `rules.dns`: the names whose lookups this port (53) allows; the DNS proxy answers others
   * REFUSED. Only on egress, validated (agent/policy/fqdn.ts).
   */
  dns?: FqdnSelector[];
}

/** One entry of an ingress/egress/ingressDeny/egressDeny list (or one NP ingress/egress rule). */
export interface RuleSection {
  /** Human reference, e.g. `CiliumNetworkPolicy prod/allow-web ingress[0]`. */
  ref: string;
  direction: Direction;
  deny: boolean;
  /** `all` = every identity (the wildcard, identity 0 in the map). An empty list selects nothing. */
  peers: Peer[] | 'all';
  /** `all` = every protocol and port. An empty list matches nothing. */
  ports: PortMatch[] | 'all';
}

/** A normalised rule: the unit that selects endpoints. A CNP with `specs` yields several. */
export interface PolicyRule {
  ref: string;
  subject: Selector;
  sections: RuleSection[];
  /**
   * Whether selecting an endpoint makes it default-deny in a direction. Only counts when the rule has
   * at least one section in that direction (upstream: a per-section flag).
   */
  defaultDeny: Record<Direction, boolean>;
}

export interface ParsedPolicy {
  kind: PolicyKind;
  apiVersion: string;
  /** Empty for the cluster-wide kind. */
  namespace: string;
  name: string;
  /** `kind namespace/name` or `kind name`: the document's reference in messages and rule refs. */
  ref: string;
  rules: PolicyRule[];
  /** The validated document as given (for storage and `GET /v1/policies`). */
  document: Record<string, unknown>;
}

export interface NamedPort {
  name: string;
  port: number;
  /** `TCP`, `UDP`, `SCTP` (or the protocol number). */
  protocol: string | number;
}

export interface LocalEndpoint {
  endpointId: number;
  identity: number;
  namedPorts?: NamedPort[];
  /** The workload's own addresses (bare IPv4/IPv6), for ipBlock peers that select workloads. */
  addresses?: readonly string[];
}

/** One map entry, see map-key.ts for the key layout the datapath uses. */
export interface PolicyEntry {
  direction: Direction;
  /** Remote identity; 0 = any identity. */
  identity: number;
  /** 0 = any protocol (then port and portPrefixLen are 0). */
  protocol: number;
  /** Destination port, or the ICMP type for protocols 1 and 58. */
  port: number;
  /** 0..16: how many leading bits of `port` must match; 0 = any port. */
  portPrefixLen: number;
  deny: boolean;
  /** The rule sections that produced this entry. */
  rules: string[];
  /** Entries the compiler adds on its own, not from a rule. */
  implicit?: 'not-enforced' | 'allow-localhost';
}

export interface EndpointPolicy {
  endpointId: number;
  identity: number;
  ingressEnforced: boolean;
  egressEnforced: boolean;
  entries: PolicyEntry[];
}

export interface CidrIdentity {
  identity: number;
  cidr: string;
  labels: string[];
}

export interface IpcacheEntry {
  cidr: string;
  identity: number;
}

export interface CompileOptions {
  /**
   * Upstream (Cilium in Kubernetes mode) always lets the local host reach its endpoints (kubelet
   * probes, agent health checks): an ingress allow for `reserved:host` that deny rules still override.
   * Default true.
   */
  allowLocalhost?: boolean;
  /** CIDR identities handed out earlier (cidr -> identity), kept stable across recompiles. */
  previousCidrIdentities?: ReadonlyMap<string, number>;
  /**
   * Cluster mode: this cluster's name. As Cilium since 1.19 (policy-default-local-cluster), a label
   * selector that does not name the cluster label (`io.cilium.k8s.policy.cluster`), and the `cluster`
   * entity, select only identities of this cluster: never a peer cluster's, whose labels carry its own
   * name. Undefined: no peers can exist, nothing is filtered.
   */
  localCluster?: string;
}

export interface CompileInput {
  policies: readonly ParsedPolicy[];
  /** All known identities (reserved, label-derived, remote) -> labels like `k8s:app=web`. */
  identities: ReadonlyMap<number, readonly string[]>;
  endpoints: readonly LocalEndpoint[];
  /** Named ports of remote identities, for egress rules that name a port. */
  remoteNamedPorts?: ReadonlyMap<number, readonly NamedPort[]> | ((identity: number) => readonly NamedPort[]);
  options?: CompileOptions;
}

export interface CompiledPolicy {
  endpoints: EndpointPolicy[];
  /** CIDR identities the policies need (flagged with LOCAL_IDENTITY_FLAG). */
  cidrIdentities: CidrIdentity[];
  /** Ipcache prefixes for the CIDR identities (add to the workload and node entries). */
  ipcache: IpcacheEntry[];
  /** The ipBlock view of the ipcache (cidr.ts, ipBlockView): NetworkPolicy ipBlock prefixes -> flagged identities. */
  ipBlocks: IpcacheEntry[];
  /** All identities the compiler considered (input plus CIDR identities), for naming in traces. */
  identities: Map<number, string[]>;
}
