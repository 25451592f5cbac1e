// The flow pipeline's cheap hot path: lazy Hubble records, followers and batch observers, and the
// batched metrics, each checked against the straightforward per-flow form.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import pino from 'pino';
import type { FlowEvent } from '../../bpf/index.js';
import { EndpointDirectory } from '../../agent/flows/directory.js';
import { flowEnrich, hubbleFlowBuild, LazyFlowRecord, nsToIso } from '../../agent/flows/enrich.js';
import type { HubbleFlowRecord } from '../../agent/flows/hubble.js';
import { FlowPipeline } from '../../agent/flows/pipeline.js';
import { Ring } from '../../agent/flows/ring.js';
import { IdentityAllocator } from '../../agent/identity/allocator.js';
import { AgentMetrics } from '../../agent/metrics.js';
import { SqliteStore } from '../../agent/store/sqlite-store.js';
import { promParse } from '../helpers/prom.js';

function fixture() {
  const store = new SqliteStore(':memory:');
  const ids = new IdentityAllocator(store);
  for (const [n, labels] of [[2, { app: 'web' }], [3, { app: 'db' }]] as const) {
    store.workloadInsert({
      spec: { name: `w${n}`, namespace: 'shop', kind: 'netns', labels, netns: '/x', requestedMode: 'auto', interface: 'eth0' },
      mode: 'veth', endpointId: n, identity: ids.acquire(labels, 'shop'), ipv4: `10.200.0.${n}`, ipv6: `fd00:200::${n}`, hostIfname: `kn${n}`,
    });
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
  test('a lazy record serialises as Hubble\'s line and reads the same every time', () => {
    const { dir } = fixture();
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

  test('time: RFC 3339 with nanoseconds, as Date for the whole seconds', () => {
    for (const ns of [0n, 1n, 999_999_999n, 1_700_000_000_123_456_789n, 1_700_000_001_000_000_000n, 1_700_000_000_999_999_999n]) {
      const ms = Number(ns / 1_000_000n);
      const want = new Date(ms).toISOString().replace(/\.\d{3}Z$/, `.${String(ns % 1_000_000_000n).padStart(9, '0')}Z`);
      assert.equal(nsToIso(ns), want);
    }
  });

  test('the ring keeps every flow; followers get them only while they listen; batch observers see every batch', () => {
    const { dir } = fixture();
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

  test('a batch larger than the ring leaves the ring as pushing every event would', () => {
    const { dir } = fixture();
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
    const { dir } = fixture();
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
