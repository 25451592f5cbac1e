/**
 * Hubble's DNS metrics for the proxy's queries (issue #17): `hubble_dns_queries_total` and
 * `hubble_dns_responses_total`, labels `rcode`, `qtypes`, `ips_returned` as Hubble's dns handler
 * (pkg/hubble/metrics/dns) without context labels: a query counts once (rcode "" or, refused by
 * policy, "Policy denied"); an answer it forwarded counts as a response with the rcode's name.
 * Registered into the agent's registry from here, so agent/metrics.ts needs no change.
 */
import { Counter, type Registry } from 'prom-client';
import type { DnsQueryEvent } from './proxy.js';

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

/** Registers the two counters; returns the observer of one answered query. */
export function dnsMetricsRegister(registry: Registry): (e: DnsQueryEvent) => void {
  const labelNames = ['rcode', 'qtypes', 'ips_returned'] as const;
  const queries = new Counter({ name: 'hubble_dns_queries_total', help: 'Number of DNS queries observed', labelNames, registers: [registry] });
  const responses = new Counter({ name: 'hubble_dns_responses_total', help: 'Number of DNS responses observed', labelNames, registers: [registry] });
  return (e) => {
    const qtypes = dnsQtypeName(e.qtype);
    if (!e.verdict.allowed) {
      queries.inc({ rcode: 'Policy denied', qtypes, ips_returned: '0' });
      return;
    }
    queries.inc({ rcode: '', qtypes, ips_returned: '0' });
    responses.inc({ rcode: dnsRcodeName(e.rcode), qtypes, ips_returned: String(e.learned[0]?.addresses.length ?? 0) });
  };
}
