/**
 * Label selectors over identity labels (`source:key=value`), with Cilium's source semantics:
 * a selector key `k8s:app` matches only labels of source `k8s`, `any:app` or a bare `app` (in Cilium
 * policies) matches `app` from every source. Kubernetes NetworkPolicy selectors are all `k8s:`.
 */
import { NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX } from '../../common/labels.js';
import type { LabelSelector } from './schema/common.js';
import type { Selector, SelectorOperator, SelectorRequirement } from './types.js';

export interface ParsedLabel {
  source: string;
  key: string;
  value: string;
}

/** `k8s:app=web` -> {k8s, app, web}; `reserved:host` -> {reserved, host, ''}. */
export function identityLabelParse(text: string): ParsedLabel {
  const colon = text.indexOf(':');
  const source = colon >= 0 ? text.slice(0, colon) : 'unspec';
  const rest = colon >= 0 ? text.slice(colon + 1) : text;
  // CIDR labels carry the prefix as key and may contain ':' and '=' never.
  const eq = rest.indexOf('=');
  return eq >= 0
    ? { source, key: rest.slice(0, eq), value: rest.slice(eq + 1) }
    : { source, key: rest, value: '' };
}

/** Input form of a Kubernetes LabelSelector (validated by the schemas). */
export interface LabelSelectorInput {
  matchLabels?: Record<string, string> | undefined;
  matchExpressions?: Array<{ key: string; operator: SelectorOperator; values?: string[] | undefined }> | undefined;
}

/** A schema-validated LabelSelector (nulls allowed) as selectorFromLabelSelector's input. */
export function labelSelectorInput(s: LabelSelector | null | undefined): LabelSelectorInput | undefined {
  if (!s) return undefined;
  return { matchLabels: s.matchLabels ?? undefined, matchExpressions: s.matchExpressions ?? undefined };
}

/** Splits a selector key into source and key. `defaultSource` applies when the key has no prefix. */
export function selectorKeyParse(raw: string, defaultSource: string): { source: string; key: string } {
  const colon = raw.indexOf(':');
  if (colon > 0) return { source: raw.slice(0, colon), key: raw.slice(colon + 1) };
  return { source: defaultSource, key: raw };
}

/**
 * Converts a LabelSelector. `keyMap` rewrites keys before the source is parsed (used for NP namespace
 * selectors, whose keys become `io.cilium.k8s.namespace.labels.<key>`).
 */
export function selectorFromLabelSelector(
  input: LabelSelectorInput | undefined,
  defaultSource: string,
  keyMap: (key: string) => string = (k) => k,
): Selector {
  const requirements: SelectorRequirement[] = [];
  for (const [k, v] of Object.entries(input?.matchLabels ?? {})) {
    requirements.push({ ...selectorKeyParse(keyMap(k), defaultSource), operator: 'In', values: [v] });
  }
  for (const e of input?.matchExpressions ?? []) {
    requirements.push({
      ...selectorKeyParse(keyMap(e.key), defaultSource),
      operator: e.operator,
      values: e.operator === 'In' || e.operator === 'NotIn' ? [...(e.values ?? [])] : [],
    });
  }
  return { requirements };
}

export function selectorHasKey(sel: Selector, source: string, key: string): boolean {
  return sel.requirements.some((r) => r.source === source && r.key === key);
}

export function selectorHasKeyPrefix(sel: Selector, source: string, prefix: string): boolean {
  return sel.requirements.some((r) => r.source === source && r.key.startsWith(prefix));
}

export function selectorHasSource(sel: Selector, source: string): boolean {
  return sel.requirements.some((r) => r.source === source);
}

export function selectorAnd(a: Selector, b: Selector): Selector {
  return { requirements: [...a.requirements, ...b.requirements] };
}

export const namespaceIs = (ns: string): Selector => ({
  requirements: [{ source: 'k8s', key: NAMESPACE_LABEL, operator: 'In', values: [ns] }],
});

export const namespaceExists = (): Selector => ({
  requirements: [{ source: 'k8s', key: NAMESPACE_LABEL, operator: 'Exists', values: [] }],
});

/**
 * Upstream's implicit scoping of peer selectors in Cilium policies (pkg/k8s/apis/cilium.io/utils,
 * getEndpointSelector): selectors on reserved labels stay as they are; otherwise, unless the selector
 * names the pod namespace label (`k8s:` or `any:`), a namespaced policy restricts it to its namespace
 * (unless it selects on namespace labels) and a cluster-wide policy restricts it to endpoints that have
 * a namespace at all.
 */
export function ciliumPeerSelector(sel: Selector, namespace: string): Selector {
  if (selectorHasSource(sel, 'reserved')) return sel;
  if (selectorHasKey(sel, 'k8s', NAMESPACE_LABEL) || selectorHasKey(sel, 'any', NAMESPACE_LABEL)) return sel;
  if (namespace === '') return selectorAnd(sel, namespaceExists());
  if (selectorHasKeyPrefix(sel, 'k8s', NAMESPACE_LABELS_PREFIX) || selectorHasKeyPrefix(sel, 'any', NAMESPACE_LABELS_PREFIX)) {
    return sel;
  }
  return selectorAnd(sel, namespaceIs(namespace));
}

/**
 * Upstream's subject scoping: a namespaced policy's endpointSelector always applies in the policy's
 * namespace (a conflicting namespace match in the selector is replaced); cluster-wide is unscoped.
 */
export function ciliumSubjectSelector(sel: Selector, namespace: string): Selector {
  if (namespace === '') return sel;
  const rest = sel.requirements.filter(
    (r) => !(r.key === NAMESPACE_LABEL && r.source === 'k8s' && r.operator === 'In' && r.values.length === 1),
  );
  return selectorAnd({ requirements: rest }, namespaceIs(namespace));
}

function labelMatches(req: SelectorRequirement, l: ParsedLabel): boolean {
  return l.key === req.key && (req.source === 'any' || req.source === l.source);
}

/** Whether a requirement holds for a label set. NotIn / DoesNotExist hold when the key is absent. */
export function requirementMatches(req: SelectorRequirement, labels: readonly ParsedLabel[]): boolean {
  const found = labels.filter((l) => labelMatches(req, l));
  switch (req.operator) {
    case 'In':
      return found.some((l) => req.values.includes(l.value));
    case 'NotIn':
      return !found.some((l) => req.values.includes(l.value));
    case 'Exists':
      return found.length > 0;
    case 'DoesNotExist':
      return found.length === 0;
  }
}

export function selectorMatches(sel: Selector, labels: readonly ParsedLabel[]): boolean {
  return sel.requirements.every((r) => requirementMatches(r, labels));
}

/** Convenience: match against label strings such as `k8s:app=web`. */
export function selectorMatchesStrings(sel: Selector, labels: readonly string[]): boolean {
  return selectorMatches(sel, labels.map(identityLabelParse));
}

export function selectorFormat(sel: Selector): string {
  if (sel.requirements.length === 0) return '{}';
  return sel.requirements
    .map((r) => {
      const k = `${r.source}:${r.key}`;
      switch (r.operator) {
        case 'In':
          return r.values.length === 1 ? `${k}=${r.values[0]}` : `${k} in (${r.values.join(',')})`;
        case 'NotIn':
          return `${k} notin (${r.values.join(',')})`;
        case 'Exists':
          return k;
        case 'DoesNotExist':
          return `!${k}`;
      }
    })
    .join(',');
}
