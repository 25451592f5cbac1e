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
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { EndpointDirectory } from '../flows/directory.js';
import { nsToIso } from '../flows/enrich.js';
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

/** What the answer says, as Cilium's LogRecordDNS: every address, the lowest TTL among them, CNAME targets, record types. */
function answerOf(e: DnsQueryEvent): Pick<HubbleDns, 'ips' | 'ttl' | 'cnames' | 'rrtypes'> {
  const ips: string[] = [];
  const cnames: string[] = [];
  const rrtypes = new Set<string>();
  let ttl: number | undefined;
  for (const a of e.reply?.answers ?? []) {
    rrtypes.add(dnsQtypeName(a.type));
    if (a.data.kind === 'address') {
      ips.push(a.data.address);
      ttl = ttl === undefined ? a.ttl : Math.min(ttl, a.ttl);
    } else if (a.data.kind === 'cname') {
      cnames.push(`${a.data.target}.`);
    }
  }
  return {
    ...(ips.length ? { ips } : {}),
    ...(ttl ? { ttl } : {}),
    ...(cnames.length ? { cnames } : {}),
    ...(rrtypes.size ? { rrtypes: [...rrtypes] } : {}),
  };
}

/**
 * One answered query as its flows need it, shared by its REQUEST and RESPONSE records: addresses,
 * ports, both ends as named when the query was answered (shared endpoint objects) and the answer's
 * summary, without the parsed message. At thousands of lookups a second the flow ring holds a few
 * seconds of them: built flows (~2 KB each) lived long enough to be promoted and collected by full
 * garbage collections, which stalled the proxy (bench/README §8).
 */
interface DnsQueryFacts {
  readonly e: Pick<DnsQueryEvent, 'client' | 'transport' | 'name' | 'qtype' | 'rcode' | 'receivedNs'>;
  readonly allowed: boolean;
  readonly rule: string | undefined;
  readonly resolver: DnsEndpoint;
  readonly clientEp: HubbleEndpoint;
  readonly resolverEp: HubbleEndpoint;
  readonly answer: Pick<HubbleDns, 'ips' | 'ttl' | 'cnames' | 'rrtypes'>;
  readonly answeredNs: bigint;
}

/**
 * A DNS L7 flow as the pipeline keeps it: the query's facts and which of its two flows this is. The
 * Hubble JSON object, time string and uuid are made the first time someone reads them (a follower, a
 * filter, `GET /v1/flows`) and kept from then on, as LazyFlowRecord does for the datapath's flows.
 */
export class DnsFlowRecord implements HubbleFlowRecord {
  #flow: HubbleFlow | undefined;
  #time: string | undefined;

  constructor(
    private readonly facts: DnsQueryFacts,
    readonly type: 'REQUEST' | 'RESPONSE',
    readonly node_name: string,
  ) {}

  get time(): string {
    return (this.#time ??= nsToIso(this.type === 'REQUEST' ? this.facts.e.receivedNs : this.facts.answeredNs));
  }

  get flow(): HubbleFlow {
    return (this.#flow ??= this.type === 'REQUEST' ? this.request() : this.response());
  }

  toJSON(): { flow: HubbleFlow; node_name: string; time: string } {
    return { flow: this.flow, node_name: this.node_name, time: this.time };
  }

  private base(): Pick<HubbleFlow, 'time' | 'uuid' | 'Type' | 'node_name' | 'event_type' | 'traffic_direction'> {
    return {
      time: this.time,
      uuid: randomUUID(),
      Type: 'L7',
      node_name: this.node_name,
      event_type: { type: MessageType.accessLog },
      // The workload's egress policy decides both (Cilium's proxy records both at the egress observation point).
      traffic_direction: 'EGRESS',
    };
  }

  private request(): HubbleFlow {
    const { e, resolver } = this.facts;
    const query = `${e.name}.`;
    const qtypes = [dnsQtypeName(e.qtype)];
    const flow: HubbleFlow = {
      ...this.base(),
      verdict: this.facts.allowed ? 'FORWARDED' : 'DROPPED',
      IP: { source: e.client.address, destination: resolver.address, ipVersion: ipVersionOf(e.client.address) },
      l4: { [l4KeyOf(e.transport)]: { source_port: e.client.port, destination_port: resolver.port } },
      source: this.facts.clientEp,
      destination: this.facts.resolverEp,
      is_reply: false,
      l7: { type: 'REQUEST', dns: { query, observation_source: OBSERVATION_SOURCE, qtypes } },
      Summary: `DNS Query ${query} ${qtypes.join(',')}`,
    };
    if (!this.facts.allowed) {
      flow.drop_reason = POLICY_DENY;
      flow.drop_reason_desc = dropReasonDesc(POLICY_DENY);
      const policies = deniedBy(this.facts.rule);
      if (policies.length) flow.egress_denied_by = policies;
    }
    return flow;
  }

  private response(): HubbleFlow {
    const { e, resolver, answer, answeredNs } = this.facts;
    const query = `${e.name}.`;
    const qtypes = [dnsQtypeName(e.qtype)];
    const rcodeText = e.rcode === DnsRcode.NOERROR ? `${JSON.stringify((answer.ips ?? []).join(','))} TTL: ${answer.ttl ?? 0}` : `RCode: ${dnsRcodeName(e.rcode)}`;
    return {
      ...this.base(),
      verdict: 'FORWARDED',
      IP: { source: resolver.address, destination: e.client.address, ipVersion: ipVersionOf(e.client.address) },
      l4: { [l4KeyOf(e.transport)]: { source_port: resolver.port, destination_port: e.client.port } },
      source: this.facts.resolverEp,
      destination: this.facts.clientEp,
      is_reply: true,
      l7: {
        type: 'RESPONSE',
        latency_ns: String(answeredNs > e.receivedNs ? answeredNs - e.receivedNs : 0n),
        dns: { query, ...answer, observation_source: OBSERVATION_SOURCE, ...(e.rcode ? { rcode: e.rcode } : {}), qtypes },
      },
      Summary: `DNS Answer ${rcodeText} (Proxy ${query} ${qtypes.join(',')})`,
    };
  }
}

const ipVersionOf = (address: string): 'IPv4' | 'IPv6' => (address.includes(':') ? 'IPv6' : 'IPv4');
const l4KeyOf = (transport: DnsTransport): 'UDP' | 'TCP' => (transport === 'udp' ? 'UDP' : 'TCP');

/** The REQUEST flow and (for a query that was forwarded) the RESPONSE flow of one answered query. */
export function dnsFlowRecords(e: DnsQueryEvent, ctx: DnsFlowContext, answeredNs: bigint = wallClockNs()): DnsFlowRecord[] {
  const resolver = ctx.originalDestination(e.client, e.transport) ?? e.upstream;
  // Not steered here by the datapath (nothing was forwarded): no resolver to name, no flow.
  if (!resolver) return [];
  const facts: DnsQueryFacts = {
    e: { client: e.client, transport: e.transport, name: e.name, qtype: e.qtype, rcode: e.rcode, receivedNs: e.receivedNs },
    allowed: e.verdict.allowed,
    rule: e.verdict.rule,
    resolver,
    clientEp: ctx.endpoint(e.client.address, ctx.identityOf(e.client.address)),
    resolverEp: ctx.endpoint(resolver.address, ctx.identityOf(resolver.address)),
    answer: e.verdict.allowed ? answerOf(e) : {},
    answeredNs,
  };
  const request = new DnsFlowRecord(facts, 'REQUEST', ctx.nodeName);
  return e.verdict.allowed ? [request, new DnsFlowRecord(facts, 'RESPONSE', ctx.nodeName)] : [request];
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
export function dnsFlowsAttach(dns: DnsFlowSource, flows: Pick<FlowPipeline, 'push'>, directory: EndpointDirectory, nodeName: string, log: Logger, also?: (e: DnsQueryEvent) => void): void {
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
  dns.onQuery = (e) => {
    also?.(e);
    const answeredNs = wallClockNs();
    // Built after the reply has gone out (the hook runs just before it): naming the ends looks up
    // identities, which must not add to the lookup's latency. A failure costs the flows, never the answer.
    setImmediate(() => {
      try {
        for (const rec of dnsFlowRecords(e, ctx, answeredNs)) flows.push(rec);
      } catch (err) {
        log.warn({ err, name: e.name, client: e.client }, 'DNS proxy: building the flows of a query failed');
      }
    });
  };
}
