/**
 * The costliest flow filters a request may hold (FILTER_BUDGET), timed per flow: `node
 * dist/bench/filter-worst.js`. Each shape spends the whole budget on one kind of field, every value
 * failing as late as it can (and each its own: a field repeated with the same values in several filters
 * is compiled and counted once), against flows whose endpoints carry 12 labels and 4 long learned names.
 */
import type { FlowEvent } from '../bpf/index.js';
import { LazyFlowRecord } from '../agent/flows/enrich.js';
import { FILTER_BUDGET } from '../agent/flows/filter.js';
import type { HubbleEndpoint } from '../agent/flows/hubble.js';
import { FILTER_LIMITS, protoFiltersCompile } from '../api/hubble/filter.js';

const labels = (app: string) => [
  `k8s:app=${app}`, 'k8s:tier=back', 'k8s:version=v1', 'k8s:team=payments', 'k8s:io.kubernetes.pod.namespace=shop',
  'k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop', 'k8s:io.cilium.k8s.namespace.labels.env=prod',
  'k8s:a=1', 'k8s:b=2', 'k8s:c=3', 'k8s:d=4', 'k8s:e=5',
];
const fe: HubbleEndpoint = { ID: 2, identity: 1001, namespace: 'shop', labels: labels('fe'), pod_name: 'fe' };
const db: HubbleEndpoint = { ID: 3, identity: 1002, namespace: 'shop', labels: labels('db'), pod_name: 'db' };
const longName = `${'a'.repeat(61)}.${'a'.repeat(61)}.${'a'.repeat(61)}.${'a'.repeat(62)}c`;
const ev = (i: number): FlowEvent => ({
  timeNs: BigInt(Date.now()) * 1_000_000n, ifindex: 10, endpointId: 2, direction: 'EGRESS', family: 4, protocol: 6,
  srcAddr: '10.9.0.2', dstAddr: `10.9.${(i >> 8) & 255}.${i & 255}`, srcPort: 40000 + (i % 1000), dstPort: 5432, icmpType: 0, icmpCode: 0, tcpFlags: 0x02,
  srcIdentity: 1001, dstIdentity: 1002, verdict: 'FORWARDED', dropReason: 0, isReply: false, length: 60,
});
const flows = Array.from({ length: 4095 }, (_, i) => {
  const r = new LazyFlowRecord(ev(i), fe, db, 'node-1');
  r.sourceNames = r.destinationNames = [longName, `b${longName}`, `c${longName}`, `d${longName}`];
  return r;
});

const V = FILTER_BUDGET.values;
const R = FILTER_BUDGET.labelRequirements;
void FILTER_BUDGET.fqdnStars;
/** `per` values in each of the filters it takes to hold `total`, split over whitelist and blacklist. */
function spread(total: number, per: number, make: (i: number) => Record<string, unknown>) {
  const filters = Array.from({ length: Math.ceil(total / per) }, (_, i) => make(i));
  const half = Math.min(FILTER_LIMITS.filters, Math.ceil(filters.length / 2));
  return { whitelist: filters.slice(0, half), blacklist: filters.slice(half) };
}
const failLast = (reqs: number, i: number) => [...labels('fe').slice(0, reqs - 1).map((l) => l.replace(/=.*/, '')), `k8s:nosuchkey${i}`].join(',');
const shapes: Record<string, { whitelist: unknown[]; blacklist: unknown[] }> = {
  'source_label: 256 values of 1 requirement': spread(V, 4, (i) => ({ source_label: Array.from({ length: 4 }, (_, j) => `k8s:nosuchkey${i * 4 + j}`) })),
  'source_label: 64 values of 4 requirements, the last failing': spread(R / 4, 1, (i) => ({ source_label: [failLast(4, i)] })),
  'source_label: 8 values of 32 requirements, the last failing': spread(R / 32, 1, (i) => ({ source_label: [['k8s:app', 'k8s:tier', 'k8s:a', 'k8s:b', 'k8s:c', 'k8s:d', 'k8s:e', ...Array.from({ length: 24 }, (_, j) => `!k${j}`), `k8s:no${i}`].join(',')] })),
  'source_ip: 256 CIDRs, 2 per filter': spread(V, 2, (i) => ({ source_ip: [`10.${i}.0.0/16`, `fd00:${i}::/64`] })),
  'source_ip + destination_ip: 256 values, 1 each per filter': spread(V, 2, (i) => ({ source_ip: [`10.${i}.0.0/16`], destination_ip: [`11.${i}.0.0/16`] })),
  'source_pod: 256 prefixes': spread(V, 4, (i) => ({ source_pod: Array.from({ length: 4 }, (_, j) => `shop/f${'x'.repeat(200)}${i}${j}`) })),
  'destination_fqdn: 1 pattern of 64 stars, the last part missing': spread(1, 1, () => ({ destination_fqdn: [`${'*a'.repeat(62)}*x*c`] })),
  'destination_fqdn: 64 patterns of 1 star + 192 literal names': spread(V, 4, (i) => ({ destination_fqdn: [`*${longName.slice(0, 240)}x${i}`, ...Array.from({ length: 3 }, (_, j) => `${longName.slice(0, 240)}${i}x${j}`)] })),
  'destination_fqdn: 64 patterns *aaa...ab (a backtracking scan is quadratic)': spread(64, 4, (i) => ({ destination_fqdn: Array.from({ length: 4 }, (_, j) => `*${'a'.repeat(250)}b${i * 4 + j}`) })),
  'destination_fqdn: 256 literal names of 250 characters': spread(V, 4, (i) => ({ destination_fqdn: Array.from({ length: 4 }, (_, j) => `${longName.slice(0, 240)}${i}x${j}`) })),
  'every budget at once: 64 stars, 255 label values': {
    whitelist: [{ destination_fqdn: [`${'*a'.repeat(62)}*x*c`] }, ...spread(V - 4, 4, (i) => ({ source_label: Array.from({ length: 4 }, (_, j) => `k8s:no${i * 4 + j}`) })).whitelist],
    blacklist: spread(V - 4, 4, (i) => ({ source_label: Array.from({ length: 4 }, (_, j) => `k8s:no${i * 4 + j}`) })).blacklist,
  },
  'the review\'s request (63 filters x 64 selectors of 256 characters)': { whitelist: Array.from({ length: 63 }, () => ({ source_label: Array.from({ length: 64 }, () => `${'k8s:app,'.repeat(30)}nosuchkey`) })), blacklist: [] },
  '128 filters of every field, the same matching values, a node_name of their own failing last': spread(128, 1, (i) => ({
    source_ip: ['10.9.0.2'], destination_ip: ['10.9.0.0/16'], source_pod: ['shop/fe'], destination_pod: ['shop/db'], source_workload: [{ name: 'fe' }],
    destination_workload: [{ name: 'db' }], source_label: ['app=fe'], destination_label: ['app=db'], source_identity: [1001], destination_identity: [1002],
    source_fqdn: ['*c'], destination_fqdn: ['*c'], destination_port: ['5432'], protocol: ['tcp'], verdict: ['FORWARDED'], traffic_direction: ['EGRESS'],
    ip_version: ['IPv4'], tcp_flags: [{ SYN: true }], reply: [false], node_name: [`other-${i}`],
  })),
  'uuid: 256 values': spread(V, 4, () => ({ uuid: Array.from({ length: 4 }, () => 'x'.repeat(36)) })),
};

// The flows are built (as the ring's are once anything read them): what is timed is the filter alone.
for (const r of flows) void r.flow;
for (const [name, req] of Object.entries(shapes)) {
  let pred: ReturnType<typeof protoFiltersCompile>;
  try {
    pred = protoFiltersCompile(req.whitelist, req.blacklist);
  } catch (err) {
    console.log(`${name.padEnd(64)} refused: ${(err as Error).message}`);
    continue;
  }
  for (const r of flows.slice(0, 200)) pred(r); // warm
  // the best of 5 passes over the ring: the machine is shared, what is wanted is the filter's own cost
  let ms = Infinity;
  let n = 0;
  for (let pass = 0; pass < 5; pass++) {
    const t0 = performance.now();
    n = 0;
    for (const r of flows) if (pred(r)) n++;
    ms = Math.min(ms, performance.now() - t0);
  }
  console.log(`${name.padEnd(64)} ${((ms * 1000) / flows.length).toFixed(1).padStart(7)} µs per flow, ${ms.toFixed(0).padStart(5)} ms for a ring of ${flows.length} (${n} matched)`);
}
