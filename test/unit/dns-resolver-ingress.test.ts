// A workload resolver's ingress policy holds for the queries the DNS proxy forwards to it (agent/dns/
// steering.ts, resolverIngressRefusal): the proxy sends from the host's sockets, which the resolver's
// datapath admits as the host (allow-localhost) or as this node, so a query goes to a workload only
// when that workload's ingress would admit the asking workload itself.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { steeringHarness, type SteeringHarness } from '../helpers/dns-steering-harness.js';

const A_EGRESS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-dns, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEntities: [all]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
`;
// b admits nobody; r admits a on UDP 53 only.
const RESOLVERS = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-ingress, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: nobody}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: r-ingress, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: r}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`;

let port = 42000;
function ask(h: SteeringHarness, resolver: string, transport: 'udp' | 'tcp' = 'udp') {
  return h.query({ address: resolver.includes(':') ? 'fd09::1' : '10.9.0.1', port: port++ }, { address: resolver, port: 53 }, 'secret.test', transport).verdict;
}

function refusedFor(v: { allowed: boolean; refusal?: string | undefined; rule?: string | undefined }, re: RegExp, what: string): void {
  assert.equal(v.allowed, false, what);
  assert.equal(v.refusal, 'resolver', what);
  assert.match(v.rule ?? '', re, what);
}

test('a local workload resolver whose ingress does not admit the asking workload: refused, not forwarded as the host', async () => {
  const h = await steeringHarness(`${A_EGRESS}---\n${RESOLVERS}`);
  try {
    await h.workloadAdd('a', 'a', '10.9.0.1', 'fd09::1');
    await h.workloadAdd('b', 'b', '10.9.0.2', 'fd09::2');
    await h.workloadAdd('r', 'r', '10.9.0.3', 'fd09::3');
    refusedFor(ask(h, '10.9.0.2'), /^resolver 10\.9\.0\.2 is workload prod\/b whose ingress policy does not admit this workload on UDP 53 \(default-deny\)/, 'b over UDP');
    refusedFor(ask(h, 'fd09::2', 'tcp'), /workload prod\/b .* on TCP 53/, 'b over TCP, IPv6');
    // The same query again: the memo gives the same answer.
    refusedFor(ask(h, '10.9.0.2'), /workload prod\/b/, 'b again');
    assert.equal(ask(h, '10.9.0.3').allowed, true, 'r admits a on UDP 53');
    assert.equal(ask(h, 'fd09::3').allowed, true, 'and over IPv6');
    refusedFor(ask(h, '10.9.0.3', 'tcp'), /workload prod\/r .* on TCP 53/, 'but not on TCP 53');
    // An ordinary resolver is judged by the asking workload's egress alone, as before.
    assert.equal(ask(h, '192.0.2.53').allowed, true);
    // b's policy comes to admit a: the next query is forwarded (a new compiled state, new verdicts).
    await h.policyPut(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-ingress, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
`);
    assert.equal(ask(h, '10.9.0.2').allowed, true, 'b admits a now');
  } finally {
    await h.close();
  }
});

test('the configured upstream is judged too when it is a workload', async () => {
  const h = await steeringHarness(`${A_EGRESS}---\n${RESOLVERS}`, { upstream: '10.9.0.2:53' });
  try {
    await h.workloadAdd('a', 'a', '10.9.0.1', 'fd09::1');
    await h.workloadAdd('b', 'b', '10.9.0.2', 'fd09::2');
    const v = h.query({ address: '10.9.0.1', port: port++ }, { address: '192.0.2.53', port: 53 }, 'secret.test');
    assert.deepEqual(v.upstream, { address: '10.9.0.2', port: 53 });
    refusedFor(v.verdict, /^resolver 10\.9\.0\.2 is workload prod\/b /, 'configured upstream b');
    assert.deepEqual(v.verdict.resolver, { address: '192.0.2.53', port: 53 }, 'the flow names the resolver the workload addressed');
  } finally {
    await h.close();
  }
});

test('another node\'s workload resolver: judged by the shared policies for its identity; a peer cluster\'s: refused', async () => {
  const h = await steeringHarness(`${A_EGRESS}---\n${RESOLVERS}`);
  try {
    await h.workloadAdd('a', 'a', '10.9.0.1', 'fd09::1');
    const ns = 'k8s:io.kubernetes.pod.namespace=prod';
    const remote = new Map<number, string[]>([
      [70_000, ['k8s:app=b', ns, 'k8s:io.cilium.k8s.policy.cluster=c1']],
      [70_001, ['k8s:app=r', ns, 'k8s:io.cilium.k8s.policy.cluster=c1']],
      // a peer cluster's resolver, labelled as r: its policies are not this cluster's
      [(2 << 16) | 300, ['k8s:app=r', ns, 'k8s:io.cilium.k8s.policy.cluster=c2']],
      // no cluster label: nothing says whose policies it follows
      [70_002, ['k8s:app=r', ns]],
    ]);
    await h.clusterJoin('c1', remote);
    h.remote.set('10.200.0.5', 70_000);
    h.remote.set('10.200.0.6', 70_001);
    h.remote.set('10.201.0.6', (2 << 16) | 300);
    h.remote.set('10.200.0.7', 70_002);
    refusedFor(ask(h, '10.200.0.5'), /^resolver 10\.200\.0\.5 is another node's workload \(identity 70000\) whose ingress policy does not admit this workload on UDP 53 \(default-deny\)/, 'remote b');
    assert.equal(ask(h, '10.200.0.6').allowed, true, 'remote r admits a on UDP 53');
    refusedFor(ask(h, '10.200.0.6', 'tcp'), /another node's workload \(identity 70001\) .* on TCP 53/, 'not on TCP');
    refusedFor(ask(h, '10.201.0.6'), /^resolver 10\.201\.0\.6 is a workload \(identity 131372\) of another cluster/, 'peer cluster');
    refusedFor(ask(h, '10.200.0.7'), /^resolver 10\.200\.0\.7 is a workload \(identity 70002\) of another cluster or of unknown labels/, 'no cluster label');
  } finally {
    await h.close();
  }
});
