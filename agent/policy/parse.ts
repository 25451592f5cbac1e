/**
 * Parsing and validation of policy documents, and normalisation into PolicyRule objects.
 *
 * Accepts YAML (one or more `---` documents) or JSON (an object, an array, or a `kind: List` with
 * `items`), in any mix. Every document is validated; any error rejects the whole batch, and each error
 * names the document (1-based position in the batch, kind, namespace/name) and the field path.
 */
import { yamlNestingProblem, yamlShapeEstimate } from '../../common/yaml-guard.js';
import YAML from 'yaml';
import type { z } from 'zod';
import { KitnetError } from '../../common/errors.js';
import { NAMESPACE_LABELS_PREFIX } from '../../common/labels.js';
import { fqdnSelectorKey } from './fqdn.js';
import type { FqdnSelector } from './fqdn.js';
import { POLICY_LIMITS } from './limits.js';
import { icmpTypeNumber } from './ports.js';
import { CiliumClusterwideNetworkPolicySchema, CiliumNetworkPolicySchema } from './schema/cilium.js';
import type { CiliumFQDNSelector, CiliumPortProtocol, CiliumRule } from './schema/cilium.js';
import type { LabelSelector } from './schema/common.js';
import { NetworkPolicySchema } from './schema/networkpolicy.js';
import type { NetworkPolicyDoc, NetworkPolicyPeer, NetworkPolicyPort } from './schema/networkpolicy.js';
import {
  ciliumPeerSelector,
  ciliumSubjectSelector,
  namespaceExists,
  namespaceIs,
  selectorAnd,
  selectorFromLabelSelector,
} from './selector.js';
import type { LabelSelectorInput } from './selector.js';
import { Proto, PROTO_ANY_L4 } from './types.js';
import type { Direction, EntityName, ParsedPolicy, Peer, PolicyKind, PolicyRule, PortMatch, RuleSection, Selector } from './types.js';

export interface PolicyIssue {
  /** 1-based position of the document in the batch (after expanding arrays and Lists). */
  document: number;
  /** `CiliumNetworkPolicy prod/allow-web`, or `?` parts when the document does not say. */
  ref: string;
  /** Field path such as `spec.ingress[0].toPorts[0].ports[0].port`; empty for the document itself. */
  path: string;
  message: string;
}

/**
 * Thrown for an invalid batch, with code AGENT_ERR_POLICY_INVALID (400).
 * `issues` lists every problem found.
 */
export class PolicyValidationError extends KitnetError {
  override name = 'PolicyValidationError';
  readonly issues: PolicyIssue[];
  constructor(issues: PolicyIssue[]) {
    const lines = issues.slice(0, POLICY_LIMITS.issues).map(issueFormat);
    const shown = lines.join('\n') + (issues.length >= POLICY_LIMITS.issues ? `\n(validation stopped after ${POLICY_LIMITS.issues} problems; more may follow)` : '');
    super('AGENT_ERR_POLICY_INVALID', shown, { field: issues[0]?.path });
    this.issues = issues;
  }
}

/** A request beyond POLICY_LIMITS (AGENT_ERR_POLICY_TOO_LARGE, 413), refused before its documents are built. */
export class PolicyTooLargeError extends KitnetError {
  override name = 'PolicyTooLargeError';
  constructor(what: string, limit: string) {
    super('AGENT_ERR_POLICY_TOO_LARGE', `the request holds ${what}; the limit is ${limit} per request (split it into several requests); nothing was applied`);
  }
}

function shapeCheck(documents: number, nodes: number, estimated: boolean): void {
  const about = estimated ? 'about ' : '';
  if (documents > POLICY_LIMITS.documents) throw new PolicyTooLargeError(`${about}${documents} policy documents`, `${POLICY_LIMITS.documents} documents`);
  if (nodes > POLICY_LIMITS.nodes) throw new PolicyTooLargeError(`${estimated ? 'about ' : 'more than '}${nodes} YAML/JSON nodes`, `${POLICY_LIMITS.nodes} nodes`);
}

/**
 * Nodes (objects, arrays, scalars) in a parsed value, counted without recursion and stopping once
 * past `max` (the count returned is then max + 1); and how deep they nest.
 */
export function valueShape(root: unknown, max: number = POLICY_LIMITS.nodes): { nodes: number; depth: number } {
  let nodes = 0;
  let depth = 0;
  const stack: Array<[unknown, number]> = [[root, 1]];
  while (stack.length > 0) {
    const [v, d] = stack.pop()!;
    if (d > depth) depth = d;
    if (++nodes > max) break;
    if (Array.isArray(v)) for (const x of v) stack.push([x, d + 1]);
    else if (typeof v === 'object' && v !== null) for (const k in v) stack.push([(v as Record<string, unknown>)[k], d + 1]);
  }
  return { nodes, depth };
}

/**
 * Refuses documents that are already values (a JSON request body) beyond POLICY_LIMITS: the node
 * count stops at the limit, so this costs at most the limit's worth of steps. Deep nesting is refused
 * too (policies nest about a dozen levels): copying such a value to the parser thread recurses.
 */
export function policyObjectsBound(raw: readonly unknown[]): void {
  let documents = 0;
  for (const v of raw) documents += isObject(v) && typeof v.kind === 'string' && v.kind.endsWith('List') && Array.isArray(v.items) ? v.items.length : 1;
  const shape = valueShape(raw);
  if (shape.depth > POLICY_LIMITS.depth) {
    throw new PolicyValidationError([{ document: 1, ref: 'JSON', path: '', message: `nested too deeply (more than ${POLICY_LIMITS.depth} levels)` }]);
  }
  shapeCheck(documents, shape.nodes, false);
}

export function issueFormat(i: PolicyIssue): string {
  return `document ${i.document} (${i.ref})${i.path ? `: ${i.path}` : ''}: ${i.message}`;
}

export function pathFormat(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out;
}

const KINDS: Record<string, { apiVersion: string; namespaced: boolean }> = {
  NetworkPolicy: { apiVersion: 'networking.k8s.io/v1', namespaced: true },
  CiliumNetworkPolicy: { apiVersion: 'cilium.io/v2', namespaced: true },
  CiliumClusterwideNetworkPolicy: { apiVersion: 'cilium.io/v2', namespaced: false },
};

/** Splits text into raw documents. Syntax errors become issues of document 0 positions. */
function documentsSplit(text: string, contentType?: string): unknown[] {
  const trimmed = text.trim();
  const explicitJson = contentType !== undefined && /json/i.test(contentType);
  const looksJson = explicitJson || (!contentType && (trimmed.startsWith('{') || trimmed.startsWith('[')));
  let roots: unknown[] | undefined;
  if (looksJson) {
    try {
      roots = [JSON.parse(trimmed)];
    } catch (e) {
      // `[` / `{` may also start YAML flow style; only an explicit JSON content type insists.
      if (explicitJson) {
        throw new PolicyValidationError([{ document: 1, ref: 'JSON', path: '', message: `not valid JSON: ${(e as Error).message}` }]);
      }
    }
  }
  if (!roots) {
    const nesting = yamlNestingProblem(text);
    if (nesting) throw new PolicyValidationError([{ document: 1, ref: 'YAML', path: '', message: nesting }]);
    const shape = yamlShapeEstimate(text);
    shapeCheck(shape.documents, shape.nodes, true);
    let docs: ReturnType<typeof YAML.parseAllDocuments>;
    try {
      docs = YAML.parseAllDocuments(text);
    } catch (e) {
      // Nesting too deep for the parser's recursion.
      throw new PolicyValidationError([{ document: 1, ref: 'YAML', path: '', message: `not valid YAML: ${(e as Error).message}` }]);
    }
    const list = Array.isArray(docs) ? docs : [docs];
    const yamlRoots: unknown[] = [];
    roots = yamlRoots;
    const issues: PolicyIssue[] = [];
    list.forEach((d, i) => {
      if (d.errors.length > 0) {
        issues.push({ document: i + 1, ref: 'YAML', path: '', message: `not valid YAML: ${d.errors[0]!.message}` });
        return;
      }
      let v: unknown;
      try {
        // Alias bombs ("Excessive alias count") and too deep nesting fail here.
        v = d.toJS();
      } catch (e) {
        issues.push({ document: i + 1, ref: 'YAML', path: '', message: `not valid YAML: ${(e as Error).message}` });
        return;
      }
      if (v !== null && v !== undefined) yamlRoots.push(v);
    });
    if (issues.length) throw new PolicyValidationError(issues);
  }
  const out: unknown[] = [];
  // Lists of lists are fine; a thousand levels of them are an attack on the stack.
  const expand = (v: unknown, depth: number) => {
    if (depth > 16) throw new PolicyValidationError([{ document: 1, ref: 'document', path: '', message: 'lists nested more than 16 levels deep' }]);
    if (Array.isArray(v)) v.forEach((x) => expand(x, depth + 1));
    else if (isObject(v) && typeof v.kind === 'string' && v.kind.endsWith('List') && Array.isArray(v.items)) v.items.forEach((x) => expand(x, depth + 1));
    else out.push(v);
  };
  // The estimate bounded the YAML parser's work; the parsed value is counted exactly.
  shapeCheck(0, valueShape(roots).nodes, false);
  roots.forEach((r) => expand(r, 0));
  shapeCheck(out.length, 0, false);
  return out;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

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

function zodIssues(document: number, ref: string, error: z.ZodError): PolicyIssue[] {
  return error.issues.slice(0, POLICY_LIMITS.issues).flatMap((i) =>
    i.code === 'unrecognized_keys'
      ? i.keys.map((k) => ({ document, ref, path: pathFormat([...i.path, k]), message: 'unknown field' }))
      : [{ document, ref, path: pathFormat(i.path), message: i.message }],
  );
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

// ---------------------------------------------------------------- Kubernetes NetworkPolicy

const k8sSelector = (s: LabelSelector | null | undefined): Selector => selectorFromLabelSelector(selIn(s), 'k8s');

function selIn(s: LabelSelector | null | undefined): LabelSelectorInput | undefined {
  if (!s) return undefined;
  return { matchLabels: s.matchLabels ?? undefined, matchExpressions: s.matchExpressions ?? undefined };
}

/** Cilium's translation of a NetworkPolicyPeer with selectors (pkg/k8s/network_policy.go). */
function npPeer(peer: NetworkPolicyPeer, namespace: string): Peer {
  // Kubernetes selects by address: an ipBlock covers workloads too (unlike Cilium's own CIDR rules).
  if (peer.ipBlock) return { kind: 'cidr', cidr: peer.ipBlock.cidr, except: [...(peer.ipBlock.except ?? [])], selectsWorkloads: true };
  let sel: Selector;
  if (peer.namespaceSelector) {
    sel = selectorFromLabelSelector(selIn(peer.namespaceSelector), 'k8s', (k) => `${NAMESPACE_LABELS_PREFIX}${k}`);
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

function networkPolicyRule(doc: NetworkPolicyDoc, namespace: string, ref: string): PolicyRule {
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

// ---------------------------------------------------------------- Cilium

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
    peers.push({ kind: 'selector', selector: ciliumPeerSelector(selectorFromLabelSelector(selIn(e), 'any'), namespace) });
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

function ciliumRule(spec: CiliumRule, namespace: string, policyRef: string, prefix: string): PolicyRule {
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
    subject: ciliumSubjectSelector(selectorFromLabelSelector(selIn(spec.endpointSelector), 'any'), namespace),
    sections,
    defaultDeny: {
      ingress: spec.enableDefaultDeny?.ingress ?? has('ingress'),
      egress: spec.enableDefaultDeny?.egress ?? has('egress'),
    },
  };
}

