/**
 * The DNS proxy's queries as Hubble L7 flows (issue #17), as Cilium's proxy reports them (its access log
 * records, which Hubble turns into flows of Type L7, event type 129): a REQUEST flow from the workload to
 * the resolver it addressed when the query arrives, and a RESPONSE flow from the resolver back to it
 * with the latency, rcode, addresses, TTL and CNAMEs of the answer. A query the policy refused is one
 * DROPPED REQUEST flow naming the policy whose DNS rules did not allow the name (`egress_denied_by`);
 * no response flow, as Cilium. Both ends carry their identities (the resolver's as the datapath
 * gives it: CIDR, FQDN, world or a workload's). They go into the same pipeline as the datapath's flows.
 *
 * The flows are built once the proxy has answered (one hook; the work is deferred past the reply);
 * the request keeps the time the query arrived. Names come from the codec, which escapes every byte
 * outside `[-a-z0-9_]` as `\DDD`, so a hostile answer can only put ASCII into a flow.
 */
import type { Logger } from 'pino';
import type { EndpointDirectory } from '../flows/directory.js';
import { secondsToIso } from '../flows/enrich.js';
import { flowUuidNext, flowUuidTake, flowUuidText } from '../flows/flow-uuid.js';
import { dropReasonDesc, MessageType, policyFromRuleRef } from '../flows/hubble.js';
import type { HubbleDns, HubbleEndpoint, HubbleFlow, HubbleFlowRecord, PolicyMessage } from '../flows/hubble.js';
import type { FlowPipeline } from '../flows/pipeline.js';
import { DnsRcode } from './codec.js';
import { dnsQtypeName, dnsRcodeName } from './metrics.js';
import { wallClockNs } from './proxy.js';
import type { DnsEndpoint, DnsQueryEvent, DnsTransport } from './proxy.js';

/** Cilium's DNSDataSource for what its DNS proxy saw. */
const OBSERVATION_SOURCE = 'proxy';
/** The datapath's reason for a policy drop (bpf DROP_POLICY_DENY): a refused query is one. */
const POLICY_DENY = 181;

export interface DnsFlowContext {
  nodeName: string;
  /** The flow's endpoint for an address of the given identity (a local workload named as such). */
  endpoint(address: string, identity: number): HubbleEndpoint;
  /** The identity the datapath gives an address. */
  identityOf(address: string): number;
  /** The resolver the workload addressed (the steering map), when known. */
  originalDestination(client: DnsEndpoint, transport: DnsTransport): DnsEndpoint | undefined;
}

/** The policies named by a verdict's rule text (section refs, comma-separated); [] for other reasons. */
function deniedBy(rule: string | undefined): PolicyMessage[] {
  const seen = new Set<string>();
  const out: PolicyMessage[] = [];
  for (const ref of (rule ?? '').split(', ')) {
    const p = policyFromRuleRef(ref);
    const key = p && `${p.kind}/${p.namespace}/${p.name}`;
    if (p && !seen.has(key!)) {
      seen.add(key!);
      out.push(p);
    }
  }
  return out;
}

/**
 * What the answer says, as Cilium's LogRecordDNS: every address, the lowest TTL among them, CNAME
 * targets, record types. One frozen object per distinct answer, shared by the queries that got it.
 */
interface DnsAnswerSummary {
  readonly ips: readonly string[] | undefined;
  readonly ttl: number | undefined;
  readonly cnames: readonly string[] | undefined;
  readonly rrtypes: readonly string[] | undefined;
}

const NO_ANSWER: DnsAnswerSummary = Object.freeze({ ips: undefined, ttl: undefined, cnames: undefined, rrtypes: undefined });

function answerOf(e: DnsQueryEvent): DnsAnswerSummary {
  const answers = e.reply?.answers;
  if (!answers?.length) return NO_ANSWER;
  // The common answer, one address: its key is the address and TTL, no array or set to build first.
  if (answers.length === 1 && answers[0]!.data.kind === 'address') {
    const a = answers[0]!;
    const address = (a.data as { address: string }).address;
    const key = `${a.type}|${a.ttl}|${address}`;
    return answersSeen.get(key) ?? interned(answersSeen, Object.freeze({ ips: Object.freeze([address]), ttl: a.ttl || undefined, cnames: undefined, rrtypes: interned(rrtypesSeen, Object.freeze([dnsQtypeName(a.type)])) }), key);
  }
  const ips: string[] = [];
  const cnames: string[] = [];
  const rrtypes = new Set<string>();
  let ttl: number | undefined;
  for (const a of answers) {
    rrtypes.add(dnsQtypeName(a.type));
    if (a.data.kind === 'address') {
      ips.push(a.data.address);
      ttl = ttl === undefined ? a.ttl : Math.min(ttl, a.ttl);
    } else if (a.data.kind === 'cname') {
      cnames.push(`${a.data.target}.`);
    }
  }
  const types = [...rrtypes];
  const summary: DnsAnswerSummary = Object.freeze({
    ips: ips.length ? Object.freeze(ips) : undefined,
    ttl: ttl || undefined,
    cnames: cnames.length ? Object.freeze(cnames) : undefined,
    rrtypes: types.length ? interned(rrtypesSeen, Object.freeze(types), types.join(',')) : undefined,
  });
  return interned(answersSeen, summary, `${ips.join(',')}|${summary.ttl}|${cnames.join(',')}|${types.join(',')}`);
}

/**
 * The flows of the last few thousand queries stay in the flow ring for a while: long enough for young
 * garbage collections to copy them, which is most of each collection's pause at thousands of lookups a
 * second (bench/README §8). So a query is kept as a row of DnsQueryLog, numbers and shared references:
 * the values that recur (a name asked again, an answer given again, the ends of a query) are shared
 * from bounded tables instead of kept per query.
 */
const INTERNED_MAX = 4096;
const namesSeen = new Map<string, string>();
const endsSeen = new Map<string, DnsQueryEnds>();
const answersSeen = new Map<string, DnsAnswerSummary>();
const rrtypesSeen = new Map<string, readonly string[]>();

function interned<T>(seen: Map<string, T>, value: T, key: string = String(value)): T {
  const known = seen.get(key);
  if (known !== undefined) return known;
  if (seen.size >= INTERNED_MAX) seen.clear();
  seen.set(key, value);
  return value;
}

/** Times are kept as seconds since the agent's start and nanoseconds within: each exact in a double. */
const SECONDS_BASE = Math.floor(Date.now() / 1000);

/** Who asked and the resolver it addressed, as flow endpoints: shared by the queries between the same ends. */
interface DnsQueryEnds {
  readonly clientAddress: string;
  readonly resolver: DnsEndpoint;
  readonly clientEp: HubbleEndpoint;
  readonly resolverEp: HubbleEndpoint;
  readonly nodeName: string;
}

/** DnsQueryFacts.bits: the query's type, the answer's rcode, TCP or UDP, allowed. */
const BITS_RCODE_SHIFT = 16;
const BITS_TCP = 1 << 20;
const BITS_ALLOWED = 1 << 21;

/**
 * One answered query as its flows need it, shared by its REQUEST and RESPONSE records, without the
 * parsed message.
 */
class DnsQueryFacts {
  constructor(
    readonly ends: DnsQueryEnds,
    readonly clientPort: number,
    /** qtype | rcode << BITS_RCODE_SHIFT | BITS_TCP | BITS_ALLOWED */
    readonly bits: number,
    readonly name: string,
    readonly rule: string | undefined,
    readonly answer: DnsAnswerSummary,
    /** When the query arrived and when it was answered: seconds since SECONDS_BASE, nanoseconds within. */
    readonly receivedSec: number,
    readonly receivedFrac: number,
    readonly answeredSec: number,
    readonly answeredFrac: number,
    /** The REQUEST flow's uuid sequence number (flow-uuid.ts); the RESPONSE flow's is the next. */
    readonly uuid: number,
  ) {}

  get qtype(): number {
    return this.bits & 0xffff;
  }

  get rcode(): number {
    return (this.bits >> BITS_RCODE_SHIFT) & 0xf;
  }

  get transport(): DnsTransport {
    return this.bits & BITS_TCP ? 'tcp' : 'udp';
  }

  get allowed(): boolean {
    return (this.bits & BITS_ALLOWED) !== 0;
  }
}

/**
 * A DNS L7 flow as a reader of the ring or a follower gets it: the query's facts, and its Hubble JSON
 * object and time string made on first read and kept by the record, as LazyFlowRecord does for the
 * datapath's flows. Records made again from the same row are the same flow (uuid included).
 */
abstract class DnsFlowRecord implements HubbleFlowRecord {
  #flow: HubbleFlow | undefined;
  #time: string | undefined;

  constructor(protected readonly facts: DnsQueryFacts) {}

  get node_name(): string {
    return this.facts.ends.nodeName;
  }

  get time(): string {
    return (this.#time ??= this.timeText());
  }

  get flow(): HubbleFlow {
    return (this.#flow ??= this.build());
  }

  toJSON(): { flow: HubbleFlow; node_name: string; time: string } {
    return { flow: this.flow, node_name: this.node_name, time: this.time };
  }

  protected abstract timeText(): string;
  protected abstract build(): HubbleFlow;

  protected base(uuid: number): Pick<HubbleFlow, 'time' | 'uuid' | 'Type' | 'node_name' | 'event_type' | 'traffic_direction'> {
    return {
      time: this.time,
      uuid: flowUuidText(uuid),
      Type: 'L7',
      node_name: this.node_name,
      event_type: { type: MessageType.accessLog },
      // The workload's egress policy decides both (Cilium's proxy records both at the egress observation point).
      traffic_direction: 'EGRESS',
    };
  }
}

class DnsRequestRecord extends DnsFlowRecord {
  protected timeText(): string {
    return secondsToIso(SECONDS_BASE + this.facts.receivedSec, this.facts.receivedFrac);
  }

  protected build(): HubbleFlow {
    const f = this.facts;
    const { clientAddress, resolver, clientEp, resolverEp } = f.ends;
    const query = `${f.name}.`;
    const qtypes = [dnsQtypeName(f.qtype)];
    const flow: HubbleFlow = {
      ...this.base(f.uuid),
      verdict: f.allowed ? 'FORWARDED' : 'DROPPED',
      IP: { source: clientAddress, destination: resolver.address, ipVersion: ipVersionOf(clientAddress) },
      l4: { [l4KeyOf(f.transport)]: { source_port: f.clientPort, destination_port: resolver.port } },
      source: clientEp,
      destination: resolverEp,
      is_reply: false,
      l7: { type: 'REQUEST', dns: { query, observation_source: OBSERVATION_SOURCE, qtypes } },
      Summary: `DNS Query ${query} ${qtypes.join(',')}`,
    };
    if (!f.allowed) {
      flow.drop_reason = POLICY_DENY;
      flow.drop_reason_desc = dropReasonDesc(POLICY_DENY);
      const policies = deniedBy(f.rule);
      if (policies.length) flow.egress_denied_by = policies;
      // No policy to name (a resolver address the proxy never forwards to, a client it does not know): the reason itself.
      else if (f.rule) flow.Summary = `${flow.Summary} (refused: ${f.rule})`;
    }
    return flow;
  }
}

class DnsResponseRecord extends DnsFlowRecord {
  protected timeText(): string {
    return secondsToIso(SECONDS_BASE + this.facts.answeredSec, this.facts.answeredFrac);
  }

  protected build(): HubbleFlow {
    const f = this.facts;
    const { clientAddress, resolver, clientEp, resolverEp } = f.ends;
    const a = f.answer;
    const query = `${f.name}.`;
    const qtypes = [dnsQtypeName(f.qtype)];
    const rcodeText = f.rcode === DnsRcode.NOERROR ? `${JSON.stringify((a.ips ?? []).join(','))} TTL: ${a.ttl ?? 0}` : `RCode: ${dnsRcodeName(f.rcode)}`;
    const answer: Pick<HubbleDns, 'ips' | 'ttl' | 'cnames' | 'rrtypes'> = {
      ...(a.ips ? { ips: [...a.ips] } : {}),
      ...(a.ttl ? { ttl: a.ttl } : {}),
      ...(a.cnames ? { cnames: [...a.cnames] } : {}),
      ...(a.rrtypes ? { rrtypes: [...a.rrtypes] } : {}),
    };
    const latencyNs = (f.answeredSec - f.receivedSec) * 1e9 + (f.answeredFrac - f.receivedFrac);
    return {
      ...this.base(flowUuidNext(f.uuid)),
      verdict: 'FORWARDED',
      IP: { source: resolver.address, destination: clientAddress, ipVersion: ipVersionOf(clientAddress) },
      l4: { [l4KeyOf(f.transport)]: { source_port: resolver.port, destination_port: f.clientPort } },
      source: resolverEp,
      destination: clientEp,
      is_reply: true,
      l7: {
        type: 'RESPONSE',
        latency_ns: String(Math.max(0, latencyNs)),
        dns: { query, ...answer, observation_source: OBSERVATION_SOURCE, ...(f.rcode ? { rcode: f.rcode } : {}), qtypes },
      },
      Summary: `DNS Answer ${rcodeText} (Proxy ${query} ${qtypes.join(',')})`,
    };
  }
}

const ipVersionOf = (address: string): 'IPv4' | 'IPv6' => (address.includes(':') ? 'IPv6' : 'IPv4');
const l4KeyOf = (transport: DnsTransport): 'UDP' | 'TCP' => (transport === 'udp' ? 'UDP' : 'TCP');

/** The shared ends of a query: the same object while both ends stay named the same. */
function endsOf(clientAddress: string, resolver: DnsEndpoint, ctx: DnsFlowContext): DnsQueryEnds {
  const clientEp = ctx.endpoint(clientAddress, ctx.identityOf(clientAddress));
  const resolverEp = ctx.endpoint(resolver.address, ctx.identityOf(resolver.address));
  const key = `${clientAddress}|${resolver.address}|${resolver.port}`;
  const known = endsSeen.get(key);
  if (known && known.clientEp === clientEp && known.resolverEp === resolverEp && known.nodeName === ctx.nodeName) return known;
  if (endsSeen.size >= INTERNED_MAX) endsSeen.clear();
  const ends: DnsQueryEnds = Object.freeze({ clientAddress, resolver: Object.freeze({ address: resolver.address, port: resolver.port }), clientEp, resolverEp, nodeName: ctx.nodeName });
  endsSeen.set(key, ends);
  return ends;
}

/** What the flows of one answered query need; undefined when it gives no flow. */
function dnsQueryFacts(e: DnsQueryEvent, ctx: DnsFlowContext, answeredNs: bigint): DnsQueryFacts | undefined {
  const addressed = e.verdict.resolver ?? ctx.originalDestination(e.client, e.transport) ?? e.upstream;
  // Not steered here by the datapath (nothing was forwarded): no resolver to name, no flow.
  if (!addressed) return undefined;
  const allowed = e.verdict.allowed;
  const bits = (e.qtype & 0xffff) | ((e.rcode & 0xf) << BITS_RCODE_SHIFT) | (e.transport === 'tcp' ? BITS_TCP : 0) | (allowed ? BITS_ALLOWED : 0);
  return new DnsQueryFacts(
    endsOf(e.client.address, addressed, ctx),
    e.client.port,
    bits,
    interned(namesSeen, e.name),
    e.verdict.rule,
    allowed ? answerOf(e) : NO_ANSWER,
    Number(e.receivedNs / 1_000_000_000n) - SECONDS_BASE,
    Number(e.receivedNs % 1_000_000_000n),
    Number(answeredNs / 1_000_000_000n) - SECONDS_BASE,
    Number(answeredNs % 1_000_000_000n),
    flowUuidTake(allowed ? 2 : 1),
  );
}

/** The REQUEST flow and (for a query that was forwarded) the RESPONSE flow of one answered query. */
export function dnsFlowRecords(e: DnsQueryEvent, ctx: DnsFlowContext, answeredNs: bigint = wallClockNs()): HubbleFlowRecord[] {
  const facts = dnsQueryFacts(e, ctx, answeredNs);
  if (!facts) return [];
  const request = new DnsRequestRecord(facts);
  return facts.allowed ? [request, new DnsResponseRecord(facts)] : [request];
}

/** DnsQueryLog's numeric columns, in the order of a row. */
const NUMS_PER_ROW = 7;
const LOG_ROWS_INITIAL = 1024;

/**
 * The facts of the last `capacity` queries, in columns instead of an object per query, for the flow
 * ring to keep its DNS flows packed (a row and which flow, Ring.packedSource): the ring holds a query's
 * flows for a while, and objects held that long are what young collections copy (bench/README §8). The
 * reference columns hold the shared values (interned names, answers, ends); the numbers sit in one
 * Float64Array, grown as rows are first used. A ring of C flows holds flows of at most C queries, the
 * last ones, so a log of C rows still has every row the ring names.
 */
export class DnsQueryLog {
  private next = 0;
  private readonly ends: DnsQueryEnds[] = [];
  private readonly names: string[] = [];
  private readonly rules: (string | undefined)[] = [];
  private readonly answers: DnsAnswerSummary[] = [];
  private nums = new Float64Array(0);

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('DNS query log capacity must be a positive integer');
  }

  /** Keeps a query's facts; returns its row. */
  add(f: DnsQueryFacts): number {
    const row = this.next;
    this.next = (row + 1) % this.capacity;
    if ((row + 1) * NUMS_PER_ROW > this.nums.length) {
      const grown = new Float64Array(Math.min(this.capacity, Math.max(LOG_ROWS_INITIAL, (row + 1) * 2)) * NUMS_PER_ROW);
      grown.set(this.nums);
      this.nums = grown;
    }
    this.ends[row] = f.ends;
    this.names[row] = f.name;
    this.rules[row] = f.rule;
    this.answers[row] = f.answer;
    const n = this.nums;
    const at = row * NUMS_PER_ROW;
    n[at] = f.clientPort;
    n[at + 1] = f.bits;
    n[at + 2] = f.receivedSec;
    n[at + 3] = f.receivedFrac;
    n[at + 4] = f.answeredSec;
    n[at + 5] = f.answeredFrac;
    n[at + 6] = f.uuid;
    return row;
  }

  /** The facts of a row, as they were added (a new object each time). */
  facts(row: number): DnsQueryFacts {
    const n = this.nums;
    const at = row * NUMS_PER_ROW;
    return new DnsQueryFacts(this.ends[row]!, n[at]!, n[at + 1]!, this.names[row]!, this.rules[row], this.answers[row]!, n[at + 2]!, n[at + 3]!, n[at + 4]!, n[at + 5]!, n[at + 6]!);
  }
}

/** A packed DNS flow in the ring: its query's row and whether it is the RESPONSE flow. */
const dnsFlowPacked = (row: number, response: boolean): number => row * 2 + (response ? 1 : 0);

function dnsFlowUnpacked(log: DnsQueryLog, payload: number): HubbleFlowRecord {
  const facts = log.facts(Math.floor(payload / 2));
  return payload % 2 ? new DnsResponseRecord(facts) : new DnsRequestRecord(facts);
}

/** Where the DNS service hands its answered queries: the flows go into `flows`; `also` sees each query too (metrics). */
export interface DnsFlowSource {
  onQuery?: (e: DnsQueryEvent) => void;
  cache: { empty: boolean; namesByAddress(address: string): readonly string[] | undefined; namesByIpv4(address: number): readonly string[] | undefined };
  identityOf(address: string): number;
  identityLabels(identity: number): readonly string[] | undefined;
  originalDestination(client: DnsEndpoint, transport: DnsTransport): DnsEndpoint | undefined;
}

/**
 * Wires the DNS service to the flow pipeline: its queries become L7 flows, and the names it learned
 * become `source_names` / `destination_names` of the datapath's flows (agent/flows/enrich.ts).
 */
export function dnsFlowsAttach(dns: DnsFlowSource, flows: Pick<FlowPipeline, 'packedSource' | 'ring'>, directory: EndpointDirectory, nodeName: string, log: Logger, also?: (e: DnsQueryEvent) => void): void {
  const queries = new DnsQueryLog(flows.ring.capacity);
  const push = flows.packedSource((payload) => dnsFlowUnpacked(queries, payload));
  // dns.cache is replaced when the learned state is restored: read it at every call.
  directory.fqdnNames = { active: () => !dns.cache.empty, of: (address) => dns.cache.namesByAddress(address), ofIpv4: (address) => dns.cache.namesByIpv4(address) };
  // A CIDR or FQDN identity (node-local, unknown to the directory) is named with its labels from the
  // policy: one endpoint object per identity and label set, shared by its flows as the directory's are.
  const labelled = new Map<number, { labels: readonly string[]; ep: HubbleEndpoint }>();
  const ctx: DnsFlowContext = {
    nodeName,
    endpoint: (address, identity) => {
      const ep = directory.endpointForPeer(address, identity);
      if (ep.pod_name || ep.labels.length) return ep;
      const labels = dns.identityLabels(identity);
      if (!labels?.length) return ep;
      const cached = labelled.get(identity);
      if (cached && cached.labels === labels && cached.ep.identity === ep.identity) return cached.ep;
      if (labelled.size >= 65_536) labelled.clear();
      const named: HubbleEndpoint = { ...ep, labels: [...labels] };
      labelled.set(identity, { labels, ep: named });
      return named;
    },
    identityOf: (address) => dns.identityOf(address),
    originalDestination: (client, transport) => dns.originalDestination(client, transport),
  };
  // Built after the replies have gone out (the hook runs just before each): naming the ends looks up
  // identities, which must not add to the lookups' latency. The queries answered in one turn of the
  // event loop are built together at its end. A failure costs the flows, never the answer.
  let queued: Array<{ e: DnsQueryEvent; answeredNs: bigint }> = [];
  const build = () => {
    const batch = queued;
    queued = [];
    for (const { e, answeredNs } of batch) {
      try {
        const facts = dnsQueryFacts(e, ctx, answeredNs);
        if (!facts) continue;
        const row = queries.add(facts);
        push(dnsFlowPacked(row, false));
        if (facts.allowed) push(dnsFlowPacked(row, true));
      } catch (err) {
        log.warn({ err, name: e.name, client: e.client }, 'DNS proxy: building the flows of a query failed');
      }
    }
  };
  dns.onQuery = (e) => {
    also?.(e);
    if (queued.length === 0) setImmediate(build);
    queued.push({ e, answeredNs: wallClockNs() });
  };
}
