// The warm of the flow path when the agent starts serving (api/hubble/warm.ts): it runs made-up events
// through the real decoder, pipeline enrichment and gRPC encoder, and leaves no trace anywhere a user
// looks: no flow in the ring, none to followers, no count; the encoder it shares encodes real flows
// byte for byte as a fresh one does afterwards. Hostile config: a negative or huge hubble.warmFlows.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pino from 'pino';
import { EndpointDirectory } from '../../agent/flows/directory.js';
import { FlowPipeline } from '../../agent/flows/pipeline.js';
import { sqliteStoreOpen } from '../../agent/store/index.js';
import { configParse } from '../../agent/config.js';
import type { FlowExtras, HubbleBackend } from '../../api/hubble/backend.js';
import { flowResponseEncoderCreate } from '../../api/hubble/flow-encoder.js';
import type { HubbleFlowRecord } from '../../agent/flows/hubble.js';
import { hubbleProtoRoot } from '../../api/hubble/proto.js';
import { flowPathWarm } from '../../api/hubble/warm.js';
import type { FlowEvent } from '../../bpf/index.js';

const responseType = hubbleProtoRoot().lookupType('observer.GetFlowsResponse');
const read = (bytes: Uint8Array) => responseType.toObject(responseType.decode(bytes), { longs: Number, enums: String, oneofs: true }) as { flow?: { verdict: string; IP: { ipVersion: string; source: string }; l4: Record<string, unknown> } };

function setup() {
  const pipeline = new FlowPipeline(new EndpointDirectory(sqliteStoreOpen(':memory:')), 'node-1', 64, pino({ level: 'silent' }));
  const backend: HubbleBackend = { nodeName: 'node-1', version: 'test', flows: pipeline, namespaces: () => [] };
  return { pipeline, backend };
}

test('the warm encodes every made-up flow and leaves no flow, follower message or count behind', async () => {
  const { pipeline, backend } = setup();
  let emitted = 0;
  pipeline.on('flow', () => emitted++);
  pipeline.on('lost', () => emitted++);
  const encoder = flowResponseEncoderCreate();
  const out: Buffer[] = [];
  const encode = (r: HubbleFlowRecord, extras?: FlowExtras) => {
    const b = encoder(r, extras);
    assert.ok(b, 'the warm gives the encoder only records it encodes itself');
    out.push(Buffer.from(b));
    return b;
  };
  await flowPathWarm(backend, encode, 2_500).done;
  assert.equal(out.length, 2_500);
  assert.equal(pipeline.ring.length, 0);
  assert.equal(pipeline.ring.written, 0);
  assert.equal(pipeline.processed, 0);
  assert.equal(emitted, 0);
  assert.equal(pipeline.lostEvents(), 0);
  // every kind of flow the datapath writes went through: both families, TCP/UDP/ICMP, both verdicts
  const flows = out.map((b) => read(b).flow!);
  assert.deepEqual(new Set(flows.map((f) => f.verdict)), new Set(['FORWARDED', 'DROPPED']));
  assert.deepEqual(new Set(flows.map((f) => f.IP.ipVersion)), new Set(['IPv4', 'IPv6']));
  assert.deepEqual(new Set(flows.flatMap((f) => Object.keys(f.l4).filter((k) => k !== 'protocol'))), new Set(['TCP', 'UDP', 'ICMPv4', 'ICMPv6']));
});

test('after the warm, the shared encoder encodes a real flow as a fresh encoder does', async () => {
  const { pipeline, backend } = setup();
  const shared = flowResponseEncoderCreate();
  await flowPathWarm(backend, shared, 1_000).done;
  const ev: FlowEvent = {
    timeNs: 1_700_000_000_123_456_789n, ifindex: 0, endpointId: 0, direction: 'EGRESS', family: 4, protocol: 6,
    srcAddr: '10.200.0.5', dstAddr: '10.200.0.6', srcPort: 40_000, dstPort: 80, icmpType: 0, icmpCode: 0, tcpFlags: 0x02,
    srcIdentity: 4242, dstIdentity: 4243, verdict: 'FORWARDED', dropReason: 0, isReply: false, length: 74, reportReason: 'NEW', etherType: 0x0800,
  };
  const rec = pipeline.enrich(ev);
  const warmed = Buffer.from(shared(rec)!);
  const fresh = Buffer.from(flowResponseEncoderCreate()(rec)!);
  assert.deepEqual(warmed, fresh);
  assert.equal(read(warmed).flow!.IP.source, '10.200.0.5');
});

test('the warm starts on a later turn of the event loop, and a cancelled one runs no further slice', async () => {
  const { backend } = setup();
  let n = 0;
  const encoder = flowResponseEncoderCreate();
  const warm = flowPathWarm(backend, (r, x) => (n++, encoder(r, x)), 100_000);
  assert.equal(n, 0, 'nothing ran in the caller\'s turn');
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
  assert.ok(n >= 1_000, 'a slice ran');
  const ran = n;
  warm.cancel();
  await warm.done;
  assert.ok(n <= ran + 1_000 && n < 100_000, `${n} flows encoded, ${ran} before the cancel`);
});

test('hubble.warmFlows: 0 turns the warm off; a negative, fractional or huge count is refused by name', () => {
  assert.equal(configParse({ hubble: { warmFlows: 0 } }).hubble.warmFlows, 0);
  assert.equal(configParse({}).hubble.warmFlows, 30_000);
  for (const bad of [-1, 1.5, 2_000_000, '30000']) assert.throws(() => configParse({ hubble: { warmFlows: bad } }), /hubble\.warmFlows/, String(bad));
});
