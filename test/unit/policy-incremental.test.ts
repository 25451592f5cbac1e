// Property tests for the incremental policy compiler (agent/policy/incremental.ts) and the engine's
// incremental path (PolicyEngine.endpointsUpdate): random sequences of workload registrations,
// relabels and removals must give exactly what a full recompile gives, entry for entry (and, for
// the engine, key for key in the policy map). Seeds are fixed so a failure reproduces; set
// KITNET_PROPERTY_SEEDS=N for more rounds.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import pino from 'pino';
import { IdentityAllocator } from '../../agent/identity/allocator.js';
import { identityLabels, labelFormat, labelSetKey } from '../../common/labels.js';
import { reservedIdentityLabels } from '../../agent/identity/reserved.js';
import type { KernelOps } from '../../agent/kernel-ops.js';
import { PolicyEngine } from '../../agent/policy/engine.js';
import { PolicyState } from '../../agent/policy/incremental.js';
import { policiesParse, policyCompile, policyKeyEncode } from '../../agent/policy/index.js';
import type { CompiledPolicy, EndpointPolicy, NamedPort, ParsedPolicy, PolicyEntry } from '../../agent/policy/index.js';
import { sqliteStoreOpen } from '../../agent/store/index.js';
import type { WorkloadRecord } from '../../agent/store/types.js';

const DOCS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-peer, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client, io.cilium.k8s.policy.cluster: cilium1}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-in, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEndpoints: [{matchExpressions: [{key: tier, operator: NotIn, values: [x]}]}]
    toPorts: [{ports: [{port: http, protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-out, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: http, protocol: TCP}]}]
  - toEndpoints: [{}]
    toPorts: [{ports: [{port: metrics, protocol: ANY}]}]
  - toEntities: [all]
    toPorts: [{ports: [{port: dns, protocol: UDP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: apps}
spec:
  endpointSelector: {matchExpressions: [{key: app, operator: Exists}]}
  ingressDeny: [{fromEntities: [world]}]
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: ns2}
spec:
  podSelector: {matchLabels: {tier: y}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: blue}}}, {podSelector: {}}]
    ports: [{port: 443}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}, {ipBlock: {cidr: "fd00::/64"}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np-blocks, namespace: ns1}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/15, except: [10.0.0.0/24]}}, {ipBlock: {cidr: "fd00::/15", except: ["fd01::/16"]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-db, namespace: ns2}
spec:
  endpointSelector: {}
  enableDefaultDeny: {egress: false}
  egressDeny:
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: ns1, app: db}}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: red}}]
  - fromEntities: [host, remote-node]
  egress:
  - toEntities: [world]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  - toCIDR: [192.168.0.0/24]
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: http, protocol: ANY}]}]`.split('\n---\n');

const SEEDS = Number(process.env.KITNET_PROPERTY_SEEDS ?? 16);
const NAMESPACES: Record<string, Record<string, string>> = { ns1: { team: 'blue' }, ns2: { team: 'red' }, ns3: {} };
const PORTS: NamedPort[] = [
  { name: 'http', port: 8080, protocol: 'TCP' },
  { name: 'http', port: 9090, protocol: 'TCP' },
  { name: 'metrics', port: 9100, protocol: 'TCP' },
  { name: 'metrics', port: 9100, protocol: 'UDP' },
  { name: 'dns', port: 53, protocol: 'UDP' },
];

function rng(seed: number): (n: number) => number {
  let s = seed * 2654435761 + 1;
  return (n) => {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    return (s >> 4) % n;
  };
}

interface Model {
  labels: Record<string, string>;
  namespace: string;
  ports: NamedPort[];
  /** IPv4 and IPv6, some inside the NetworkPolicy ipBlocks above (so selections flip as workloads come and go). */
  addresses?: string[];
}

let addressSerial = 0;
function randomAddresses(rnd: (n: number) => number): string[] {
  const n = ++addressSerial;
  return [`${['10.0.0', '10.1.0'][rnd(2)]!}.${n % 250}`, `${['fd00::', 'fd01::'][rnd(2)]!}${n.toString(16)}`];
}

function randomWorkload(rnd: (n: number) => number): Model {
  const labels: Record<string, string> = {};
  const app = ['web', 'client', 'db', ''][rnd(4)]!;
  if (app) labels.app = app;
  const tier = ['x', 'y', ''][rnd(3)]!;
  if (tier) labels.tier = tier;
  // cluster mode: this cluster's (c1) or a peer's (cilium1) identity, as remote identities arrive
  const cluster = ['c1', 'cilium1', '', ''][rnd(4)]!;
  if (cluster) labels['io.cilium.k8s.policy.cluster'] = cluster;
  const ports = PORTS.filter(() => rnd(4) === 0);
  return { labels, namespace: Object.keys(NAMESPACES)[rnd(3)]!, ports, addresses: randomAddresses(rnd) };
}

function randomPolicies(rnd: (n: number) => number): ParsedPolicy[] {
  return DOCS.filter(() => rnd(5) < 3).flatMap((d) => policiesParse(d));
}

const view = (p: EndpointPolicy | undefined) =>
  p && { endpointId: p.endpointId, identity: p.identity, ingressEnforced: p.ingressEnforced, egressEnforced: p.egressEnforced, entries: p.entries };

/** Deep equality of two endpoint policies; compares text first (fast), asserts structurally on a difference. */
function samePolicy(got: EndpointPolicy | undefined, want: EndpointPolicy | undefined, message: string): void {
  if (JSON.stringify(view(got)) !== JSON.stringify(view(want))) assert.deepStrictEqual(view(got), view(want), message);
}

/** Identities as the agent's allocator hands them out: one per label set, released when unused. */
class Identities {
  private readonly byKey = new Map<string, { id: number; labels: string[]; refs: number }>();
  private next = 256;
  constructor(private readonly rnd: (n: number) => number) {}
  acquire(m: Model): { id: number; labels: string[]; fresh: boolean } {
    const labels = identityLabels(m.labels, m.namespace, NAMESPACES[m.namespace]);
    const key = labelSetKey(labels);
    let e = this.byKey.get(key);
    const fresh = !e;
    if (!e) {
      this.next += 1 + this.rnd(3);
      this.byKey.set(key, (e = { id: this.next, labels: labels.map(labelFormat), refs: 0 }));
    }
    e.refs++;
    return { id: e.id, labels: e.labels, fresh };
  }
  /** Returns true when the identity is gone. */
  release(id: number): boolean {
    for (const [k, e] of this.byKey) {
      if (e.id !== id) continue;
      if (--e.refs > 0) return false;
      this.byKey.delete(k);
      return true;
    }
    throw new Error(`identity ${id} unknown`);
  }
  all(): Map<number, string[]> {
    const m = new Map<number, string[]>();
    for (let id = 1; id <= 10; id++) m.set(id, reservedIdentityLabels(id));
    for (const e of this.byKey.values()) m.set(e.id, e.labels);
    return m;
  }
}

describe('incremental policy compiler (PolicyState) equals a full recompile', () => {
  for (let seed = 1; seed <= SEEDS; seed++) {
    test(`random add / relabel / remove sequence, seed ${seed}`, () => {
      const rnd = rng(seed);
      const policies = randomPolicies(rnd);
      const options = { allowLocalhost: rnd(4) !== 0, ...(rnd(2) ? { localCluster: 'c1' } : {}) };
      const ids = new Identities(rnd);
      const eps = new Map<number, Model & { identity: number }>();
      let nextEp = 1;
      // Sometimes start from endpoints that exist before the state is built (agent start).
      const initial: Array<{ endpointId: number; identity: number; namedPorts: NamedPort[]; addresses?: string[] }> = [];
      for (let i = rnd(4); i > 0; i--) {
        const m = randomWorkload(rnd);
        const { id } = ids.acquire(m);
        eps.set(nextEp, { ...m, identity: id });
        initial.push({ endpointId: nextEp++, identity: id, namedPorts: m.ports, addresses: m.addresses });
      }
      const state = new PolicyState({ policies, identities: ids.all(), endpoints: initial, options });
      let previous: CompiledPolicy | undefined;

      const full = () => {
        const named = new Map<number, NamedPort[]>();
        for (const e of eps.values()) named.set(e.identity, [...(named.get(e.identity) ?? []), ...e.ports]);
        return policyCompile({
          policies,
          identities: ids.all(),
          endpoints: [...eps].map(([endpointId, e]) => ({ endpointId, identity: e.identity, namedPorts: e.ports, addresses: e.addresses })),
          remoteNamedPorts: named,
          options,
        });
      };
      const check = (step: number, changed: Set<number>) => {
        const want = full();
        const previousById = new Map((previous?.endpoints ?? []).map((e) => [e.endpointId, e]));
        const got = state.compiled();
        assert.deepEqual(got.endpoints.map((e) => e.endpointId), [...eps.keys()].sort((a, b) => a - b), `step ${step}: endpoints`);
        for (const w of want.endpoints) {
          samePolicy(state.endpoint(w.endpointId), w, `seed ${seed} step ${step}: endpoint ${w.endpointId}`);
          const before = previousById.get(w.endpointId);
          if (!before || JSON.stringify(view(before)) !== JSON.stringify(view(w))) {
            assert.ok(changed.has(w.endpointId), `seed ${seed} step ${step}: endpoint ${w.endpointId} changed but was not reported`);
          }
        }
        for (const b of previous?.endpoints ?? []) {
          if (!eps.has(b.endpointId)) assert.ok(changed.has(b.endpointId), `step ${step}: removal of ${b.endpointId} not reported`);
        }
        previous = want;
      };
      check(0, new Set(initial.map((e) => e.endpointId)));

      let changed = new Set<number>();
      for (let step = 1; step <= 60; step++) {
        const op = eps.size === 0 ? 0 : rnd(8);
        if (op < 4) {
          const m = randomWorkload(rnd);
          const { id, labels } = ids.acquire(m);
          if (!state.hasIdentity(id)) state.identitySet(id, labels);
          eps.set(nextEp, { ...m, identity: id });
          state.endpointSet({ endpointId: nextEp++, identity: id, namedPorts: m.ports, addresses: m.addresses });
        } else {
          const keys = [...eps.keys()];
          const epId = keys[rnd(keys.length)]!;
          const old = eps.get(epId)!;
          if (op < 6) {
            // relabel (or move namespace / change named ports): new identity, the old may go
            // (or keep the label set and move to other addresses: the same identity, other ipBlock selections)
            const m = rnd(3) === 0 ? { ...randomWorkload(rnd), ports: old.ports } : rnd(4) === 0 ? { ...old, addresses: randomAddresses(rnd) } : randomWorkload(rnd);
            const { id, labels } = ids.acquire(m);
            if (!state.hasIdentity(id)) state.identitySet(id, labels);
            eps.set(epId, { ...m, identity: id });
            state.endpointSet({ endpointId: epId, identity: id, namedPorts: m.ports, addresses: m.addresses });
            if (ids.release(old.identity)) state.identitySet(old.identity, undefined);
          } else {
            eps.delete(epId);
            state.endpointRemove(epId);
            if (ids.release(old.identity)) state.identitySet(old.identity, undefined);
          }
        }
        // Flush after most steps, sometimes after a few (a batch of changes).
        if (rnd(3) !== 0 || step === 60) {
          for (const c of state.flush()) changed.add(c.endpointId);
          check(step, changed);
          changed = new Set();
        }
      }
    });
  }

  test('a registration whose identity exists compiles nothing new and touches no other endpoint', () => {
    const policies = DOCS.flatMap((d) => policiesParse(d));
    const ids = new Identities(rng(99));
    const m: Model = { labels: { app: 'web' }, namespace: 'ns1', ports: [] };
    const a = ids.acquire(m);
    const state = new PolicyState({ policies, identities: ids.all(), endpoints: [{ endpointId: 1, identity: a.id, namedPorts: [] }] });
    const b = ids.acquire(m);
    assert.equal(b.fresh, false);
    state.endpointSet({ endpointId: 2, identity: b.id, namedPorts: [] });
    const changes = state.flush();
    assert.deepEqual(changes.map((c) => c.endpointId), [2]);
    assert.equal(changes[0]!.after!.entries, state.endpoint(1)!.entries, 'entries are shared with the class');
  });

  test('an endpoint may arrive before its identity\'s labels', () => {
    const policies = DOCS.flatMap((d) => policiesParse(d));
    const ids = new Identities(rng(5));
    const web = ids.acquire({ labels: { app: 'web' }, namespace: 'ns1', ports: [PORTS[0]!] });
    const client = ids.acquire({ labels: { app: 'client' }, namespace: 'ns1', ports: [] });
    const state = new PolicyState({ policies, identities: new Map(), endpoints: [] });
    state.endpointSet({ endpointId: 1, identity: web.id, namedPorts: [PORTS[0]!] });
    state.endpointSet({ endpointId: 2, identity: client.id });
    state.flush();
    state.identitySet(web.id, web.labels);
    state.identitySet(client.id, client.labels);
    state.flush();
    const want = policyCompile({
      policies,
      identities: ids.all(),
      endpoints: [{ endpointId: 1, identity: web.id, namedPorts: [PORTS[0]!] }, { endpointId: 2, identity: client.id, namedPorts: [] }],
      remoteNamedPorts: new Map([[web.id, [PORTS[0]!]], [client.id, []]]),
    });
    for (const e of want.endpoints) samePolicy(state.endpoint(e.endpointId), e, `endpoint ${e.endpointId}`);
  });

  test('a new identity updates exactly the endpoints whose rules select it', () => {
    const policies = DOCS.flatMap((d) => policiesParse(d));
    const ids = new Identities(rng(7));
    const web = ids.acquire({ labels: { app: 'web' }, namespace: 'ns1', ports: [] });
    const other = ids.acquire({ labels: { app: 'other' }, namespace: 'ns3', ports: [] });
    const state = new PolicyState({
      policies,
      identities: ids.all(),
      endpoints: [{ endpointId: 1, identity: web.id }, { endpointId: 2, identity: other.id }],
    });
    // A client in ns1: web's ingress rule selects it (app=client); nothing selects `other`'s rules on it.
    const client = ids.acquire({ labels: { app: 'client' }, namespace: 'ns1', ports: [] });
    state.identitySet(client.id, client.labels);
    state.endpointSet({ endpointId: 3, identity: client.id });
    const changed = state.flush().map((c) => c.endpointId).sort();
    assert.ok(changed.includes(1), 'web allows the new client');
    assert.ok(changed.includes(3), 'the new endpoint itself');
  });
});

// --- the engine: store + incremental state + the map writes --------------------------------------

/** The policy map and ipcache as the engine sees them, in memory. */
function fakeKernel(): { kernel: KernelOps; map: Map<string, boolean> } {
  const map = new Map<string, boolean>();
  const ipcache = new Map<string, { identity: number; hostId: number }>();
  const datapath = {
    policyList: () => [],
    policyApply: (endpointId: number, ops: Array<{ op: 'upsert' | 'delete'; entry: PolicyEntry }>) => {
      for (const o of ops) {
        const k = policyKeyEncode({ endpointId, ...o.entry }).toString('hex');
        if (o.op === 'upsert') map.set(k, o.entry.deny);
        else map.delete(k);
      }
      return { upserted: 0, deleted: 0, missing: 0 };
    },
    ipcacheList: () => [...ipcache],
    ipcacheUpsert: (cidr: string, e: { identity: number; hostId: number }) => ipcache.set(cidr, e),
    ipcacheDelete: (cidr: string) => ipcache.delete(cidr),
    mapCapacity: () => ({ ipcache: 65536, policy: 1 << 20 }),
  };
  return { kernel: { datapath } as unknown as KernelOps, map };
}

function mapOf(compiled: CompiledPolicy): Map<string, boolean> {
  const m = new Map<string, boolean>();
  for (const ep of compiled.endpoints) for (const e of ep.entries) m.set(policyKeyEncode({ endpointId: ep.endpointId, ...e }).toString('hex'), e.deny);
  return m;
}

describe('PolicyEngine: incremental updates write what a full apply writes', () => {
  for (let seed = 1; seed <= Math.max(4, SEEDS / 3); seed++) {
    test(`engine over an in-memory store, seed ${seed}`, async () => {
      const rnd = rng(1000 + seed);
      const store = sqliteStoreOpen(':memory:');
      for (const [ns, labels] of Object.entries(NAMESPACES)) await store.transaction((tx) => tx.namespacePut(ns, labels));
      const allocator = new IdentityAllocator();
      const { kernel, map } = fakeKernel();
      const engine = new PolicyEngine(store, kernel, pino({ level: 'silent' }));
      const docs = DOCS.filter(() => rnd(5) < 3);
      for (const d of docs) {
        const p = policiesParse(d)[0]!;
        await store.transaction((tx) => tx.policyPut(p.kind, p.namespace, p.name, p.document));
      }
      engine.load();
      engine.apply();
      let n = 0;
      const register = (m: Model): Promise<WorkloadRecord> => {
        const name = `w${++n}`;
        return store.transaction((tx) =>
          tx.workloadInsert({
            spec: { name, namespace: m.namespace, kind: 'netns', labels: m.labels, netns: '/x', requestedMode: 'auto', interface: 'eth0', ...(m.ports.length ? { ports: m.ports as WorkloadRecord['spec']['ports'] } : {}) },
            mode: 'veth', endpointId: n, identity: allocator.acquire(tx, m.labels, m.namespace, NAMESPACES[m.namespace]), ipv4: m.addresses?.[0] ?? `10.9.0.${n}`, ipv6: m.addresses?.[1] ?? `fd09::${n}`, hostIfname: `kn${n}`,
          }),
        );
      };
      const expected = () => {
        const ws = store.workloadList();
        const named = new Map<number, NamedPort[]>();
        for (const w of ws) named.set(w.identity, [...(named.get(w.identity) ?? []), ...(w.spec.ports ?? [])]);
        return policyCompile({
          policies: engine.parsed,
          identities: engine.identities(),
          endpoints: ws.map((w) => ({ endpointId: w.endpointId, identity: w.identity, namedPorts: w.spec.ports ?? [], addresses: [w.ipv4, w.ipv6] })),
          remoteNamedPorts: named,
          options: { previousCidrIdentities: store.cidrIdentities() },
        });
      };
      for (let step = 1; step <= 40; step++) {
        const all = store.workloadList();
        const op = all.length === 0 ? 0 : rnd(10);
        if (op < 5) {
          engine.endpointsUpdate({ upsert: [await register(randomWorkload(rnd))] });
        } else if (op < 7) {
          const w = all[rnd(all.length)]!;
          const m = randomWorkload(rnd);
          const updated = await store.transaction((tx) => {
            tx.workloadUpdate(w.spec.namespace, w.spec.name, { ...w.spec, labels: m.labels }, allocator.acquire(tx, m.labels, w.spec.namespace, NAMESPACES[w.spec.namespace]));
            tx.identitiesReleaseUnused();
            return tx.workloadGet(w.spec.namespace, w.spec.name)!;
          });
          engine.endpointsUpdate({ upsert: [updated] });
        } else if (op < 9) {
          const w = all[rnd(all.length)]!;
          await store.transaction((tx) => {
            tx.workloadDelete(w.spec.namespace, w.spec.name);
            tx.identitiesReleaseUnused();
          });
          engine.endpointsUpdate({ remove: [w] });
        } else {
          // a policy change: the full path, then incremental again on top of it
          const next = DOCS.filter(() => rnd(5) < 3).flatMap((d) => policiesParse(d));
          engine.compile(next);
          engine.policiesSet(next);
          engine.apply();
        }
        const want = expected();
        assert.deepEqual(new Map([...map].sort()), new Map([...mapOf(want)].sort()), `seed ${seed} step ${step}: policy map`);
        for (const e of want.endpoints) {
          samePolicy(engine.endpointPolicy(e.endpointId).policy, e, `seed ${seed} step ${step}: endpoint ${e.endpointId}`);
        }
        assert.equal(engine.entryCount(), map.size);
      }
    });
  }
});

describe('NetworkPolicy ipBlock selections follow workload addresses', () => {
  const BLOCKS = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: ns1}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.9.0/24]}}, {ipBlock: {cidr: "fd01::/64"}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidrs, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromCIDR: [10.2.0.0/16]
`;
  const labelsOf = (app: string) => identityLabels({ app }, 'ns2', NAMESPACES.ns2).map(labelFormat);
  const DB = 300;
  const C = 301;
  const D = 302;
  const identities = () => new Map<number, string[]>([[DB, identityLabels({ app: 'db' }, 'ns1', NAMESPACES.ns1).map(labelFormat)], [C, labelsOf('c')]]);
  const covered = (n: number) => [`10.1.0.${n}`, `fd01::${n}`];

  test('a shared identity is deselected when an uncovered workload joins it, selected again when it leaves; relabels and new addresses move the selection', () => {
    const state = new PolicyState({
      policies: policiesParse(BLOCKS),
      identities: identities(),
      endpoints: [
        { endpointId: 1, identity: DB, addresses: ['10.9.0.1', 'fd09::1'] },
        { endpointId: 2, identity: C, addresses: covered(2) },
      ],
    });
    const selected = () => state.endpoint(1)!.entries.filter((e) => e.direction === 'ingress' && (e.identity === C || e.identity === D)).map((e) => e.identity);
    const touches = (changes: ReturnType<PolicyState['flush']>) => changes.some((c) => c.endpointId === 1);
    assert.deepEqual(selected(), [C]);

    state.endpointSet({ endpointId: 3, identity: C, addresses: ['10.1.9.3', 'fd01::3'] }); // in the except
    assert.ok(touches(state.flush()));
    assert.deepEqual(selected(), [], 'an entry for C would admit 10.1.9.3, which the except leaves out');

    state.endpointRemove(3);
    assert.ok(touches(state.flush()));
    assert.deepEqual(selected(), [C]);

    state.identitySet(D, labelsOf('d'));
    state.endpointSet({ endpointId: 2, identity: D, addresses: covered(2) });
    state.identitySet(C, undefined);
    assert.ok(touches(state.flush()));
    assert.deepEqual(selected(), [D], 'the relabelled workload takes the selection to its new identity');

    state.endpointSet({ endpointId: 2, identity: D, addresses: ['10.2.0.2', 'fd01::2'] }); // same identity, moved outside
    assert.ok(touches(state.flush()));
    assert.deepEqual(selected(), [], 'the CiliumNetworkPolicy fromCIDR 10.2.0.0/16 does not select a workload');
  });

  test('policy trace names the rule that selected a workload address, and why one did not', async () => {
    const store = sqliteStoreOpen(':memory:');
    for (const [ns, labels] of Object.entries(NAMESPACES)) await store.transaction((tx) => tx.namespacePut(ns, labels));
    const allocator = new IdentityAllocator();
    const engine = new PolicyEngine(store, fakeKernel().kernel, pino({ level: 'silent' }));
    for (const p of policiesParse(BLOCKS)) await store.transaction((tx) => tx.policyPut(p.kind, p.namespace, p.name, p.document));
    const add = (n: number, name: string, namespace: string, app: string, ipv4: string, ipv6: string) =>
      store.transaction((tx) =>
        tx.workloadInsert({
          spec: { name, namespace, kind: 'netns', labels: { app }, netns: '/x', requestedMode: 'auto', interface: 'eth0' },
          mode: 'veth', endpointId: n, identity: allocator.acquire(tx, { app }, namespace, NAMESPACES[namespace]), ipv4, ipv6, hostIfname: `kn${n}`,
        }),
      );
    await add(1, 'db', 'ns1', 'db', '10.9.0.1', 'fd09::1');
    await add(2, 'b', 'ns2', 'b', '10.1.0.2', 'fd01::2');
    await add(3, 'c', 'ns2', 'c', '10.2.0.3', 'fd01::3');
    await add(4, 'v4only', 'ns3', 'v4only', '10.1.0.4', 'fd04::4');
    await add(5, 'ex', 'ns3', 'ex', '10.1.9.5', 'fd01::5');
    engine.load();
    engine.apply();
    const trace = (from: { ip: string } | { endpointId: number }, to: { ip: string } | { endpointId: number }) => engine.trace(from, to, 'TCP', 80).result;

    const b = trace({ ip: '10.1.0.2' }, { endpointId: 1 });
    assert.equal(b.verdict, 'ALLOWED');
    assert.deepEqual(b.notes, ['10.1.0.2 is workload ns2/b; NetworkPolicy ns1/blocks ingress[0] selects it by ipBlock 10.1.0.0/16']);

    const c = trace({ ip: '10.2.0.3' }, { endpointId: 1 });
    assert.equal(c.verdict, 'DENIED');
    assert.deepEqual(c.notes, ['10.2.0.3 is workload ns2/c; CIDR rules of a CiliumNetworkPolicy do not select workloads (CiliumNetworkPolicy ns1/cidrs ingress[0]: 10.2.0.0/16)']);

    const v4 = trace({ endpointId: 4 }, { endpointId: 1 });
    assert.equal(v4.verdict, 'DENIED');
    assert.match(v4.notes!.join('\n'), /10\.1\.0\.4 is workload ns3\/v4only; NetworkPolicy ns1\/blocks ingress\[0\] selects this address by ipBlock 10\.1\.0\.0\/16, per address: not fd04::4 \(of workloads with identity \d+\)/);
    // by address, as the datapath judges packets: the IPv4 address is covered, the IPv6 one is not
    const v4Addr = trace({ ip: '10.1.0.4' }, { endpointId: 1 });
    assert.equal(v4Addr.verdict, 'ALLOWED');
    assert.equal(v4Addr.ingress?.ipBlock?.cidr, '10.1.0.0/16');
    assert.deepEqual(v4Addr.ingress?.rules, ['NetworkPolicy ns1/blocks ingress[0]']);
    const v6Addr = trace({ ip: 'fd04::4' }, { endpointId: 1 });
    assert.equal(v6Addr.verdict, 'DENIED');
    assert.equal(v6Addr.ingress?.ipBlock, undefined, 'no ipBlock prefix covers fd04::4');
    const excepted = trace({ ip: '10.1.9.5' }, { endpointId: 1 });
    assert.equal(excepted.verdict, 'DENIED');
    assert.equal(excepted.ingress?.ipBlock?.cidr, '10.1.9.0/24', 'the except is the longest ipBlock prefix covering it');
    assert.equal(excepted.ingress?.ipBlock?.entry, undefined);
    assert.equal(trace({ ip: 'fd01::5' }, { endpointId: 1 }).verdict, 'ALLOWED', 'its IPv6 address is covered by fd01::/64');

    const self = trace({ endpointId: 2 }, { ip: '10.1.0.2' });
    assert.equal(self.verdict, 'ALLOWED');
    assert.equal(self.loopback, true);
    assert.equal(self.egress, undefined);
    assert.match(self.notes!.join('\n'), /same workload ns2\/b: .* never reaches the datapath/);
  });
});

test("cluster mode: a peer cluster's identity arriving later is not selected by a selector that does not name its cluster", () => {
  const policies = policiesParse(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-in, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
`);
  const clustered = (labels: Record<string, string>, cluster: string) => [...identityLabels(labels, 'ns1').map(labelFormat), `k8s:io.cilium.k8s.policy.cluster=${cluster}`];
  const identities = new Map<number, string[]>();
  for (let id = 1; id <= 10; id++) identities.set(id, reservedIdentityLabels(id));
  identities.set(300, clustered({ app: 'web' }, 'c1'));
  const state = new PolicyState({ policies, identities, endpoints: [{ endpointId: 1, identity: 300, namedPorts: [] }], options: { localCluster: 'c1' } });
  state.flush();
  state.identitySet(200_001, clustered({ app: 'client' }, 'c1')); // this cluster's, on another host
  state.identitySet(262_145, clustered({ app: 'client' }, 'cilium1')); // a peer cluster's
  state.flush();
  const peers = new Set(state.endpoint(1)!.entries.filter((e) => e.direction === 'ingress').map((e) => e.identity));
  assert.ok(peers.has(200_001), 'this cluster\'s client');
  assert.ok(!peers.has(262_145), 'not the peer cluster\'s client, by label or as part of the cluster entity');
});
