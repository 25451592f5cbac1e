import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

// The page's model is a plain browser ES module (api/ui/graph.js, no build step); load it as such.
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- untyped browser module
const g: any = await import(new URL('../../../api/ui/graph.js', import.meta.url).href);

const ep = (o: Record<string, unknown>) => ({ identity: 300, labels: [], ...o });
const fe = ep({ identity: 300, namespace: 'shop', pod_name: 'frontend', workloads: [{ name: 'frontend', kind: 'ExternalWorkload' }] });
const be = ep({ identity: 301, namespace: 'shop', pod_name: 'backend', workloads: [{ name: 'backend', kind: 'ExternalWorkload' }] });
const vm = ep({ identity: 302, namespace: 'vms', pod_name: 'db-vm', workloads: [{ name: 'db-vm', kind: 'VirtualMachine' }] });
const world = ep({ identity: 2, labels: ['reserved:world'] });
const host = ep({ identity: 1, labels: ['reserved:host'] });

function rec(source: object, destination: object, o: Record<string, unknown> = {}) {
  const flow = {
    time: '2026-01-01T00:00:00Z',
    verdict: 'FORWARDED',
    source,
    destination,
    l4: { TCP: { source_port: 40000, destination_port: 8080, flags: { SYN: true } } },
    traffic_direction: 'EGRESS',
    is_reply: false,
    ...o,
  };
  return { flow, node_name: 'n', time: flow.time };
}

describe('service map model (api/ui/graph.js)', () => {
  test('endpoints become workload, VM, world and host nodes', () => {
    assert.deepEqual([g.endpointNode(fe).id, g.endpointNode(fe).type, g.endpointNode(fe).namespace], ['wl:shop/frontend', 'workload', 'shop']);
    assert.equal(g.endpointNode(vm).type, 'vm');
    assert.equal(g.endpointNode(world).id, 'world');
    assert.equal(g.endpointNode(ep({ identity: 9, labels: ['reserved:world-ipv4'] })).id, 'world');
    assert.equal(g.endpointNode(host).type, 'host');
    assert.equal(g.endpointNode(ep({ identity: 16777217, labels: ['cidr:192.0.2.0/24'] })).label, '192.0.2.0/24');
  });

  test('a packet seen at both local ends counts once; replies fold into the connection edge', () => {
    const m = new g.ServiceMap();
    m.record(rec(fe, be, { traffic_direction: 'EGRESS' }));
    m.record(rec(fe, be, { traffic_direction: 'INGRESS' }));
    const reply = { l4: { TCP: { source_port: 8080, destination_port: 40000, flags: { SYN: true, ACK: true } } }, is_reply: true };
    m.record(rec(be, fe, { ...reply, traffic_direction: 'EGRESS' }));
    m.record(rec(be, fe, { ...reply, traffic_direction: 'INGRESS' }));
    assert.deepEqual([...m.edges.keys()], ['wl:shop/frontend->wl:shop/backend|TCP/8080']);
    const e = m.edges.get('wl:shop/frontend->wl:shop/backend|TCP/8080');
    assert.equal(e.forwarded, 2);
    assert.equal(g.edgeLabel(e), 'TCP/8080  ✓2');
    // To the world only the sender observes: its EGRESS counts.
    m.record(rec(fe, world, { l4: { ICMPv4: { type: 8, code: 0 } } }));
    assert.equal(m.edges.get('wl:shop/frontend->world|ICMPv4/').forwarded, 1);
  });

  test('drops count with their reasons, and label the edge', () => {
    const m = new g.ServiceMap();
    m.record(rec(be, vm, { traffic_direction: 'EGRESS' }));
    m.record(rec(be, vm, { traffic_direction: 'INGRESS', verdict: 'DROPPED', drop_reason_desc: 'POLICY_DENIED' }));
    m.record(rec(be, vm, { traffic_direction: 'INGRESS', verdict: 'DROPPED', drop_reason_desc: 'POLICY_DENIED' }));
    const e = m.edges.get('wl:shop/backend->wl:vms/db-vm|TCP/8080');
    assert.deepEqual([e.forwarded, e.dropped, e.dropReasons], [0, 2, { POLICY_DENIED: 2 }]);
    assert.equal(g.edgeLabel(e), 'TCP/8080  ✓0 ✗2');
    assert.equal(m.dropped, 2);
  });

  test('IPv6 neighbour discovery stays off the map; lost events are counted', () => {
    const m = new g.ServiceMap();
    assert.equal(m.record(rec(fe, world, { l4: { ICMPv6: { type: 135, code: 0 } } })), undefined);
    assert.equal(m.edges.size, 0);
    m.record({ lost_events: { source: 'PERF_EVENT_RING_BUFFER', num_events_lost: 7, cpu: null }, node_name: 'n', time: '' });
    assert.equal(m.lost, 7);
  });

  test('filters for the flow list: a node is either end, an edge is both directions of its service', () => {
    const m = new g.ServiceMap();
    m.record(rec(fe, be));
    m.record(rec(fe, world, { l4: { UDP: { source_port: 5000, destination_port: 53 } } }));
    assert.deepEqual(m.nodeFilters('wl:shop/frontend'), [
      { source_pod: ['shop/'], source_workload: ['frontend'] },
      { destination_pod: ['shop/'], destination_workload: ['frontend'] },
    ]);
    assert.deepEqual(m.edgeFilters('wl:shop/frontend->world|UDP/53'), [
      { source_pod: ['shop/'], source_workload: ['frontend'], destination_identity: [2, 9, 10], protocol: ['udp'], destination_port: ['53'] },
      { source_identity: [2, 9, 10], destination_pod: ['shop/'], destination_workload: ['frontend'], protocol: ['udp'], source_port: ['53'] },
    ]);
    assert.equal(g.flowMatches(m, { kind: 'edge', id: 'wl:shop/frontend->wl:shop/backend|TCP/8080' }, rec(be, fe, { l4: { TCP: { source_port: 8080, destination_port: 40000 } }, is_reply: true })), true);
    assert.equal(g.flowMatches(m, { kind: 'node', id: 'world' }, rec(fe, be)), false);
  });

  test('registered workloads appear without traffic and leave when removed', () => {
    const m = new g.ServiceMap();
    m.workloadAdd({ name: 'db-vm', namespace: 'vms', kind: 'vm', identity: 302, ipv4: '10.0.0.9', ipv6: 'fd00::9', mode: 'veth', state: 'ready' });
    assert.equal(m.nodes.get('wl:vms/db-vm').type, 'vm');
    assert.deepEqual(m.workloadsSync([]), ['wl:vms/db-vm']);
    assert.equal(m.nodes.size, 0);
  });
});
