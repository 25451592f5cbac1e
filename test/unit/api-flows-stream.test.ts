import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import type { FlowEvent } from '../../bpf/index.js';
import type { AgentApi } from '../../api/agent-api.js';
import { serverBuild } from '../../api/server.js';
import { FLOW_FOLLOW_STREAMS_MAX, FLOW_SLICE, FLOW_SNAPSHOT_STREAMS_MAX, FLOW_STREAMS_PER_CONNECTION_MAX, FOLLOW_BUFFER_LIMIT, flowStreamsOpen } from '../../api/routes/flows.js';
import type { EndpointDirectory } from '../../agent/flows/directory.js';
import { LazyFlowRecord } from '../../agent/flows/enrich.js';
import type { HubbleEndpoint, HubbleFlowRecord } from '../../agent/flows/hubble.js';
import { FlowPipeline } from '../../agent/flows/pipeline.js';
import { flowSelectionCompile, flowsFollow, flowsSnapshot } from '../../agent/flows/selection.js';
import type { FlowSelection } from '../../common/schemas/flows.js';
import { waitFor } from '../helpers/sys.js';

const RING = 8000;
const fe: HubbleEndpoint = { ID: 2, identity: 1001, namespace: 'shop', labels: ['k8s:app=fe', 'k8s:io.kubernetes.pod.namespace=shop'], pod_name: 'fe' };
const db: HubbleEndpoint = { ID: 3, identity: 1002, namespace: 'shop', labels: ['k8s:app=db', 'k8s:io.kubernetes.pod.namespace=shop'], pod_name: 'db' };
let n = 0;
const flow = (timeNs?: bigint): HubbleFlowRecord => {
  n++;
  const dropped = n % 7 === 0;
  const ev: FlowEvent = {
    timeNs: timeNs ?? BigInt(Date.UTC(2026, 0, 1)) * 1_000_000n + BigInt(n) * 1_000_000n, ifindex: 10, endpointId: 2, direction: 'EGRESS', family: 4, protocol: 6,
    srcAddr: '10.9.0.2', dstAddr: '10.9.0.3', srcPort: 1024 + (n % 60000), dstPort: 5432, icmpType: 0, icmpCode: 0, tcpFlags: 2,
    srcIdentity: 1001, dstIdentity: 1002, verdict: dropped ? 'DROPPED' : 'FORWARDED', dropReason: dropped ? 133 : 0, isReply: false, length: 60,
  };
  return new LazyFlowRecord(ev, fe, db, 'rf-node');
};

/** GET /v1/flows as it answered before replies were streamed: the selection, then its NDJSON in one string. */
function replyBefore(pipeline: FlowPipeline, sel: FlowSelection): string {
  const matching = pipeline.ring.last().filter(flowSelectionCompile(sel));
  const recent = sel.last !== undefined ? matching.slice(-sel.last) : matching;
  return recent.map((f) => `${JSON.stringify(f)}\n`).join('');
}

/** A request on a raw connection whose answer is never read. */
function unreadRequest(path: string, connections: Socket[], count = 1, url = '/v1/flows'): Socket {
  const s = connect(path);
  s.on('error', () => undefined);
  s.pause();
  s.write(`GET ${url} HTTP/1.1\r\nHost: rf\r\n\r\n`.repeat(count));
  connections.push(s);
  return s;
}

function get(path: string, url: string): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: path, path: url, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/** A request's status, and its body if it was refused (a follow stream that was let in is closed). */
function answer(path: string, url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: path, path: url, agent: false }, (res) => {
      const status = res.statusCode ?? 0;
      if (status < 400) {
        req.destroy();
        return resolve({ status, body: '' });
      }
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('GET /v1/flows: replies sent as the client reads', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rf-flows-'));
  const sock = join(dir, 'api.sock');
  const pipeline = new FlowPipeline({} as EndpointDirectory, 'rf-node', RING, pino({ level: 'silent' }));
  const agent = {
    flowsSnapshot: (sel: FlowSelection) => flowsSnapshot(pipeline, sel),
    flowsFollow: (sel: FlowSelection, on: Parameters<AgentApi['flowsFollow']>[1]) => flowsFollow(pipeline, sel, on),
    flowsLost: (count: number) => pipeline.lostRecord('OBSERVER_EVENTS_QUEUE', count),
  } as unknown as AgentApi;
  let app: FastifyInstance;
  /** The agent's side of every connection: what it holds for a client is in their write buffers. */
  const served = new Set<Socket>();
  const clients: Socket[] = [];

  before(async () => {
    for (let i = 0; i < RING; i++) pipeline.push(flow());
    app = await serverBuild({ agent, logger: false, version: '0.0.0' });
    app.server.on('connection', (s: Socket) => {
      served.add(s);
      s.once('close', () => served.delete(s));
    });
    await app.listen({ path: sock });
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.destroy();
    await waitFor('every connection closed and every reply released', async () => served.size === 0 && flowStreamsOpen(agent).snapshots === 0 && pipeline.listenerCount('flow') === 0);
  });
  after(async () => {
    for (const c of clients) c.destroy();
    await app?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('clients that never read hold a slice each in the agent, not the ring', async () => {
    const whole = Buffer.byteLength(replyBefore(pipeline, {}));
    const lineBytes = Math.ceil(whole / RING);
    const k = 16;
    for (let i = 0; i < k; i++) unreadRequest(sock, clients);
    // Each reply is far more than the kernel takes for an unread unix socket: the rest waits in the agent.
    await waitFor('every reply stalled on its unread client', async () => served.size === k && [...served].every((s) => s.writableLength > 0));
    const held = [...served].reduce((sum, s) => sum + s.writableLength, 0);
    // One slice past the socket's high-water mark at most; before, each held all of its reply (~5 MiB).
    const bound = k * (served.values().next().value!.writableHighWaterMark + FLOW_SLICE * lineBytes);
    assert.ok(held <= bound, `the agent holds ${held} bytes for ${k} unread replies of ${whole} bytes each (bound ${bound})`);
    assert.equal(flowStreamsOpen(agent).snapshots, k);
  });

  test(`at most ${FLOW_SNAPSHOT_STREAMS_MAX} unread replies at once, the next refused naming the limit; a client going away releases its reply`, async () => {
    for (let i = 0; i < FLOW_SNAPSHOT_STREAMS_MAX; i++) unreadRequest(sock, clients);
    await waitFor('the held replies', async () => flowStreamsOpen(agent).snapshots === FLOW_SNAPSHOT_STREAMS_MAX);
    const refused = await get(sock, '/v1/flows?last=1');
    assert.equal(refused.status, 429);
    const body = JSON.parse(refused.body) as { code: string; message: string };
    assert.equal(body.code, 'AGENT_ERR_API_TOO_MANY_STREAMS');
    assert.match(body.message, /too many flow replies \(64 GET \/v1\/flows without follow at once, not yet read to their end\)/);
    for (const c of clients.splice(0)) c.destroy();
    await waitFor('the unread replies released', async () => flowStreamsOpen(agent).snapshots === 0);
    assert.equal((await get(sock, '/v1/flows?last=1')).status, 200);
  });

  test(`pipelined requests: at most ${FLOW_STREAMS_PER_CONNECTION_MAX} replies on one connection; closing it releases them all`, async () => {
    unreadRequest(sock, clients, 40);
    await waitFor('the replies of the connection', async () => flowStreamsOpen(agent).snapshots === FLOW_STREAMS_PER_CONNECTION_MAX);
    clients[0]!.destroy();
    await waitFor('the queued replies released with their connection', async () => flowStreamsOpen(agent).snapshots === 0);
  });

  test('a client that reads gets the bytes it got when replies were made whole', async () => {
    for (const [url, sel] of [
      ['/v1/flows', {}],
      ['/v1/flows?last=20', { last: 20 }],
      [`/v1/flows?last=${RING + 5}`, { last: RING + 5 }],
      ['/v1/flows?verdict=DROPPED&last=300', { whitelist: [{ verdict: ['DROPPED'] }], last: 300 }],
      ['/v1/flows?verdict=DROPPED', { whitelist: [{ verdict: ['DROPPED'] }] }],
      [`/v1/flows?since=${new Date(Date.UTC(2026, 0, 1) + (n - 100) * 1000).toISOString()}`, { since: new Date(Date.UTC(2026, 0, 1) + (n - 100) * 1000).toISOString() }],
      ['/v1/flows?verdict=DROPPED&source_port=1', { whitelist: [{ verdict: ['DROPPED'], source_port: ['1'] }] }],
    ] as Array<[string, FlowSelection]>) {
      const got = await get(sock, url);
      assert.equal(got.status, 200, url);
      assert.equal(got.headers['content-type'], 'application/x-ndjson; charset=utf-8', url);
      assert.equal(got.body, replyBefore(pipeline, sel), url);
    }
    await waitFor('their replies released', async () => flowStreamsOpen(agent).snapshots === 0);
  });

  test('follow with last: the ring\'s part as the client reads it, none lost, then the flows that come', async () => {
    const lines: string[] = [];
    let buf = '';
    const req = request({ socketPath: sock, path: `/v1/flows?follow=true&last=${RING}`, agent: false }, (res) => {
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        buf += c;
        const parts = buf.split('\n');
        buf = parts.pop()!;
        lines.push(...parts);
      });
    });
    req.on('error', () => undefined);
    req.end();
    try {
      const ring = replyBefore(pipeline, {}).split('\n').slice(0, -1);
      await waitFor('the ring\'s part', async () => lines.length >= RING);
      // Before, it was written at once and what passed the follower's buffer (1 MiB) was "lost".
      assert.deepEqual(lines, ring);
      const next = flow();
      pipeline.push(next);
      await waitFor('the next flow', async () => lines.length === RING + 1);
      assert.equal(lines[RING], JSON.stringify(next));
    } finally {
      req.destroy();
    }
  });

  test('follow with until: the stream ends by itself once until passes (after the ring\'s part, when that is asked for)', { timeout: 30_000 }, async () => {
    // until in the past with last: the ring's part, then the end (no flow may come after it).
    const past = await get(sock, `/v1/flows?follow=true&last=5&until=${encodeURIComponent(new Date(Date.now() - 1000).toISOString())}`);
    assert.equal(past.status, 200);
    assert.deepEqual(past.body.split('\n').slice(0, -1), replyBefore(pipeline, { last: 5 }).split('\n').slice(0, -1));
    // until a moment ahead: the flows made before it, then the end, with no flow to end it.
    const ahead = new Date(Date.now() + 400).toISOString();
    const reply = get(sock, `/v1/flows?follow=true&until=${encodeURIComponent(ahead)}`);
    await waitFor('the follower subscribed', async () => pipeline.listenerCount('flow') === 1);
    // A flow's time is its event's: one of now passes the until filter.
    const live = flow(BigInt(Date.now()) * 1_000_000n);
    pipeline.push(live);
    const got = await reply;
    assert.equal(got.status, 200);
    assert.equal(got.body, `${JSON.stringify(live)}\n`);
    await waitFor('the follower gone', async () => pipeline.listenerCount('flow') === 0 && flowStreamsOpen(agent).followers === 0);
  });

  test('a follower that never reads: the agent holds its buffer at most, and tells it what it lost once it reads', async () => {
    const c = unreadRequest(sock, clients, 1, '/v1/flows?follow=true');
    await waitFor('the follower subscribed', async () => pipeline.listenerCount('flow') === 1 && served.size === 1);
    const pushed = 20_000;
    for (let i = 0; i < pushed; i++) pipeline.push(flow());
    const [conn] = [...served];
    const lineBytes = JSON.stringify(pipeline.ring.newest()).length + 1;
    assert.ok(conn!.writableLength <= FOLLOW_BUFFER_LIMIT + lineBytes, `the agent holds ${conn!.writableLength} bytes for the follower`);
    // The client reads now; no flow comes after: it hears of its loss when it has caught up.
    let text = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => (text += d));
    c.resume();
    const lost = await waitFor('the lost_events line', async () => /"lost_events":\{"source":"OBSERVER_EVENTS_QUEUE","num_events_lost":(\d+)/.exec(text) ?? undefined);
    const got = text.split('\n').filter((l) => l.startsWith('{"flow"')).length;
    assert.equal(got + Number(lost[1]), pushed);
  });

  test(`at most ${FLOW_FOLLOW_STREAMS_MAX} follow streams at once, ${FLOW_STREAMS_PER_CONNECTION_MAX} on one connection; closing releases them`, async () => {
    for (let i = 0; i < FLOW_FOLLOW_STREAMS_MAX; i++) unreadRequest(sock, clients, 1, '/v1/flows?follow=true');
    await waitFor('the followers', async () => pipeline.listenerCount('flow') === FLOW_FOLLOW_STREAMS_MAX);
    const refused = await answer(sock, '/v1/flows?follow=true');
    assert.equal(refused.status, 429);
    assert.match(refused.body, /too many follow streams \(64 GET \/v1\/flows\?follow=true at once\)/);
    assert.equal(flowStreamsOpen(agent).followers, FLOW_FOLLOW_STREAMS_MAX);
    for (const c of clients.splice(0)) c.destroy();
    await waitFor('the followers gone', async () => pipeline.listenerCount('flow') === 0 && flowStreamsOpen(agent).followers === 0);
    unreadRequest(sock, clients, 20, '/v1/flows?follow=true');
    await waitFor('the followers of one connection', async () => flowStreamsOpen(agent).followers === FLOW_STREAMS_PER_CONNECTION_MAX);
    assert.equal(pipeline.listenerCount('flow'), FLOW_STREAMS_PER_CONNECTION_MAX);
    clients[0]!.destroy();
    await waitFor('released with their connection', async () => pipeline.listenerCount('flow') === 0 && flowStreamsOpen(agent).followers === 0);
  });

  test('a bad filter is still a 400 naming it', async () => {
    const got = await get(sock, `/v1/flows?whitelist=${encodeURIComponent('[{"source_ip":["not-an-ip"]}]')}`);
    assert.equal(got.status, 400);
    assert.match(got.body, /flow filter/);
  });
});

describe('flowsSnapshot: a position in the ring, not a copy', () => {
  test('flows the ring overwrote before they were read come as one lost_events record, in their place', () => {
    const pipeline = new FlowPipeline({} as EndpointDirectory, 'rf-node', 100, pino({ level: 'silent' }));
    for (let i = 0; i < 100; i++) pipeline.push(flow());
    const before = pipeline.ring.last();
    const snap = flowsSnapshot(pipeline, {});
    assert.deepEqual(snap.read(10), before.slice(0, 10));
    // 30 more: the ring drops its oldest 30, the 20 of them not read yet are lost to this reader
    for (let i = 0; i < 30; i++) pipeline.push(flow());
    const [lost, ...rest] = snap.read(10);
    assert.deepEqual((lost as { lost_events: unknown }).lost_events, { source: 'HUBBLE_RING_BUFFER', num_events_lost: 20, cpu: null });
    assert.deepEqual(rest, before.slice(30, 39));
    const tail = [];
    for (let r = snap.read(25); r.length; r = snap.read(25)) tail.push(...r);
    // ...and ends where the ring was when it was made, not at the flows written since
    assert.deepEqual(tail, before.slice(39));
    assert.equal(pipeline.lost.HUBBLE_RING_BUFFER, 20);
  });

  test('last: the newest N matches, found without keeping any', () => {
    const pipeline = new FlowPipeline({} as EndpointDirectory, 'rf-node', 100, pino({ level: 'silent' }));
    for (let i = 0; i < 100; i++) pipeline.push(flow());
    const dropped = pipeline.ring.last().filter((r) => r.flow.verdict === 'DROPPED');
    const snap = flowsSnapshot(pipeline, { whitelist: [{ verdict: ['DROPPED'] }], last: 5 });
    assert.deepEqual([...snap.read(3), ...snap.read(3), ...snap.read(3)], dropped.slice(-5));
    assert.deepEqual(flowsSnapshot(pipeline, { whitelist: [{ verdict: ['DROPPED'], source_port: ['1'] }], last: 5 }).read(3), []);
  });
});
