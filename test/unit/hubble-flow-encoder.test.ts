import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { FlowEvent } from '../../bpf/index.js';
import { ipv4Number, type EndpointL2 } from '../../agent/flows/directory.js';
import { LazyFlowRecord } from '../../agent/flows/enrich.js';
import type { HubbleEndpoint, HubbleFlowRecord } from '../../agent/flows/hubble.js';
import { policyFromRuleRef } from '../../api/hubble/attribution.js';
import type { FlowExtras } from '../../api/hubble/backend.js';
import { FLOW_FIELDS_ENCODED, flowEncoderOptions, flowResponseEncoderCreate } from '../../api/hubble/flow-encoder.js';
import { flowResponse } from '../../api/hubble/flow-convert.js';
import { hubbleProtoLoad, hubbleProtoRoot } from '../../api/hubble/proto.js';
import { dnsParse, dnsQueryBuild, dnsReplyBuild } from '../../agent/dns/codec.js';
import { dnsFlowRecords, type DnsFlowContext } from '../../agent/dns/flows.js';
import type { DnsQueryEvent } from '../../agent/dns/proxy.js';

const fe: HubbleEndpoint = { ID: 2, identity: 1001, namespace: 'shop', labels: ['k8s:app=fe', 'k8s:io.kubernetes.pod.namespace=shop'], pod_name: 'fe', workloads: [{ name: 'fe', kind: 'ExternalWorkload' }] };
const vm: HubbleEndpoint = { ID: 3, identity: 1002, namespace: 'shop', labels: ['k8s:app=db'], pod_name: 'db', workloads: [{ name: 'db', kind: 'VirtualMachine' }] };
const world: HubbleEndpoint = { identity: 2, labels: ['reserved:world'] };
const base: FlowEvent = {
  timeNs: 1_700_000_000_123_456_789n, ifindex: 10, endpointId: 2, direction: 'EGRESS', family: 4, protocol: 6,
  srcAddr: '10.9.0.2', dstAddr: '10.9.0.3', srcPort: 40000, dstPort: 5432, icmpType: 0, icmpCode: 0, tcpFlags: 0x02,
  srcIdentity: 1001, dstIdentity: 1002, verdict: 'FORWARDED', dropReason: 0, isReply: false, length: 60, etherType: 0x0800,
};
const v6 = { family: 6 as const, srcAddr: 'fd00:9::2', dstAddr: 'fd00:9::3', etherType: 0x86dd };

/** Events of every shape the datapath reports, and the extras the gRPC API adds. */
const CASES: Array<[string, Partial<FlowEvent>, FlowExtras?, HubbleEndpoint?]> = [
  ['TCP SYN v4', {}],
  ['TCP SYN-ACK reply v6, ingress', { ...v6, direction: 'INGRESS', tcpFlags: 0x12, isReply: true }],
  ['TCP all flags', { tcpFlags: 0xff }],
  ['TCP no flags, port 0', { tcpFlags: 0, srcPort: 0 }],
  ['UDP v6', { ...v6, protocol: 17, srcPort: 5353, dstPort: 53 }],
  ['SCTP', { protocol: 132, srcPort: 9, dstPort: 10 }],
  ['ICMPv4 echo request', { protocol: 1, srcPort: 0, dstPort: 0, icmpType: 8, icmpCode: 0 }],
  ['ICMPv4 unreachable code 3', { protocol: 1, icmpType: 3, icmpCode: 3 }],
  ['ICMPv6 neighbour solicitation', { ...v6, protocol: 58, icmpType: 135 }],
  ['ICMPv6 echo reply (type only)', { ...v6, protocol: 58, icmpType: 129, isReply: true }],
  ['unknown IP protocol', { protocol: 47 }],
  ['policy drop with attribution', { verdict: 'DROPPED', dropReason: 181 }, { egress_denied_by: [policyFromRuleRef('CiliumNetworkPolicy shop/deny-db egress[0]')!] }],
  ['other drop reason', { verdict: 'DROPPED', dropReason: 133, direction: 'INGRESS' }],
  ['ARP drop (family 4, protocol 0)', { verdict: 'DROPPED', dropReason: 181, etherType: 0x0806, protocol: 0 }],
  ['non-IP frame', { family: 0, srcAddr: '', dstAddr: '', protocol: 0, verdict: 'DROPPED', dropReason: 133, etherType: 0x88cc }],
  ['VLAN-tagged IP', { etherType: 0x8100 }],
  ['allowed by two policies, interface named', { direction: 'INGRESS' }, {
    ingress_allowed_by: [policyFromRuleRef('NetworkPolicy shop/a ingress[0]')!, policyFromRuleRef('CiliumClusterwideNetworkPolicy all ingress[1]')!], interfaceName: 'kn-db',
  }],
  ['to world, no ID', { dstIdentity: 2, dstAddr: '192.0.2.1' }, undefined, world],
  ['no ifindex, interface name ignored', { ifindex: 0 }, { interfaceName: 'kn-x' }],
  ['time on a whole second', { timeNs: 1_700_000_000_000_000_000n }],
];

const wl = '02:00:00:00:00:0a';
const gw = '02:00:00:00:00:0b';
const l2: EndpointL2 = { workload: wl, gateway: gw, egress: { source: wl, destination: gw }, ingress: { source: gw, destination: wl } };

/** Events on a link with MACs (veth, netkit L2, tap), and the `ethernet` Hubble shows for them (undefined: left out). */
const L2_CASES: Array<[string, Partial<FlowEvent>, { source: string; destination: string } | undefined]> = [
  ['egress unicast: workload to gateway', {}, { source: wl, destination: gw }],
  ['ingress unicast v6: gateway to workload', { ...v6, direction: 'INGRESS' }, { source: gw, destination: wl }],
  ['DHCP discover to 255.255.255.255', { protocol: 17, srcAddr: '0.0.0.0', dstAddr: '255.255.255.255', srcPort: 68, dstPort: 67 }, { source: wl, destination: 'ff:ff:ff:ff:ff:ff' }],
  ['IPv4 multicast 239.129.2.3 (25th bit dropped)', { protocol: 17, dstAddr: '239.129.2.3' }, { source: wl, destination: '01:00:5e:01:02:03' }],
  ['IPv6 solicited-node multicast', { ...v6, protocol: 58, icmpType: 135, dstAddr: 'ff02::1:ff00:2' }, { source: wl, destination: '33:33:ff:00:00:02' }],
  ['IPv6 all-nodes to the workload', { ...v6, direction: 'INGRESS', protocol: 58, icmpType: 134, srcAddr: 'fe80::1', dstAddr: 'ff02::1' }, { source: gw, destination: '33:33:00:00:00:01' }],
  ['policy drop keeps the MACs', { verdict: 'DROPPED', dropReason: 133 }, { source: wl, destination: gw }],
  ['source MAC spoofed: left out', { verdict: 'DROPPED', dropReason: 130 }, undefined],
  ['ARP: left out', { verdict: 'DROPPED', dropReason: 181, etherType: 0x0806, protocol: 0 }, undefined],
  ['non-IP frame: left out', { family: 0, srcAddr: '', dstAddr: '', protocol: 0, verdict: 'DROPPED', dropReason: 133, etherType: 0x88cc }, undefined],
];

const m = (hubbleProtoLoad()['observer.Observer'] as unknown as Record<string, { responseSerialize: (m: object) => Buffer; responseDeserialize: (b: Buffer) => object }>).GetFlows!;
const encode = flowResponseEncoderCreate();
const responseType = hubbleProtoRoot().lookupType('observer.GetFlowsResponse');
/** The message as a proto3 reader sees it: a field left out and a field sent with its default value read the same. */
const read = (bytes: Uint8Array) => responseType.toObject(responseType.decode(bytes), { longs: Number, enums: String, defaults: true, oneofs: true });

describe('Hubble flow encoder (direct from the event) against protobufjs from the JSON flow', () => {
  for (const [name, over, extras, peer] of CASES) {
    test(name, () => {
      const rec = new LazyFlowRecord({ ...base, ...over }, fe, peer ?? vm, 'node-1');
      const direct = encode(rec, extras);
      assert.ok(direct, 'the pipeline record is encoded directly');
      const library = m.responseSerialize(flowResponse(rec, extras));
      assert.deepEqual(read(direct), read(library));
    });
  }

  test('IPv4 addresses by number (as decoded events carry them), and every shape twice (bytes from the caches): the same message', () => {
    for (const [name, over, extras, peer] of CASES) {
      const ev = { ...base, ...over };
      const numbered = ev.family === 4 ? { ...ev, srcIpv4: ipv4Number(ev.srcAddr), dstIpv4: ipv4Number(ev.dstAddr) } : ev;
      for (let i = 0; i < 2; i++) {
        const rec = new LazyFlowRecord(numbered, fe, peer ?? vm, 'node-1');
        const direct = encode(rec, extras)!;
        assert.deepEqual(read(direct), read(m.responseSerialize(flowResponse(rec, extras))), `${name}, round ${i + 1}`);
      }
    }
  });

  test('every field of the JSON flow is one the encoder writes', () => {
    const known = new Set<string>(FLOW_FIELDS_ENCODED);
    for (const [name, over] of [...CASES, ...L2_CASES]) {
      const flow = new LazyFlowRecord({ ...base, ...over }, fe, vm, 'node-1', l2).flow;
      for (const key of Object.keys(flow)) {
        if ((flow as unknown as Record<string, unknown>)[key] !== undefined) assert.ok(known.has(key), `${name}: flow field ${key} is not encoded by api/hubble/flow-encoder.ts`);
      }
    }
  });

  test('source_names / destination_names the DNS proxy learned, on both directions', () => {
    const out = new LazyFlowRecord(base, fe, world, 'node-1');
    out.destinationNames = ['api.test', 'alias.test'];
    const back = new LazyFlowRecord({ ...base, direction: 'INGRESS', isReply: true }, world, fe, 'node-1');
    back.sourceNames = ['api.test'];
    for (const rec of [out, back]) assert.deepEqual(read(encode(rec)!), read(m.responseSerialize(flowResponse(rec))));
    assert.deepEqual((read(encode(out)!) as { flow: { destination_names: string[] } }).flow.destination_names, ['api.test', 'alias.test']);
  });

  for (const [name, over, want] of L2_CASES) {
    test(`ethernet: ${name}`, () => {
      const rec = new LazyFlowRecord({ ...base, ...over }, fe, vm, 'node-1', l2);
      assert.deepEqual(rec.flow.ethernet, want);
      const direct = encode(rec);
      assert.deepEqual(read(direct!), read(m.responseSerialize(flowResponse(rec))));
      // twice: the shared pairs' bytes come from the cache the second time
      assert.deepEqual(read(encode(rec)!), read(direct!));
      assert.deepEqual((m.responseDeserialize(direct!) as { flow: { ethernet?: unknown } }).flow.ethernet ?? undefined, want);
    });
  }

  test('ethernet: a link without MACs (netkit L3) has none, in JSON and on the wire', () => {
    const rec = new LazyFlowRecord(base, fe, vm, 'node-1');
    assert.equal(JSON.parse(JSON.stringify(rec)).flow.ethernet, undefined);
    assert.equal((m.responseDeserialize(encode(rec)!) as { flow: { ethernet?: unknown } }).flow.ethernet ?? undefined, undefined);
  });

  test('the in-place writer and protobufjs\'s Writer give the same bytes', () => {
    for (const [name, over, extras, peer] of CASES) {
      const rec = new LazyFlowRecord({ ...base, ...over }, fe, peer ?? vm, 'node-1', l2);
      const inPlace = encode(rec, extras)!;
      flowEncoderOptions.inPlace = false;
      try {
        assert.deepEqual(inPlace, encode(rec, extras), name);
      } finally {
        flowEncoderOptions.inPlace = true;
      }
    }
  });

  test('the uuid is the same in the JSON flow and on the wire, and differs between flows', () => {
    const a = new LazyFlowRecord(base, fe, vm, 'node-1');
    const b = new LazyFlowRecord(base, fe, vm, 'node-1');
    const wa = m.responseDeserialize(encode(a)!) as { flow: { uuid: string } };
    const wb = m.responseDeserialize(encode(b)!) as { flow: { uuid: string } };
    assert.equal(wa.flow.uuid, a.flow.uuid);
    assert.notEqual(wa.flow.uuid, wb.flow.uuid);
    // A version 4 uuid in form (flow-uuid.ts: random per run, a sequence in the last group).
    for (const u of [wa.flow.uuid, wb.flow.uuid]) assert.match(u, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  test('an endpoint replaced by a new object is encoded anew (the cache is per object)', () => {
    const before = new LazyFlowRecord(base, fe, vm, 'node-1');
    encode(before);
    const relabelled: HubbleEndpoint = { ...vm, labels: ['k8s:app=db2'] };
    const after = m.responseDeserialize(encode(new LazyFlowRecord(base, fe, relabelled, 'node-1'))!) as { flow: { destination: { labels: string[] } } };
    assert.deepEqual(after.flow.destination.labels, ['k8s:app=db2']);
  });

  describe('L7 DNS flows (the DNS proxy\'s records)', () => {
    const ctx: DnsFlowContext = {
      nodeName: 'node-1',
      endpoint: (a) => (a === '10.9.0.2' || a === 'fd00:9::2' ? fe : world),
      identityOf: (a) => (a === '10.9.0.2' ? 1001 : 2),
      originalDestination: (c) => ({ address: c.address.includes(':') ? 'fd00:9::53' : '10.9.0.53', port: 53 }),
    };
    const q = (over: Partial<DnsQueryEvent>): DnsQueryEvent => ({
      client: { address: '10.9.0.2', port: 40000 }, transport: 'udp', name: 'api.test', qtype: 1, rcode: 0, verdict: { allowed: true },
      learned: [], id: 1, receivedNs: 1_700_000_000_123_456_789n, ...over,
    });
    const answer = dnsParse(dnsReplyBuild(dnsQueryBuild(1, 'api.test', 1), [{ name: 'api.test', ttl: 60, cname: 'b.test' }, { name: 'b.test', ttl: 20, address: '192.0.2.1' }, { name: 'b.test', ttl: 20, address: '2001:db8::1' }]));
    const L7_CASES: Array<[string, DnsQueryEvent, FlowExtras?]> = [
      ['allowed query and answer over UDP v4', q({ reply: answer })],
      ['over TCP v6, NXDOMAIN', q({ transport: 'tcp', client: { address: 'fd00:9::2', port: 41000 }, qtype: 28, rcode: 3 })],
      ['refused with the denying policy', q({ verdict: { allowed: false, rule: 'CiliumNetworkPolicy shop/dns egress[1], CiliumClusterwideNetworkPolicy all egress[0]' }, rcode: 5 })],
      ['refused, denier also in extras', q({ verdict: { allowed: false, rule: 'CiliumNetworkPolicy shop/dns egress[1]' }, rcode: 5 }), { egress_denied_by: [policyFromRuleRef('CiliumNetworkPolicy shop/x egress[0]')!], interfaceName: 'kn-x' }],
    ];
    for (const [name, e, extras] of L7_CASES) {
      test(name, () => {
        for (const rec of dnsFlowRecords(e, ctx, 1_700_000_001_000_000_000n)) {
          const direct = encode(rec, extras);
          assert.ok(direct, 'an L7 record is encoded directly');
          assert.deepEqual(read(direct), read(m.responseSerialize(flowResponse(rec, extras))));
          const known = new Set<string>(FLOW_FIELDS_ENCODED);
          for (const [k, v] of Object.entries(rec.flow)) if (v !== undefined) assert.ok(known.has(k) || k === 'drop_reason_desc' || k === 'drop_reason', `flow field ${k} is not encoded`);
        }
      });
    }

    test('the L7 fields on the wire as the real flow.proto numbers them', () => {
      const [, res] = dnsFlowRecords(q({ reply: answer }), ctx, 1_700_000_001_000_000_000n);
      const f = (read(encode(res!)!) as { flow: Record<string, unknown> }).flow;
      assert.equal(f.Type, 'L7');
      assert.deepEqual(f.event_type, { type: 129, sub_type: 0 });
      const l7 = f.l7 as { type: string; latency_ns: number; dns: Record<string, unknown> };
      assert.equal(l7.type, 'RESPONSE');
      assert.equal(l7.latency_ns, 876_543_211);
      assert.deepEqual(l7.dns.ips, ['192.0.2.1', '2001:db8::1']);
      assert.deepEqual([l7.dns.ttl, l7.dns.cnames, l7.dns.observation_source, l7.dns.rrtypes], [20, ['b.test.'], 'proxy', ['CNAME', 'A', 'AAAA']]);
    });
  });

  test('a record that is not the pipeline\'s is left to the library', () => {
    const plain = JSON.parse(JSON.stringify(new LazyFlowRecord(base, fe, vm, 'node-1'))) as HubbleFlowRecord;
    assert.equal(encode(plain), undefined);
  });
});
