// The DNS proxy's queries as Hubble L7 flows (agent/dns/flows.ts): which flows a query gives, their
// fields as Hubble has them, and hostile answers (names with any byte) giving flows every encoder takes.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { dnsParse, dnsQueryBuild, dnsReplyBuild, DnsRcode } from '../../agent/dns/codec.js';
import type { DnsMessage } from '../../agent/dns/codec.js';
import { dnsFlowRecords, dnsFlowsAttach, type DnsFlowContext, type DnsFlowSource } from '../../agent/dns/flows.js';
import type { DnsQueryEvent } from '../../agent/dns/proxy.js';
import type { HubbleEndpoint, HubbleFlowRecord } from '../../agent/flows/hubble.js';
import { EndpointDirectory } from '../../agent/flows/directory.js';
import { FlowPipeline } from '../../agent/flows/pipeline.js';
import { Ring } from '../../agent/flows/ring.js';
import { sqliteStoreOpen } from '../../agent/store/index.js';
import pino from 'pino';
import { setImmediate as turn } from 'node:timers/promises';
import { flowResponseEncoderCreate } from '../../api/hubble/flow-encoder.js';
import { flowResponse } from '../../api/hubble/flow-convert.js';
import { hubbleProtoLoad, hubbleProtoRoot } from '../../api/hubble/proto.js';
import { filterCompile, FilterError } from '../../agent/flows/filter.js';
import { protoFiltersCompile } from '../../api/hubble/filter.js';
import { FlowsQuery } from '../../common/schemas/flows.js';

const client: HubbleEndpoint = { ID: 7, identity: 1001, namespace: 'shop', labels: ['k8s:app=fe'], pod_name: 'fe', workloads: [{ name: 'fe', kind: 'VirtualMachine' }] };
const resolver: HubbleEndpoint = { identity: 16777217, labels: ['cidr:10.9.0.0/24', 'reserved:world'] };
const ctx: DnsFlowContext = {
  nodeName: 'node-1',
  endpoint: (address) => (address.startsWith('10.1.') || address.startsWith('fd00:1:') ? client : resolver),
  identityOf: (address) => (address.startsWith('10.1.') ? 1001 : 16777217),
  originalDestination: (c) => (c.address.includes(':') ? { address: 'fd00:9::53', port: 53 } : { address: '10.9.0.53', port: 53 }),
};

function reply(name: string, answers: Parameters<typeof dnsReplyBuild>[1], rcode: number = DnsRcode.NOERROR): DnsMessage {
  return dnsParse(dnsReplyBuild(dnsQueryBuild(4242, name, 1), answers, rcode));
}

function event(over: Partial<DnsQueryEvent>): DnsQueryEvent {
  return {
    client: { address: '10.1.0.5', port: 40000 }, transport: 'udp', name: 'api.test', qtype: 1, rcode: 0,
    verdict: { allowed: true, rule: 'CiliumNetworkPolicy shop/dns egress[1]' }, learned: [], id: 4242,
    receivedNs: 1_700_000_000_000_000_000n, upstream: { address: '10.9.0.53', port: 53 }, ...over,
  };
}

const answered = 1_700_000_000_002_500_000n;

describe('DNS L7 flows', () => {
  test('an answered query: a REQUEST flow from the workload and a RESPONSE flow back, with the answer', () => {
    const e = event({ reply: reply('api.test', [{ name: 'api.test', ttl: 300, cname: 'real.test' }, { name: 'real.test', ttl: 60, address: '10.2.0.1' }, { name: 'real.test', ttl: 30, address: '10.2.0.2' }]) });
    const [req, res, more] = dnsFlowRecords(e, ctx, answered);
    assert.equal(more, undefined);
    assert.deepEqual(
      { ...req!.flow, uuid: '' },
      {
        time: '2023-11-14T22:13:20Z', uuid: '', Type: 'L7', node_name: 'node-1', event_type: { type: 129 }, traffic_direction: 'EGRESS',
        verdict: 'FORWARDED', IP: { source: '10.1.0.5', destination: '10.9.0.53', ipVersion: 'IPv4' },
        l4: { UDP: { source_port: 40000, destination_port: 53 } }, source: client, destination: resolver, is_reply: false,
        l7: { type: 'REQUEST', dns: { query: 'api.test.', observation_source: 'proxy', qtypes: ['A'] } },
        Summary: 'DNS Query api.test. A',
      },
    );
    const f = res!.flow;
    assert.equal(f.time, '2023-11-14T22:13:20.002500Z');
    assert.deepEqual([f.verdict, f.is_reply, f.IP, f.l4, f.source, f.destination], ['FORWARDED', true, { source: '10.9.0.53', destination: '10.1.0.5', ipVersion: 'IPv4' }, { UDP: { source_port: 53, destination_port: 40000 } }, resolver, client]);
    assert.deepEqual(f.l7, {
      type: 'RESPONSE', latency_ns: '2500000',
      dns: { query: 'api.test.', ips: ['10.2.0.1', '10.2.0.2'], ttl: 30, cnames: ['real.test.'], rrtypes: ['CNAME', 'A'], observation_source: 'proxy', qtypes: ['A'] },
    });
    assert.equal(f.Summary, 'DNS Answer "10.2.0.1,10.2.0.2" TTL: 30 (Proxy api.test. A)');
    assert.notEqual(req!.flow.uuid, f.uuid);
  });

  test('a refused query: one DROPPED REQUEST flow naming the denying policy, no response', () => {
    const e = event({ rcode: DnsRcode.REFUSED, verdict: { allowed: false, rule: 'CiliumNetworkPolicy shop/dns egress[1]' }, transport: 'tcp', client: { address: 'fd00:1::5', port: 41000 }, qtype: 28 });
    const recs = dnsFlowRecords(e, ctx, answered);
    assert.equal(recs.length, 1);
    const f = recs[0]!.flow;
    assert.deepEqual([f.verdict, f.drop_reason_desc, f.l7?.type, f.l4, f.IP?.ipVersion, f.l7?.dns.qtypes], ['DROPPED', 'POLICY_DENY', 'REQUEST', { TCP: { source_port: 41000, destination_port: 53 } }, 'IPv6', ['AAAA']]);
    assert.deepEqual(f.egress_denied_by, [{ name: 'dns', namespace: 'shop', kind: 'CiliumNetworkPolicy', labels: ['k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy', 'k8s:io.cilium.k8s.policy.name=dns', 'k8s:io.cilium.k8s.policy.namespace=shop'] }]);
  });

  test('a refusal without a policy (default deny) names none; an upstream failure is a SERVFAIL response', () => {
    const denied = dnsFlowRecords(event({ verdict: { allowed: false, rule: 'no DNS rule allows the name' }, rcode: 5 }), ctx)[0]!.flow;
    assert.equal(denied.egress_denied_by, undefined);
    const [, res] = dnsFlowRecords(event({ rcode: DnsRcode.SERVFAIL }), ctx, answered);
    assert.deepEqual(res!.flow.l7?.dns, { query: 'api.test.', observation_source: 'proxy', rcode: 2, qtypes: ['A'] });
    assert.equal(res!.flow.Summary, 'DNS Answer RCode: Server Failure (Proxy api.test. A)');
  });

  test('a query the datapath did not steer (no resolver known) gives no flow', () => {
    assert.deepEqual(dnsFlowRecords(event({ upstream: undefined, verdict: { allowed: false, rule: 'not steered' } }), { ...ctx, originalDestination: () => undefined }), []);
  });

  test('hostile answer: names with every byte value come out escaped ASCII, and both encoders take the flow', () => {
    // A reply whose CNAME target and owner names carry bytes 0x00-0xff (quotes, backslashes, NUL, UTF-8 fragments).
    const base = dnsReplyBuild(dnsQueryBuild(9, 'x.test', 1), [{ name: 'x.test', ttl: 5, address: '10.2.0.9' }]);
    const label = (from: number, n = 63) => Buffer.from([n, ...Array.from({ length: n }, (_, i) => from + i)]);
    const cname = (labels: Buffer[]) => {
      const rec = Buffer.concat([Buffer.from([0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 5]), Buffer.alloc(2), ...labels, Buffer.from([0])]);
      rec.writeUInt16BE(rec.length - 12, 10);
      return rec;
    };
    // a name is at most 255 bytes on the wire: bytes 0-188 in one target, 189-255 in the other
    const raw = Buffer.concat([base, cname([label(0), label(63), label(126)]), cname([label(189), label(252, 4)])]);
    raw.writeUInt16BE(3, 6);
    const msg = dnsParse(raw);
    const [, res] = dnsFlowRecords(event({ name: 'x.test', reply: msg }), ctx, answered);
    const targets = res!.flow.l7!.dns.cnames!;
    assert.equal(targets.length, 2);
    for (const t of targets) assert.match(t, /^[\x20-\x7e]+$/, 'printable ASCII only');
    const target = targets.join(' ');
    assert.ok(target.includes('\\000') && target.includes('\\255') && target.includes('\\034') && target.includes('\\092'));
    const line = JSON.parse(JSON.stringify(res)) as { flow: { l7: { dns: { cnames: string[] } } } };
    assert.deepEqual(line.flow.l7.dns.cnames, targets);
    const encode = flowResponseEncoderCreate();
    const type = hubbleProtoRoot().lookupType('observer.GetFlowsResponse');
    const decoded = type.toObject(type.decode(encode(res!)!), { enums: String, longs: String }) as { flow: { l7: { dns: { cnames: string[] } } } };
    assert.deepEqual(decoded.flow.l7.dns.cnames, targets);
    const serialize = (hubbleProtoLoad()['observer.Observer'] as unknown as Record<string, { responseSerialize: (m: object) => Buffer }>).GetFlows!.responseSerialize;
    assert.ok(serialize(flowResponse(res!)).length > 0);
  });
});

describe('DNS L7 flows as the ring keeps them', () => {
  test('built on first read and kept: the same uuid, time and JSON each time; the parsed answer is not held', () => {
    const e = event({ reply: reply('api.test', [{ name: 'api.test', ttl: 60, address: '10.2.0.1' }]) });
    const [req, res] = dnsFlowRecords(e, ctx, answered);
    const first = res!.flow;
    assert.equal(res!.flow, first, 'one object, built once');
    assert.equal(JSON.stringify(res), JSON.stringify({ flow: first, node_name: 'node-1', time: first.time }));
    assert.notEqual(req!.flow.uuid, first.uuid);
    assert.equal(req!.time, '2023-11-14T22:13:20Z');
    // What the record holds: no reference to the event's parsed message (it stays in the ring for seconds).
    const held = new Set<unknown>();
    const walk = (v: unknown): void => {
      if (typeof v !== 'object' || v === null || held.has(v)) return;
      held.add(v);
      for (const k of Object.getOwnPropertyNames(v)) walk((v as Record<string, unknown>)[k]);
    };
    walk(res);
    assert.ok(!held.has(e.reply) && !held.has(e), 'the record keeps the facts, not the event');
  });
});

describe('DNS flows kept packed in the flow ring (a row of the query log, not objects)', () => {
  const source = (): DnsFlowSource => ({
    cache: { empty: true, namesByAddress: () => undefined, namesByIpv4: () => undefined },
    identityOf: (address) => (address.startsWith('10.1.') ? 1001 : 16777217),
    identityLabels: () => undefined,
    originalDestination: () => ({ address: '10.9.0.53', port: 53 }),
  });
  /** What a flow says, less the parts named by the directory, the uuid and when it was answered. */
  const said = (r: HubbleFlowRecord) => JSON.stringify([r.flow.is_reply ? '' : r.time, r.flow.verdict, r.flow.IP, r.flow.l4, { ...r.flow.l7, latency_ns: undefined }, r.flow.Summary, r.flow.egress_denied_by]);

  test('after many queries, allowed and refused, the ring shows what keeping every record would; the same uuid on every read and to followers', async () => {
    const pipeline = new FlowPipeline(new EndpointDirectory(sqliteStoreOpen(':memory:')), 'node-1', 5, pino({ level: 'silent' }));
    const dns = source();
    dnsFlowsAttach(dns, pipeline, new EndpointDirectory(sqliteStoreOpen(':memory:')), 'node-1', pino({ level: 'silent' }));
    const reference = new Ring<HubbleFlowRecord>(5);
    const followed: HubbleFlowRecord[] = [];
    pipeline.on('flow', (r) => followed.push(r));
    for (let i = 0; i < 40; i++) {
      // Refused queries give one flow, answered ones two: rows and ring slots go out of step, and a run
      // of refused ones fills the ring with as many queries as it has slots.
      const allowed = 'ADDDDDAADADDAAAD'[i % 16] === 'A';
      const name = `q${i}.test`;
      const e = event({
        name, client: { address: '10.1.0.5', port: 40000 + i }, receivedNs: 1_700_000_000_000_000_000n + BigInt(i) * 1_000_000n,
        ...(allowed ? { reply: reply(name, [{ name, ttl: 30 + i, address: `10.2.0.${i}` }]) } : { verdict: { allowed: false, rule: 'no DNS rule allows the name' }, rcode: DnsRcode.REFUSED }),
      });
      dns.onQuery!(e);
      await turn();
      for (const r of dnsFlowRecords(e, ctx, 0n)) reference.push(r);
      const kept = pipeline.ring.last();
      assert.deepEqual(kept.map(said), reference.last().map(said), `after query ${i}`);
      assert.deepEqual(pipeline.ring.last().map((r) => r.flow.uuid), kept.map((r) => r.flow.uuid), 'a flow made again has its uuid');
      assert.equal(new Set(kept.map((r) => r.flow.uuid)).size, kept.length);
    }
    assert.deepEqual(followed.slice(-5).map((r) => r.flow.uuid), pipeline.ring.last().map((r) => r.flow.uuid), 'followers got the flows the ring shows');
    assert.equal(pipeline.ring.written, followed.length);
  });
});

describe('filters on DNS flows and names', () => {
  const [req, res] = dnsFlowRecords(event({ reply: reply('api.test', [{ name: 'api.test', ttl: 5, address: '10.2.0.1' }]) }), ctx, answered);
  const plainUdp = { flow: { ...req!.flow, Type: 'L3_L4' as const, l7: undefined }, node_name: 'node-1', time: req!.time };

  test('protocol dns: the L7 DNS flows only (udp still matches them by their L4)', () => {
    const dns = filterCompile({ protocol: ['dns'] });
    assert.deepEqual([dns(req!), dns(res!), dns(plainUdp)], [true, true, false]);
    assert.equal(filterCompile({ protocol: ['udp'] })(req!), true);
    const grpc = protoFiltersCompile([{ protocol: ['dns'] }], undefined);
    assert.deepEqual([grpc(req!), grpc(plainUdp)], [true, false]);
  });

  test('gRPC destination_fqdn maps to the same filter; a bad pattern is INVALID_ARGUMENT material naming the field', () => {
    const named = { flow: { ...plainUdp.flow, destination_names: ['api.test'] }, node_name: 'node-1', time: req!.time };
    const pred = protoFiltersCompile([{ destination_fqdn: ['*.test'] }], undefined);
    assert.deepEqual([pred(named), pred(plainUdp)], [true, false]);
    assert.throws(() => protoFiltersCompile([{ destination_fqdn: ['a$'] }], undefined), (e: Error) => e instanceof FilterError && e.message.startsWith('whitelist[0]: destination_fqdn'));
    assert.throws(() => protoFiltersCompile([{ source_fqdn: ['a'.repeat(300)] }], undefined), /whitelist\[0\]\.source_fqdn: a value is longer than 256/);
  });

  test('REST: the query parameters and JSON filters validate the patterns, naming the field', () => {
    assert.deepEqual(FlowsQuery.parse({ destination_fqdn: 'api.test,*.svc.test' }).destination_fqdn, ['api.test', '*.svc.test']);
    const bad = FlowsQuery.safeParse({ source_fqdn: 'a(b)' });
    assert.equal(bad.success, false);
    assert.deepEqual(bad.error!.issues[0]!.path, ['source_fqdn', 0]);
    const json = FlowsQuery.safeParse({ whitelist: JSON.stringify([{ destination_fqdn: ['x|y'] }]) });
    assert.equal(json.success, false);
    assert.match(json.error!.issues[0]!.message, /0\.destination_fqdn\.0: must be a name pattern/);
  });
});
