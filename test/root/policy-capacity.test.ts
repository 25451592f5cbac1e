import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Status } from '../../common/schemas/status.js';
import type { Workload } from '../../common/schemas/workload.js';
import { apiCall, testAgentStart, type TestAgent } from '../helpers/agent.js';
import { promParse, promValue } from '../helpers/prom.js';
import { netnsAdd, netnsDel, uniq } from '../helpers/sys.js';

/**
 * Policies that are small as text but expand beyond a BPF map (issue #12, item 7): many ports x many
 * CIDRs for the policy map, more CIDRs than the ipcache holds. Each is refused with 422 naming the
 * limit and the policy, before the store or a map changes; the other endpoints still update and a
 * delete converges. The fill that status and /metrics report matches the maps' real contents.
 */
describe('policy map capacity (root)', { timeout: 300_000 }, () => {
  const id = uniq();
  const nsNames = [`kitnet-cap-a-${id}`, `kitnet-cap-b-${id}`];
  const NS = 'capacity';
  let t: TestAgent;
  let b: Workload;

  const BASE = {
    apiVersion: 'networking.k8s.io/v1',
    kind: 'NetworkPolicy',
    metadata: { name: 'base', namespace: NS },
    spec: { podSelector: { matchLabels: { app: 'b' } }, policyTypes: ['Ingress'], ingress: [{ from: [{ podSelector: { matchLabels: { app: 'a' } } }], ports: [{ port: 80 }] }] },
  };
  const cidrs = (n: number, second = 0) => Array.from({ length: n }, (_, i) => `10.${100 + second + (i >> 16)}.${(i >> 8) & 255}.${i & 255}/32`);
  const cnp = (name: string, cidrList: string[], ports: number) => ({
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name, namespace: NS },
    spec: {
      endpointSelector: { matchLabels: { app: 'a' } },
      egress: [{ toCIDR: cidrList, ...(ports > 0 ? { toPorts: [{ ports: Array.from({ length: ports }, (_, i) => ({ port: String(1000 + i), protocol: 'TCP' })) }] } : {}) }],
    },
  });

  const put = async (doc: unknown) => {
    const res = await fetch(`${t.url}/v1/policies`, { method: 'PUT', body: JSON.stringify(doc), headers: { 'content-type': 'application/json' } });
    return { status: res.status, body: (await res.json()) as { code?: string; message?: string } };
  };
  const mapsNow = () => ({
    policy: t.datapath.policyList().map((e) => JSON.stringify(e)).sort(),
    ipcache: t.datapath.ipcacheList().map((e) => JSON.stringify(e)).sort(),
  });

  before(async () => {
    for (const n of nsNames) await netnsAdd(n);
    t = await testAgentStart(`cap-${id}`, { ipam: { ipv4Pool: '10.237.0.0/24', ipv6Pool: 'fd00:237::/64' } });
    await apiCall<Workload>(t.url, 'POST', '/v1/workloads', { name: 'cap-a', namespace: NS, labels: { app: 'a' }, netns: `/var/run/netns/${nsNames[0]}` });
    b = await apiCall<Workload>(t.url, 'POST', '/v1/workloads', { name: 'cap-b', namespace: NS, labels: { app: 'b' }, netns: `/var/run/netns/${nsNames[1]}` });
    await apiCall(t.url, 'PUT', '/v1/policies', BASE);
  });

  after(async () => {
    await t?.stop();
    for (const n of nsNames) await netnsDel(n);
  });

  const refused = async (doc: { metadata: { name: string } }, limit: RegExp) => {
    const before = mapsNow();
    const policiesBefore = await apiCall<unknown[]>(t.url, 'GET', '/v1/policies');
    const started = performance.now();
    const res = await put(doc);
    const seconds = (performance.now() - started) / 1000;
    assert.equal(res.status, 422, JSON.stringify(res.body).slice(0, 500));
    assert.equal(res.body.code, 'AGENT_ERR_POLICY_CAPACITY');
    assert.match(res.body.message!, new RegExp(`CiliumNetworkPolicy ${NS}/${doc.metadata.name}`), 'names the policy');
    assert.match(res.body.message!, limit, 'names the limit');
    // Refused while compiling, not after filling the map (which took 29-39 s).
    assert.ok(seconds < 15, `refused after ${seconds.toFixed(1)} s`);
    assert.deepEqual(await apiCall<unknown[]>(t.url, 'GET', '/v1/policies'), policiesBefore, 'nothing stored');
    assert.deepEqual(mapsNow(), before, 'no map changed');
  };

  test('a policy that expands beyond the policy map is refused with 422 before the store or the maps change', async () => {
    const capacity = t.datapath.mapCapacity().policy;
    // 1000 CIDRs x 1100 ports: about 50 KB of JSON, 1.1 M entries for endpoint a.
    const doc = cnp('many-ports', cidrs(1000), Math.ceil((capacity * 1.05) / 1000));
    assert.ok(JSON.stringify(doc).length < 64 * 1024);
    await refused(doc, new RegExp(`policy max_entries ${capacity}`));
  });

  test('a policy with more CIDRs than the ipcache holds is refused with 422', async () => {
    const capacity = t.datapath.mapCapacity().ipcache;
    await refused(cnp('many-cidrs', cidrs(capacity + 5000), 0), new RegExp(`ipcache max_entries ${capacity}`));
  });

  test('after the refusals other endpoints still update, a policy that fits applies, and a delete converges', async () => {
    const fits = cnp('fits', cidrs(200, 50), 3);
    const res = await put(fits);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const onA = (await apiCall<{ entries: unknown[] }>(t.url, 'GET', `/v1/workloads/${NS}/cap-a/policy`)).entries.length;
    assert.ok(onA >= 600, `a has ${onA} entries`);
    // Workload b changes identity: its entries and those of rules selecting it are rewritten.
    const patched = await apiCall<Workload>(t.url, 'PATCH', `/v1/workloads/${NS}/cap-b`, { labels: { app: 'b', tier: 'x' } });
    assert.notEqual(patched.identity, b.identity);
    await apiCall(t.url, 'DELETE', `/v1/policies/CiliumNetworkPolicy/${NS}/fits`);
    await apiCall(t.url, 'DELETE', `/v1/policies/NetworkPolicy/${NS}/base`);
    assert.deepEqual(await apiCall<unknown[]>(t.url, 'GET', '/v1/policies'), []);
    // No policy left: each endpoint holds exactly its two allow-all entries, and no CIDR is in the ipcache.
    const entries = t.datapath.policyList();
    assert.equal(entries.length, 2 * 2, JSON.stringify(entries.slice(0, 8)));
    assert.ok(!t.datapath.ipcacheList().some(([cidr]) => cidr.startsWith('10.150.')), 'the CIDRs left the ipcache');
  });

  test('status and /metrics report each map\'s fill as the kernel holds it', async () => {
    await put(cnp('fill', cidrs(30, 60), 2));
    const status = await apiCall<Status>(t.url, 'GET', '/v1/status');
    const metrics = promParse(await (await fetch(`${t.url}/metrics`)).text());
    const real: Record<string, number> = {
      endpoints: t.datapath.endpointList().length,
      ipcache: t.datapath.ipcacheList().length,
      policy: t.datapath.policyList().length,
      conntrack: t.datapath.conntrackList().length,
    };
    const capacity = t.datapath.mapCapacity();
    for (const name of ['endpoints', 'ipcache', 'ipcache_exact', 'policy', 'policy_exact', 'policy_wild', 'conntrack'] as const) {
      const m = status.maps.find((x) => x.map === name);
      assert.ok(m, `status reports ${name}`);
      assert.equal(m.capacity, capacity[name]);
      if (real[name] !== undefined) assert.equal(m.entries, real[name], `${name} entries`);
      assert.equal(promValue(metrics, 'kitnet_bpf_map_entries', { map: name }), m.entries, `metric entries ${name}`);
      assert.equal(promValue(metrics, 'kitnet_bpf_map_capacity', { map: name }), capacity[name], `metric capacity ${name}`);
    }
    assert.ok(real.policy! > 60, 'the policy wrote entries');
  });

  test('a kernel write that fails anyway (map filled behind the agent) leaves store and maps as they were', async () => {
    const FOREIGN = 4000;
    // Below, the map holds ~1 M entries: each dump of it takes a fraction of a second (batch lookups) and
    // its decoding more, so it is dumped as few times as the checks need, and only the agent's entries
    // (not the foreign fill) become JSON.
    const ours = (policy = t.datapath.policyList()) => ({
      policy: policy.filter((e) => e.endpointId !== FOREIGN).map((e) => JSON.stringify(e)).sort(),
      ipcache: t.datapath.ipcacheList().map((e) => JSON.stringify(e)).sort(),
    });
    /** The foreign fill: `count` ingress entries, 65536 per identity; deleted the same way (no dump needed). */
    const fill = (op: 'upsert' | 'delete', count: number) => {
      for (let done = 0, id = 0; done < count; id++) {
        const n = Math.min(65536, count - done);
        t.datapath.policyApply(FOREIGN, Array.from({ length: n }, (_, port) => ({ op, entry: { direction: 'ingress' as const, identity: 100_000 + id, protocol: 6, port, portPrefixLen: 16, deny: false } })));
        done += n;
      }
    };
    /** The entries that fill the map exactly: `count` egress ones. */
    const top = (op: 'upsert' | 'delete', count: number) =>
      t.datapath.policyApply(FOREIGN, Array.from({ length: count }, (_, port) => ({ op, entry: { direction: 'egress' as const, identity: 100_000, protocol: 17, port, portPrefixLen: 16, deny: false } })));
    const before = ours();
    const policiesBefore = await apiCall<unknown[]>(t.url, 'GET', '/v1/policies');
    // Leave 5 free entries: the compile (which counts against the whole map) accepts, the kernel refuses.
    const free = t.datapath.mapCapacity().policy - t.datapath.policyList().length - 5;
    let room = 0;
    try {
      fill('upsert', free);
      const res = await put(cnp('overflow', cidrs(20, 70), 3));
      assert.equal(res.status, 507, JSON.stringify(res.body));
      assert.deepEqual(await apiCall<unknown[]>(t.url, 'GET', '/v1/policies'), policiesBefore, 'the store rolled back');
      const all = t.datapath.policyList();
      assert.deepEqual(ours(all), before, 'the maps went back to the previous policies');
      assert.equal(res.body.code, 'AGENT_ERR_MAP_FULL');
      assert.match(res.body.message!, /CiliumNetworkPolicy capacity\/overflow.*ENOSPC.*the `policy` map is full \(max_entries \d+\).*POLICY_MAP_MAX.*keep the previous policies/);
      // The map exactly full: deleting a policy still converges (what it frees is freed first).
      room = t.datapath.mapCapacity().policy - all.length;
      top('upsert', room);
      assert.equal(t.datapath.policyList().length, t.datapath.mapCapacity().policy, 'the map is full');
      await apiCall(t.url, 'DELETE', `/v1/policies/CiliumNetworkPolicy/${NS}/fill`);
      const a = await apiCall<Workload>(t.url, 'GET', `/v1/workloads/${NS}/cap-a`);
      const inMap = t.datapath.policyList(a.endpointId).length;
      assert.equal(inMap, (await apiCall<{ entries: unknown[] }>(t.url, 'GET', `/v1/workloads/${NS}/cap-a/policy`)).entries.length);
      assert.ok(inMap <= 3, `a keeps ${inMap} entries once no policy selects it`);
    } finally {
      fill('delete', free);
      top('delete', room);
    }
    assert.deepEqual(t.datapath.policyList(FOREIGN), [], 'the foreign entries are gone');
    // With room again the same policy applies.
    assert.equal((await put(cnp('overflow', cidrs(20, 70), 3))).status, 200);
  });
});
