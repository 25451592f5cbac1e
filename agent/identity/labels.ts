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

const KNOWN_SOURCES = new Set(['k8s', 'reserved', 'cidr', 'fqdn', 'unspec', 'any', 'container', 'vm', 'kitnet']);

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
  for (const [raw, value] of Object.entries(workloadLabels)) add({ ...labelKeyParse(raw), value });
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
