// Hubble's DNS counters (agent/dns/metrics.ts): counted per label combination as queries are answered
// and added to prom-client when it collects, so every scrape shows every query once, exactly.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import { dnsMetricsRegister, dnsProxyMetricsRegister } from '../../agent/dns/metrics.js';
import { dnsProxyStatsCreate } from '../../agent/dns/proxy.js';
import type { DnsQueryEvent } from '../../agent/dns/proxy.js';

function event(qtype: number, allowed: boolean, rcode: number, ips: number): DnsQueryEvent {
  const addresses = Array.from({ length: ips }, (_, i) => `10.2.0.${i + 1}`);
  return {
    client: { address: '10.1.0.5', port: 40000 }, transport: 'udp', name: 'api.test', qtype, rcode,
    verdict: { allowed, rule: 'CiliumNetworkPolicy shop/dns egress[1]' }, learned: ips ? [{ name: 'api.test', addresses, ttl: 30 }] : [],
    id: 1, receivedNs: 1n,
  };
}

const value = (text: string, metric: string, labels: string) => Number(new RegExp(`^${metric}\\{${labels}\\} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);

test('DNS metrics: each query counted once per scrape, by rcode, qtype and addresses returned', async () => {
  const registry = new Registry();
  const observe = dnsMetricsRegister(registry);
  for (let i = 0; i < 3; i++) observe(event(1, true, 0, 2));
  observe(event(28, true, 3, 0));
  observe(event(1, false, 5, 0));
  let text = await registry.metrics();
  assert.equal(value(text, 'hubble_dns_queries_total', 'rcode="",qtypes="A",ips_returned="0"'), 3);
  assert.equal(value(text, 'hubble_dns_queries_total', 'rcode="",qtypes="AAAA",ips_returned="0"'), 1);
  assert.equal(value(text, 'hubble_dns_queries_total', 'rcode="Policy denied",qtypes="A",ips_returned="0"'), 1);
  assert.equal(value(text, 'hubble_dns_responses_total', 'rcode="No Error",qtypes="A",ips_returned="2"'), 3);
  assert.equal(value(text, 'hubble_dns_responses_total', 'rcode="Non-Existent Domain",qtypes="AAAA",ips_returned="0"'), 1);
  assert.doesNotMatch(text, /hubble_dns_responses_total\{rcode="Query Refused"/, 'a refused query has no response');
  // A scrape with nothing new shows the same totals; new queries add to them.
  assert.equal(value(await registry.metrics(), 'hubble_dns_queries_total', 'rcode="",qtypes="A",ips_returned="0"'), 3);
  observe(event(1, true, 0, 2));
  text = await registry.metrics();
  assert.equal(value(text, 'hubble_dns_queries_total', 'rcode="",qtypes="A",ips_returned="0"'), 4);
  assert.equal(value(text, 'hubble_dns_responses_total', 'rcode="No Error",qtypes="A",ips_returned="2"'), 4);
});

test('DNS proxy metrics: what it turned away, by the limit reached, read from its counters at each scrape', async () => {
  const registry = new Registry();
  const stats = dnsProxyStatsCreate();
  dnsProxyMetricsRegister(registry, stats);
  stats.droppedBy['client-in-flight'] = 184;
  stats.droppedBy['client-tcp-connections'] = 1;
  stats.learnRefused.workload = 7;
  stats.malformed = 2;
  stats.upstreamFailures = 5;
  stats.refusedResolver = 3;
  let text = await registry.metrics();
  assert.match(text, /^kitnet_dns_proxy_refused_resolver_total 3$/m);
  assert.equal(value(text, 'kitnet_dns_proxy_dropped_total', 'reason="client-in-flight"'), 184);
  assert.equal(value(text, 'kitnet_dns_proxy_dropped_total', 'reason="client-tcp-connections"'), 1);
  assert.equal(value(text, 'kitnet_dns_proxy_dropped_total', 'reason="in-flight"'), 0);
  assert.equal(value(text, 'kitnet_dns_proxy_learn_refused_total', 'limit="workload"'), 7);
  assert.equal(value(text, 'kitnet_dns_proxy_learn_refused_total', 'limit="total"'), 0);
  assert.match(text, /^kitnet_dns_proxy_malformed_total 2$/m);
  assert.match(text, /^kitnet_dns_proxy_upstream_failures_total 5$/m);
  stats.droppedBy['client-in-flight']++;
  text = await registry.metrics();
  assert.equal(value(text, 'kitnet_dns_proxy_dropped_total', 'reason="client-in-flight"'), 185);
});
