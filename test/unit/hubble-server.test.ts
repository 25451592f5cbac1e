import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { connect as http2Connect, type ClientHttp2Stream } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import type { FlowEvent } from '../../bpf/index.js';
import { configParse } from '../../agent/config.js';
import { LazyFlowRecord } from '../../agent/flows/enrich.js';
import type { HubbleEndpoint, HubbleFlowRecord, LostEventSource } from '../../agent/flows/hubble.js';
import { Ring } from '../../agent/flows/ring.js';
import type { HubbleBackend } from '../../api/hubble/backend.js';
import { hubbleClient, type HubbleClient } from '../../api/hubble/client.js';
import { CONNECTION_STREAMS_MAX, OPEN_STREAMS_MAX, SNAPSHOT_STREAMS_MAX } from '../../api/hubble/context.js';
import { hubbleListen, type HubbleServer } from '../../api/hubble/server.js';
import { waitFor } from '../helpers/sys.js';

/** hubble.followQueue of the agent under test (small: the loss test overflows it several times). */
const FOLLOW_QUEUE_LIMIT = 4096;

const fe: HubbleEndpoint = { ID: 2, identity: 1001, namespace: 'shop', labels: ['k8s:app=fe'], pod_name: 'fe' };
const db: HubbleEndpoint = { ID: 3, identity: 1002, namespace: 'shop', labels: ['k8s:app=db'], pod_name: 'db' };
let n = 0;
const flow = (): HubbleFlowRecord => {
  n++;
  const ev: FlowEvent = {
    timeNs: BigInt(Date.now()) * 1_000_000n, ifindex: 10, endpointId: 2, direction: 'EGRESS', family: 4, protocol: 17,
    srcAddr: '10.9.0.2', dstAddr: '10.9.0.3', srcPort: n % 65536, dstPort: 53, icmpType: 0, icmpCode: 0, tcpFlags: 0,
    srcIdentity: 1001, dstIdentity: 1002, verdict: 'FORWARDED', dropReason: 0, isReply: false, length: 60,
  };
  return new LazyFlowRecord(ev, fe, db, 'unit-node');
};

/** A pipeline stand-in: the ring and the emitter the real FlowPipeline has (pure logic, no kernel). */
class FakeFlows extends EventEmitter {
  ring = new Ring<HubbleFlowRecord>(1000);
  lost = 0;
  push(r: HubbleFlowRecord) {
    this.ring.push(r);
    this.emit('flow', r);
  }
  lostRecord(source: LostEventSource, count: number) {
    this.lost += count;
    return { lost_events: { source, num_events_lost: count, cpu: null }, node_name: 'unit-node', time: new Date().toISOString() };
  }
}

describe('Hubble gRPC server (in process, unix socket)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-hubblesrv-'));
  const flows = new FakeFlows();
  let server: HubbleServer;
  let client: HubbleClient;
  before(async () => {
    const config = configParse({ nodeName: 'unit-node', api: { socket: join(dir, 'kitnet.sock') }, hubble: { followQueue: FOLLOW_QUEUE_LIMIT } });
    server = await hubbleListen(config, pino({ level: 'silent' }));
    client = hubbleClient(`unix://${server.socket}`);
  });
  after(async () => {
    client?.close();
    await server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('while the agent starts: health NOT_SERVING, calls UNAVAILABLE naming AGENT_ERR_API_STARTING', async () => {
    assert.deepEqual(await client.call('health', 'Check', { service: 'hubble.server.Observer' }), { status: 'NOT_SERVING' });
    await assert.rejects(client.call('observer', 'ServerStatus'), /UNAVAILABLE.*AGENT_ERR_API_STARTING/);
    const watched: unknown[] = [];
    const watch = client.stream('health', 'Watch', { service: 'hubble.server.Observer' });
    watch.on('data', (m) => watched.push(m));
    watch.on('error', () => undefined); // CANCELLED at the end
    await waitFor('the first Watch answer', async () => watched.length === 1);
    const backend: HubbleBackend = { nodeName: 'unit-node', version: '0.0.0', flows: flows as unknown as HubbleBackend['flows'], namespaces: () => ['shop'] };
    server.serve(backend);
    assert.deepEqual(await client.call('health', 'Check', { service: 'hubble.server.Observer' }), { status: 'SERVING' });
    await waitFor('Watch to tell SERVING', async () => watched.length === 2);
    assert.deepEqual(watched, [{ status: 'NOT_SERVING' }, { status: 'SERVING' }]);
    watch.cancel();
  });

  test('ServerStatus counts the flows of the last minute without a copy of the ring', async () => {
    for (let i = 0; i < 120; i++) flows.push(flow());
    const last = flows.ring.last;
    let copies = 0;
    flows.ring.last = function (this: Ring<HubbleFlowRecord>, count?: number) {
      copies++;
      return last.call(this, count);
    };
    try {
      const st = await client.call('observer', 'ServerStatus');
      assert.equal(Number(st.num_flows), flows.ring.length);
      assert.equal(Number(st.max_flows), 1000);
      assert.equal(st.flows_rate, flows.ring.length / 60, 'every flow in the ring is from the last minute');
      assert.equal(copies, 0, 'the ring was not copied');
    } finally {
      flows.ring.last = last;
    }
  });

  test('since/until bound the flows (none in the first second of the epoch)', async () => {
    const s = client.stream('observer', 'GetFlows', { whitelist: [{ source_ip: ['::1'] }], since: { seconds: 0 }, until: { seconds: 1 } });
    const got: unknown[] = [];
    await new Promise<void>((resolve, reject) => (s.on('data', (m) => got.push(m)), s.on('end', resolve), s.on('error', reject)));
    assert.deepEqual(got, []);
  });

  test("the review's costly filters (1 MB of label selectors) are refused INVALID_ARGUMENT, naming the field and the limit", async () => {
    const review = Array.from({ length: 63 }, (_, i) => ({ source_label: Array.from({ length: 64 }, () => `${'k8s:app,'.repeat(30)}nosuchkey${i}`) }));
    for (const follow of [false, true]) {
      const s = client.stream('observer', 'GetFlows', { whitelist: review, follow });
      s.on('data', () => undefined);
      const err = await new Promise<Error>((resolve, reject) => (s.on('error', resolve), s.on('end', () => reject(new Error('served')))));
      assert.match(err.message, /INVALID_ARGUMENT: flow filter: whitelist\[2\]: source_label: the label selectors of one request may hold at most 256 requirements/);
    }
    assert.equal(flows.listenerCount('flow'), 0, 'no follower was added');
  });

  test('a follower that does not read loses flows, counted, then told with a lost_events message', async () => {
    const stream = client.stream('observer', 'GetFlows', { follow: true });
    const got: Array<{ flow?: unknown; lost_events?: { source: string; num_events_lost: number } }> = [];
    stream.on('data', (m) => got.push(m));
    await waitFor('the follower', async () => flows.listenerCount('flow') > 0);
    stream.pause();
    // Far more than HTTP/2 windows and the queue hold, in slices so that the server's I/O runs.
    let pushed = 0;
    while (pushed < FOLLOW_QUEUE_LIMIT * 4) {
      for (let j = 0; j < 2000; j++, pushed++) flows.push(flow());
      await new Promise((r) => setImmediate(r));
    }
    stream.resume();
    // Missed flows are reported with the next flow that finds room: send one at a time until every
    // flow is either received or counted in a lost_events message.
    const lostSum = () => got.reduce((a, m) => a + (m.lost_events?.num_events_lost ?? 0), 0);
    await waitFor('every flow received or reported lost', async () => {
      if (got.filter((m) => m.flow).length + lostSum() === pushed) return true;
      flows.push(flow());
      pushed++;
      return false;
    }, 30_000);
    const lost = got.find((m) => m.lost_events);
    assert.ok(lost, 'a lost_events message');
    assert.equal(lost.lost_events!.source, 'OBSERVER_EVENTS_QUEUE');
    assert.ok(lostSum() > 0);
    stream.on('error', () => undefined); // CANCELLED, from the cancel below
    stream.cancel();
    await waitFor('the follower gone', async () => flows.listenerCount('flow') === 0);
  });

  test('a burst reaches a follower whole and in order, across slabs and turns, a lost-events message among its flows', async () => {
    const stream = client.stream('observer', 'GetFlows', { follow: true });
    const got: Array<number | string> = [];
    stream.on('data', (m: { flow?: { l4: { UDP: { source_port: number } }; destination: { pod_name: string } }; lost_events?: { source: string; num_events_lost: number } }) => {
      if (m.flow?.destination.pod_name === 'db') got.push(m.flow.l4.UDP.source_port);
      if (m.lost_events) got.push(`${m.lost_events.source} ${m.lost_events.num_events_lost}`);
    });
    await waitFor('the follower', async () => flows.listenerCount('flow') > 0);
    const sent: Array<number | string> = [];
    // Three turns of ~0.15 MB each (a turn's flows go out as one batch, split where the follower's slab
    // ends); the lost-events message (encoded by the library, copied in) sits among the encoded flows.
    for (let turn = 0; turn < 3; turn++) {
      for (let j = 0; j < FOLLOW_QUEUE_LIMIT / 6; j++) {
        if (turn === 1 && j === 100) {
          flows.emit('lost', flows.lostRecord('PERF_EVENT_RING_BUFFER', 3));
          sent.push('PERF_EVENT_RING_BUFFER 3');
        }
        flows.push(flow());
        sent.push(n % 65536);
      }
      await new Promise((r) => setImmediate(r));
    }
    await waitFor('every message of the burst', async () => got.length >= sent.length, 20_000);
    assert.deepEqual(got, sent);
    stream.on('error', () => undefined);
    stream.cancel();
    await waitFor('the follower gone', async () => flows.listenerCount('flow') === 0);
  });

  test('follow with until ends the stream at that time', async () => {
    const until = Date.now() + 300;
    const s = client.stream('observer', 'GetFlows', { follow: true, until: { seconds: Math.floor(until / 1000), nanos: (until % 1000) * 1e6 } });
    s.on('data', () => undefined);
    await new Promise<void>((resolve, reject) => (s.on('end', resolve), s.on('error', reject)));
    assert.ok(Date.now() >= until - 5);
    await waitFor('the follower gone', async () => flows.listenerCount('flow') === 0);
  });

  test('a client cannot hold more than OPEN_STREAMS_MAX streams open; closing one makes room', async () => {
    const open = Array.from({ length: OPEN_STREAMS_MAX }, () => {
      const s = client.stream('observer', 'GetFlows', { follow: true });
      s.on('data', () => undefined);
      s.on('error', () => undefined); // CANCELLED at the end
      return s;
    });
    await waitFor('every follower', async () => flows.listenerCount('flow') === OPEN_STREAMS_MAX);
    const refused = (method: 'GetFlows' | 'Notify' | 'Watch') =>
      new Promise<Error>((resolve) => {
        const service = method === 'GetFlows' ? 'observer' : method === 'Notify' ? 'peer' : 'health';
        const s = client.stream(service, method, method === 'GetFlows' ? { follow: true } : {});
        s.on('data', () => undefined);
        s.on('error', resolve);
      });
    for (const m of ['GetFlows', 'Notify', 'Watch'] as const) assert.match((await refused(m)).message, /RESOURCE_EXHAUSTED.*too many open streams/);
    // A request without follow is not held open: still served.
    const s = client.stream('observer', 'GetFlows', { number: 1 });
    await new Promise<void>((resolve, reject) => (s.on('data', () => undefined), s.on('end', resolve), s.on('error', reject)));
    open.pop()!.cancel();
    await waitFor('room for one more', async () => flows.listenerCount('flow') === OPEN_STREAMS_MAX - 1);
    const again = client.stream('observer', 'GetFlows', { follow: true });
    again.on('data', () => undefined);
    again.on('error', () => undefined);
    await waitFor('the new follower', async () => flows.listenerCount('flow') === OPEN_STREAMS_MAX);
    for (const o of [...open, again]) o.cancel();
    await waitFor('every follower gone', async () => flows.listenerCount('flow') === 0);
  });

  test('GetFlows without follow: sent as the client reads; unread streams hold 16 messages each, at most SNAPSHOT_STREAMS_MAX of them', async () => {
    for (let i = 0; i < flows.ring.capacity; i++) flows.push(flow());
    // A client that never reads: raw HTTP/2 on one connection, every stream paused (its window, 64 KiB,
    // fills; a ring of 1000 flows is far more), 36 streams more than may be held.
    const session = http2Connect('http://localhost', { createConnection: () => netConnect(server.socket!) });
    await new Promise<void>((resolve, reject) => (session.once('remoteSettings', () => resolve()), session.once('error', reject)));
    assert.equal(session.remoteSettings.maxConcurrentStreams, CONNECTION_STREAMS_MAX, 'grpc.max_concurrent_streams');
    const answers: Array<Promise<{ status: string | undefined; message: string | undefined }>> = [];
    const streams: ClientHttp2Stream[] = [];
    for (let i = 0; i < SNAPSHOT_STREAMS_MAX + 36; i++) {
      const s = session.request({ ':method': 'POST', ':path': '/observer.Observer/GetFlows', 'content-type': 'application/grpc', te: 'trailers' });
      s.pause();
      s.on('error', () => undefined);
      // GetFlowsRequest{number: 0} is the empty message: a gRPC frame of 5 zero bytes
      s.end(Buffer.alloc(5));
      streams.push(s);
      // held: headers, then messages; refused: trailers-only, grpc-status 8 (RESOURCE_EXHAUSTED)
      answers.push(new Promise((resolve) => s.once('response', (h) => resolve({ status: h['grpc-status'] as string | undefined, message: h['grpc-message'] as string | undefined }))));
    }
    const got = await Promise.all(answers);
    const refused = got.filter((a) => a.status === '8');
    assert.equal(refused.length, 36, 'refused past the limit');
    assert.match(decodeURIComponent(refused[0]!.message!), /too many open streams \(64 GetFlows streams without follow at once/);
    assert.equal(got.filter((a) => a.status === undefined).length, SNAPSHOT_STREAMS_MAX, 'held');
    await waitFor('the held streams at their buffers', async () => server.streams().snapshots === SNAPSHOT_STREAMS_MAX && server.streams().snapshotQueued > 0);
    // Written until write() says the buffer is full (16 messages), no further: without backpressure
    // each held every flow of the ring.
    const { snapshotQueued } = server.streams();
    assert.ok(snapshotQueued <= SNAPSHOT_STREAMS_MAX * 16, `${snapshotQueued} messages queued`);
    // A client that goes away frees the room; one that reads gets every flow, in order.
    session.destroy();
    await waitFor('the unread streams closed', async () => server.streams().snapshots === 0);
    const ports: number[] = [];
    const s = client.stream('observer', 'GetFlows', { number: 0 });
    await new Promise<void>((resolve, reject) => (s.on('data', (m: { flow: { l4: { UDP: { source_port: number } } } }) => ports.push(m.flow.l4.UDP.source_port)), s.on('end', resolve), s.on('error', reject)));
    assert.deepEqual(ports, flows.ring.last().map((r) => r.flow.l4!.UDP as { source_port: number }).map((u) => u.source_port));
    assert.equal(ports.length, flows.ring.capacity);
    await waitFor('that stream closed too', async () => server.streams().snapshots === 0);
  });

  test('closing the server ends follow streams and removes the socket', async () => {
    const s = client.stream('observer', 'GetFlows', { follow: true });
    s.on('data', () => undefined);
    const ended = new Promise<void>((resolve) => (s.on('error', () => resolve()), s.on('end', () => resolve())));
    await waitFor('the follower', async () => flows.listenerCount('flow') > 0);
    await server.close();
    await ended;
    assert.equal(flows.listenerCount('flow'), 0);
  });
});
