// The flow pipeline's cheap hot path: lazy Hubble records, followers and batch observers, and the
// batched metrics, each checked against the straightforward per-flow form.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import pino from 'pino';
import type { FlowEvent } from '../../bpf/index.js';
import { EndpointDirectory } from '../../agent/flows/directory.js';
import { flowEnrich, hubbleFlowBuild, LazyFlowRecord, nsToIso } from '../../agent/flows/enrich.js';
import { filtersCompile } from '../../agent/flows/filter.js';
import type { HubbleFlowRecord } from '../../agent/flows/hubble.js';
import { FlowPipeline } from '../../agent/flows/pipeline.js';
import { Ring, RING_PACKED_PAYLOAD_LIMIT } from '../../agent/flows/ring.js';
import { IdentityAllocator } from '../../agent/identity/allocator.js';
import { AgentMetrics } from '../../agent/metrics.js';
import { sqliteStoreOpen } from '../../agent/store/index.js';
import { flowCompact, flowTableRow } from '../../common/format.js';
import { promParse } from '../helpers/prom.js';

async function fixture() {
  const store = sqliteStoreOpen(':memory:');
  const ids = new IdentityAllocator();
  for (const [n, labels] of [[2, { app: 'web' }], [3, { app: 'db' }]] as const) {
    await store.transaction((tx) => tx.workloadInsert({
      spec: { name: `w${n}`, namespace: 'shop', kind: 'netns', labels, netns: '/x', requestedMode: 'auto', interface: 'eth0' },
      mode: 'veth', endpointId: n, identity: ids.acquire(tx, labels, 'shop'), ipv4: `10.200.0.${n}`, ipv6: `fd00:200::${n}`, hostIfname: `kn${n}`,
    }));
  }
  return { store, dir: new EndpointDirectory(store) };
}

/** Random events over both workloads, the world and every protocol, verdict and flag the metrics look at. */
function randomEvents(count: number, seed = 5): FlowEvent[] {
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 4) % n;
  const out: FlowEvent[] = [];
  for (let i = 0; i < count; i++) {
    const v6 = rnd(2) === 0;
    const peer = rnd(3);
    const dropped = rnd(4) === 0;
    out.push({
      timeNs: 1_700_000_000_000_000_000n + BigInt(rnd(3_000_000_000)),
      ifindex: 10, endpointId: [2, 3, 0][rnd(3)]!, direction: rnd(2) ? 'EGRESS' : 'INGRESS', family: v6 ? 6 : 4,
      protocol: [6, 6, 17, 132, 1, 58, 47][rnd(7)]!,
      srcAddr: v6 ? 'fd00:200::2' : '10.200.0.2', dstAddr: peer === 0 ? (v6 ? 'fd00:200::3' : '10.200.0.3') : v6 ? '2001:db8::1' : '192.0.2.1',
      srcPort: 40000 + rnd(3), dstPort: [80, 443, 53][rnd(3)]!, icmpType: 8, icmpCode: 0, tcpFlags: [0x02, 0x02, 0x12, 0x10, 0x11, 0x04, 0x14, 0x18, 0x01, 0][rnd(10)]!,
      srcIdentity: 256, dstIdentity: peer === 0 ? 257 : 2, verdict: dropped ? 'DROPPED' : 'FORWARDED', dropReason: dropped ? [133, 181, 132][rnd(3)]! : 0,
      isReply: rnd(3) === 0, length: 60,
    });
  }
  return out;
}

const hubbleLines = (text: string) =>
  promParse(text)
    .filter((s) => s.name.startsWith('hubble_') && s.name !== 'hubble_lost_events_total')
    .map((s) => `${s.name}${JSON.stringify(Object.entries(s.labels).sort())} ${s.value}`)
    .sort();

describe('flow pipeline hot path', () => {
  test('a lazy record serialises as Hubble\'s line and reads the same every time', async () => {
    const { dir } = await fixture();
    const [ev] = randomEvents(1);
    const rec = flowEnrich(ev!, dir, 'node-1');
    assert.ok(rec instanceof LazyFlowRecord);
    const line = JSON.parse(JSON.stringify(rec)) as { flow: { uuid: string }; node_name: string; time: string };
    assert.deepEqual(Object.keys(line), ['flow', 'node_name', 'time']);
    assert.equal(line.node_name, 'node-1');
    assert.equal(rec.flow.uuid, line.flow.uuid, 'uuid is made once');
    assert.equal(rec.flow, rec.flow);
    const eager = hubbleFlowBuild(ev!, rec.sourceEndpoint, rec.destinationEndpoint, 'node-1', rec.time);
    assert.deepEqual(line.flow, JSON.parse(JSON.stringify({ ...eager, uuid: line.flow.uuid })));
  });

  test('time: RFC 3339 as protojson writes it (Hubble\'s JSON): as Date for the whole seconds, the fewest of 9, 6 or 3 digits', () => {
    for (const ns of [0n, 1n, 999_999_999n, 1_700_000_000_123_456_789n, 1_700_000_001_000_000_000n, 1_700_000_000_999_999_999n, 1_700_000_000_238_927_000n, 1_700_000_000_020_000_000n, 1_700_000_000_000_001_000n, 1_700_000_000_000_000_010n]) {
      const ms = Number(ns / 1_000_000n);
      // protojson: nine digits, then trailing "000" groups trimmed (a whole second loses its fraction).
      const nine = String(ns % 1_000_000_000n).padStart(9, '0');
      const fraction = `.${nine}`.replace(/(000)+$/, '').replace(/^\.$/, '');
      const want = new Date(ms).toISOString().replace(/\.\d{3}Z$/, `${fraction}Z`);
      assert.equal(nsToIso(ns), want);
    }
    assert.deepEqual([1_700_000_000_238_927_000n, 1_700_000_000_020_000_000n, 1_700_000_000_000_000_000n, 1_700_000_000_000_000_010n].map(nsToIso), ['2023-11-14T22:13:20.238927Z', '2023-11-14T22:13:20.020Z', '2023-11-14T22:13:20Z', '2023-11-14T22:13:20.000000010Z']);
  });

  test('the ring keeps every flow; followers get them only while they listen; batch observers see every batch', async () => {
    const { dir } = await fixture();
    const p = new FlowPipeline(dir, 'n', 100, pino({ level: 'silent' }));
    const batches: number[] = [];
    const stop = p.batchObserve((evs) => batches.push(evs.length));
    p.batch(randomEvents(10));
    const seen: HubbleFlowRecord[] = [];
    const on = (r: HubbleFlowRecord) => seen.push(r);
    p.on('flow', on);
    p.batch(randomEvents(5, 9));
    p.off('flow', on);
    stop();
    p.batch(randomEvents(7, 13));
    assert.equal(p.processed, 22);
    assert.equal(p.ring.length, 22);
    assert.equal(seen.length, 5);
    assert.deepEqual(batches, [10, 5]);
    assert.equal(seen[4], p.ring.last(8)[0], 'followers get the record the ring keeps');
  });

  test('a pushed flow (the DNS proxy\'s L7 flows) joins the same ring and followers, between datapath batches', async () => {
    const { dir } = await fixture();
    const p = new FlowPipeline(dir, 'n', 100, pino({ level: 'silent' }));
    const l7 = JSON.parse(JSON.stringify(flowEnrich(randomEvents(1)[0]!, dir, 'n'))) as HubbleFlowRecord;
    p.push(l7);
    const seen: HubbleFlowRecord[] = [];
    p.on('flow', (r) => seen.push(r));
    p.batch(randomEvents(2));
    p.push(l7);
    assert.equal(p.ring.length, 4);
    assert.equal(p.ring.written, 4);
    assert.deepEqual([seen.length, seen[2]], [3, l7]);
    assert.equal(p.processed, 2, 'processed counts datapath events only');
  });

  test('a batch larger than the ring leaves the ring as pushing every event would', async () => {
    const { dir } = await fixture();
    const events = randomEvents(260, 3);
    const big = new FlowPipeline(dir, 'n', 100, pino({ level: 'silent' }));
    big.batch(events.slice(0, 30));
    big.batch(events.slice(30));
    const ref = new Ring<HubbleFlowRecord>(100);
    for (const ev of events) ref.push(flowEnrich(ev, dir, 'n'));
    assert.equal(big.ring.written, ref.written);
    assert.equal(big.ring.length, ref.length);
    assert.deepEqual(big.ring.last().map((r) => JSON.stringify({ ...r.flow, uuid: '' })), ref.last().map((r) => JSON.stringify({ ...r.flow, uuid: '' })));
    assert.deepEqual(big.ring.last(7).map((r) => r.time), ref.last(7).map((r) => r.time));
  });

  test('batched metrics count exactly what per-flow counting of the same flows gives', async () => {
    const { dir } = await fixture();
    const events = randomEvents(3000);
    const pipeline = new FlowPipeline(dir, 'n', 4095, pino({ level: 'silent' }));
    const batched = new AgentMetrics({ flows: pipeline });
    for (let i = 0; i < events.length; i += 250) pipeline.batch(events.slice(i, i + 250));
    const batchedText = await batched.text();
    batched.close();
    const perFlow = new AgentMetrics();
    for (const ev of events) perFlow.flowObserve(flowEnrich(ev, dir, 'n'));
    const want = hubbleLines(await perFlow.text());
    assert.ok(want.length > 30, 'the events exercise many label sets');
    assert.deepEqual(hubbleLines(batchedText), want);
    assert.equal(pipeline.listenerCount('flow'), 0, 'metrics do not make the pipeline build flows');
  });
});

describe('flows of frames that are not plain IP', () => {
  const base: FlowEvent = {
    timeNs: 1_700_000_000_000_000_000n, ifindex: 10, endpointId: 2, direction: 'EGRESS', family: 4, protocol: 0,
    srcAddr: '10.200.0.66', dstAddr: '169.254.1.1', srcPort: 0, dstPort: 0, icmpType: 0, icmpCode: 0, tcpFlags: 0,
    srcIdentity: 256, dstIdentity: 0, verdict: 'DROPPED', dropReason: 132, isReply: false, length: 42, etherType: 0x0806, reportReason: 'DROP',
  };
  const arpDrop = base;
  const lldpDrop: FlowEvent = { ...base, family: 0, srcAddr: '', dstAddr: '', dropReason: 139, etherType: 0x88cc };
  const taggedDrop: FlowEvent = { ...base, protocol: 17, srcAddr: '10.200.0.3', dstAddr: '10.200.0.1', srcPort: 40000, dstPort: 53, dropReason: 139, etherType: 0x88a8 };
  const json = async (ev: FlowEvent) => JSON.parse(JSON.stringify(flowEnrich(ev, (await fixture()).dir, 'n'))) as { flow: Record<string, unknown> };

  test('an ARP drop says ARP: no l4, the sender and target protocol addresses as IP', async () => {
    const f = (await json(arpDrop)).flow;
    assert.equal(f.Summary, 'ARP');
    assert.equal('l4' in f, false);
    assert.deepEqual(f.IP, { source: '10.200.0.66', destination: '169.254.1.1', ipVersion: 'IPv4' });
    assert.deepEqual([f.verdict, f.drop_reason_desc], ['DROPPED', 'INVALID_SOURCE_IP']);
  });

  test('a frame that is not IP has no IP and no l4 and is summarised by its EtherType', async () => {
    const f = (await json(lldpDrop)).flow;
    assert.deepEqual(['IP' in f, 'l4' in f, f.Summary, f.drop_reason_desc], [false, false, 'LLDP (0x88cc)', 'UNSUPPORTED_L3_PROTOCOL']);
    assert.equal((await json({ ...lldpDrop, etherType: 0x88b5 })).flow.Summary, 'EtherType 0x88b5');
    assert.equal((await json({ ...lldpDrop, etherType: 38, dropReason: 166 })).flow.Summary, '802.3 length 38');
  });

  test('an IP packet inside VLAN tags keeps its addresses and L4, the summary names the tag', async () => {
    const f = (await json(taggedDrop)).flow;
    assert.deepEqual([f.Summary, f.IP, f.l4], ['802.1ad (0x88a8) UDP', { source: '10.200.0.3', destination: '10.200.0.1', ipVersion: 'IPv4' }, { UDP: { source_port: 40000, destination_port: 53 } }]);
  });

  test('filters, metrics and the CLI formats take such flows', async () => {
    const { dir } = await fixture();
    const recs = [arpDrop, lldpDrop, taggedDrop].map((ev) => flowEnrich(ev, dir, 'n'));
    const pick = (filter: Parameters<typeof filtersCompile>[0]) => recs.filter(filtersCompile(filter)).map((r) => r.flow.Summary);
    assert.deepEqual(pick([{ source_ip: ['10.200.0.0/24'] }]), ['ARP', '802.1ad (0x88a8) UDP']);
    assert.deepEqual(pick([{ protocol: ['udp'] }]), ['802.1ad (0x88a8) UDP']);
    assert.deepEqual(pick([{ ip_version: ['ipv4'] }]), ['ARP', '802.1ad (0x88a8) UDP']);
    assert.deepEqual(pick([{ source_port: ['40000'] }, { tcp_flags: ['SYN'] }]), ['802.1ad (0x88a8) UDP']);
    const metrics = new AgentMetrics();
    for (const r of recs) metrics.flowObserve(r);
    const drops = promParse(await metrics.text()).filter((m) => m.name === 'hubble_drop_total').map((m) => [m.labels.reason, m.labels.protocol, m.value]);
    metrics.close();
    assert.deepEqual(drops.sort(), [['INVALID_SOURCE_IP', 'Unknown flow', 1], ['UNSUPPORTED_L3_PROTOCOL', 'UDP', 1], ['UNSUPPORTED_L3_PROTOCOL', 'Unknown flow', 1]]);
    for (const r of recs) {
      const line = JSON.parse(JSON.stringify(r)) as Parameters<typeof flowCompact>[0];
      assert.match(flowCompact(line, false), /DROPPED \((INVALID_SOURCE_IP|UNSUPPORTED_L3_PROTOCOL)\)$/);
      assert.match(flowTableRow(line), /DROPPED/);
    }
  });
});

describe('packed items in the ring', () => {
  test('kept as integers and made again on every read, between objects, overwritten as objects are', () => {
    const ring = new Ring<{ v: string }>(4);
    const made: number[] = [];
    const pushA = ring.packedSource((n) => (made.push(n), { v: `a${n}` }));
    const pushB = ring.packedSource((n) => ({ v: `b${n}` }));
    pushA(0);
    ring.push({ v: 'x' });
    pushB(7);
    pushA(RING_PACKED_PAYLOAD_LIMIT - 1);
    assert.deepEqual(ring.last().map((i) => i.v), ['a0', 'x', 'b7', `a${RING_PACKED_PAYLOAD_LIMIT - 1}`]);
    assert.deepEqual(made, [0, RING_PACKED_PAYLOAD_LIMIT - 1], 'each source gets its own payloads back');
    assert.notEqual(ring.last(1)[0], ring.last(1)[0], 'a packed item is made again on each read');
    pushB(3);
    ring.push({ v: 'y' });
    assert.deepEqual(ring.last().map((i) => i.v), ['b7', `a${RING_PACKED_PAYLOAD_LIMIT - 1}`, 'b3', 'y']);
    assert.deepEqual([0, 1, 2, 3, 4, -1].map((back) => ring.newest(back)?.v), ['y', 'b3', `a${RING_PACKED_PAYLOAD_LIMIT - 1}`, 'b7', undefined, undefined], 'newest(back): one item, packed or not, without a copy');
    assert.equal(ring.written, 6);
  });

  test('a payload that is not a small non-negative integer, or a ninth source, is refused', () => {
    const ring = new Ring<object>(4);
    const push = ring.packedSource(() => ({}));
    for (const bad of [-1, 0.5, NaN, RING_PACKED_PAYLOAD_LIMIT]) assert.throws(() => push(bad), RangeError, String(bad));
    assert.equal(ring.written, 0, 'nothing refused was kept');
    for (let i = 1; i < 8; i++) ring.packedSource(() => ({}));
    assert.throws(() => ring.packedSource(() => ({})), /at most 8 packed sources/);
  });

  test('the pipeline: followers get the item made from the payload, the ring keeps the payload', async () => {
    const { dir } = await fixture();
    const p = new FlowPipeline(dir, 'n', 10, pino({ level: 'silent' }));
    const l7 = (n: number): HubbleFlowRecord => ({ ...(JSON.parse(JSON.stringify(flowEnrich(randomEvents(1, n)[0]!, dir, 'n'))) as HubbleFlowRecord), node_name: `packed-${n}` });
    const push = p.packedSource(l7);
    push(1);
    const seen: HubbleFlowRecord[] = [];
    p.on('flow', (r) => seen.push(r));
    push(2);
    p.batch(randomEvents(1));
    assert.deepEqual(p.ring.last().map((r) => r.node_name), ['packed-1', 'packed-2', 'n']);
    assert.deepEqual(seen.map((r) => r.node_name), ['packed-2', 'n']);
  });
});

