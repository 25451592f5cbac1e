import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, test } from 'node:test';
import type { Counter, MetricName } from '../../bpf/index.js';
import type { HubbleFlow, HubbleFlowRecord, LostEventSource } from '../../agent/flows/hubble.js';
import { tcpFlagsObject } from '../../agent/flows/hubble.js';
import { AgentMetrics } from '../../agent/metrics.js';
import { flowProtocol } from '../../agent/metrics/flows.js';
import { workloadRegistrationObserve } from '../../agent/metrics/process.js';
import { promHas, promParse, promValue } from '../helpers/prom.js';

class FakeFlows extends EventEmitter<{ flow: [HubbleFlowRecord]; lost: [unknown] }> {
  lost: Record<LostEventSource, number> = { PERF_EVENT_RING_BUFFER: 0, OBSERVER_EVENTS_QUEUE: 0, HUBBLE_RING_BUFFER: 0 };
  ring = { length: 7, capacity: 4095 };
}

interface FlowSpec {
  proto?: 'TCP' | 'UDP' | 'ICMPv4' | 'ICMPv6' | 'SCTP';
  dport?: number;
  flags?: number;
  verdict?: 'FORWARDED' | 'DROPPED';
  reason?: string;
  reply?: boolean;
  family?: 'IPv4' | 'IPv6';
  dir?: 'INGRESS' | 'EGRESS';
}

function flow(s: FlowSpec = {}): HubbleFlowRecord {
  const proto = s.proto ?? 'TCP';
  const l4: Record<string, unknown> =
    proto === 'TCP'
      ? { TCP: { source_port: 40000, destination_port: s.dport ?? 80, flags: tcpFlagsObject(s.flags ?? 2) } }
      : proto === 'UDP' || proto === 'SCTP'
        ? { [proto]: { source_port: 40000, destination_port: s.dport ?? 53 } }
        : { [proto]: { type: 8, code: 0 } };
  const dropped = s.verdict === 'DROPPED';
  const dir = s.dir ?? 'EGRESS';
  const f: HubbleFlow = {
    time: new Date().toISOString(),
    uuid: 'u',
    verdict: s.verdict ?? 'FORWARDED',
    IP: { source: '10.0.0.1', destination: '10.0.0.2', ipVersion: s.family ?? 'IPv4' },
    l4,
    source: { identity: 256, labels: [] },
    destination: { identity: 257, labels: [] },
    Type: 'L3_L4',
    node_name: 'n',
    event_type: dropped ? { type: 1, sub_type: 133 } : { type: 4 },
    traffic_direction: dir,
    trace_observation_point: dir === 'EGRESS' ? 'FROM_ENDPOINT' : 'TO_ENDPOINT',
    is_reply: s.reply ?? false,
    Summary: '',
    ...(dropped ? { drop_reason: 133, drop_reason_desc: s.reason ?? 'POLICY_DENIED' } : {}),
  };
  return { flow: f, node_name: 'n', time: f.time };
}

const zero = (): Counter => ({ packets: 0n, bytes: 0n });
function counters(over: Partial<Record<MetricName, Counter>>): Record<MetricName, Counter> {
  const names: MetricName[] = ['INGRESS_FORWARDED', 'INGRESS_DROPPED', 'EGRESS_FORWARDED', 'EGRESS_DROPPED', 'EVENTS_SENT', 'EVENTS_LOST', 'NO_ENDPOINT', 'CT_NEW', 'CT_FULL', 'NON_IP', 'POLICY_DENIED', 'POLICY_DENY', 'POLICY_BYPASS'];
  return Object.fromEntries(names.map((n) => [n, over[n] ?? zero()])) as Record<MetricName, Counter>;
}

describe('agent metrics', () => {
  test('flows are counted with Hubble names and labels', async () => {
    const flows = new FakeFlows();
    const m = new AgentMetrics({ flows });
    flows.emit('flow', flow({ proto: 'TCP', flags: 2, dir: 'EGRESS' }));
    flows.emit('flow', flow({ proto: 'TCP', flags: 2, dir: 'INGRESS' }));
    flows.emit('flow', flow({ proto: 'ICMPv4' }));
    flows.emit('flow', flow({ proto: 'UDP', verdict: 'DROPPED', reason: 'POLICY_DENIED' }));
    const s = promParse(await m.text());
    assert.equal(promValue(s, 'hubble_flows_processed_total'), 4);
    assert.equal(promValue(s, 'hubble_flows_processed_total', { protocol: 'TCP', type: 'Trace', subtype: 'from-endpoint', verdict: 'FORWARDED' }), 1);
    assert.equal(promValue(s, 'hubble_flows_processed_total', { protocol: 'TCP', type: 'Trace', subtype: 'to-endpoint', verdict: 'FORWARDED' }), 1);
    assert.equal(promValue(s, 'hubble_flows_processed_total', { protocol: 'ICMPv4', verdict: 'FORWARDED' }), 1);
    assert.equal(promValue(s, 'hubble_flows_processed_total', { protocol: 'UDP', type: 'Drop', subtype: '', verdict: 'DROPPED' }), 1);
    m.close();
  });

  test('drops count by reason and protocol, and nowhere else', async () => {
    const m = new AgentMetrics();
    m.flowObserve(flow({ proto: 'TCP', flags: 2, verdict: 'DROPPED', reason: 'POLICY_DENIED' }));
    m.flowObserve(flow({ proto: 'TCP', flags: 2, verdict: 'DROPPED', reason: 'POLICY_DENIED' }));
    m.flowObserve(flow({ proto: 'ICMPv6', verdict: 'DROPPED', reason: 'INVALID_SOURCE_IP' }));
    const s = promParse(await m.text());
    assert.equal(promValue(s, 'hubble_drop_total', { reason: 'POLICY_DENIED', protocol: 'TCP' }), 2);
    assert.equal(promValue(s, 'hubble_drop_total', { reason: 'INVALID_SOURCE_IP', protocol: 'ICMPv6' }), 1);
    assert.equal(promValue(s, 'hubble_tcp_flags_total'), 0, 'dropped SYNs are not TCP flag occurrences');
    assert.equal(promValue(s, 'hubble_port_distribution_total'), 0, 'dropped flows are not in the port distribution');
  });

  test('TCP flags: SYN, SYN-ACK, FIN and RST by family', async () => {
    const m = new AgentMetrics();
    const SYN = 2, ACK = 16, FIN = 1, RST = 4, PSH = 8;
    m.flowObserve(flow({ flags: SYN }));
    m.flowObserve(flow({ flags: SYN | ACK, reply: true }));
    m.flowObserve(flow({ flags: SYN, family: 'IPv6' }));
    m.flowObserve(flow({ flags: FIN | ACK }));
    m.flowObserve(flow({ flags: RST }));
    m.flowObserve(flow({ flags: PSH | ACK }));
    const s = promParse(await m.text());
    assert.equal(promValue(s, 'hubble_tcp_flags_total', { flag: 'SYN', family: 'IPv4' }), 1);
    assert.equal(promValue(s, 'hubble_tcp_flags_total', { flag: 'SYN', family: 'IPv6' }), 1);
    assert.equal(promValue(s, 'hubble_tcp_flags_total', { flag: 'SYN-ACK', family: 'IPv4' }), 1);
    assert.equal(promValue(s, 'hubble_tcp_flags_total', { flag: 'FIN', family: 'IPv4' }), 1);
    assert.equal(promValue(s, 'hubble_tcp_flags_total', { flag: 'RST', family: 'IPv4' }), 1);
    assert.equal(promValue(s, 'hubble_tcp_flags_total'), 5, 'PSH/ACK alone is not counted');
  });

  test('port distribution: forwarded, non-reply flows by destination port; ICMP as port 0', async () => {
    const m = new AgentMetrics();
    m.flowObserve(flow({ proto: 'TCP', dport: 8080 }));
    m.flowObserve(flow({ proto: 'TCP', dport: 8080 }));
    m.flowObserve(flow({ proto: 'TCP', dport: 40000, reply: true }));
    m.flowObserve(flow({ proto: 'UDP', dport: 53 }));
    m.flowObserve(flow({ proto: 'SCTP', dport: 9 }));
    m.flowObserve(flow({ proto: 'ICMPv4' }));
    m.flowObserve(flow({ proto: 'ICMPv6' }));
    m.flowObserve(flow({ proto: 'ICMPv4', reply: true }));
    const s = promParse(await m.text());
    assert.equal(promValue(s, 'hubble_port_distribution_total', { protocol: 'TCP', port: '8080' }), 2);
    assert.equal(promHas(s, 'hubble_port_distribution_total', { port: '40000' }), false, 'replies are skipped');
    assert.equal(promValue(s, 'hubble_port_distribution_total', { protocol: 'UDP', port: '53' }), 1);
    assert.equal(promValue(s, 'hubble_port_distribution_total', { protocol: 'SCTP', port: '9' }), 1);
    assert.equal(promValue(s, 'hubble_port_distribution_total', { protocol: 'ICMPv4', port: '0' }), 1);
    assert.equal(promValue(s, 'hubble_port_distribution_total', { protocol: 'ICMPv6', port: '0' }), 1);
  });

  test('lost events are read from the pipeline on scrape, sources in lower case', async () => {
    const flows = new FakeFlows();
    const m = new AgentMetrics({ flows });
    let s = promParse(await m.text());
    assert.equal(promValue(s, 'hubble_lost_events_total', { source: 'perf_event_ring_buffer' }), 0);
    assert.ok(promHas(s, 'hubble_lost_events_total', { source: 'observer_events_queue' }), 'zero series exist');
    flows.lost.PERF_EVENT_RING_BUFFER = 12;
    flows.lost.OBSERVER_EVENTS_QUEUE = 3;
    s = promParse(await m.text());
    assert.equal(promValue(s, 'hubble_lost_events_total', { source: 'perf_event_ring_buffer' }), 12);
    assert.equal(promValue(s, 'hubble_lost_events_total', { source: 'observer_events_queue' }), 3);
    assert.equal(promValue(s, 'hubble_lost_events_total', { source: 'hubble_ring_buffer' }), 0);
    // Scraping twice does not double-count.
    s = promParse(await m.text());
    assert.equal(promValue(s, 'hubble_lost_events_total'), 15);
    assert.equal(promValue(s, 'kitnet_flow_ring_flows'), 7);
    assert.equal(promValue(s, 'kitnet_flow_ring_capacity'), 4095);
  });

  test('agent gauges: workloads by mode/state/kind, identities, policy entries, registration histogram', async () => {
    let list = [
      { mode: 'veth', state: 'ready', spec: { kind: 'netns' } },
      { mode: 'veth', state: 'ready', spec: { kind: 'netns' } },
      { mode: 'netkit', state: 'error', spec: { kind: 'vm' } },
    ];
    const m = new AgentMetrics({ workloads: () => list, identities: () => 2 });
    m.policyMapEntriesSet(8);
    workloadRegistrationObserve(0.02, 'success', 'veth');
    m.registrationObserve(0.3, 'failure', 'veth');
    let s = promParse(await m.text());
    assert.equal(promValue(s, 'kitnet_workloads', { mode: 'veth', state: 'ready', kind: 'netns' }), 2);
    assert.equal(promValue(s, 'kitnet_workloads', { mode: 'netkit', state: 'error', kind: 'vm' }), 1);
    assert.equal(promValue(s, 'kitnet_identities'), 2);
    assert.equal(promValue(s, 'kitnet_policy_map_entries'), 8);
    assert.equal(promValue(s, 'kitnet_workload_registration_duration_seconds_count'), 2);
    assert.equal(promValue(s, 'kitnet_workload_registration_duration_seconds_bucket', { outcome: 'success', le: '0.025' }), 1);
    assert.equal(promValue(s, 'kitnet_workload_registration_duration_seconds_bucket', { outcome: 'failure', le: '0.25' }), 0);
    assert.equal(promValue(s, 'kitnet_workload_registration_duration_seconds_bucket', { outcome: 'failure', le: '0.5' }), 1);
    // Removed workloads disappear from the gauge rather than staying at their last value.
    list = [list[0]!];
    m.policyMapEntriesSet(5);
    s = promParse(await m.text());
    assert.equal(promValue(s, 'kitnet_workloads'), 1);
    assert.equal(promHas(s, 'kitnet_workloads', { mode: 'netkit' }), false);
    assert.equal(promValue(s, 'kitnet_policy_map_entries'), 5);
  });

  test('datapath counters and BPF map fill levels are read on scrape; a closed datapath does not break it', async () => {
    let closed = false;
    let reads = 0;
    const live = <T>(v: T) => () => {
      if (closed) throw new Error('datapath is closed');
      return v;
    };
    const datapath = {
      metricsRead: () => {
        reads++;
        if (closed) throw new Error('datapath is closed');
        return counters({
          INGRESS_FORWARDED: { packets: 10n, bytes: 1000n },
          EGRESS_DROPPED: { packets: 2n, bytes: 120n },
          EVENTS_SENT: { packets: 7n, bytes: 0n },
          EVENTS_LOST: { packets: 1n, bytes: 0n },
          CT_NEW: { packets: 4n, bytes: 0n },
          POLICY_DENIED: { packets: 3n, bytes: 180n },
        });
      },
      endpointList: live([1, 2]),
      ipcacheList: live([1, 2, 3, 4]),
      conntrackList: live([1, 2, 3]),
    };
    const m = new AgentMetrics({ datapath, mapCapacity: { endpoints: 4096, ipcache: 65536, conntrack: 262144 } });
    let s = promParse(await m.text());
    assert.equal(reads, 1, 'the per-CPU counters are read once per scrape');
    assert.equal(promValue(s, 'kitnet_datapath_packets_total', { direction: 'INGRESS', verdict: 'FORWARDED' }), 10);
    assert.equal(promValue(s, 'kitnet_datapath_bytes_total', { direction: 'INGRESS', verdict: 'FORWARDED' }), 1000);
    assert.equal(promValue(s, 'kitnet_datapath_packets_total', { direction: 'EGRESS', verdict: 'DROPPED' }), 2);
    assert.equal(promValue(s, 'kitnet_ringbuf_events_total'), 7);
    assert.equal(promValue(s, 'kitnet_ringbuf_lost_events_total'), 1);
    assert.equal(promValue(s, 'kitnet_conntrack_created_total'), 4);
    assert.equal(promValue(s, 'kitnet_datapath_policy_drops_total', { reason: 'POLICY_DENIED' }), 3);
    assert.equal(promValue(s, 'kitnet_datapath_policy_drops_total', { reason: 'POLICY_DENY' }), 0);
    assert.equal(promValue(s, 'kitnet_bpf_map_entries', { map: 'endpoints' }), 2);
    assert.equal(promValue(s, 'kitnet_bpf_map_entries', { map: 'ipcache' }), 4);
    assert.equal(promValue(s, 'kitnet_bpf_map_entries', { map: 'conntrack' }), 3);
    assert.equal(promValue(s, 'kitnet_bpf_map_capacity', { map: 'conntrack' }), 262144);
    closed = true;
    await new Promise((r) => setTimeout(r, 150));
    s = promParse(await m.text());
    assert.equal(promValue(s, 'kitnet_bpf_map_entries'), 0);
    assert.equal(promValue(s, 'kitnet_datapath_packets_total', { direction: 'INGRESS', verdict: 'FORWARDED' }), 10, 'counters keep their last value');
    assert.equal(new AgentMetrics({ datapath: {} }).registry.getSingleMetric('kitnet_bpf_map_capacity') !== undefined, true);
    s = promParse(await new AgentMetrics({ datapath: {} }).text());
    assert.equal(promValue(s, 'kitnet_bpf_map_capacity', { map: 'endpoints' }), 4096, 'capacities default to the generated layout');
  });

  test('metric types and help in the exposition format', async () => {
    const m = new AgentMetrics();
    m.flowObserve(flow());
    const text = await m.text();
    assert.match(text, /^# TYPE hubble_flows_processed_total counter$/m);
    assert.match(text, /^# TYPE hubble_lost_events_total counter$/m);
    assert.match(text, /^# TYPE kitnet_workloads gauge$/m);
    assert.match(text, /^# TYPE kitnet_workload_registration_duration_seconds histogram$/m);
    assert.match(m.contentType, /^text\/plain; version=0\.0\.4/);
  });

  test('policy map entries can be read from the policy engine on scrape', async () => {
    let n = 3;
    const m = new AgentMetrics({ policyEntries: () => n });
    assert.equal(promValue(await m.text(), 'kitnet_policy_map_entries'), 3);
    n = 11;
    assert.equal(promValue(await m.text(), 'kitnet_policy_map_entries'), 11);
  });

  test('close() unsubscribes from the pipeline', () => {
    const flows = new FakeFlows();
    const m = new AgentMetrics({ flows });
    assert.equal(flows.listenerCount('flow'), 1);
    m.close();
    assert.equal(flows.listenerCount('flow'), 0);
  });

  test('flowProtocol names', () => {
    assert.equal(flowProtocol(flow({ proto: 'TCP' })), 'TCP');
    assert.equal(flowProtocol(flow({ proto: 'ICMPv6' })), 'ICMPv6');
    const none = flow();
    none.flow.l4 = {};
    assert.equal(flowProtocol(none), 'Unknown flow');
  });
});
