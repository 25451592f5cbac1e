import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { endpointPolicyFormat, policiesParse, policyCompile, policyEntriesDiff, policyTrace, policyTraceFormat, portFormat } from '../../agent/policy/index.js';
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
  });
  test('diff touches only changed entries', () => {
    const e = (identity: number, port: number, deny = false): PolicyEntry => ({ direction: 'ingress', identity, protocol: 6, port, portPrefixLen: 16, deny, rules: ['r'] });
    const d = policyEntriesDiff(1, [e(1, 80), e(2, 80), e(3, 80)], [e(1, 80), e(2, 80, true), e(4, 80)]);
    assert.deepEqual(d.upserts.map((x) => [x.identity, x.deny]), [[2, true], [4, false]]);
    assert.deepEqual(d.deletes.map((x) => x.identity), [3]);
  });
});
