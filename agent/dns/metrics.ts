/**
 * Hubble's DNS metrics for the proxy's queries (issue #17): `hubble_dns_queries_total` and
 * `hubble_dns_responses_total`, labels `rcode`, `qtypes`, `ips_returned` as Hubble's dns handler
 * (pkg/hubble/metrics/dns) without context labels: a query counts once (rcode "" or, refused by
 * policy, "Policy denied"); an answer it forwarded counts as a response with the rcode's name.
 * Registered into the agent's registry from here, so agent/metrics.ts needs no change.
 */
import { Counter, type Registry } from 'prom-client';
import { mirroredCounter } from '../metrics/mirror.js';
import type { DnsDropReason, DnsProxyStats, DnsQueryEvent } from './proxy.js';

/** Hubble's rcodeNames. */
const RCODE_NAMES: Record<number, string> = {
  0: 'No Error',
  1: 'Format Error',
  2: 'Server Failure',
  3: 'Non-Existent Domain',
  4: 'Not Implemented',
  5: 'Query Refused',
};
const QTYPE_NAMES: Record<number, string> = { 1: 'A', 2: 'NS', 5: 'CNAME', 6: 'SOA', 12: 'PTR', 15: 'MX', 16: 'TXT', 28: 'AAAA', 33: 'SRV', 65: 'HTTPS', 255: 'ANY' };

export function dnsQtypeName(t: number): string {
  return QTYPE_NAMES[t] ?? `TYPE${t}`;
}

export function dnsRcodeName(rcode: number): string {
  return RCODE_NAMES[rcode] ?? String(rcode);
}

/**
 * Registers the two counters; returns the observer of one answered query. Queries are counted here by
 * label combination and added to prom-client when it collects (a scrape): prom-client hashes the
 * labels of every inc(), a cost per lookup the proxy's thousands a second need not pay.
 */
export function dnsMetricsRegister(registry: Registry): (e: DnsQueryEvent) => void {
  const labelNames = ['rcode', 'qtypes', 'ips_returned'] as const;
  type Labels = Record<(typeof labelNames)[number], string>;
  const pending = { queries: new Map<string, { labels: Labels; n: number }>(), responses: new Map<string, { labels: Labels; n: number }>() };
  const count = (m: Map<string, { labels: Labels; n: number }>, rcode: string, qtypes: string, ips: string) => {
    const key = `${rcode}\n${qtypes}\n${ips}`;
    const c = m.get(key);
    if (c) c.n++;
    else m.set(key, { labels: { rcode, qtypes, ips_returned: ips }, n: 1 });
  };
  const counter = (name: string, help: string, m: Map<string, { labels: Labels; n: number }>) =>
    new Counter({
      name,
      help,
      labelNames,
      registers: [registry],
      collect() {
        for (const { labels, n } of m.values()) this.inc(labels, n);
        m.clear();
      },
    });
  counter('hubble_dns_queries_total', 'Number of DNS queries observed', pending.queries);
  counter('hubble_dns_responses_total', 'Number of DNS responses observed', pending.responses);
  return (e) => {
    const qtypes = dnsQtypeName(e.qtype);
    if (!e.verdict.allowed) {
      count(pending.queries, 'Policy denied', qtypes, '0');
      return;
    }
    count(pending.queries, '', qtypes, '0');
    count(pending.responses, dnsRcodeName(e.rcode), qtypes, String(e.learned[0]?.addresses.length ?? 0));
  };
}

/**
 * What the proxy turned away or could not answer, read from its counters when scraped:
 * `kitnet_dns_proxy_dropped_total{reason}` (a limit reached: in-flight, client-in-flight,
 * tcp-connections, client-tcp-connections), malformed queries and upstream failures (SERVFAIL).
 */
export function dnsProxyMetricsRegister(registry: Registry, stats: DnsProxyStats): void {
  mirroredCounter(registry, 'kitnet_dns_proxy_dropped_total', 'DNS queries and TCP connections the proxy turned away unanswered, by the limit reached (dns.proxy.maxQueriesInFlight, ...PerWorkload, maxTcpConnections, ...PerWorkload)', ['reason'] as const, () =>
    (Object.entries(stats.droppedBy) as Array<[DnsDropReason, number]>).map(([reason, n]) => [{ reason }, n]));
  mirroredCounter(registry, 'kitnet_dns_proxy_learn_refused_total', 'Answers not released (SERVFAIL) because their new addresses would pass a limit on learned addresses: the asking workload\'s (dns.proxy.maxLearnedAddressesPerWorkload) or the total (maxLearnedAddresses)', ['limit'] as const, () =>
    (Object.entries(stats.learnRefused) as Array<[string, number]>).map(([limit, n]) => [{ limit }, n]));
  mirroredCounter(registry, 'kitnet_dns_proxy_refused_resolver_total', 'DNS queries answered REFUSED, never forwarded, because they would go to a resolver the workload cannot reach itself: an address such as loopback, unspecified, link-local, multicast, broadcast, IPv4-mapped IPv6, the proxy\'s own, or a workload whose ingress policy does not admit the asking workload', [], () => [[{}, stats.refusedResolver]]);
  mirroredCounter(registry, 'kitnet_dns_proxy_malformed_total', 'Messages sent to the DNS proxy that were not a query it could read', [], () => [[{}, stats.malformed]]);
  mirroredCounter(registry, 'kitnet_dns_proxy_fast_answered_total', 'UDP lookups forwarded and answered by the proxy\'s fast path (a thread of the addon) without the agent\'s thread: an allowed name asked again whose answer taught nothing new', [], () => [[{}, stats.fastAnswered]]);
  mirroredCounter(registry, 'kitnet_dns_proxy_fast_stale_total', 'Lookups the fast path forwarded under a verdict that no longer held when the agent checked it again (every verdict of the fast path was then dropped)', [], () => [[{}, stats.fastStale]]);
  mirroredCounter(registry, 'kitnet_dns_proxy_upstream_failures_total', 'Queries answered SERVFAIL because the upstream failed, did not answer in time, or its answer could not be learned', [], () => [[{}, stats.upstreamFailures]]);
}
