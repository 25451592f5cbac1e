import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { get as httpGet, type ClientRequest } from 'node:http';
import { connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Workload } from '../../common/schemas/workload.js';
import { apiCall, testAgentStart, type TestAgent } from '../helpers/agent.js';
import { promParse, promValue, type PromSample } from '../helpers/prom.js';
import { netnsAdd, netnsDel, ping, run, uniq, waitFor } from '../helpers/sys.js';

/**
 * GET /metrics against real traffic: two workloads in real namespaces, pings and TCP connections
 * between them, and the Hubble metrics checked against what was sent. Also: follow-stream clients
 * that go away mid-stream leave no listeners, connections or memory behind.
 */
describe('metrics and follow streams (root)', { timeout: 240_000 }, () => {
  const id = uniq();
  const nsNames = [`kitnet-met-a-${id}`, `kitnet-met-b-${id}`];
  const TCP_PORT = 7070;
  let t: TestAgent;
  let a: Workload;
  let b: Workload;
  const children: ChildProcess[] = [];
  /** Default-deny ingress for b: nothing selects a peer, so every new connection to b is dropped. */
  const DENY_TO_B = {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'deny-to-b', namespace: 'metrics' },
    spec: { podSelector: { matchLabels: { app: 'b' } }, policyTypes: ['Ingress'] },
  };

  const scrape = async (): Promise<PromSample[]> => {
    const res = await fetch(`${t.url}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    return promParse(await res.text());
  };
  const delta = (from: PromSample[], to: PromSample[], name: string, labels: Record<string, string> = {}) =>
    promValue(to, name, labels) - promValue(from, name, labels);

  /** N TCP connections a -> b, one after another, each reading the server's reply to the end. */
  const tcpConnections = async (n: number) => {
    const script = `const net=require('net');(async()=>{for(let i=0;i<${n};i++){await new Promise((ok,ko)=>{const s=net.connect(${TCP_PORT},'${b.ipv4}');s.on('data',()=>{});s.on('end',()=>{s.end();});s.on('close',ok);s.on('error',ko);});}})().catch(e=>{console.error(e);process.exit(1)})`;
    await run('ip', ['netns', 'exec', nsNames[0]!, process.execPath, '-e', script], { timeoutMs: 30_000 });
  };

  /** Waits until a metric stops changing (the ring buffer and pipeline have caught up). */
  const settled = async (name: string, labels: Record<string, string>, atLeast: number, from: PromSample[]) => {
    await waitFor(`${name} ${JSON.stringify(labels)} to reach +${atLeast}`, async () => delta(from, await scrape(), name, labels) >= atLeast, 10_000);
    await new Promise((r) => setTimeout(r, 500));
    return scrape();
  };

  before(async () => {
    for (const n of nsNames) await netnsAdd(n);
    t = await testAgentStart(id, { nodeName: 'metrics-node', ipam: { ipv4Pool: '10.231.0.0/24', ipv6Pool: 'fd00:231::/64' } });
    a = await apiCall<Workload>(t.url, 'POST', '/v1/workloads', { name: 'met-a', namespace: 'metrics', labels: { app: 'a' }, netns: `/var/run/netns/${nsNames[0]}` });
    b = await apiCall<Workload>(t.url, 'POST', '/v1/workloads', { name: 'met-b', namespace: 'metrics', labels: { app: 'b' }, netns: `/var/run/netns/${nsNames[1]}` });
    // Port P answers 'ok' and closes; port P+1 reads everything, then closes.
    const server = spawn('ip', ['netns', 'exec', nsNames[1]!, process.execPath, '-e',
      `const net=require('net');net.createServer((s)=>{s.on('error',()=>{});s.end('ok')}).listen(${TCP_PORT},'::');` +
      `net.createServer((s)=>{s.on('error',()=>{});s.on('data',()=>{});s.on('end',()=>s.end())}).listen(${TCP_PORT + 1},'::')`], { stdio: 'ignore' });
    children.push(server);
    // The server is up once a connection from the other namespace succeeds.
    await waitFor('the TCP server in b', async () => {
      try {
        await tcpConnections(1);
        return true;
      } catch {
        return false;
      }
    }, 10_000);
  });

  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await t?.stop();
    for (const n of nsNames) await netnsDel(n);
  });

  test('inventory: workloads by mode and state, identities, BPF map fill levels, zero lost events', async () => {
    const s = await scrape();
    assert.equal(promValue(s, 'kitnet_workloads', { mode: 'veth', state: 'ready', kind: 'netns' }), 2);
    assert.notEqual(a.identity, b.identity);
    assert.equal(promValue(s, 'kitnet_identities'), 2);
    assert.ok(promValue(s, 'kitnet_bpf_map_entries', { map: 'endpoints' }) >= 2);
    assert.ok(promValue(s, 'kitnet_bpf_map_entries', { map: 'ipcache' }) >= 4, 'both workloads, both families');
    assert.ok(promValue(s, 'kitnet_bpf_map_entries', { map: 'conntrack' }) >= 1, 'the probe connection is tracked');
    assert.ok(promValue(s, 'kitnet_bpf_map_capacity', { map: 'conntrack' }) > 0);
    for (const source of ['perf_event_ring_buffer', 'observer_events_queue', 'hubble_ring_buffer']) {
      assert.equal(promValue(s, 'hubble_lost_events_total', { source }), 0, source);
    }
    assert.equal(promValue(s, 'kitnet_ringbuf_lost_events_total'), 0);
    assert.equal(promValue(s, 'kitnet_flow_ring_capacity'), 4095);
  });

  test('registration duration histogram counts the registrations', async () => {
    const s = await scrape();
    assert.equal(promValue(s, 'kitnet_workload_registration_duration_seconds_count', { outcome: 'success' }), 2);
  });

  test('every packet reported (monitor aggregation 0): N pings are exactly 4N ICMPv4 flows', async () => {
    const N = 5;
    t.datapath.configSet({ monitorAggregation: 0 });
    try {
      const s0 = await scrape();
      assert.ok(await ping(nsNames[0]!, b.ipv4, N), 'pings a -> b');
      const icmp = { protocol: 'ICMPv4', type: 'Trace', verdict: 'FORWARDED' };
      const s1 = await settled('hubble_flows_processed_total', icmp, 4 * N, s0);
      // Request: EGRESS at a (from-endpoint), INGRESS at b (to-endpoint); the reply the other way.
      assert.equal(delta(s0, s1, 'hubble_flows_processed_total', icmp), 4 * N);
      assert.equal(delta(s0, s1, 'hubble_flows_processed_total', { ...icmp, subtype: 'from-endpoint' }), 2 * N);
      assert.equal(delta(s0, s1, 'hubble_flows_processed_total', { ...icmp, subtype: 'to-endpoint' }), 2 * N);
      // Port distribution counts requests only (replies are skipped, as in Hubble): 2 observations each.
      assert.equal(delta(s0, s1, 'hubble_port_distribution_total', { protocol: 'ICMPv4', port: '0' }), 2 * N);
      assert.equal(delta(s0, s1, 'hubble_drop_total'), 0);
      // The datapath's own counters saw at least those packets.
      assert.ok(delta(s0, s1, 'kitnet_datapath_packets_total', { direction: 'EGRESS', verdict: 'FORWARDED' }) >= 2 * N);
      assert.ok(delta(s0, s1, 'kitnet_datapath_packets_total', { direction: 'INGRESS', verdict: 'FORWARDED' }) >= 2 * N);
      assert.ok(delta(s0, s1, 'kitnet_datapath_bytes_total', { direction: 'INGRESS', verdict: 'FORWARDED' }) >= 2 * N * 84);
      assert.ok(delta(s0, s1, 'kitnet_ringbuf_events_total') >= 4 * N);
    } finally {
      t.datapath.configSet({ monitorAggregation: 1 });
    }
  });

  test('aggregated (default): each TCP connection is one SYN and one SYN-ACK at each end, however much it sends', async () => {
    const N = 6;
    const s0 = await scrape();
    await tcpConnections(N);
    const s1 = await settled('hubble_tcp_flags_total', { flag: 'SYN-ACK', family: 'IPv4' }, 2 * N, s0);
    // Both ends are local workloads: every reported packet is observed at a's and at b's device.
    assert.equal(delta(s0, s1, 'hubble_tcp_flags_total', { flag: 'SYN', family: 'IPv4' }), 2 * N);
    assert.equal(delta(s0, s1, 'hubble_tcp_flags_total', { flag: 'SYN-ACK', family: 'IPv4' }), 2 * N);
    // Each side closes (FIN) once.
    assert.equal(delta(s0, s1, 'hubble_tcp_flags_total', { flag: 'FIN', family: 'IPv4' }), 4 * N);
    assert.equal(delta(s0, s1, 'hubble_tcp_flags_total', { flag: 'RST' }), 0);
    const tcp = { protocol: 'TCP', type: 'Trace', verdict: 'FORWARDED' };
    const from = delta(s0, s1, 'hubble_flows_processed_total', { ...tcp, subtype: 'from-endpoint' });
    assert.equal(delta(s0, s1, 'hubble_flows_processed_total', { ...tcp, subtype: 'to-endpoint' }), from, 'seen at both ends');
    const port = delta(s0, s1, 'hubble_port_distribution_total', { protocol: 'TCP', port: String(TCP_PORT) });
    assert.ok(port >= 2 * N && port < 2 * from, `port distribution ${port}: the requests, not the replies`);
    // Aggregation: a connection moving 1 MB is reported like one moving 2 bytes (no per-packet flows).
    const s2 = await scrape();
    const big = `const s=require('net').connect(${TCP_PORT + 1},'${b.ipv4}',()=>{s.end(Buffer.alloc(1<<20))});s.on('data',()=>{});s.on('close',()=>process.exit(0))`;
    await run('ip', ['netns', 'exec', nsNames[0]!, process.execPath, '-e', big], { timeoutMs: 30_000 });
    const s3 = await settled('hubble_tcp_flags_total', { flag: 'SYN-ACK', family: 'IPv4' }, 2, s2);
    const bigFlows = delta(s2, s3, 'hubble_flows_processed_total', { protocol: 'TCP' });
    assert.ok(bigFlows <= (2 * from) / N + 4, `1 MB connection: ${bigFlows} flows, small ones ${(2 * from) / N} each`);
    assert.ok(delta(s2, s3, 'kitnet_datapath_packets_total', { direction: 'INGRESS', verdict: 'FORWARDED' }) > 30, 'yet many packets passed');
  });

  test('a policy that denies shows up as hubble_drop_total and kitnet_datapath_policy_drops_total', async () => {
    const s0 = await scrape();
    await apiCall(t.url, 'PUT', '/v1/policies', DENY_TO_B);
    try {
      await run('ip', ['netns', 'exec', nsNames[0]!, process.execPath, '-e',
        `const s=require('net').connect(${TCP_PORT},'${b.ipv4}');s.on('error',()=>{});setTimeout(()=>process.exit(0),1500)`], { timeoutMs: 10_000 });
      const s1 = await settled('hubble_drop_total', { protocol: 'TCP' }, 1, s0);
      const reasons = s1.filter((x) => x.name === 'hubble_drop_total' && x.labels.protocol === 'TCP' && delta(s0, s1, x.name, x.labels) > 0).map((x) => x.labels.reason);
      assert.ok(reasons.every((r) => r === 'POLICY_DENIED' || r === 'POLICY_DENY'), reasons.join());
      assert.ok(delta(s0, s1, 'hubble_flows_processed_total', { protocol: 'TCP', type: 'Drop', verdict: 'DROPPED' }) >= 1);
      assert.ok(delta(s0, s1, 'kitnet_datapath_policy_drops_total') >= 1);
      assert.ok(promValue(s1, 'kitnet_policy_map_entries') > 0);
    } finally {
      await apiCall(t.url, 'DELETE', '/v1/policies/NetworkPolicy/metrics/deny-to-b');
    }
  });

  test('follow clients that disconnect mid-stream leave no listeners, connections or memory behind', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const pipeline = t.agent.flows;
    const baseline = { flow: pipeline.listenerCount('flow'), lost: pipeline.listenerCount('lost'), conns: await t.connections() };
    const STREAMS = 60;
    const heap = () => {
      gc();
      gc();
      return process.memoryUsage().heapUsed;
    };

    /** Opens follow streams of several kinds, makes traffic flow through them, then drops them all. */
    const round = async () => {
      const requests: ClientRequest[] = [];
      const received: number[] = [];
      const port = Number(new URL(t.url).port);
      for (let i = 0; i < STREAMS; i++) {
        const q = [
          'follow=true',
          'follow=true&last=50',
          `follow=true&source_pod=metrics/&protocol=icmp`,
          `follow=true&whitelist=${encodeURIComponent(JSON.stringify([{ destination_workload: ['met-b'] }]))}`,
        ][i % 4];
        received[i] = 0;
        // One connection per client (no pooling), so closing the client closes exactly its connection.
        await new Promise<void>((resolve, reject) => {
          const req = httpGet({ host: '127.0.0.1', port, path: `/v1/flows?${q}`, agent: false }, (res) => {
            assert.equal(res.statusCode, 200);
            // A third of the clients never read: their data piles up in the socket until they go.
            if (i % 3 !== 2) res.on('data', (c: Buffer) => (received[i]! += c.length));
            res.on('error', () => undefined);
            resolve();
          });
          req.on('error', (err) => (req.destroyed ? undefined : reject(err)));
          requests.push(req);
        });
      }
      // Raw sockets that send the request and vanish before (or right after) the response starts.
      await Promise.all(
        Array.from({ length: 10 }, (_, i) =>
          new Promise<void>((resolve) => {
            const sock = connect(port, '127.0.0.1', () => {
              sock.write('GET /v1/flows?follow=true HTTP/1.1\r\nHost: x\r\n\r\n');
              if (i % 2) sock.destroy();
              else sock.once('data', () => sock.destroy());
              resolve();
            });
            sock.on('error', () => resolve());
          }),
        ),
      );
      assert.ok(pipeline.listenerCount('lost') >= baseline.lost + STREAMS, 'every stream subscribed');
      const followers = promValue(await scrape(), 'kitnet_flow_followers');
      assert.ok(followers >= STREAMS, `kitnet_flow_followers ${followers}`);
      // Traffic while everyone is connected, then everyone leaves mid-stream.
      t.datapath.configSet({ monitorAggregation: 0 });
      try {
        assert.ok(await ping(nsNames[0]!, b.ipv4, 3));
        await waitFor('flows reaching the reading followers', async () => received.filter((n) => n > 0).length >= STREAMS / 3, 5000);
      } finally {
        t.datapath.configSet({ monitorAggregation: 1 });
      }
      for (const req of requests) req.destroy();
    };

    await round();
    const heapAfterFirst = heap();
    await round();
    await round();
    await waitFor('followers to unsubscribe', async () => pipeline.listenerCount('lost') === baseline.lost && pipeline.listenerCount('flow') === baseline.flow, 5000);
    // (fetch's keep-alive pool, used for the scrapes, may hold an idle connection or two)
    await waitFor('connections to close', async () => (await t.connections()) <= baseline.conns + 2, 5000);
    const s = await scrape();
    assert.equal(promValue(s, 'kitnet_flow_followers'), 0);
    const growth = heap() - heapAfterFirst;
    assert.ok(growth < 16 << 20, `heap grew ${(growth / 1048576).toFixed(1)} MB over two rounds of ${STREAMS} streams`);

    // The agent still answers, and a new follower gets new flows (how soon: bench/flow-latency.bench.ts).
    const status = await apiCall<{ counts: { workloads: number } }>(t.url, 'GET', '/v1/status');
    assert.equal(status.counts.workloads, 2);
    const ac = new AbortController();
    const res = await fetch(`${t.url}/v1/flows?follow=true&protocol=icmp`, { signal: ac.signal });
    const reader = res.body!.getReader();
    const first = reader.read();
    void ping(nsNames[0]!, b.ipv4, 1);
    const { value } = await first;
    assert.ok(value && value.length > 0);
    ac.abort();
  });
});
