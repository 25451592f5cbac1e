import { addressParse, cidrContains, cidrParse, type Cidr } from '../ipam.js';
import type { HubbleEndpoint, HubbleFlowRecord } from './hubble.js';
import { TCP_FLAG_NAMES } from './hubble.js';
import type { FlowFilter as FlowFilterSchema } from '../../common/schemas/flows.js';
import { globMatch } from '../../common/glob.js';

/**
 * Hubble's FlowFilter (observer.proto), the fields kitnet supports. Within one filter every given
 * field must match (AND); within one field any listed value may match (OR). A list of filters
 * matches when any filter does (OR); a blacklist removes what any of its filters match.
 */
export interface FlowFilter {
  source_ip?: string[];
  destination_ip?: string[];
  /** `namespace/` or `namespace/name-prefix`. */
  source_pod?: string[];
  destination_pod?: string[];
  source_workload?: string[];
  destination_workload?: string[];
  /** Label selectors such as `k8s:app=web`, `app in (a,b)`, `!debug`. */
  source_label?: string[];
  destination_label?: string[];
  source_identity?: number[];
  destination_identity?: number[];
  /** Name patterns (hubble's: `*` any run of name characters, dots included) on the names the DNS proxy learned for the address. */
  source_fqdn?: string[];
  destination_fqdn?: string[];
  source_port?: string[];
  destination_port?: string[];
  /** tcp, udp, sctp, icmp (either family), icmpv4, icmpv6, dhcp, dhcpv6 (UDP between the client and server ports), dns (the DNS proxy's L7 flows). */
  protocol?: string[];
  verdict?: string[];
  drop_reason_desc?: string[];
  traffic_direction?: string[];
  ip_version?: string[];
  /** Each entry is a set of flags that must all be set, e.g. `{SYN: true}` or `SYN,ACK`. */
  tcp_flags?: string[];
  reply?: boolean[];
  node_name?: string[];
}

// The API's schema and this type must describe the same thing.
export const _flowFilterAgrees: FlowFilter = {} as FlowFilterSchema;

export const FLOW_FILTER_FIELDS = [
  'source_ip', 'destination_ip', 'source_pod', 'destination_pod', 'source_workload', 'destination_workload',
  'source_label', 'destination_label', 'source_identity', 'destination_identity', 'source_fqdn', 'destination_fqdn', 'source_port', 'destination_port',
  'protocol', 'verdict', 'drop_reason_desc', 'traffic_direction', 'ip_version', 'tcp_flags', 'reply', 'node_name',
] as const satisfies ReadonlyArray<keyof FlowFilter>;

export class FilterError extends Error {
  override name = 'FilterError';
}

type Pred = (r: HubbleFlowRecord) => boolean;

// --- label selectors -----------------------------------------------------------------------------

interface Requirement {
  key: string;
  op: 'eq' | 'neq' | 'in' | 'notin' | 'exists' | 'notexists';
  values: string[];
}

/** Splits on commas that are not inside parentheses. */
function splitTopLevel(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of s) {
    if (ch === '(') depth++;
    if (ch === ')') depth--;
    if (ch === ',' && depth === 0) {
      out.push(cur);
      cur = '';
    } else cur += ch;
  }
  out.push(cur);
  return out.map((p) => p.trim()).filter(Boolean);
}

/** Parses a Kubernetes-style selector string. Keys without a source match any source. */
export function labelSelectorParse(text: string): Requirement[] {
  return splitTopLevel(text).map((part) => {
    let m;
    if ((m = part.match(/^([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)$/))) {
      return { key: m[1]!, op: m[2] as 'in' | 'notin', values: m[3]!.split(',').map((v) => v.trim()).filter(Boolean) };
    }
    if ((m = part.match(/^([^\s!=(),]+)\s*!=\s*(\S*)$/))) return { key: m[1]!, op: 'neq' as const, values: [m[2]!] };
    if ((m = part.match(/^([^\s!=(),]+)\s*==?\s*(\S*)$/))) return { key: m[1]!, op: 'eq' as const, values: [m[2]!] };
    if ((m = part.match(/^!\s*([^\s!=(),]+)$/))) return { key: m[1]!, op: 'notexists' as const, values: [] };
    if ((m = part.match(/^([^\s!=(),]+)$/))) return { key: m[1]!, op: 'exists' as const, values: [] };
    throw new FilterError(`label selector "${text}": cannot parse "${part}"`);
  });
}

const SOURCE_PREFIX = /^(k8s|reserved|cidr|container|vm|kitnet|unspec|any):/;

/** Values of `key` in a label list; a key without a source (or with `any:`) matches every source. */
function labelValues(labels: readonly string[], key: string): string[] {
  const m = key.match(SOURCE_PREFIX);
  const source = m && m[1] !== 'any' ? m[1] : undefined;
  const bareKey = m ? key.slice(m[0].length) : key;
  const out: string[] = [];
  for (const l of labels) {
    const eq = l.indexOf('=');
    const full = eq >= 0 ? l.slice(0, eq) : l;
    const colon = full.indexOf(':');
    const labelSource = colon >= 0 ? full.slice(0, colon) : undefined;
    if (full.slice(colon + 1) === bareKey && (!source || labelSource === source)) out.push(eq >= 0 ? l.slice(eq + 1) : '');
  }
  return out;
}

function selectorPred(text: string): (labels: readonly string[]) => boolean {
  const reqs = labelSelectorParse(text);
  return (labels) =>
    reqs.every((r) => {
      const vals = labelValues(labels, r.key);
      switch (r.op) {
        case 'eq':
          return vals.includes(r.values[0]!);
        case 'neq':
          return !vals.includes(r.values[0]!);
        case 'in':
          return vals.some((v) => r.values.includes(v));
        case 'notin':
          return !vals.some((v) => r.values.includes(v));
        case 'exists':
          return vals.length > 0;
        case 'notexists':
          return vals.length === 0;
      }
    });
}

// --- field predicates ----------------------------------------------------------------------------

function ipPred(values: string[], pick: (r: HubbleFlowRecord) => string): Pred {
  const nets: Cidr[] = values.map((v) => {
    try {
      if (v.includes('/')) return cidrParse(v);
      const a = addressParse(v);
      return cidrParse(`${a.text}/${a.family === 4 ? 32 : 128}`);
    } catch {
      throw new FilterError(`"${v}" is not an IP address or CIDR`);
    }
  });
  return (r) => {
    let a;
    try {
      a = addressParse(pick(r));
    } catch {
      return false;
    }
    return nets.some((n) => cidrContains(n, a.family, a.value));
  };
}

function podPred(values: string[], pick: (r: HubbleFlowRecord) => HubbleEndpoint): Pred {
  return (r) => {
    const ep = pick(r);
    if (!ep.namespace) return false;
    return values.some((v) => {
      const slash = v.indexOf('/');
      const ns = slash >= 0 ? v.slice(0, slash) : 'default';
      const prefix = slash >= 0 ? v.slice(slash + 1) : v;
      return ep.namespace === ns && (ep.pod_name ?? '').startsWith(prefix);
    });
  };
}

function portOf(r: HubbleFlowRecord, side: 'source_port' | 'destination_port'): number | undefined {
  const l4 = r.flow.l4 as Record<string, Record<string, number> | undefined> | undefined;
  return (l4?.TCP ?? l4?.UDP ?? l4?.SCTP)?.[side];
}

function protocolOf(r: HubbleFlowRecord): string[] {
  const k = Object.keys(r.flow.l4 ?? {})[0]?.toLowerCase();
  if (!k) return [];
  if (r.flow.l7?.dns) return [k, 'dns'];
  if (k === 'udp' && (r.flow.Summary === 'DHCP' || r.flow.Summary === 'DHCPv6')) return [k, r.flow.Summary.toLowerCase()];
  return k.startsWith('icmp') ? [k, 'icmp'] : [k];
}

function tcpFlagsPred(values: string[]): Pred {
  const sets = values.map((v) =>
    v
      .split(/[,|]/)
      .map((f) => f.trim().toUpperCase())
      .filter(Boolean)
      .map((f) => {
        if (!(TCP_FLAG_NAMES as readonly string[]).includes(f)) throw new FilterError(`unknown TCP flag "${f}" (one of ${TCP_FLAG_NAMES.join(', ')})`);
        return f;
      }),
  );
  return (r) => {
    const flags = (r.flow.l4 as { TCP?: { flags?: Record<string, boolean> } } | undefined)?.TCP?.flags;
    if (!flags) return false;
    return sets.some((set) => set.every((f) => flags[f]));
  };
}

const upper = (vs: string[]) => vs.map((v) => v.toUpperCase());

/** What a name pattern may hold (hubble's FQDN filter): letters, digits, `-`, `_`, `.` and `*`. */
export const FQDN_PATTERN = /^[-a-zA-Z0-9_.*]+$/;

/** What the names a pattern can match are made of (its own characters, lower case). */
const FQDN_NAME_CHARS = /^[-a-z0-9_.]*$/;

/**
 * Hubble's FQDN filter (`--to-fqdn`, `--from-fqdn`): case-insensitive, a trailing dot ignored, `*`
 * any run of name characters (dots included: `*.test` matches `a.b.test`), anchored at both ends.
 * Matched with globMatch, not a regular expression: a follower's pattern with many stars must not hold
 * the agent's thread on every flow (common/glob.ts).
 */
export function fqdnPatternCompile(field: string, pattern: string): (name: string) => boolean {
  const p = pattern.trim().toLowerCase().replace(/\.$/, '');
  if (!FQDN_PATTERN.test(p)) throw new FilterError(`${field}: "${pattern}" is not a name pattern (letters, digits, "-", "_", "." and "*" only)`);
  return (name) => FQDN_NAME_CHARS.test(name) && globMatch(p, name);
}

function fqdnPred(field: string, values: string[], pick: (r: HubbleFlowRecord) => readonly string[] | undefined): Pred {
  const matchers = values.map((v) => fqdnPatternCompile(field, v));
  return (r) => (pick(r) ?? []).some((name) => matchers.some((match) => match(name)));
}

function fieldPred(field: keyof FlowFilter, values: unknown[]): Pred {
  const strs = values as string[];
  switch (field) {
    case 'source_ip':
      return ipPred(strs, (r) => r.flow.IP?.source ?? '');
    case 'destination_ip':
      return ipPred(strs, (r) => r.flow.IP?.destination ?? '');
    case 'source_pod':
      return podPred(strs, (r) => r.flow.source);
    case 'destination_pod':
      return podPred(strs, (r) => r.flow.destination);
    case 'source_workload':
      return (r) => strs.includes(r.flow.source.pod_name ?? '');
    case 'destination_workload':
      return (r) => strs.includes(r.flow.destination.pod_name ?? '');
    case 'source_label': {
      const preds = strs.map(selectorPred);
      return (r) => preds.some((p) => p(r.flow.source.labels));
    }
    case 'destination_label': {
      const preds = strs.map(selectorPred);
      return (r) => preds.some((p) => p(r.flow.destination.labels));
    }
    case 'source_identity':
      return (r) => (values as number[]).includes(r.flow.source.identity);
    case 'destination_identity':
      return (r) => (values as number[]).includes(r.flow.destination.identity);
    case 'source_fqdn':
      return fqdnPred(field, strs, (r) => r.flow.source_names);
    case 'destination_fqdn':
      return fqdnPred(field, strs, (r) => r.flow.destination_names);
    case 'source_port':
    case 'destination_port': {
      const ports = strs.map((p) => {
        const n = Number(p);
        if (!Number.isInteger(n) || n < 0 || n > 65535) throw new FilterError(`${field}: "${p}" is not a port number`);
        return n;
      });
      return (r) => ports.includes(portOf(r, field) ?? -1);
    }
    case 'protocol': {
      const ps = strs.map((p) => p.toLowerCase());
      return (r) => protocolOf(r).some((p) => ps.includes(p));
    }
    case 'verdict': {
      const vs = upper(strs);
      return (r) => vs.includes(r.flow.verdict);
    }
    case 'drop_reason_desc': {
      const vs = upper(strs);
      return (r) => vs.includes(r.flow.drop_reason_desc ?? '');
    }
    case 'traffic_direction': {
      const vs = upper(strs);
      return (r) => vs.includes(r.flow.traffic_direction);
    }
    case 'ip_version': {
      const vs = strs.map((v) => v.toLowerCase().replace(/^(\d)$/, 'ipv$1'));
      return (r) => vs.includes(r.flow.IP?.ipVersion.toLowerCase() ?? '');
    }
    case 'tcp_flags':
      return tcpFlagsPred(strs);
    case 'reply':
      return (r) => (values as boolean[]).includes(r.flow.is_reply);
    case 'node_name':
      return (r) => strs.includes(r.node_name);
  }
}

/** Compiles one filter into a predicate; throws FilterError naming a bad value. */
export function filterCompile(filter: FlowFilter): Pred {
  const preds: Pred[] = [];
  for (const field of FLOW_FILTER_FIELDS) {
    const values = filter[field] as unknown[] | undefined;
    if (values && values.length) preds.push(fieldPred(field, values));
  }
  return (r) => preds.every((p) => p(r));
}

/** Whitelist OR'ed, blacklist subtracted; an empty whitelist admits everything. */
export function filtersCompile(whitelist: FlowFilter[] = [], blacklist: FlowFilter[] = []): Pred {
  const allow = whitelist.map(filterCompile);
  const deny = blacklist.map(filterCompile);
  return (r) => (allow.length === 0 || allow.some((p) => p(r))) && !deny.some((p) => p(r));
}
