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

/** The REQUEST flow and (for a query that was forwarded) the RESPONSE flow of one answered query. */
export function dnsFlowRecords(e: DnsQueryEvent, ctx: DnsFlowContext, answeredNs: bigint = wallClockNs()): HubbleFlowRecord[] {
  const resolver = ctx.originalDestination(e.client, e.transport) ?? e.upstream;
  // Not steered here by the datapath (nothing was forwarded): no resolver to name, no flow.
  if (!resolver) return [];
  const clientEp = ctx.endpoint(e.client.address, ctx.identityOf(e.client.address));
  const resolverEp = ctx.endpoint(resolver.address, ctx.identityOf(resolver.address));
  const ipVersion = e.client.address.includes(':') ? 'IPv6' : 'IPv4';
  const l4Key = e.transport === 'udp' ? 'UDP' : 'TCP';
  const query = `${e.name}.`;
  const qtypes = [dnsQtypeName(e.qtype)];
  const base = (ns: bigint): Pick<HubbleFlow, 'time' | 'uuid' | 'Type' | 'node_name' | 'event_type' | 'traffic_direction'> => ({
    time: nsToIso(ns),
    uuid: randomUUID(),
    Type: 'L7',
    node_name: ctx.nodeName,
    event_type: { type: MessageType.accessLog },
    // The workload's egress policy decides both (Cilium's proxy records both at the egress observation point).
    traffic_direction: 'EGRESS',
  });
  const record = (flow: HubbleFlow): HubbleFlowRecord => ({ flow, node_name: ctx.nodeName, time: flow.time });

  const request: HubbleFlow = {
    ...base(e.receivedNs),
    verdict: e.verdict.allowed ? 'FORWARDED' : 'DROPPED',
    IP: { source: e.client.address, destination: resolver.address, ipVersion },
    l4: { [l4Key]: { source_port: e.client.port, destination_port: resolver.port } },
    source: clientEp,
    destination: resolverEp,
    is_reply: false,
    l7: { type: 'REQUEST', dns: { query, observation_source: OBSERVATION_SOURCE, qtypes } },
    Summary: `DNS Query ${query} ${qtypes.join(',')}`,
  };
  if (!e.verdict.allowed) {
    request.drop_reason = POLICY_DENY;
    request.drop_reason_desc = dropReasonDesc(POLICY_DENY);
    const policies = deniedBy(e.verdict.rule);
    if (policies.length) request.egress_denied_by = policies;
    return [record(request)];
  }
  const answer = answerOf(e);
  const rcodeText = e.rcode === DnsRcode.NOERROR ? `${JSON.stringify((answer.ips ?? []).join(','))} TTL: ${answer.ttl ?? 0}` : `RCode: ${dnsRcodeName(e.rcode)}`;
  const response: HubbleFlow = {
    ...base(answeredNs),
    verdict: 'FORWARDED',
    IP: { source: resolver.address, destination: e.client.address, ipVersion },
    l4: { [l4Key]: { source_port: resolver.port, destination_port: e.client.port } },
    source: resolverEp,
    destination: clientEp,
    is_reply: true,
    l7: {
      type: 'RESPONSE',
      latency_ns: String(answeredNs > e.receivedNs ? answeredNs - e.receivedNs : 0n),
      dns: { query, ...answer, observation_source: OBSERVATION_SOURCE, ...(e.rcode ? { rcode: e.rcode } : {}), qtypes },
    },
    Summary: `DNS Answer ${rcodeText} (Proxy ${query} ${qtypes.join(',')})`,
  };
  return [record(request), record(response)];
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
  const ctx: DnsFlowContext = {
    nodeName,
    endpoint: (address, identity) => {
      const ep = directory.endpointForPeer(address, identity);
      if (ep.pod_name || ep.labels.length) return ep;
      // A CIDR or FQDN identity (node-local, unknown to the directory): its labels from the policy.
      const labels = dns.identityLabels(identity);
      return labels?.length ? { ...ep, labels: [...labels] } : ep;
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
