/** Kubernetes NetworkPolicy -> PolicyRule, as Cilium translates it (pkg/k8s/network_policy.go). */
import { NAMESPACE_LABELS_PREFIX } from '../../common/labels.js';
import type { LabelSelector } from './schema/common.js';
import type { NetworkPolicyDoc, NetworkPolicyPeer, NetworkPolicyPort } from './schema/networkpolicy.js';
import { labelSelectorInput, namespaceExists, namespaceIs, selectorAnd, selectorFromLabelSelector } from './selector.js';
import { Proto } from './types.js';
import type { Direction, Peer, PolicyRule, PortMatch, RuleSection, Selector } from './types.js';

const k8sSelector = (s: LabelSelector | null | undefined): Selector => selectorFromLabelSelector(labelSelectorInput(s), 'k8s');

/** Cilium's translation of a NetworkPolicyPeer with selectors (pkg/k8s/network_policy.go). */
function npPeer(peer: NetworkPolicyPeer, namespace: string): Peer {
  // Kubernetes selects by address: an ipBlock covers workloads too (unlike Cilium's own CIDR rules).
  if (peer.ipBlock) return { kind: 'cidr', cidr: peer.ipBlock.cidr, except: [...(peer.ipBlock.except ?? [])], selectsWorkloads: true };
  let sel: Selector;
  if (peer.namespaceSelector) {
    sel = selectorFromLabelSelector(labelSelectorInput(peer.namespaceSelector), 'k8s', (k) => `${NAMESPACE_LABELS_PREFIX}${k}`);
    // An empty namespaceSelector selects every namespace: the endpoint must have one.
    if (sel.requirements.length === 0) sel = namespaceExists();
  } else {
    sel = namespaceIs(namespace);
  }
  if (peer.podSelector) sel = selectorAnd(sel, k8sSelector(peer.podSelector));
  return { kind: 'selector', selector: sel };
}

function npPorts(ports: NetworkPolicyPort[] | null | undefined): PortMatch[] | 'all' {
  if (!ports || ports.length === 0) return 'all';
  return ports.map((p) => {
    const protocol = p.protocol === 'UDP' ? Proto.UDP : p.protocol === 'SCTP' ? Proto.SCTP : Proto.TCP;
    const m: PortMatch = { protocol, port: p.port ?? 0 };
    if (p.endPort != null) m.endPort = p.endPort;
    return m;
  });
}

export function networkPolicyRule(doc: NetworkPolicyDoc, namespace: string, ref: string): PolicyRule {
  const spec = doc.spec;
  const types = spec.policyTypes ?? (spec.egress && spec.egress.length > 0 ? ['Ingress', 'Egress'] : ['Ingress']);
  const sections: RuleSection[] = [];
  const dirs: Array<[Direction, 'Ingress' | 'Egress']> = [
    ['ingress', 'Ingress'],
    ['egress', 'Egress'],
  ];
  for (const [direction, type] of dirs) {
    if (!types.includes(type)) continue;
    const rules = direction === 'ingress' ? (spec.ingress ?? []) : (spec.egress ?? []);
    rules.forEach((rule, i) => {
      const peersIn = direction === 'ingress' ? (rule as { from?: NetworkPolicyPeer[] | null }).from : (rule as { to?: NetworkPolicyPeer[] | null }).to;
      // Empty or missing from/to: all sources/destinations (identity 0).
      const peers = !peersIn || peersIn.length === 0 ? 'all' : peersIn.map((p) => npPeer(p, namespace));
      sections.push({ ref: `${ref} ${direction}[${i}]`, direction, deny: false, peers, ports: npPorts(rule.ports) });
    });
    if (rules.length === 0) {
      // Isolated with nothing allowed: an empty section keeps the default-deny.
      sections.push({ ref: `${ref} (policyTypes ${type}, no ${direction} rules)`, direction, deny: false, peers: [], ports: [] });
    }
  }
  return {
    ref,
    subject: selectorAnd(k8sSelector(spec.podSelector), namespaceIs(namespace)),
    sections,
    defaultDeny: { ingress: true, egress: true },
  };
}
