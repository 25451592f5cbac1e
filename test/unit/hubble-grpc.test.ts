import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { FlowEvent } from '../../bpf/index.js';
import { DROP_REASON_DESC } from '../../bpf/layout.gen.js';
import { LazyFlowRecord } from '../../agent/flows/enrich.js';
import { FilterError } from '../../agent/flows/filter.js';
import type { HubbleEndpoint } from '../../agent/flows/hubble.js';
import { policyAttribution, policyFromRuleRef, type PolicyTrace } from '../../api/hubble/attribution.js';
import type { TracePeer } from '../../agent/policy/trace.js';
import { protoFilterCompile, protoFiltersCompile } from '../../api/hubble/filter.js';
import { flowResponse, lostResponse, timestampFromIso } from '../../api/hubble/flow-convert.js';
import { hubbleProtoLoad } from '../../api/hubble/proto.js';

const fe: HubbleEndpoint = { ID: 2, identity: 1001, namespace: 'shop', labels: ['k8s:app=fe', 'k8s:io.kubernetes.pod.namespace=shop'], pod_name: 'fe', workloads: [{ name: 'fe', kind: 'ExternalWorkload' }] };
const db: HubbleEndpoint = { ID: 3, identity: 1002, namespace: 'shop', labels: ['k8s:app=db'], pod_name: 'db', workloads: [{ name: 'db', kind: 'VirtualMachine' }] };
const base: FlowEvent = {
  timeNs: 1_700_000_000_123_456_789n, ifindex: 10, endpointId: 2, direction: 'EGRESS', family: 4, protocol: 6,
  srcAddr: '10.9.0.2', dstAddr: '10.9.0.3', srcPort: 40000, dstPort: 5432, icmpType: 0, icmpCode: 0, tcpFlags: 0x12,
  srcIdentity: 1001, dstIdentity: 1002, verdict: 'FORWARDED', dropReason: 0, isReply: true, length: 60,
};
const rec = (over: Partial<FlowEvent> = {}) => new LazyFlowRecord({ ...base, ...over }, fe, db, 'node-1');

// Decoded wire objects: nested fields read without a declared type for each.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type WireFlow = Record<string, any>;

/** Encodes with kitnet's proto (as the server does) and decodes the bytes again. */
function wire(msg: object): Record<string, unknown> {
  const svc = hubbleProtoLoad()['observer.Observer'] as unknown as Record<string, { responseSerialize: (m: object) => Buffer; responseDeserialize: (b: Buffer) => Record<string, unknown> }>;
  const m = svc.GetFlows!;
  return m.responseDeserialize(m.responseSerialize(msg));
}

describe('Hubble flow conversion', () => {
  test('a forwarded TCP flow crosses the wire with Hubble fields', () => {
    const out = wire(flowResponse(rec()));
    const f = out.flow as WireFlow;
    assert.deepEqual(out.time, { seconds: 1_700_000_000, nanos: 123_456_789 });
    assert.deepEqual(f.time, out.time);
    assert.equal(out.node_name, 'node-1');
    assert.equal(f.verdict, 'FORWARDED');
    assert.equal(f.Type, 'L3_L4');
    assert.deepEqual(f.IP, { source: '10.9.0.2', destination: '10.9.0.3', ipVersion: 'IPv4' });
    assert.deepEqual(f.l4, { TCP: { source_port: 40000, destination_port: 5432, flags: { SYN: true, ACK: true } }, protocol: 'TCP' });
    assert.deepEqual(f.source.workloads, [{ name: 'fe', kind: 'ExternalWorkload' }]);
    assert.equal(f.source.pod_name, 'fe');
    assert.equal(f.destination.identity, 1002);
    assert.deepEqual(f.is_reply, { value: true });
    assert.equal(f.traffic_direction, 'EGRESS');
    assert.equal(f.trace_observation_point, 'FROM_ENDPOINT');
    assert.deepEqual(f.event_type, { type: 4 });
    assert.deepEqual(f.interface, { index: 10 });
    assert.equal(f.drop_reason_desc, undefined);
  });

  test('a drop carries drop_reason and drop_reason_desc by name', () => {
    const f = wire(flowResponse(rec({ verdict: 'DROPPED', dropReason: 133, direction: 'INGRESS', isReply: false }))).flow as WireFlow;
    assert.equal(f.verdict, 'DROPPED');
    assert.equal(f.drop_reason, 133);
    assert.equal(f.drop_reason_desc, 'POLICY_DENIED');
    assert.deepEqual(f.event_type, { type: 1, sub_type: 133 });
    // Present with false (a known non-reply), not absent (unknown).
    assert.deepEqual(f.is_reply, { value: false });
    assert.equal(f.trace_observation_point, 'TO_ENDPOINT');
  });

  test('lost events', () => {
    const out = wire(lostResponse({ lost_events: { source: 'OBSERVER_EVENTS_QUEUE', num_events_lost: 7, cpu: null }, node_name: 'n', time: '2026-01-02T03:04:05.5Z' }));
    assert.deepEqual(out.lost_events, { source: 'OBSERVER_EVENTS_QUEUE', num_events_lost: 7 });
    assert.deepEqual(out.time, { seconds: Date.parse('2026-01-02T03:04:05Z') / 1000, nanos: 500_000_000 });
  });

  test('timestamps keep nanoseconds; garbage gives zero', () => {
    assert.deepEqual(timestampFromIso('2026-11-26T12:00:00.123456789Z'), { seconds: Date.parse('2026-11-26T12:00:00Z') / 1000, nanos: 123_456_789 });
    assert.deepEqual(timestampFromIso('nonsense'), { seconds: 0, nanos: 0 });
  });

  test("the proto's DropReason enum lists every reason the datapath reports, by the same names", () => {
    const t = (hubbleProtoLoad()['flow.DropReason'] as unknown as { type: { value: Array<{ name: string; number: number }> } }).type;
    const inProto = new Map(t.value.map((v) => [v.number, v.name]));
    for (const [n, [name]] of DROP_REASON_DESC) assert.equal(inProto.get(n), name, `DropReason ${n}`);
  });
});

describe('Hubble FlowFilter evaluation', () => {
  const fwd = rec();
  const drop = rec({ verdict: 'DROPPED', dropReason: 181, direction: 'INGRESS', isReply: false, family: 6, srcAddr: 'fd00::2', dstAddr: 'fd00::3' });
  const match = (filter: Record<string, unknown>) => [fwd, drop].map(protoFilterCompile(filter, 'whitelist[0]'));

  test('fields shared with the REST filter', () => {
    assert.deepEqual(match({ verdict: ['DROPPED'] }), [false, true]);
    assert.deepEqual(match({ source_pod: ['shop/f'] }), [true, true]);
    assert.deepEqual(match({ destination_label: ['app=db'] }), [true, true]);
    assert.deepEqual(match({ destination_label: ['app=fe'] }), [false, false]);
    assert.deepEqual(match({ ip_version: ['IPv6'] }), [false, true]);
    assert.deepEqual(match({ traffic_direction: ['EGRESS'] }), [true, false]);
    assert.deepEqual(match({ destination_port: ['5432'], protocol: ['tcp'] }), [true, true]);
    assert.deepEqual(match({ source_identity: [1001] }), [true, true]);
    assert.deepEqual(match({ reply: [true] }), [true, false]);
    assert.deepEqual(match({ source_workload: [{ name: 'fe', kind: 'ExternalWorkload' }] }), [true, true]);
    assert.deepEqual(match({ tcp_flags: [{ SYN: true, ACK: true }] }), [true, true]);
    assert.deepEqual(match({ tcp_flags: [{ FIN: true }] }), [false, false]);
    assert.deepEqual(match({ source_ip: ['10.9.0.0/24'] }), [true, false]);
  });

  test('enum values as numbers (unknown to the proto) and names', () => {
    assert.deepEqual(match({ drop_reason_desc: ['POLICY_DENY'] }), [false, true]);
    assert.deepEqual(match({ drop_reason_desc: [181] }), [false, true]);
    assert.deepEqual(match({ verdict: [99] }), [false, false]);
  });

  test('event_type, uuid, interface', () => {
    assert.deepEqual(match({ event_type: [{ type: 1 }] }), [false, true]);
    assert.deepEqual(match({ event_type: [{ type: 1, match_sub_type: true, sub_type: 133 }] }), [false, false]);
    assert.deepEqual(match({ event_type: [{ type: 4 }] }), [true, false]);
    assert.deepEqual(match({ uuid: [fwd.flow.uuid] }), [true, false]);
    assert.deepEqual(match({ interface: [{ index: 10 }] }), [true, true]);
    assert.deepEqual(match({ interface: [{ index: 11 }] }), [false, false]);
  });

  test('a field kitnet never fills matches nothing; an empty TCPFlags matches nothing', () => {
    for (const f of ['source_fqdn', 'destination_service', 'http_status_code', 'dns_query', 'node_labels', 'trace_id', 'source_cluster_name']) {
      assert.deepEqual(match({ [f]: ['x'] }), [false, false], f);
    }
    assert.deepEqual(match({ tcp_flags: [{}] }), [false, false]);
    assert.deepEqual(match({ encrypted: [false] }), [true, true]);
    assert.deepEqual(match({ encrypted: [true] }), [false, false]);
  });

  test('whitelist OR, blacklist subtracted, empty whitelist admits all', () => {
    const p = protoFiltersCompile([{ verdict: ['FORWARDED'] }, { ip_version: ['IPv6'] }], [{ traffic_direction: ['INGRESS'] }]);
    assert.deepEqual([fwd, drop].map(p), [true, false]);
    assert.deepEqual([fwd, drop].map(protoFiltersCompile(undefined, undefined)), [true, true]);
  });

  test('hostile filters fail with FilterError naming the field', () => {
    const bad: Array<[unknown, unknown, RegExp]> = [
      [[{ source_ip: ['x'] }], [], /whitelist\[0\]: "x" is not an IP address/],
      [[], [{ destination_port: ['65536'] }], /blacklist\[0\]: destination_port: "65536" is not a port number/],
      [[{ source_label: ['a in (b'] }], [], /whitelist\[0\]: label selector/],
      [Array.from({ length: 65 }, () => ({})), [], /whitelist: at most 64 filters/],
      [[{ protocol: Array.from({ length: 65 }, () => 'tcp') }], [], /whitelist\[0\]\.protocol: at most 64 values/],
      [[{ node_name: ['n'.repeat(257)] }], [], /whitelist\[0\]\.node_name: a value is longer than 256/],
      ['nope', [], /whitelist: must be a list/],
      [[null], [], /whitelist\[0\]: must be a FlowFilter/],
      [[{ source_pod: 'x' }], [], /whitelist\[0\]\.source_pod: must be a list/],
      [[{ tcp_flags: [{ SYN: true }], source_port: [1] }], [], /source_port: values must be strings/],
    ];
    for (const [w, b, re] of bad) assert.throws(() => protoFiltersCompile(w, b), (e: Error) => e instanceof FilterError && re.test(e.message), String(re));
  });

  test("the filters of one request are bounded in all (FILTER_BUDGET), fields kitnet compiles itself too", () => {
    // The review's request (1,044,543 bytes, under the 1 MiB message limit): 63 filters of 64 label
    // selectors that each fail at their last term cost 34 ms of the agent's thread per flow. With
    // each filter's selectors its own, it is refused at the third filter.
    const review = Array.from({ length: 63 }, (_, i) => ({ source_label: Array.from({ length: 64 }, () => `${'k8s:app,'.repeat(30)}nosuchkey${i}`) }));
    assert.throws(() => protoFiltersCompile(review, []), (e: Error) => e instanceof FilterError && /^whitelist\[2\]: source_label: .*at most 256 requirements in all/.test(e.message));
    const uuids = Array.from({ length: 64 }, (_, i) => ({ uuid: ['a', 'b', 'c', 'd'].map((x) => `${x}${i}`) }));
    assert.equal(protoFiltersCompile(uuids, [])(fwd), false, '256 values: accepted');
    assert.throws(() => protoFiltersCompile(uuids, [{ uuid: ['e'] }]), /^FilterError: blacklist\[0\]: uuid: the filters of one request may hold at most 256 values in all/);
    assert.throws(() => protoFiltersCompile(uuids, [{ event_type: [{ type: 4 }] }]), /blacklist\[0\]: event_type: .*256 values/);
  });
});

describe('Hubble policy attribution', () => {
  test('rule references become flow.Policy messages', () => {
    assert.deepEqual(policyFromRuleRef('CiliumNetworkPolicy shop/be-from-fe ingress[0]'), {
      name: 'be-from-fe', namespace: 'shop', kind: 'CiliumNetworkPolicy',
      labels: ['k8s:io.cilium.k8s.policy.derived-from=CiliumNetworkPolicy', 'k8s:io.cilium.k8s.policy.name=be-from-fe', 'k8s:io.cilium.k8s.policy.namespace=shop'],
    });
    assert.equal(policyFromRuleRef('CiliumClusterwideNetworkPolicy all-dns specs[1].egress[0]')?.namespace, '');
    assert.equal(policyFromRuleRef('something else'), undefined);
  });

  test("the endpoint's side decides; replies and default-deny drops carry none; answers are cached", () => {
    const calls: unknown[] = [];
    const trace: PolicyTrace = (from, to, protocol, port) => {
      calls.push([from, to, protocol, port]);
      const side = (reason: 'allowed' | 'explicit-deny') => ({
        endpointId: 2, direction: 'ingress' as const, remoteIdentity: 1001, verdict: reason === 'allowed' ? ('ALLOWED' as const) : ('DENIED' as const), reason,
        rules: ['CiliumNetworkPolicy shop/a ingress[0]', 'CiliumNetworkPolicy shop/a ingress[1]', 'NetworkPolicy shop/b ingress[0]'],
        lookups: { identity: undefined, any: undefined },
      });
      return { verdict: 'ALLOWED', srcIdentity: 1001, dstIdentity: 1002, ingress: side(port === 82 ? 'explicit-deny' : 'allowed'), egress: side('allowed') };
    };
    const attr = policyAttribution(trace);
    const names = (ps: Array<{ name: string }> | undefined) => ps?.map((p) => p.name);
    const ingress = attr(rec({ direction: 'INGRESS', isReply: false }));
    assert.deepEqual(names(ingress?.ingress_allowed_by), ['a', 'b']);
    assert.deepEqual(calls[0], [{ identity: 1001 }, { endpointId: 2 }, 6, 5432]);
    attr(rec({ direction: 'INGRESS', isReply: false }));
    assert.equal(calls.length, 1, 'the second flow of the same kind is answered from the cache');
    assert.deepEqual(names(attr(rec({ isReply: false }))?.egress_allowed_by), ['a', 'b']);
    assert.deepEqual(calls[1], [{ endpointId: 2 }, { identity: 1002 }, 6, 5432]);
    assert.deepEqual(names(attr(rec({ direction: 'INGRESS', isReply: false, verdict: 'DROPPED', dropReason: 181, dstPort: 82 }))?.ingress_denied_by), ['a', 'b']);
    assert.equal(attr(rec({ isReply: true })), undefined);
    assert.equal(attr(rec({ isReply: false, verdict: 'DROPPED', dropReason: 133 })), undefined);
  });

  test('answers are kept apart per endpoint, peer, protocol, port and direction, small ids and any u32 alike', () => {
    let calls = 0;
    // The rule's name says what was asked: any two questions that shared a cache entry would show.
    const trace: PolicyTrace = (from, to, protocol, port) => {
      calls++;
      const id = (p: TracePeer) => ('endpointId' in p ? p.endpointId : 'identity' in p ? p.identity : p.ip);
      const asked = `${id(from)}-${id(to)}-${protocol}-${port}`;
      const side = { endpointId: 0, direction: 'egress' as const, remoteIdentity: 0, verdict: 'ALLOWED' as const, reason: 'allowed' as const, rules: [`CiliumNetworkPolicy shop/${asked} egress[0]`], lookups: { identity: undefined, any: undefined } };
      return { verdict: 'ALLOWED', srcIdentity: 0, dstIdentity: 0, ingress: { ...side, direction: 'ingress' as const }, egress: side };
    };
    const attr = policyAttribution(trace);
    const big = 2 ** 32 - 2;
    const questions: Array<[Partial<FlowEvent>, string]> = [];
    for (const endpointId of [2, 3, 2 ** 27, big]) {
      for (const peer of [7, 2 ** 26 + 7, big]) {
        for (const [protocol, dstPort, icmpType] of [[6, 80, 0], [6, 81, 0], [17, 80, 0], [1, 0, 8]] as const) {
          const port = protocol === 1 ? icmpType : dstPort;
          questions.push([{ endpointId, dstIdentity: peer, protocol, dstPort, icmpType, direction: 'EGRESS', isReply: false }, `${endpointId}-${peer}-${protocol}-${port}`]);
          questions.push([{ endpointId, srcIdentity: peer, protocol, dstPort, icmpType, direction: 'INGRESS', isReply: false }, `${peer}-${endpointId}-${protocol}-${port}`]);
        }
      }
    }
    const names = (f: ReturnType<typeof attr>) => [...(f?.egress_allowed_by ?? []), ...(f?.ingress_allowed_by ?? [])].map((p) => p.name);
    for (const round of [1, 2]) {
      for (const [over, asked] of questions) assert.deepEqual(names(attr(rec(over))), [asked], `round ${round}: ${JSON.stringify(over)}`);
      assert.equal(calls, questions.length, round === 1 ? 'one trace per question' : 'the second round is answered from the cache');
    }
  });
});
