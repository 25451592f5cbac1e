import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { endpointPolicyFormat, policiesParse, policyCompile, policyEntriesDiff, policyEntryKey, policyKeyEncode, policyTrace, policyTraceFormat, portFormat } from '../../agent/policy/index.js';
import type { PolicyEntry } from '../../agent/policy/index.js';

const ids = new Map<number, string[]>([
  [300, ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=prod']],
  [301, ['k8s:app=client', 'k8s:io.kubernetes.pod.namespace=prod']],
]);

describe('formatting', () => {
  test('ports', () => {
    assert.equal(portFormat({ protocol: 0, port: 0, portPrefixLen: 0 }), 'any');
    assert.equal(portFormat({ protocol: 6, port: 0, portPrefixLen: 0 }), 'TCP/*');
    assert.equal(portFormat({ protocol: 17, port: 53, portPrefixLen: 16 }), 'UDP/53');
    assert.equal(portFormat({ protocol: 6, port: 1024, portPrefixLen: 6 }), 'TCP/1024-2047');
    assert.equal(portFormat({ protocol: 58, port: 128, portPrefixLen: 16 }), 'ICMPv6 type 128');
  });
  test('endpoint entries and trace', () => {
    const policies = policiesParse(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
`);
    const s = policyCompile({ policies, identities: ids, endpoints: [{ endpointId: 1, identity: 300 }] });
    const text = endpointPolicyFormat(s.endpoints[0]!, s.identities);
    assert.match(text, /endpoint 1 identity 300 \(k8s:app=web,k8s:io.kubernetes.pod.namespace=prod\): ingress enforced, egress not enforced/);
    assert.match(text, /ingress allow from 301 \(k8s:app=client,k8s:io.kubernetes.pod.namespace=prod\) {2}TCP\/80 {2}<- CiliumNetworkPolicy prod\/web ingress\[0\]/);
    const t = policyTraceFormat(policyTrace(s, { from: { identity: 301 }, to: { endpointId: 1 }, protocol: 'UDP', port: 80 }), s.identities);
    assert.match(t, /verdict: DENIED/);
    assert.match(t, /ingress at endpoint 1: DENIED by default deny/);
    assert.match(t, /conntrack: .*established connection .* checked again after the policy or identity change that denies it/);
  });
  test('diff touches only changed entries', () => {
    const e = (identity: number, port: number, deny = false): PolicyEntry => ({ direction: 'ingress', identity, protocol: 6, port, portPrefixLen: 16, deny, rules: ['r'] });
    const d = policyEntriesDiff(1, [e(1, 80), e(2, 80), e(3, 80)], [e(1, 80), e(2, 80, true), e(4, 80)]);
    assert.deepEqual(d.upserts.map((x) => [x.identity, x.deny]), [[2, true], [4, false]]);
    assert.deepEqual(d.deletes.map((x) => x.identity), [3]);
    assert.deepEqual(d.ops.map((o) => `${o.op} ${o.entry.identity}`), ['upsert 2', 'delete 3', 'upsert 4']);
  });
  test('applying the ops in order never allows what neither state allows', () => {
    // Random old/new policies over one identity pair; check every intermediate map state.
    const policy = (deny: boolean[], allowPorts: number[]) =>
      policiesParse(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
${allowPorts.length ? `  ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [${allowPorts.map((p) => `{port: "${p}", protocol: TCP}`).join(', ')}]}]}]\n` : ''}${deny.some(Boolean) ? `  ingressDeny: [{toPorts: [{ports: [${deny.map((d, i) => (d ? `{port: "${i * 4}", endPort: ${i * 4 + 3}, protocol: TCP}` : '')).filter(Boolean).join(', ')}]}]}]\n` : ''}  egress: [{}]
`);
    let seed = 3;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 8) % n;
    for (let round = 0; round < 40; round++) {
      const mk = () => policyCompile({ policies: policy([rnd(2) === 0, rnd(3) === 0, rnd(4) === 0], [...new Set([rnd(12), rnd(12), rnd(12)])]), identities: ids, endpoints: [{ endpointId: 1, identity: 300 }], options: { allowLocalhost: rnd(2) === 0 } });
      const a = mk();
      const b = mk();
      const allowed = (entries: PolicyEntry[], port: number) =>
        policyTrace({ ...a, endpoints: [{ ...a.endpoints[0]!, entries }] }, { from: { identity: 301 }, to: { endpointId: 1 }, protocol: 'TCP', port }).verdict === 'ALLOWED';
      const { ops } = policyEntriesDiff(1, a.endpoints[0]!.entries, b.endpoints[0]!.entries);
      let state = [...a.endpoints[0]!.entries];
      const same = (x: PolicyEntry, y: PolicyEntry) => x.direction === y.direction && x.identity === y.identity && x.protocol === y.protocol && x.port === y.port && x.portPrefixLen === y.portPrefixLen;
      for (const o of ops) {
        state = state.filter((e) => !same(e, o.entry));
        if (o.op === 'upsert') state.push(o.entry);
        for (let port = 0; port < 16; port++) {
          if (allowed(state, port)) assert.ok(allowed(a.endpoints[0]!.entries, port) || allowed(b.endpoints[0]!.entries, port), `round ${round} port ${port}`);
        }
      }
      for (let port = 0; port < 16; port++) assert.equal(allowed(state, port), allowed(b.endpoints[0]!.entries, port));
    }
  });
  test('entry keys are equal exactly when the encoded map keys are', () => {
    let seed = 9;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 4) % n;
    const entry = (): PolicyEntry => {
      const protocol = [0, 6, 17, 1][rnd(4)]!;
      const portPrefixLen = protocol === 0 ? 0 : [0, 8, 12, 15, 16][rnd(5)]!;
      return { direction: rnd(2) ? 'ingress' : 'egress', identity: [0, 1, 300][rnd(3)]!, protocol, port: protocol === 0 ? 0 : [0, 80, 81, 0x1234, 0x12ff][rnd(5)]!, portPrefixLen, deny: false, rules: [] };
    };
    const entries = Array.from({ length: 300 }, entry);
    for (const a of entries.slice(0, 60)) {
      for (const b of entries) {
        const sameKey = policyKeyEncode({ endpointId: 1, ...a }).equals(policyKeyEncode({ endpointId: 1, ...b }));
        assert.equal(policyEntryKey(1, a) === policyEntryKey(1, b), sameKey, `${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
      }
    }
    assert.throws(() => policyEntryKey(1, { direction: 'ingress', identity: 0, protocol: 0, port: 80, portPrefixLen: 16 }), /needs a protocol/);
    assert.throws(() => policyEntryKey(1, { direction: 'ingress', identity: 0, protocol: 6, port: 80, portPrefixLen: 17 }), /prefix length/);
  });
});
