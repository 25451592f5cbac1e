import { addressParse, cidrParse, type Cidr } from '../ipam.js';
import type { HubbleEndpoint, HubbleFlowRecord } from './hubble.js';
import { TCP_FLAG_NAMES } from './hubble.js';
import type { FlowFilter as FlowFilterSchema } from '../../common/schemas/flows.js';

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

/** A label list by key (the part between the first `:` and the `=`): each label's source and value. */
type LabelIndex = Map<string, Array<{ source: string | undefined; value: string }>>;

/**
 * Label lists indexed once each: an endpoint's labels array is shared by its flows and replaced, never
 * mutated, when its labels change (directory.ts), so the index is kept with it (the length guards a
 * list that was changed in place all the same).
 */
const labelIndexes = new WeakMap<readonly string[], { length: number; index: LabelIndex }>();

function labelIndexOf(labels: readonly string[]): LabelIndex {
  const cached = labelIndexes.get(labels);
  if (cached && cached.length === labels.length) return cached.index;
  const index: LabelIndex = new Map();
  for (const l of labels) {
    const eq = l.indexOf('=');
    const full = eq >= 0 ? l.slice(0, eq) : l;
    const colon = full.indexOf(':');
    const key = full.slice(colon + 1);
    const entry = { source: colon >= 0 ? full.slice(0, colon) : undefined, value: eq >= 0 ? l.slice(eq + 1) : '' };
    const list = index.get(key);
    if (list) list.push(entry);
    else index.set(key, [entry]);
  }
  labelIndexes.set(labels, { length: labels.length, index });
  return index;
}

/** One requirement as a test on an indexed label list: a map lookup, then the labels of that key. */
function requirementPred(r: Requirement): (index: LabelIndex) => boolean {
  // A key without a source (or with `any:`) matches every source.
  const m = r.key.match(SOURCE_PREFIX);
  const source = m && m[1] !== 'any' ? m[1] : undefined;
  const bareKey = m ? r.key.slice(m[0].length) : r.key;
  const values = new Set(r.values);
  const has = (index: LabelIndex, test: (value: string) => boolean) =>
    index.get(bareKey)?.some((e) => (!source || e.source === source) && test(e.value)) ?? false;
  const inValues = (v: string) => values.has(v);
  const any = () => true;
  switch (r.op) {
    case 'eq':
    case 'in':
      return (index) => has(index, inValues);
    case 'neq':
    case 'notin':
      return (index) => !has(index, inValues);
    case 'exists':
      return (index) => has(index, any);
    case 'notexists':
      return (index) => !has(index, any);
  }
}

/**
 * A selector's requirements, each written once (`app,app,app` is one), as tests on an indexed label
 * list: a flow costs a map lookup per requirement, not a scan of its labels per requirement.
 */
function selectorCompile(text: string): Array<(index: LabelIndex) => boolean> {
  const seen = new Set<string>();
  const out: Array<(index: LabelIndex) => boolean> = [];
  for (const r of labelSelectorParse(text)) {
    const id = `${r.op} ${r.key} ${[...new Set(r.values)].sort().join(',')}`;
    if (seen.has(id)) continue;
    seen.add(id);
    out.push(requirementPred(r));
  }
  return out;
}

function labelPred(field: string, values: string[], budget: FilterBudget, pick: (r: HubbleFlowRecord) => readonly string[]): Pred {
  const selectors = values.map(selectorCompile);
  budget.take(field, 0, selectors.reduce((n, s) => n + s.length, 0));
  return (r) => {
    const index = labelIndexOf(pick(r));
    return selectors.some((reqs) => reqs.every((req) => req(index)));
  };
}

// --- what one request may cost -------------------------------------------------------------------

/**
 * What the filters of one request (whitelist and blacklist together, every field) may hold. Each flow
 * the request reads, now or while following, runs through all of them on the agent's thread, so the
 * total is bounded, not only each list: far above what `hubble observe` sends (one or two values per
 * flag given, one requirement per `,` in a --label), and low enough that the costliest request
 * accepted costs tens of microseconds per flow (README, "Hubble API").
 */
export const FILTER_BUDGET = {
  /** Values in all fields of all filters. */
  values: 256,
  /** Requirements (`k8s:app=web`, `!debug`, `tier in (a,b)`: each comma-separated term) in all label selectors. */
  labelRequirements: 256,
  /** `*` in all FQDN patterns (each costs a search of the name). */
  fqdnStars: 64,
} as const;

/**
 * Counts what a request's filters hold against FILTER_BUDGET; FilterError naming the field past it.
 * A field given the same values in several filters (`kitnet observe` forks a filter in two per
 * either-side flag, so six such flags make 64 filters repeating the others' values) is compiled once
 * for the request, answers once per flow, and counts once.
 */
export class FilterBudget {
  readonly shared = new Map<string, Pred>();
  private values = 0;
  private requirements = 0;
  private stars = 0;

  take(field: string, values: number, requirements = 0, stars = 0): void {
    this.values += values;
    this.requirements += requirements;
    this.stars += stars;
    if (this.values > FILTER_BUDGET.values) {
      throw new FilterError(`${field}: the filters of one request may hold at most ${FILTER_BUDGET.values} values in all (every field of every whitelist and blacklist filter; a field with the same values in several filters counts once)`);
    }
    if (this.requirements > FILTER_BUDGET.labelRequirements) {
      throw new FilterError(`${field}: the label selectors of one request may hold at most ${FILTER_BUDGET.labelRequirements} requirements in all (each comma-separated term of every source_label and destination_label value)`);
    }
    if (this.stars > FILTER_BUDGET.fqdnStars) {
      throw new FilterError(`${field}: the name patterns of one request may hold at most ${FILTER_BUDGET.fqdnStars} "*" in all (every source_fqdn and destination_fqdn value)`);
    }
  }
}

// --- field predicates ----------------------------------------------------------------------------

/**
 * An address text parsed once for all the filters that test it: every filter of a request tests the
 * same flow in turn, so the last text of each side is kept.
 */
function addressParser(): (text: string) => { family: 4 | 6; value: bigint } | undefined {
  let lastText: string | undefined;
  let last: { family: 4 | 6; value: bigint } | undefined;
  return (text) => {
    if (text !== lastText) {
      lastText = text;
      try {
        last = addressParse(text);
      } catch {
        last = undefined;
      }
    }
    return last;
  };
}
const sourceAddress = addressParser();
const destinationAddress = addressParser();

function ipPred(values: string[], side: 'source' | 'destination'): Pred {
  const nets = values.map((v) => {
    let n: Cidr;
    try {
      if (v.includes('/')) n = cidrParse(v);
      else {
        const a = addressParse(v);
        n = cidrParse(`${a.text}/${a.family === 4 ? 32 : 128}`);
      }
    } catch {
      throw new FilterError(`"${v}" is not an IP address or CIDR`);
    }
    // cidrContains, with the shift and the shifted network worked out once
    const shift = BigInt((n.family === 4 ? 32 : 128) - n.prefixLength);
    return { family: n.family, shift, network: n.network >> shift };
  });
  const parse = side === 'source' ? sourceAddress : destinationAddress;
  return (r) => {
    const a = parse(r.flow.IP?.[side] ?? '');
    return a !== undefined && nets.some((n) => n.family === a.family && a.value >> n.shift === n.network);
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
 * A `*` pattern as its literal parts: the name must start with the first, end with the last, and hold
 * the others in order between. Each part is found where it first occurs (indexOf, linear): a part that
 * fits there leaves the most room for the rest, so that is a match if any is. O(name + pattern), where
 * a backtracking scan takes O(name x pattern) on `*aaa...ab` against `aaa...a`.
 */
function starPatternCompile(pattern: string): (text: string) => boolean {
  const parts = pattern.split('*');
  if (parts.length === 1) return (text) => text === pattern;
  const head = parts[0]!;
  const tail = parts[parts.length - 1]!;
  const middle = parts.slice(1, -1).filter(Boolean);
  const least = parts.reduce((n, p) => n + p.length, 0);
  return (text) => {
    if (text.length < least || !text.startsWith(head) || !text.endsWith(tail)) return false;
    let at = head.length;
    const end = text.length - tail.length;
    for (const part of middle) {
      const i = text.indexOf(part, at);
      if (i < 0 || i + part.length > end) return false;
      at = i + part.length;
    }
    return true;
  };
}

/** A name pattern lower-cased, its trailing dot dropped; FilterError (naming the field) unless it is one. */
function fqdnPatternNormal(field: string, pattern: string): string {
  const p = pattern.trim().toLowerCase().replace(/\.$/, '');
  if (!FQDN_PATTERN.test(p)) throw new FilterError(`${field}: "${pattern}" is not a name pattern (letters, digits, "-", "_", "." and "*" only)`);
  return p;
}

/**
 * Hubble's FQDN filter (`--to-fqdn`, `--from-fqdn`): case-insensitive, a trailing dot ignored, `*`
 * any run of name characters (dots included: `*.test` matches `a.b.test`), anchored at both ends.
 * Matched part by part (starPatternCompile), never by a regular expression or a backtracking scan: a
 * follower's pattern must not hold the agent's thread on every flow.
 */
export function fqdnPatternCompile(field: string, pattern: string): (name: string) => boolean {
  const match = starPatternCompile(fqdnPatternNormal(field, pattern));
  return (name) => FQDN_NAME_CHARS.test(name) && match(name);
}

/**
 * The names of a side of a flow that a pattern may match (made of name characters only), worked out
 * once for all the filters that test the flow in turn.
 */
function namesMatchable(side: 'source_names' | 'destination_names'): (r: HubbleFlowRecord) => readonly string[] {
  let lastRecord: HubbleFlowRecord | undefined;
  let last: readonly string[] = [];
  return (r) => {
    if (r !== lastRecord) {
      lastRecord = r;
      last = (r.flow[side] ?? []).filter((name) => FQDN_NAME_CHARS.test(name));
    }
    return last;
  };
}
const sourceNames = namesMatchable('source_names');
const destinationNames = namesMatchable('destination_names');

/** Patterns without a star are looked up in a set, the others matched part by part. */
function fqdnPred(field: 'source_fqdn' | 'destination_fqdn', values: string[], budget: FilterBudget): Pred {
  const patterns = values.map((v) => fqdnPatternNormal(field, v));
  budget.take(field, 0, 0, patterns.reduce((n, p) => n + p.split('*').length - 1, 0));
  const exact = new Set(patterns.filter((p) => !p.includes('*')));
  const starred = patterns.filter((p) => p.includes('*')).map(starPatternCompile);
  const names = field === 'source_fqdn' ? sourceNames : destinationNames;
  return (r) => names(r).some((name) => exact.has(name) || starred.some((match) => match(name)));
}

function fieldPred(field: keyof FlowFilter, values: unknown[], budget: FilterBudget): Pred {
  const strs = values as string[];
  budget.take(field, values.length);
  switch (field) {
    case 'source_ip':
      return ipPred(strs, 'source');
    case 'destination_ip':
      return ipPred(strs, 'destination');
    case 'source_pod':
      return podPred(strs, (r) => r.flow.source);
    case 'destination_pod':
      return podPred(strs, (r) => r.flow.destination);
    case 'source_workload':
      return (r) => strs.includes(r.flow.source.pod_name ?? '');
    case 'destination_workload':
      return (r) => strs.includes(r.flow.destination.pod_name ?? '');
    case 'source_label':
      return labelPred(field, strs, budget, (r) => r.flow.source.labels);
    case 'destination_label':
      return labelPred(field, strs, budget, (r) => r.flow.destination.labels);
    case 'source_identity':
      return (r) => (values as number[]).includes(r.flow.source.identity);
    case 'destination_identity':
      return (r) => (values as number[]).includes(r.flow.destination.identity);
    case 'source_fqdn':
      return fqdnPred(field, strs, budget);
    case 'destination_fqdn':
      return fqdnPred(field, strs, budget);
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

/**
 * Compiles one filter into a predicate; throws FilterError naming a bad value. `budget` is the
 * request's, when this filter is one of several (FILTER_BUDGET).
 */
export function filterCompile(filter: FlowFilter, budget = new FilterBudget()): Pred {
  const preds: Pred[] = [];
  for (const field of FLOW_FILTER_FIELDS) {
    const values = filter[field] as unknown[] | undefined;
    if (!values || !values.length) continue;
    const key = `${field}\u0000${JSON.stringify(values)}`;
    let pred = budget.shared.get(key);
    if (!pred) {
      pred = lastAnswerKept(fieldPred(field, values, budget));
      budget.shared.set(key, pred);
    }
    preds.push(pred);
  }
  return (r) => preds.every((p) => p(r));
}

/** A predicate that answers the flow it was last asked about again without working it out again. */
function lastAnswerKept(pred: Pred): Pred {
  let lastRecord: HubbleFlowRecord | undefined;
  let last = false;
  return (r) => {
    if (r !== lastRecord) {
      last = pred(r);
      lastRecord = r;
    }
    return last;
  };
}

/** Whitelist OR'ed, blacklist subtracted; an empty whitelist admits everything. Within FILTER_BUDGET. */
export function filtersCompile(whitelist: FlowFilter[] = [], blacklist: FlowFilter[] = []): Pred {
  const budget = new FilterBudget();
  const compile = (name: string) => (f: FlowFilter, i: number) => {
    try {
      return filterCompile(f, budget);
    } catch (err) {
      if (err instanceof FilterError) throw new FilterError(`${name}[${i}]: ${err.message}`);
      throw err;
    }
  };
  const allow = whitelist.map(compile('whitelist'));
  const deny = blacklist.map(compile('blacklist'));
  return (r) => (allow.length === 0 || allow.some((p) => p(r))) && !deny.some((p) => p(r));
}
