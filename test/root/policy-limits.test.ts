import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import { POLICY_LIMITS } from '../../agent/policy/limits.js';
import { POLICY_BODY_LIMIT } from '../../api/security.js';
import type { Workload } from '../../common/schemas/workload.js';
import { apiCall, testAgentStart, type TestAgent } from '../helpers/agent.js';
import { netnsAdd, netnsDel, uniq } from '../helpers/sys.js';

/**
 * Policy bodies within the 4 MiB limit that held the event loop 25-37 s with up to 2.8 GB RSS (issue
 * #12, item 6). While each is sent, a worker thread (its own event loop: the agent shares this
 * process) asks /healthz every 100 ms; every answer must come within 1 s, the liveness bound the
 * issue sets, of the agent's own thread's time: an answer held while that thread ran for 1 s or more
 * (its CPU time in /proc/<pid>/task/<pid>/schedstat) fails; one held while it waited for a CPU on a
 * loaded machine (CI shares two cores with emulated VMs) does not. Each body gets a 4xx naming the
 * limit, and RSS stays bounded.
 */
describe('policy request limits keep the agent live (root)', { timeout: 600_000 }, () => {
  const id = uniq();
  let t: TestAgent;
  const MAX = POLICY_BODY_LIMIT - 64;

  const netns = `kitnet-plim-${id}`;
  const netns2 = `kitnet-plim2-${id}`;

  before(async () => {
    await netnsAdd(netns);
    await netnsAdd(netns2);
    t = await testAgentStart(`plim-${id}`, { ipam: { ipv4Pool: '10.238.0.0/24', ipv6Pool: 'fd00:238::/64' } });
  });
  after(async () => {
    await t?.stop();
    await netnsDel(netns);
    await netnsDel(netns2);
  });

  /**
   * Polls /healthz from another thread until stopped; resolves with each answer's latency and the CPU
   * time the agent's (main) thread ran meanwhile (ms; Infinity for a failure).
   */
  const healthPoll = (url: string) => {
    const w = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const { readFileSync } = require('node:fs');
       const ranNs = () => Number(readFileSync('/proc/' + process.pid + '/task/' + process.pid + '/schedstat', 'utf8').split(' ')[0]);
       let stop = false;
       const polls = [];
       parentPort.on('message', () => { stop = true; });
       (async () => {
         while (!stop) {
           const s = performance.now();
           const ran = ranNs();
           try {
             const r = await fetch(workerData.url + '/healthz', { signal: AbortSignal.timeout(120000) });
             await r.text();
             polls.push(r.ok ? { ms: performance.now() - s, agentMs: (ranNs() - ran) / 1e6 } : { ms: Infinity, agentMs: Infinity });
           } catch { polls.push({ ms: Infinity, agentMs: Infinity }); }
           await new Promise((r) => setTimeout(r, 100));
         }
         parentPort.postMessage(polls);
       })();`,
      { eval: true, workerData: { url } },
    );
    const result = new Promise<{ ms: number; agentMs: number }[]>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
    return {
      stop: async () => {
        w.postMessage('stop');
        const lat = await result;
        await w.terminate();
        return lat;
      },
    };
  };

  /** Sends a request while polling /healthz; `rssMb` bounds the RSS growth (the state of a large policy that fits takes room). */
  const send = async (body: string, contentType: string, opts: { method?: string; path?: string; rssMb?: number } = {}) => {
    const { method = 'PUT', path = '/v1/policies', rssMb = 500 } = opts;
    assert.ok(body.length <= POLICY_BODY_LIMIT, `body of ${body.length} bytes is within the 4 MiB limit`);
    const rssBefore = process.memoryUsage().rss;
    const poll = healthPoll(t.url);
    const started = performance.now();
    const res = await fetch(`${t.url}${path}`, { method, ...(method === 'DELETE' ? {} : { body }), headers: { 'content-type': contentType } });
    const answer = (await res.json()) as { code?: string; message?: string };
    const seconds = (performance.now() - started) / 1000;
    const polls = await poll.stop();
    const rssGrowthMb = (process.memoryUsage().rss - rssBefore) / 2 ** 20;
    const worst = polls.reduce((w, p) => (p.agentMs > w.agentMs ? p : w));
    assert.ok(polls.length >= 1, 'the poller ran');
    assert.ok(
      worst.agentMs < 1000,
      `/healthz answered while the agent's thread ran ${worst.agentMs.toFixed(0)} ms at worst (answer after ${worst.ms.toFixed(0)} ms; ${polls.length} polls, slowest answer ${Math.max(...polls.map((p) => p.ms)).toFixed(0)} ms; the request took ${seconds.toFixed(1)} s)`,
    );
    assert.ok(rssGrowthMb < rssMb, `RSS grew ${rssGrowthMb.toFixed(0)} MB`);
    return { status: res.status, answer };
  };

  test('a YAML flow sequence of 4 MiB: 413 naming the node limit', async () => {
    const body = `[${'{},'.repeat(Math.floor(MAX / 3) - 1)}{}]`;
    const { status, answer } = await send(body, 'application/yaml');
    assert.equal(status, 413, JSON.stringify(answer).slice(0, 300));
    assert.equal(answer.code, 'AGENT_ERR_POLICY_TOO_LARGE');
    assert.match(answer.message!, new RegExp(`limit is ${POLICY_LIMITS.nodes} nodes`));
  });

  test('466k tiny YAML documents: 413 naming the document limit', async () => {
    const body = 'a: 1\n---\n'.repeat(Math.floor(MAX / 9));
    const { status, answer } = await send(body, 'application/yaml');
    assert.equal(status, 413, JSON.stringify(answer).slice(0, 300));
    assert.equal(answer.code, 'AGENT_ERR_POLICY_TOO_LARGE');
    assert.match(answer.message!, new RegExp(`limit is ${POLICY_LIMITS.documents} documents`));
  });

  test('a JSON array of 350k objects: 413 naming the document limit', async () => {
    const body = JSON.stringify(Array.from({ length: 350_000 }, () => ({ a: 1 })));
    const { status, answer } = await send(body, 'application/json');
    assert.equal(status, 413, JSON.stringify(answer).slice(0, 300));
    assert.equal(answer.code, 'AGENT_ERR_POLICY_TOO_LARGE');
    assert.match(answer.message!, new RegExp(`limit is ${POLICY_LIMITS.documents} documents`));
  });

  test('thousands of invalid documents: 400 with the first problems only', async () => {
    const docs = Array.from({ length: 5000 }, (_, i) => ({ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name: `bad-${i}` }, spec: { endpointSelector: {}, bogus: i } }));
    const { status, answer } = await send(JSON.stringify(docs), 'application/json');
    assert.equal(status, 400);
    assert.equal(answer.code, 'AGENT_ERR_POLICY_INVALID');
    assert.equal(answer.message!.split('\n').filter((l) => l.startsWith('document ')).length, POLICY_LIMITS.issues);
    assert.match(answer.message!, new RegExp(`validation stopped after ${POLICY_LIMITS.issues} problems`));
  });

  test('3 MiB of valid YAML policies within the limits apply while /healthz keeps answering', async () => {
    const doc = (i: number) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p-${i}
  namespace: lim
spec:
  endpointSelector:
    matchLabels:
      app: a-${i}
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: client
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
`;
    const docs: string[] = [];
    let size = 0;
    for (let i = 0; size < 3 * 2 ** 20 && docs.length < POLICY_LIMITS.documents; i++) size += (docs[i] = doc(i)).length + 4;
    const { status, answer } = await send(docs.join('---\n'), 'application/yaml');
    assert.equal(status, 200, JSON.stringify(answer).slice(0, 300));
  });

  /** A policy of n CIDRs x ports TCP ports for egress of app=big: n x ports policy map entries on that endpoint. */
  const manyPorts = (name: string, n: number, ports: number) => ({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name, namespace: 'lim' },
    spec: {
      endpointSelector: { matchLabels: { app: 'big' } },
      egress: [{
        toCIDR: Array.from({ length: n }, (_, i) => `10.${120 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`),
        toPorts: [{ ports: Array.from({ length: ports }, (_, i) => ({ port: String(2000 + i), protocol: 'TCP' })) }],
      }],
    },
  });

  // Compiling and writing these held the loop 4-10 s before both ran in slices (agent/policy/slices.ts).
  test('a policy that compiles to 600k entries that fit applies, and a delete removes them, while /healthz keeps answering', async () => {
    const big = await apiCall<Workload>(t.url, 'POST', '/v1/workloads', { name: 'big', namespace: 'lim', labels: { app: 'big' }, netns: `/var/run/netns/${netns}` });
    const egress = (entries = t.datapath.policyList(big.endpointId)) => entries.filter((e) => e.direction === 'egress').length;
    const { status, answer } = await send(JSON.stringify(manyPorts('big', 600, 1000)), 'application/json', { rssMb: 1500 });
    assert.equal(status, 200, JSON.stringify(answer).slice(0, 300));
    // One dump of the endpoint's ~600k entries for both checks (nothing changes the map between them).
    const entries = t.datapath.policyList(big.endpointId);
    assert.equal(egress(entries), 600_000, 'every entry is in the policy map');
    const reported = (await apiCall<{ entries: unknown[] }>(t.url, 'GET', '/v1/workloads/lim/big/policy')).entries.length;
    assert.equal(reported, entries.length, '`workload policy` reports what the map holds');

    const del = await send('', 'application/json', { method: 'DELETE', path: '/v1/policies/CiliumNetworkPolicy/lim/big', rssMb: 1500 });
    assert.equal(del.status, 200, JSON.stringify(del.answer).slice(0, 300));
    assert.equal(egress(), 1, 'only the allow-all egress entry is left');
  });

  test('a policy beyond the policy map is refused with 422 while /healthz keeps answering; the maps stay as they were', async () => {
    // A second endpoint with the same labels: 600k entries fit one endpoint, the class is compiled in
    // full before the sum over its two endpoints passes the map.
    await fetch(`${t.url}/v1/policies/CiliumNetworkPolicy/lim/big`, { method: 'DELETE' }); // left by a failed test above
    await apiCall<Workload>(t.url, 'POST', '/v1/workloads', { name: 'big-2', namespace: 'lim', labels: { app: 'big' }, netns: `/var/run/netns/${netns2}` });
    const before = t.datapath.policyList().map((e) => JSON.stringify(e)).sort();
    for (const [name, cidrs, ports] of [['too-big', 600, 1000], ['too-many-pairs', 1000, 1100]] as const) {
      const { status, answer } = await send(JSON.stringify(manyPorts(name, cidrs, ports)), 'application/json', { rssMb: 1500 });
      assert.equal(status, 422, JSON.stringify(answer).slice(0, 300));
      assert.equal(answer.code, 'AGENT_ERR_POLICY_CAPACITY');
      assert.match(answer.message!, new RegExp(`CiliumNetworkPolicy lim/${name}`));
    }
    assert.deepEqual(t.datapath.policyList().map((e) => JSON.stringify(e)).sort(), before, 'no map changed');
    assert.deepEqual((await apiCall<Array<{ name: string }>>(t.url, 'GET', '/v1/policies')).filter((p) => p.name.startsWith('too-')), [], 'nothing stored');
  });
});
