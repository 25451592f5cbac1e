import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dnsQueryVerdict, sectionIndex } from '../../agent/dns/verdict.js';
import { reservedIdentityLabels } from '../../agent/identity/reserved.js';
import { policiesParse, policyCompile } from '../../agent/policy/index.js';
import { identityLabels, labelFormat } from '../../common/labels.js';

const ids = new Map<number, string[]>();
for (let i = 1; i <= 10; i++) ids.set(i, reservedIdentityLabels(i));
ids.set(301, identityLabels({ app: 'client' }, 'prod').map(labelFormat));
ids.set(400, identityLabels({ 'k8s-app': 'kube-dns' }, 'kube-system').map(labelFormat));
const CLIENT = 301;
const KUBE_DNS = 400;
const WORLD = 2;
const UDP = 17;
const TCP = 6;

function setup(egress: string) {
  const yaml = `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: d, namespace: prod}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n${egress}`;
  const policies = policiesParse(yaml, undefined, { dnsPolicy: true });
  const state = policyCompile({ policies, identities: ids, endpoints: [{ endpointId: 1, identity: CLIENT }] });
  const sections = sectionIndex(policies.flatMap((p) => p.rules));
  return (resolver: number, protocol: number, name: string) => dnsQueryVerdict(state, sections, state.endpoints[0]!, resolver, protocol, 53, name);
}

const KUBE_DNS_RULE = `  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchName: api.test}, {matchPattern: "*.mirror.test"}]}}]
`;

test('names the DNS rules allow pass, others are refused naming the rule', () => {
  const v = setup(KUBE_DNS_RULE);
  assert.deepEqual(v(KUBE_DNS, UDP, 'api.test'), { allowed: true, rule: 'CiliumNetworkPolicy prod/d egress[0]' });
  assert.equal(v(KUBE_DNS, TCP, 'deb.mirror.test').allowed, true, 'ANY covers TCP');
  assert.deepEqual(v(KUBE_DNS, UDP, 'a.b.mirror.test'), { allowed: false, rule: 'CiliumNetworkPolicy prod/d egress[0]' });
  assert.equal(v(KUBE_DNS, UDP, 'evil.test').allowed, false);
});

test('a resolver no rule allows is denied at L3/L4 (default deny)', () => {
  const v = setup(KUBE_DNS_RULE);
  const r = v(WORLD, UDP, 'api.test');
  assert.equal(r.allowed, false);
  assert.match(r.rule, /default deny/);
});

test('a rule without DNS rules selecting the resolver on the port allows every name (Cilium L7 wildcard)', () => {
  const v = setup(`${KUBE_DNS_RULE}  - toEntities: [world]\n    toPorts: [{ports: [{port: "53", protocol: UDP}]}]\n  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}}]\n    toPorts: [{ports: [{port: "0", protocol: TCP}]}]\n`);
  assert.deepEqual(v(WORLD, UDP, 'anything.example'), { allowed: true, rule: 'CiliumNetworkPolicy prod/d egress[1]', wildcard: true });
  assert.equal(v(WORLD, TCP, 'anything.example').allowed, false, 'that rule is UDP only');
  assert.equal(v(KUBE_DNS, TCP, 'anything.example').wildcard, true, 'port-wildcard TCP rule to kube-dns');
  assert.equal(v(KUBE_DNS, UDP, 'anything.example').allowed, false, 'over UDP only the DNS rules count');
});

test('no egress policy: nothing to enforce', () => {
  const policies = policiesParse(`apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: i, namespace: prod}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n`);
  const state = policyCompile({ policies, identities: ids, endpoints: [{ endpointId: 1, identity: CLIENT }] });
  assert.equal(dnsQueryVerdict(state, sectionIndex(policies.flatMap((p) => p.rules)), state.endpoints[0]!, WORLD, UDP, 53, 'x.test').wildcard, true);
});
