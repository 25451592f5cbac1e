import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Identity } from '../../common/schemas/identity.js';
import type { Workload } from '../../common/schemas/workload.js';
import { hostIfnameFor } from '../../agent/workload-specs.js';
import { apiCall, testAgentStart, type TestAgent } from '../helpers/agent.js';
import { links, netnsAdd, netnsDel, uniq } from '../helpers/sys.js';

/**
 * Policy map capacity on incremental changes (issue #12, item 7): a workload registered into a label
 * set whose policy entries no longer fit the policy map is refused with 422 naming the map and the
 * limit, before the kernel is touched, and leaves nothing behind (no device, no address lease, no
 * identity reference, no map entry); a relabel into such a label set is refused the same way and the
 * workload keeps its labels, and namespace labels that would give its workloads such identities are
 * refused and kept as they were. A write the kernel still refuses (a map filled behind the agent) answers
 * AGENT_ERR_MAP_FULL naming the map and what to do. The agent runs with a policy map of 1,000 entries.
 */
describe('policy map capacity on registration and relabel (root)', { timeout: 300_000 }, () => {
  const id = uniq();
  const NS = 'capreg';
  const CAPACITY = 1000;
  const netnsNames = Array.from({ length: 7 }, (_, i) => `kitnet-capreg-${i}-${id}`);
  let t: TestAgent;

  // Workloads labelled app=big hold 3 world identities x 100 ports + 2 entries each.
  const POLICY = {
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'big', namespace: NS },
    spec: {
      endpointSelector: { matchLabels: { app: 'big' } },
      ingress: [{ fromEntities: ['world'], toPorts: [{ ports: Array.from({ length: 100 }, (_, i) => ({ port: String(2000 + i), protocol: 'TCP' })) }] }],
    },
  };

  const register = async (i: number, app: string) => {
    const res = await fetch(`${t.url}/v1/workloads`, {
      method: 'POST',
      body: JSON.stringify({ name: `w${i}`, namespace: NS, labels: { app }, netns: `/var/run/netns/${netnsNames[i]}` }),
      headers: { 'content-type': 'application/json' },
    });
    return { status: res.status, body: (await res.json()) as Workload & { code?: string; message?: string } };
  };
  const state = async () => ({
    workloads: (await apiCall<Workload[]>(t.url, 'GET', '/v1/workloads')).map((w) => `${w.name} ${w.identity} ${w.ipv4} ${w.ipv6}`).sort(),
    identities: (await apiCall<Identity[]>(t.url, 'GET', '/v1/identities')).filter((x) => !x.reserved).map((x) => `${x.id} ${x.references}`).sort(),
    policy: t.datapath.policyList().map((e) => JSON.stringify(e)).sort(),
    ipcache: t.datapath.ipcacheList().map((e) => JSON.stringify(e)).sort(),
    endpoints: t.datapath.endpointList().length,
  });
  /** Nothing of workload i in the kernel: no host-side device, no interface in its namespace but lo. */
  const noDevice = async (i: number) => {
    assert.ok(!(await links()).some((l) => l.ifname === hostIfnameFor(NS, `w${i}`)), 'no host-side device');
    assert.deepEqual((await links(netnsNames[i])).map((l) => l.ifname), ['lo'], 'nothing moved into its namespace');
  };

  before(async () => {
    for (const n of netnsNames) await netnsAdd(n);
    t = await testAgentStart(`capreg-${id}`, { ipam: { ipv4Pool: '10.239.0.0/24', ipv6Pool: 'fd00:239::/64' } }, { mapSizes: { policy: CAPACITY } });
    await apiCall(t.url, 'PUT', '/v1/policies', POLICY);
  });
  after(async () => {
    await t?.stop();
    for (const n of netnsNames) await netnsDel(n);
  });

  test('a registration whose entries do not fit is refused with 422 before the kernel is touched, leaving nothing behind', async () => {
    assert.equal(t.datapath.mapCapacity().policy, CAPACITY);
    const first = await register(0, 'big');
    assert.equal(first.status, 201, JSON.stringify(first.body));
    const perEndpoint = t.datapath.policyList(first.body.endpointId).length;
    assert.ok(perEndpoint > 300, `${perEndpoint} entries per app=big endpoint`);
    let i = 1;
    while (t.datapath.policyList().length + perEndpoint <= CAPACITY) {
      const r = await register(i++, 'big');
      assert.equal(r.status, 201, JSON.stringify(r.body));
    }
    const before = await state();
    const res = await register(i, 'big');
    assert.equal(res.status, 422, JSON.stringify(res.body));
    assert.equal(res.body.code, 'AGENT_ERR_POLICY_CAPACITY');
    assert.match(res.body.message!, new RegExp(`workload ${NS}/w${i} would add ${perEndpoint} policy map entries`));
    assert.match(res.body.message!, new RegExp(`limit: policy max_entries ${CAPACITY}`), 'names the map and the limit');
    assert.deepEqual(await state(), before, 'no workload, lease, identity reference or map entry left');
    await noDevice(i);
    // a workload that adds only its two allow-all entries still fits, and takes the next address
    const small = await register(i + 1, 'small');
    assert.equal(small.status, 201, JSON.stringify(small.body));
  });

  test('a relabel into a label set that does not fit is refused with 422; the workload keeps its labels and identity', async () => {
    const small = (await apiCall<Workload[]>(t.url, 'GET', '/v1/workloads')).find((w) => w.labels.app === 'small')!;
    const before = await state();
    const res = await fetch(`${t.url}/v1/workloads/${NS}/${small.name}`, { method: 'PATCH', body: JSON.stringify({ labels: { app: 'big' } }), headers: { 'content-type': 'application/json' } });
    const body = (await res.json()) as { code?: string; message?: string };
    assert.equal(res.status, 422, JSON.stringify(body));
    assert.equal(body.code, 'AGENT_ERR_POLICY_CAPACITY');
    assert.match(body.message!, new RegExp(`limit: policy max_entries ${CAPACITY}`));
    const now = await apiCall<Workload>(t.url, 'GET', `/v1/workloads/${NS}/${small.name}`);
    assert.deepEqual(now.labels, { app: 'small' });
    assert.equal(now.identity, small.identity);
    assert.deepEqual(await state(), before, 'store, identities and maps as before');
  });

  test('namespace labels whose identities do not fit are refused with 422; labels, identities and maps stay as they were', async () => {
    // Selects every workload of a namespace labelled size=huge: 100 ports from world each.
    const HUGE = {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumClusterwideNetworkPolicy',
      metadata: { name: 'huge-namespaces' },
      spec: {
        endpointSelector: { matchLabels: { 'io.cilium.k8s.namespace.labels.size': 'huge' } },
        ingress: [{ fromEntities: ['world'], toPorts: [{ ports: Array.from({ length: 100 }, (_, i) => ({ port: String(3000 + i), protocol: 'TCP' })) }] }],
      },
    };
    await apiCall(t.url, 'PUT', '/v1/policies', HUGE);
    try {
      const before = await state();
      const labelsBefore = (await apiCall<Array<{ name: string; labels: Record<string, string> }>>(t.url, 'GET', '/v1/namespaces')).find((n) => n.name === NS)?.labels ?? {};
      const res = await fetch(`${t.url}/v1/namespaces/${NS}`, { method: 'PUT', body: JSON.stringify({ labels: { size: 'huge' } }), headers: { 'content-type': 'application/json' } });
      const body = (await res.json()) as { code?: string; message?: string };
      assert.equal(res.status, 422, JSON.stringify(body));
      assert.equal(body.code, 'AGENT_ERR_POLICY_CAPACITY');
      assert.match(body.message!, new RegExp(`limit: policy max_entries ${CAPACITY}`));
      const labelsAfter = (await apiCall<Array<{ name: string; labels: Record<string, string> }>>(t.url, 'GET', '/v1/namespaces')).find((n) => n.name === NS)?.labels ?? {};
      assert.deepEqual(labelsAfter, labelsBefore, 'the namespace keeps its labels');
      assert.deepEqual(await state(), before, 'workload identities, identity references and maps as before');
    } finally {
      await apiCall(t.url, 'DELETE', '/v1/policies/CiliumClusterwideNetworkPolicy/-/huge-namespaces');
    }
  });

  test('a map write the kernel still refuses (filled behind the agent) answers AGENT_ERR_MAP_FULL naming the map; nothing is left', async () => {
    const FOREIGN = 4000;
    const free = CAPACITY - t.datapath.policyList().length;
    try {
      t.datapath.policyApply(FOREIGN, Array.from({ length: free }, (_, port) => ({ op: 'upsert' as const, entry: { direction: 'ingress' as const, identity: 100_000, protocol: 6, port, portPrefixLen: 16, deny: false } })));
      const before = await state();
      const n = netnsNames.length - 1;
      const res = await register(n, 'other');
      assert.equal(res.status, 507, JSON.stringify(res.body));
      assert.equal(res.body.code, 'AGENT_ERR_MAP_FULL');
      assert.match(res.body.message!, /ENOSPC/);
      assert.match(res.body.message!, new RegExp(`the \`policy\` map is full \\(max_entries ${CAPACITY}\\).*POLICY_MAP_MAX`), 'names the map and what to do');
      assert.deepEqual(await state(), before, 'nothing left');
      await noDevice(n);
    } finally {
      t.datapath.policyClear(FOREIGN);
    }
  });
});
