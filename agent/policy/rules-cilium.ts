/** CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy rules -> PolicyRule. */
import { fqdnSelectorKey } from './fqdn.js';
import type { FqdnSelector } from './fqdn.js';
import { icmpTypeNumber } from './ports.js';
import type { CiliumFQDNSelector, CiliumPortProtocol, CiliumRule } from './schema/cilium.js';
import type { LabelSelector } from './schema/common.js';
import { ciliumPeerSelector, ciliumSubjectSelector, labelSelectorInput, selectorFromLabelSelector } from './selector.js';
import { Proto, PROTO_ANY_L4 } from './types.js';
import type { Direction, EntityName, Peer, PolicyRule, PortMatch, RuleSection, Selector } from './types.js';

interface CiliumSectionIn {
  fromEndpoints?: LabelSelector[] | null;
  toEndpoints?: LabelSelector[] | null;
  fromCIDR?: string[] | null;
  toCIDR?: string[] | null;
  fromCIDRSet?: Array<{ cidr?: string | undefined; except?: string[] | null | undefined }> | null;
  toCIDRSet?: Array<{ cidr?: string | undefined; except?: string[] | null | undefined }> | null;
  fromEntities?: EntityName[] | null;
  toEntities?: EntityName[] | null;
  toFQDNs?: CiliumFQDNSelector[] | null;
  toPorts?: Array<{ ports?: CiliumPortProtocol[] | null | undefined; rules?: { dns?: CiliumFQDNSelector[] | null | undefined } | null | undefined }> | null;
  icmps?: Array<{ fields: Array<{ family?: 'IPv4' | 'IPv6' | undefined; type: number | string }> }> | null;
}

function ciliumPeers(s: CiliumSectionIn, direction: Direction, namespace: string): Peer[] | 'all' {
  const endpoints = direction === 'ingress' ? s.fromEndpoints : s.toEndpoints;
  const cidrs = direction === 'ingress' ? s.fromCIDR : s.toCIDR;
  const cidrSets = direction === 'ingress' ? s.fromCIDRSet : s.toCIDRSet;
  const entities = direction === 'ingress' ? s.fromEntities : s.toEntities;
  const peers: Peer[] = [];
  for (const e of endpoints ?? []) {
    peers.push({ kind: 'selector', selector: ciliumPeerSelector(selectorFromLabelSelector(labelSelectorInput(e), 'any'), namespace) });
  }
  for (const c of cidrs ?? []) peers.push({ kind: 'cidr', cidr: c, except: [] });
  for (const c of cidrSets ?? []) peers.push({ kind: 'cidr', cidr: c.cidr!, except: [...(c.except ?? [])] });
  for (const e of entities ?? []) peers.push({ kind: 'entity', entity: e });
  const fqdns = direction === 'egress' ? s.toFQDNs : undefined;
  // A toFQDNs selector selects the node-local identities whose `fqdn:` label it names: those the DNS
  // proxy gives the addresses it learned for matching names. None learned: it selects nothing.
  for (const f of fqdns ?? []) peers.push({ kind: 'selector', selector: fqdnPeerSelector(f) });
  const anyL3 = [endpoints, cidrs, cidrSets, entities, fqdns].some((l) => l != null && l.length > 0);
  // No L3 selector: an L4-only rule applies to all peers (upstream wildcards L3 when ports are given;
  // with neither, the section selects nothing but still makes the endpoint default-deny).
  return anyL3 ? peers : 'all';
}

function fqdnSelectorOf(f: CiliumFQDNSelector): FqdnSelector {
  return f.matchName ? { matchName: f.matchName } : { matchPattern: f.matchPattern! };
}

function fqdnPeerSelector(f: CiliumFQDNSelector): Selector {
  return { requirements: [{ source: 'fqdn', key: fqdnSelectorKey(fqdnSelectorOf(f)), operator: 'Exists', values: [] }] };
}

function ciliumPorts(s: CiliumSectionIn): PortMatch[] | 'all' {
  const out: PortMatch[] = [];
  const toPorts = s.toPorts ?? [];
  const icmps = s.icmps ?? [];
  for (const pr of toPorts) {
    const ports = pr.ports ?? [];
    // A port rule without ports: every port of TCP, UDP and SCTP.
    if (ports.length === 0) out.push({ protocol: PROTO_ANY_L4, port: 0 });
    for (const p of ports) {
      const proto = p.protocol ?? 'ANY';
      const protocol = proto === 'ANY' ? PROTO_ANY_L4 : proto === 'ICMPV6' ? Proto.ICMPV6 : Proto[proto];
      const m: PortMatch = { protocol, port: p.port ?? 0 };
      if (p.endPort !== undefined) m.endPort = p.endPort;
      const dns = pr.rules?.dns ?? [];
      if (dns.length > 0) m.dns = dns.map(fqdnSelectorOf);
      out.push(m);
    }
  }
  for (const r of icmps) {
    for (const f of r.fields) {
      const family = f.family ?? 'IPv4';
      // The ICMP type sits in the port slot; an exact one-value range (type 0 is EchoReply, not "all").
      const type = icmpTypeNumber(f.type, family)!;
      out.push({ protocol: family === 'IPv6' ? Proto.ICMPV6 : Proto.ICMP, port: type, endPort: type });
    }
  }
  if (toPorts.length === 0 && icmps.length === 0) return 'all';
  return out;
}

export function ciliumRule(spec: CiliumRule, namespace: string, policyRef: string, prefix: string): PolicyRule {
  const ref = `${policyRef}${prefix ? ` ${prefix.slice(0, -1)}` : ''}`;
  const sections: RuleSection[] = [];
  const lists: Array<[keyof CiliumRule & string, Direction, boolean]> = [
    ['ingress', 'ingress', false],
    ['ingressDeny', 'ingress', true],
    ['egress', 'egress', false],
    ['egressDeny', 'egress', true],
  ];
  for (const [field, direction, deny] of lists) {
    const list = (spec[field] ?? []) as CiliumSectionIn[];
    list.forEach((s, i) => {
      const peers = ciliumPeers(s, direction, namespace);
      const ports = ciliumPorts(s);
      const empty = peers === 'all' && ports === 'all';
      sections.push({
        ref: `${policyRef} ${prefix}${field}[${i}]`,
        direction,
        deny,
        // `ingress: [{}]` selects nothing (upstream ignores the empty rule) but still isolates.
        peers: empty ? [] : peers,
        ports: empty ? [] : ports,
      });
    });
  }
  const has = (d: Direction) => sections.some((s) => s.direction === d);
  return {
    ref,
    subject: ciliumSubjectSelector(selectorFromLabelSelector(labelSelectorInput(spec.endpointSelector), 'any'), namespace),
    sections,
    defaultDeny: {
      ingress: spec.enableDefaultDeny?.ingress ?? has('ingress'),
      egress: spec.enableDefaultDeny?.egress ?? has('egress'),
    },
  };
}
