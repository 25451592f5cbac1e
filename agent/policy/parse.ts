/**
 * Parsing and validation of policy documents, and normalisation into PolicyRule objects.
 *
 * Accepts YAML (one or more `---` documents) or JSON (an object, an array, or a `kind: List` with
 * `items`), in any mix (parse-documents.ts). Every document is validated; any error rejects the whole
 * batch, and each error names the document and the field path (parse-errors.ts). Valid documents
 * become rules by kind (rules-networkpolicy.ts, rules-cilium.ts).
 */
import { documentsSplit, isObject } from './parse-documents.js';
import { PolicyValidationError, zodIssues, type PolicyIssue } from './parse-errors.js';
import { ciliumRule } from './rules-cilium.js';
import { networkPolicyRule } from './rules-networkpolicy.js';
import { CiliumClusterwideNetworkPolicySchema, CiliumNetworkPolicySchema } from './schema/cilium.js';
import type { CiliumRule } from './schema/cilium.js';
import { NetworkPolicySchema } from './schema/networkpolicy.js';
import { POLICY_LIMITS } from './limits.js';
import type { ParsedPolicy, PolicyKind, PolicyRule } from './types.js';

const KINDS: Record<string, { apiVersion: string; namespaced: boolean }> = {
  NetworkPolicy: { apiVersion: 'networking.k8s.io/v1', namespaced: true },
  CiliumNetworkPolicy: { apiVersion: 'cilium.io/v2', namespaced: true },
  CiliumClusterwideNetworkPolicy: { apiVersion: 'cilium.io/v2', namespaced: false },
};

function docRef(v: unknown): string {
  if (!isObject(v)) return '?';
  const kind = typeof v.kind === 'string' ? v.kind : '?';
  const md = isObject(v.metadata) ? v.metadata : {};
  const name = typeof md.name === 'string' ? md.name : '?';
  const info = KINDS[kind];
  if (info && !info.namespaced) return `${kind} ${name}`;
  const ns = typeof md.namespace === 'string' ? md.namespace : 'default';
  return `${kind} ${ns}/${name}`;
}

/**
 * Parses and validates a batch. Throws PolicyValidationError listing every problem; on success every
 * document is returned normalised, in order.
 */
export function policiesParse(text: string, contentType?: string, options: ParseOptions = {}): ParsedPolicy[] {
  const raw = documentsSplit(text, contentType);
  return policiesFromObjects(raw, options);
}

export interface ParseOptions {
  /**
   * Accept `toFQDNs` and `rules.dns` (default: yes, enforced by the DNS proxy, agent/dns/). `false`
   * refuses them, for a caller without the proxy.
   */
  dnsPolicy?: boolean;
}

/** Why DNS-aware policy is refused where the DNS proxy does not run (ParseOptions.dnsPolicy false). */
export const DNS_POLICY_NOT_ENFORCED =
  'is valid but not supported here: without the DNS proxy kitnet cannot enforce toFQDNs or DNS rules as Cilium does (issue #17); the policy was not applied';

/** As policiesParse, for documents that are already objects (e.g. a JSON request body). */
export function policiesFromObjects(raw: readonly unknown[], options: ParseOptions = {}): ParsedPolicy[] {
  const issues: PolicyIssue[] = [];
  const out: ParsedPolicy[] = [];
  const seen = new Map<string, number>();
  for (let idx = 0; idx < raw.length && issues.length < POLICY_LIMITS.issues; idx++) {
    const v = raw[idx];
    const n = idx + 1;
    const ref = docRef(v);
    if (!isObject(v)) {
      issues.push({ document: n, ref, path: '', message: 'must be an object with apiVersion, kind, metadata and spec' });
      continue;
    }
    const kind = v.kind;
    const info = typeof kind === 'string' ? KINDS[kind] : undefined;
    if (!info) {
      issues.push({
        document: n,
        ref,
        path: 'kind',
        message: `unsupported kind ${JSON.stringify(kind)}; expected NetworkPolicy (networking.k8s.io/v1), CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy (cilium.io/v2)`,
      });
      continue;
    }
    if (v.apiVersion !== info.apiVersion) {
      issues.push({
        document: n,
        ref,
        path: 'apiVersion',
        message: `unsupported apiVersion ${JSON.stringify(v.apiVersion)} for ${kind as string}; expected ${info.apiVersion}`,
      });
      continue;
    }
    const before = issues.length;
    let parsed: ParsedPolicy | undefined;
    try {
      parsed = documentParse(v, kind as PolicyKind, ref, n, issues, options);
    } catch (e) {
      issues.push({ document: n, ref, path: '', message: (e as Error).message });
    }
    if (issues.length > before || !parsed) continue;
    const key = `${parsed.kind}/${parsed.namespace}/${parsed.name}`;
    const dup = seen.get(key);
    if (dup !== undefined) {
      issues.push({ document: n, ref, path: 'metadata.name', message: `duplicates document ${dup} in this batch` });
      continue;
    }
    seen.set(key, n);
    out.push(parsed);
  }
  if (issues.length) throw new PolicyValidationError(issues);
  return out;
}

function documentParse(v: Record<string, unknown>, kind: PolicyKind, ref: string, n: number, issues: PolicyIssue[], options: ParseOptions): ParsedPolicy | undefined {
  if (kind === 'NetworkPolicy') {
    const r = NetworkPolicySchema.safeParse(v);
    if (!r.success) {
      issues.push(...zodIssues(n, ref, r.error));
      return undefined;
    }
    const namespace = r.data.metadata.namespace ?? 'default';
    const ref2 = `${kind} ${namespace}/${r.data.metadata.name}`;
    return {
      kind,
      apiVersion: r.data.apiVersion,
      namespace,
      name: r.data.metadata.name,
      ref: ref2,
      rules: [networkPolicyRule(r.data, namespace, ref2)],
      document: withNamespace(v, namespace),
    };
  }
  const schema = kind === 'CiliumNetworkPolicy' ? CiliumNetworkPolicySchema : CiliumClusterwideNetworkPolicySchema;
  const r = schema.safeParse(v);
  if (!r.success) {
    issues.push(...zodIssues(n, ref, r.error));
    return undefined;
  }
  const namespace = kind === 'CiliumNetworkPolicy' ? (r.data.metadata.namespace ?? 'default') : '';
  if (kind === 'CiliumClusterwideNetworkPolicy' && r.data.metadata.namespace) {
    issues.push({ document: n, ref, path: 'metadata.namespace', message: 'must not be set on a cluster-wide policy' });
    return undefined;
  }
  const ref2 = namespace ? `${kind} ${namespace}/${r.data.metadata.name}` : `${kind} ${r.data.metadata.name}`;
  if (options.dnsPolicy === false) {
    const before = issues.length;
    if (r.data.spec) dnsPolicyRefuse(r.data.spec, 'spec', n, ref2, issues);
    (r.data.specs ?? []).forEach((s, i) => dnsPolicyRefuse(s, `specs[${i}]`, n, ref2, issues));
    if (issues.length > before) return undefined;
  }
  const rules: PolicyRule[] = [];
  if (r.data.spec) rules.push(ciliumRule(r.data.spec, namespace, ref2, ''));
  (r.data.specs ?? []).forEach((s, i) => rules.push(ciliumRule(s, namespace, ref2, `specs[${i}].`)));
  return {
    kind,
    apiVersion: r.data.apiVersion,
    namespace,
    name: r.data.metadata.name,
    ref: ref2,
    rules,
    document: kind === 'CiliumNetworkPolicy' ? withNamespace(v, namespace) : v,
  };
}

/** The gate of ParseOptions.dnsPolicy: one issue per toFQDNs / rules.dns a validated rule holds. */
function dnsPolicyRefuse(spec: CiliumRule, at: string, n: number, ref: string, issues: PolicyIssue[]): void {
  (spec.egress ?? []).forEach((e, i) => {
    if ((e.toFQDNs?.length ?? 0) > 0) issues.push({ document: n, ref, path: `${at}.egress[${i}].toFQDNs`, message: `toFQDNs ${DNS_POLICY_NOT_ENFORCED}` });
    (e.toPorts ?? []).forEach((pr, j) => {
      if ((pr.rules?.dns?.length ?? 0) > 0) {
        issues.push({ document: n, ref, path: `${at}.egress[${i}].toPorts[${j}].rules.dns`, message: `rules.dns ${DNS_POLICY_NOT_ENFORCED}` });
      }
    });
  });
}

function withNamespace(v: Record<string, unknown>, namespace: string): Record<string, unknown> {
  const md = isObject(v.metadata) ? v.metadata : {};
  return { ...v, metadata: { ...md, namespace } };
}
