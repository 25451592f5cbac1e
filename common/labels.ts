/**
 * Cilium-style labels: `source:key=value`. Workload labels default to source `k8s`, so a VM labelled
 * `app=web` matches the same selectors as a pod labelled `app=web`.
 */
export interface Label {
  source: string;
  key: string;
  value: string;
}

export const DEFAULT_SOURCE = 'k8s';
export const NAMESPACE_LABEL = 'io.kubernetes.pod.namespace';
export const NAMESPACE_LABELS_PREFIX = 'io.cilium.k8s.namespace.labels.';
export const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';
/** The cluster an identity belongs to (Cilium adds it to every identity in cluster mode). */
export const CLUSTER_LABEL = 'io.cilium.k8s.policy.cluster';

const KNOWN_SOURCES = new Set(['k8s', 'reserved', 'cidr', 'fqdn', 'unspec', 'any', 'container', 'vm', 'kitnet']);

/** Sources only kitnet gives out (reserved identities, CIDR and FQDN selections): never a workload's. */
const DERIVED_SOURCES = new Set(['reserved', 'cidr', 'fqdn']);
/** Label keys (under any source) kitnet derives from the namespace or Cilium reserves for policy metadata. */
const DERIVED_KEY_PREFIXES = [NAMESPACE_LABELS_PREFIX, 'io.cilium.k8s.policy.'];

/**
 * Why a workload may not carry this label key, if it may not: the keys kitnet derives itself
 * (`io.kubernetes.pod.namespace`, `io.cilium.k8s.namespace.labels.*`, `io.cilium.k8s.policy.*`) and the
 * sources it alone gives out (`reserved:`, `cidr:`, `fqdn:`), with or without a source prefix. A
 * workload labelled `io.cilium.k8s.namespace.labels.team=prod` would otherwise satisfy another
 * namespace's namespaceSelector. Cilium does the same for pods (its pod label sanitising overwrites
 * these keys). Namespace labels are not checked here: there they are plain keys.
 */
export function workloadLabelKeyForbidden(raw: string): string | undefined {
  const colon = raw.indexOf(':');
  const source = colon > 0 ? raw.slice(0, colon) : undefined;
  if (source !== undefined && DERIVED_SOURCES.has(source)) {
    return `label "${raw}": the ${source}: source is kitnet's own (reserved identities, CIDR and FQDN selections); a workload cannot carry it`;
  }
  const { key } = labelKeyParse(raw);
  if (key === NAMESPACE_LABEL) return `label "${raw}": kitnet derives ${NAMESPACE_LABEL} from the workload's namespace; a workload label cannot set it`;
  const prefix = DERIVED_KEY_PREFIXES.find((p) => key.startsWith(p) || key === p.slice(0, -1));
  if (prefix) return `label "${raw}": keys under ${prefix}* are kitnet's (namespace labels, policy metadata); a workload label cannot set them`;
  return undefined;
}

/** `k8s:app` -> {source:k8s, key:app}; `app` -> default source; unknown prefixes stay part of the key. */
export function labelKeyParse(raw: string): { source: string; key: string } {
  const colon = raw.indexOf(':');
  if (colon > 0) {
    const source = raw.slice(0, colon);
    if (KNOWN_SOURCES.has(source)) return { source, key: raw.slice(colon + 1) };
  }
  return { source: DEFAULT_SOURCE, key: raw };
}

export function labelFormat(l: Label): string {
  return `${l.source}:${l.key}=${l.value}`;
}

export function labelCompare(a: Label, b: Label): number {
  return labelFormat(a) < labelFormat(b) ? -1 : labelFormat(a) > labelFormat(b) ? 1 : 0;
}

/**
 * The identity-relevant label set of a workload, per DESIGN: its own labels, the namespace label, and
 * the namespace's labels (which always include kubernetes.io/metadata.name). Sorted and de-duplicated,
 * so equal sets produce equal keys.
 */
export function identityLabels(
  workloadLabels: Record<string, string>,
  namespace: string,
  namespaceLabels: Record<string, string> = {},
): Label[] {
  const out = new Map<string, Label>();
  const add = (l: Label) => out.set(`${l.source}:${l.key}`, l);
  // Forbidden keys are refused at the API; a row stored before that check must not forge either.
  for (const [raw, value] of Object.entries(workloadLabels)) {
    if (workloadLabelKeyForbidden(raw) === undefined) add({ ...labelKeyParse(raw), value });
  }
  add({ source: 'k8s', key: NAMESPACE_LABEL, value: namespace });
  const nsLabels = { ...namespaceLabels, [NAMESPACE_NAME_LABEL]: namespace };
  for (const [key, value] of Object.entries(nsLabels)) {
    add({ source: 'k8s', key: `${NAMESPACE_LABELS_PREFIX}${key}`, value });
  }
  return [...out.values()].sort(labelCompare);
}

/** Canonical text of a label set: the key under which an identity is stored. */
export function labelSetKey(labels: readonly Label[]): string {
  return [...labels].sort(labelCompare).map(labelFormat).join(';');
}
