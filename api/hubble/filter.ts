import { DROP_REASON_DESC } from '../../bpf/layout.gen.js';
import { FilterBudget, filterCompile, FilterError, type FlowFilter } from '../../agent/flows/filter.js';
import type { HubbleFlowRecord } from '../../agent/flows/hubble.js';
import { TCP_FLAG_NAMES } from '../../agent/flows/hubble.js';

type Pred = (r: HubbleFlowRecord) => boolean;

/** A flow.FlowFilter as proto-loader decodes it (fields absent when empty). */
export type ProtoFlowFilter = Record<string, unknown>;

/**
 * The same bounds as the REST API's filters (common/schemas/flows.ts); what all of a request's filters
 * may hold together is agent/flows/filter.ts's FILTER_BUDGET.
 */
export const FILTER_LIMITS = { filters: 64, values: 64, valueLength: 256 } as const;

/** Fields that are lists of strings and mean the same in kitnet's filter. */
const SHARED_STRING_FIELDS = [
  'source_ip', 'destination_ip', 'source_pod', 'destination_pod', 'source_label', 'destination_label',
  'source_port', 'destination_port', 'protocol', 'node_name', 'source_fqdn', 'destination_fqdn',
] as const;

/**
 * Fields kitnet never fills (services, HTTP, clusters, node labels, trace ids): a filter on one
 * matches no kitnet flow, as it would match no flow of a Cilium node without that data. dns_query
 * too for now: its values are RE2 expressions, which JS regexps would not run in bounded time.
 */
const NEVER_FILLED = [
  'source_ip_xlated', 'source_service', 'destination_service',
  'source_cluster_name', 'destination_cluster_name', 'http_status_code', 'dns_query', 'http_method',
  'http_path', 'http_url', 'node_labels', 'trace_id', 'ip_trace_id',
] as const;

function list(filter: ProtoFlowFilter, field: string, where: string): unknown[] {
  const v = filter[field];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new FilterError(`${where}.${field}: must be a list`);
  if (v.length > FILTER_LIMITS.values) throw new FilterError(`${where}.${field}: at most ${FILTER_LIMITS.values} values`);
  return v;
}

function strings(filter: ProtoFlowFilter, field: string, where: string): string[] {
  return list(filter, field, where).map((v) => {
    if (typeof v !== 'string') throw new FilterError(`${where}.${field}: values must be strings`);
    if (v.length > FILTER_LIMITS.valueLength) throw new FilterError(`${where}.${field}: a value is longer than ${FILTER_LIMITS.valueLength} characters`);
    return v;
  });
}

const DROP_REASON_BY_NUMBER = new Map([...DROP_REASON_DESC].map(([n, [name]]) => [n, name]));

/** An enum value as its name: proto-loader gives known values as names and unknown ones as numbers. */
function enumName(v: unknown, numbers: ReadonlyMap<number, string> = new Map()): string {
  return typeof v === 'number' ? (numbers.get(v) ?? `#${v}`) : String(v);
}

/** A TCPFlags message as kitnet's `SYN,ACK` text; '' when no flag is set. */
function tcpFlagsText(v: unknown): string {
  return TCP_FLAG_NAMES.filter((f) => (v as Record<string, unknown> | null)?.[f] === true).join(',');
}

/**
 * One flow.FlowFilter as a predicate. What kitnet's REST filter has is handed to the same compiler
 * (agent/flows/filter.ts), so the same filter gives the same flows on both APIs; event_type, uuid,
 * interface and the never-filled fields are added here. Throws FilterError naming the field.
 */
export function protoFilterCompile(filter: ProtoFlowFilter, where: string, budget = new FilterBudget()): Pred {
  if (typeof filter !== 'object' || filter === null) throw new FilterError(`${where}: must be a FlowFilter`);
  const kitnet: FlowFilter = {};
  for (const f of SHARED_STRING_FIELDS) {
    const vs = strings(filter, f, where);
    if (vs.length) kitnet[f] = vs;
  }
  const workloads = (field: 'source_workload' | 'destination_workload') =>
    list(filter, field, where).map((w) => String((w as { name?: unknown } | null)?.name ?? ''));
  const sw = workloads('source_workload');
  if (sw.length) kitnet.source_workload = sw;
  const dw = workloads('destination_workload');
  if (dw.length) kitnet.destination_workload = dw;
  const ids = (field: 'source_identity' | 'destination_identity') => list(filter, field, where).map(Number);
  const si = ids('source_identity');
  if (si.length) kitnet.source_identity = si;
  const di = ids('destination_identity');
  if (di.length) kitnet.destination_identity = di;
  const verdict = list(filter, 'verdict', where).map((v) => enumName(v));
  if (verdict.length) kitnet.verdict = verdict;
  const direction = list(filter, 'traffic_direction', where).map((v) => enumName(v));
  if (direction.length) kitnet.traffic_direction = direction;
  const ipVersion = list(filter, 'ip_version', where).map((v) => enumName(v));
  if (ipVersion.length) kitnet.ip_version = ipVersion;
  const dropReason = list(filter, 'drop_reason_desc', where).map((v) => enumName(v, DROP_REASON_BY_NUMBER));
  if (dropReason.length) kitnet.drop_reason_desc = dropReason;
  const tcpFlagSets = list(filter, 'tcp_flags', where).map(tcpFlagsText);
  // A flags message with no flag set (or only NS, which kitnet does not see) can match no flow.
  const tcpFlags = tcpFlagSets.filter(Boolean);
  if (tcpFlags.length) kitnet.tcp_flags = tcpFlags;
  const reply = list(filter, 'reply', where).map(Boolean);
  if (reply.length) kitnet.reply = reply;

  // The fields compiled here count against the request's budget as well.
  const others = ['uuid', 'event_type', 'interface', 'encrypted', ...NEVER_FILLED].map((f) => [f, list(filter, f, where).length] as const);
  let pred: Pred;
  try {
    pred = filterCompile(kitnet, budget);
    for (const [f, n] of others) if (n) budget.take(f, n);
  } catch (err) {
    if (err instanceof FilterError) throw new FilterError(`${where}: ${err.message}`);
    throw err;
  }
  const extra: Pred[] = [];
  for (const f of NEVER_FILLED) if (list(filter, f, where).length) extra.push(() => false);
  if (tcpFlagSets.length && !tcpFlags.length) extra.push(() => false);
  const uuids = strings(filter, 'uuid', where);
  if (uuids.length) extra.push((r) => uuids.includes(r.flow.uuid));
  const eventTypes = list(filter, 'event_type', where).map((e) => e as { type?: number; match_sub_type?: boolean; sub_type?: number } | null);
  if (eventTypes.length) {
    extra.push((r) =>
      eventTypes.some((e) => (e?.type ?? 0) === r.flow.event_type.type && (!e?.match_sub_type || (e.sub_type ?? 0) === (r.flow.event_type.sub_type ?? 0))),
    );
  }
  const interfaces = list(filter, 'interface', where).map((i) => i as { index?: number; name?: string } | null);
  if (interfaces.length) {
    extra.push((r) =>
      interfaces.some((i) => (!i?.index || i.index === r.flow.interface?.index) && (!i?.name || i.name === r.flow.interface?.name)),
    );
  }
  const encrypted = list(filter, 'encrypted', where).map(Boolean);
  if (encrypted.length) extra.push(() => encrypted.includes(false));
  if (!extra.length) return pred;
  return (r) => pred(r) && extra.every((p) => p(r));
}

/** GetFlowsRequest's whitelist (any may match; none given: all) minus its blacklist. */
export function protoFiltersCompile(whitelist: unknown, blacklist: unknown): Pred {
  const lists = { whitelist, blacklist };
  const compiled: Record<'whitelist' | 'blacklist', Pred[]> = { whitelist: [], blacklist: [] };
  const budget = new FilterBudget();
  for (const name of ['whitelist', 'blacklist'] as const) {
    const fs = lists[name] ?? [];
    if (!Array.isArray(fs)) throw new FilterError(`${name}: must be a list of FlowFilter`);
    if (fs.length > FILTER_LIMITS.filters) throw new FilterError(`${name}: at most ${FILTER_LIMITS.filters} filters`);
    compiled[name] = fs.map((f, i) => protoFilterCompile(f as ProtoFlowFilter, `${name}[${i}]`, budget));
  }
  const allow = compiled.whitelist;
  const deny = compiled.blacklist;
  return (r) => (allow.length === 0 || allow.some((p) => p(r))) && !deny.some((p) => p(r));
}
