import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { KitnetError } from '../../common/errors.js';
import type { AgentApi } from '../../api/agent-api.js';
import type { WorkloadCreate } from '../../common/schemas/workload.js';
import { serverBuild } from '../../api/server.js';

/** Records what reached the agent: a rejected request must never get there. */
function agentStub() {
  const calls: WorkloadCreate[] = [];
  const applied: unknown[] = [];
  const agent: AgentApi = {
    workloadRegister: async (input) => {
      calls.push(input);
      throw new KitnetError('AGENT_ERR_WORKLOAD_EXISTS', 'stub');
    },
    workloadList: () => [],
    workloadGet: (ns, name) => {
      throw new KitnetError('AGENT_ERR_WORKLOAD_NOT_FOUND', `workload ${ns}/${name} is not registered`);
    },
    workloadRemove: async () => {
      throw new KitnetError('AGENT_ERR_WORKLOAD_NOT_FOUND', 'stub');
    },
    identityList: () => [],
    status: async () => {
      throw new Error('unused');
    },
    clusterStatus: async () => ({ mode: 'off', message: 'cluster mode off' }),
    flowsSnapshot: () => ({ read: () => [] }),
    flowsFollow: () => () => undefined,
    flowsLost: (n) => ({ lost_events: { num_events_lost: n }, node_name: 'x', time: '' }),
    workloadLabelsSet: async () => {
      throw new KitnetError('AGENT_ERR_WORKLOAD_NOT_FOUND', 'stub');
    },
    workloadPolicy: () => {
      throw new KitnetError('AGENT_ERR_WORKLOAD_NOT_FOUND', 'stub');
    },
    namespaceList: () => [],
    namespacePut: async (name, labels) => ({ name, labels, createdAt: '', updatedAt: '' }),
    policyList: () => [],
    policiesApply: async (body) => {
      applied.push(body);
      throw new KitnetError('AGENT_ERR_POLICY_INVALID', 'stub');
    },
    policyDelete: async () => {
      throw new KitnetError('AGENT_ERR_POLICY_NOT_FOUND', 'stub');
    },
    policyTrace: () => ({ verdict: 'ALLOWED', text: '', result: {} }),
  };
  return { agent, calls, applied };
}

describe('API request validation', () => {
  let app: FastifyInstance;
  const stub = agentStub();
  before(async () => {
    app = await serverBuild({ agent: stub.agent, logger: false, version: 'test' });
  });
  after(() => app.close());

  const valid = { name: 'web', namespace: 'default', labels: { app: 'web' }, kind: 'netns', netns: '/var/run/netns/web' };
  const manyLabels = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k8s:example.com/key-${i}`, `value-${i}`]));
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['missing name', { ...valid, name: undefined }, /name/],
    ['upper-case name', { ...valid, name: 'Web' }, /name.*DNS-1123/],
    ['name too long', { ...valid, name: 'a'.repeat(64) }, /name.*63/],
    ['bad namespace', { ...valid, namespace: 'a_b' }, /namespace/],
    ['relative netns path', { ...valid, netns: 'netns/web' }, /netns.*absolute/],
    ['missing netns', { ...valid, netns: undefined }, /netns/],
    ['bad ipv4', { ...valid, ipv4: '10.200.0.300' }, /ipv4/],
    ['ipv4 with prefix', { ...valid, ipv4: '10.200.0.3/16' }, /ipv4/],
    ['ipv6 given as v4', { ...valid, ipv6: '10.200.0.3' }, /ipv6/],
    ['unknown mode', { ...valid, mode: 'macvlan' }, /mode/],
    ['unknown kind', { ...valid, kind: 'pod' }, /kind/],
    ['bad label key', { ...valid, labels: { 'bad key': 'x' } }, /label key/],
    ['bad label value', { ...valid, labels: { app: 'a b' } }, /label value/],
    ['interface name too long', { ...valid, interface: 'a'.repeat(16) }, /interface/],
    ['unknown field', { ...valid, colour: 'blue' }, /colour|unrecognized/i],
    // names the kernel refuses (dev_valid_name) are a 400, not a 500 from RTM_NEWLINK
    ['interface "."', { ...valid, interface: '.' }, /interface.*"\." or "\.\."/],
    ['interface ".."', { ...valid, interface: '..' }, /interface.*"\." or "\.\."/],
    ['interface with "/"', { ...valid, interface: 'a/b' }, /interface/],
    ['interface with a space', { ...valid, interface: 'a b' }, /interface/],
    ['empty interface', { ...valid, interface: '' }, /interface/],
    ['tap device ".."', { ...valid, kind: 'tap', netns: undefined, mac: '52:54:00:00:00:01', device: '..' }, /device.*"\." or "\.\."/],
    ['netns path climbing out with ".."', { ...valid, netns: '/var/run/netns/../../../proc/1/ns/net' }, /netns.*plain absolute path/],
    ['netns path with "//"', { ...valid, netns: '/var/run/netns//web' }, /netns.*plain absolute path/],
    ['netns path with a trailing "/"', { ...valid, netns: '/var/run/netns/web/' }, /netns.*plain absolute path/],
    // labels kitnet derives itself: a workload carrying them would forge another namespace's identity
    ['a namespace label as a workload label', { ...valid, labels: { 'io.cilium.k8s.namespace.labels.team': 'prod' } }, /labels.*io\.cilium\.k8s\.namespace\.labels\.team.*kitnet's/],
    ['a namespace label with the k8s: source', { ...valid, labels: { 'k8s:io.cilium.k8s.namespace.labels.team': 'prod' } }, /k8s:io\.cilium\.k8s\.namespace\.labels\.team/],
    ['the namespace name label', { ...valid, labels: { 'io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name': 'prod' } }, /kubernetes\.io\/metadata\.name/],
    ['the pod namespace label', { ...valid, labels: { 'io.kubernetes.pod.namespace': 'prod' } }, /io\.kubernetes\.pod\.namespace.*derives/],
    ['the pod namespace label with the k8s: source', { ...valid, labels: { 'k8s:io.kubernetes.pod.namespace': 'prod' } }, /k8s:io\.kubernetes\.pod\.namespace/],
    ['a policy metadata label', { ...valid, labels: { 'io.cilium.k8s.policy.serviceaccount': 'admin' } }, /io\.cilium\.k8s\.policy\.serviceaccount/],
    ['a policy metadata label with the container: source', { ...valid, labels: { 'container:io.cilium.k8s.policy.cluster': 'c1' } }, /container:io\.cilium\.k8s\.policy\.cluster/],
    ['a reserved: label', { ...valid, labels: { 'reserved:host': '' } }, /reserved:host.*reserved: source/],
    ['a reserved: label with a value', { ...valid, labels: { 'reserved:world': 'x' } }, /reserved:world/],
    ['a cidr: label', { ...valid, labels: { 'cidr:10.0.0.0/8': '' } }, /cidr:10\.0\.0\.0\/8/],
    ['an fqdn: label', { ...valid, labels: { 'fqdn:example.com': '' } }, /fqdn:example\.com/],
    // every label goes into the identity's kvstore key and into each flow of the workload
    ['65 labels', { ...valid, labels: manyLabels(65) }, /labels.*at most 64 labels \(got 65\)/],
    ['8,000 labels (a 1 MiB body)', { ...valid, labels: manyLabels(8000) }, /labels.*at most 64 labels \(got 8000\)/],
  ];
  for (const [what, body, re] of cases) {
    test(`rejects ${what} with 400 naming the field`, async () => {
      const res = await app.inject({ method: 'POST', url: '/v1/workloads', payload: body });
      assert.equal(res.statusCode, 400, res.body);
      const err = res.json() as { code: string; message: string };
      assert.equal(err.code, 'AGENT_ERR_API_VALIDATION');
      assert.match(err.message, re);
    });
  }
  test('rejected requests never reach the agent', () => assert.equal(stub.calls.length, 0));

  test('labels kitnet does not derive itself stay allowed, with or without a source', async () => {
    const labels = { app: 'web', 'k8s:tier': 'front', 'container:io.cilium.k8s.other': 'x', 'team.example.com/io.kubernetes.pod.namespace': 'y', 'io.cilium.k8s.policyx': 'z' };
    const res = await app.inject({ method: 'POST', url: '/v1/workloads', payload: { ...valid, name: 'fine', labels } });
    assert.equal(res.statusCode, 409, res.body); // the stub's answer: validation passed
    assert.deepEqual(stub.calls.pop()?.labels, labels);
  });

  test('64 labels are taken; 65 are refused when relabelling and for a namespace too', async () => {
    const ok = await app.inject({ method: 'POST', url: '/v1/workloads', payload: { ...valid, name: 'many', labels: manyLabels(64) } });
    assert.notEqual(ok.statusCode, 400, ok.body);
    assert.equal(Object.keys(stub.calls.pop()?.labels ?? {}).length, 64);
    const patch = await app.inject({ method: 'PATCH', url: '/v1/workloads/default/web', payload: { labels: manyLabels(65) } });
    assert.equal(patch.statusCode, 400, patch.body);
    assert.match(patch.json().message, /at most 64 labels/);
    const ns = await app.inject({ method: 'PUT', url: '/v1/namespaces/prod', payload: { labels: manyLabels(65) } });
    assert.equal(ns.statusCode, 400, ns.body);
    assert.match(ns.json().message, /labels.*at most 64 labels/);
  });

  test('relabelling refuses the derived labels too (PATCH), namespace labels may use any key', async () => {
    const r1 = await app.inject({ method: 'PATCH', url: '/v1/workloads/default/web', payload: { labels: { 'io.cilium.k8s.namespace.labels.team': 'prod' } } });
    assert.equal(r1.statusCode, 400, r1.body);
    assert.match(r1.json().message, /io\.cilium\.k8s\.namespace\.labels\.team/);
    const r2 = await app.inject({ method: 'PATCH', url: '/v1/workloads/default/web', payload: { labels: { 'reserved:host': '' } } });
    assert.equal(r2.statusCode, 400, r2.body);
    const r3 = await app.inject({ method: 'PUT', url: '/v1/namespaces/prod', payload: { labels: { team: 'prod' } } });
    assert.equal(r3.statusCode, 200, r3.body);
  });

  test('a valid body reaches the agent with defaults applied', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/workloads', payload: { name: 'web', netns: '/var/run/netns/web' } });
    assert.equal(res.statusCode, 409);
    assert.deepEqual(stub.calls.at(-1), { name: 'web', namespace: 'default', labels: {}, kind: 'netns', netns: '/var/run/netns/web', mode: 'auto' });
  });

  test('invalid JSON is a 400', async () => {
    const res = await app.inject({ method: 'POST', url: '/v1/workloads', payload: '{"name":', headers: { 'content-type': 'application/json' } });
    assert.equal(res.statusCode, 400);
  });

  test('agent errors keep their code and status', async () => {
    const res = await app.inject({ method: 'GET', url: '/v1/workloads/prod/db' });
    assert.equal(res.statusCode, 404);
    assert.equal(res.json().code, 'AGENT_ERR_WORKLOAD_NOT_FOUND');
  });

  test('unknown routes are 404 with a code', async () => {
    const res = await app.inject({ method: 'GET', url: '/v2/nothing' });
    assert.equal(res.statusCode, 404);
    assert.equal(res.json().code, 'AGENT_ERR_API_NOT_FOUND');
  });

  test('flows last must be a positive integer', async () => {
    assert.equal((await app.inject({ method: 'GET', url: '/v1/flows?last=0' })).statusCode, 400);
    assert.equal((await app.inject({ method: 'GET', url: '/v1/flows?last=abc' })).statusCode, 400);
    assert.equal((await app.inject({ method: 'GET', url: '/v1/flows?last=5' })).statusCode, 200);
  });

  test('policy bodies reach the agent as YAML text or parsed JSON', async () => {
    const yaml = 'kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\n';
    await app.inject({ method: 'PUT', url: '/v1/policies', payload: yaml, headers: { 'content-type': 'application/yaml' } });
    await app.inject({ method: 'PUT', url: '/v1/policies', payload: { kind: 'NetworkPolicy' } });
    assert.deepEqual(stub.applied, [yaml, { kind: 'NetworkPolicy' }]);
  });

  test('workload ports and trace requests are validated', async () => {
    const dupPorts = { ...valid, ports: [{ name: 'http', port: 80 }, { name: 'http', port: 81 }] };
    const r1 = await app.inject({ method: 'POST', url: '/v1/workloads', payload: dupPorts });
    assert.equal(r1.statusCode, 400);
    assert.match(r1.json().message, /ports.*used twice/);
    const r2 = await app.inject({ method: 'POST', url: '/v1/policy/trace', payload: { from: { workload: 'a' }, to: { ip: '10.0.0.999' }, port: 80 } });
    assert.equal(r2.statusCode, 400);
    const r3 = await app.inject({ method: 'POST', url: '/v1/policy/trace', payload: { from: { workload: 'a' }, to: { ip: '10.0.0.9' }, port: 80 } });
    assert.equal(r3.statusCode, 200);
  });

  test('trace requests to a name: port optional only there, resolver only there, hostile values named', async () => {
    const trace = (payload: unknown) => app.inject({ method: 'POST', url: '/v1/policy/trace', payload: payload as Record<string, unknown> });
    assert.equal((await trace({ from: { workload: 'a' }, to: { fqdn: 'api.example.com' } })).statusCode, 200);
    assert.equal((await trace({ from: { workload: 'a' }, to: { fqdn: 'api.example.com' }, port: 443, resolver: '10.0.0.53' })).statusCode, 200);
    const noPort = await trace({ from: { workload: 'a' }, to: { ip: '10.0.0.9' } });
    assert.deepEqual([noPort.statusCode, noPort.json().field], [400, 'port']);
    const resolver = await trace({ from: { workload: 'a' }, to: { ip: '10.0.0.9' }, port: 80, resolver: '10.0.0.53' });
    assert.deepEqual([resolver.statusCode, resolver.json().field], [400, 'resolver']);
    const badResolver = await trace({ from: { workload: 'a' }, to: { fqdn: 'api.example.com' }, resolver: 'dns.example.com' });
    assert.deepEqual([badResolver.statusCode, badResolver.json().field], [400, 'resolver']);
    for (const fqdn of [42, null, '', 'x'.repeat(301), ['a'], { a: 1 }]) {
      assert.equal((await trace({ from: { workload: 'a' }, to: { fqdn } })).statusCode, 400, JSON.stringify(fqdn));
    }
    assert.equal((await trace({ from: { fqdn: 'api.example.com' }, to: { workload: 'b' }, port: 80 })).statusCode, 400, 'a name is only a destination');
    assert.equal((await trace({ from: { workload: 'a' }, to: { fqdn: 'api.example.com', ip: '10.0.0.1' } })).statusCode, 400);
  });

  test('OpenAPI document is served at /docs/json', async () => {
    const res = await app.inject({ method: 'GET', url: '/docs/json' });
    assert.equal(res.statusCode, 200);
    const doc = res.json() as { openapi: string; paths: Record<string, unknown> };
    assert.match(doc.openapi, /^3\./);
    for (const p of ['/v1/workloads', '/v1/workloads/{namespace}/{name}', '/v1/identities', '/v1/status', '/v1/cluster', '/v1/flows', '/healthz']) {
      assert.ok(doc.paths[p], `missing ${p}`);
    }
  });
});
