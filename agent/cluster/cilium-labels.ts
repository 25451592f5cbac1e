import { CLUSTER_LABEL, identityLabels, type Label } from '../../common/labels.js';

/** The label Cilium gives every identity of a cluster (policies select remote workloads by it). */
export { CLUSTER_LABEL };

/** A workload's identity labels in cluster mode: the single-host ones plus the cluster label. */
export function clusterIdentityLabels(
  clusterName: string,
  workloadLabels: Record<string, string>,
  namespace: string,
  namespaceLabels?: Record<string, string>,
): Label[] {
  const labels = identityLabels(workloadLabels, namespace, namespaceLabels).filter((l) => l.key !== CLUSTER_LABEL);
  return [...labels, { source: 'k8s', key: CLUSTER_LABEL, value: clusterName }];
}

/**
 * The label set as Cilium writes it into the kvstore (pkg/labels SortedList / FormatForKVStore):
 * every label `source:key=value;`, ordered by key, the trailing `;` included. This string is part of
 * etcd keys that Cilium agents read, so it must match byte for byte. Cilium holds one label per key;
 * kitnet may hold the same key under two sources, ordered by source then so the text stays canonical.
 */
export function kvstoreLabelsKey(labels: readonly Label[]): string {
  const sorted = [...labels].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.source < b.source ? -1 : a.source > b.source ? 1 : 0));
  return sorted.map((l) => `${l.source}:${l.key}=${l.value};`).join('');
}

/** One `source:key=value` (the first `:` and `=` split), as the store and the kvstore write labels. */
export function labelTextParse(text: string): Label | undefined {
  const colon = text.indexOf(':');
  const eq = text.indexOf('=', colon + 1);
  if (colon <= 0 || eq < 0) return undefined;
  return { source: text.slice(0, colon), key: text.slice(colon + 1, eq), value: text.slice(eq + 1) };
}

/**
 * The labels of a kvstore label key (kvstoreLabelsKey's format, as Cilium writes `id/<n>` values), or
 * undefined when it is not one (no trailing `;`, a label without source or `=`): such a value is data
 * from another writer, not trusted.
 */
export function kvstoreLabelsKeyParse(key: string): Label[] | undefined {
  if (!key.endsWith(';')) return undefined;
  const labels = key.slice(0, -1).split(';').map(labelTextParse);
  return labels.some((l) => l === undefined) ? undefined : (labels as Label[]);
}
