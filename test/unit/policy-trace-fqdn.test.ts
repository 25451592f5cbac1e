// `policy trace --to-fqdn` logic (agent/policy/trace-fqdn.ts) over a compiled policy: learned
// addresses with TTL left, identity and verdict per port or per entry, the lookup question against
// the proxy's own query verdict, a name never looked up, and name validation.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FQDN_IDENTITY_BASE } from '../../agent/dns/fqdn-cache.js';
import { sectionIndex } from '../../agent/dns/verdict.js';
import { reservedIdentityLabels } from '../../agent/identity/reserved.js';
import { fqdnSelectorsOf } from '../../agent/policy/fqdn-identities.js';
import { policiesParse, policyCompile } from '../../agent/policy/index.js';
import { fqdnNameNormalize, fqdnNameProblem, fqdnTrace, fqdnTraceFormat } from '../../agent/policy/trace-fqdn.js';
import type { FqdnTraceInput } from '../../agent/policy/trace-fqdn.js';
import { identityLabels, labelFormat } from '../../common/labels.js';

const CLIENT = 301;
const API_ID = FQDN_IDENTITY_BASE | 1;
const ids = new Map<number, string[]>();
for (let i = 1; i <= 10; i++) ids.set(i, reservedIdentityLabels(i));
ids.set(CLIENT, identityLabels({ app: 'client' }, 'prod').map(labelFormat));
ids.set(API_ID, ['fqdn:matchName:api.test.', 'reserved:world', 'reserved:world-ipv4']);
const NOW = 1_000_000;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fq, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toFQDNs: [{matchName: api.test}]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
    - toCIDR: [10.0.0.53/32]
      toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchName: api.test}, {matchPattern: "*.mirror.test"}]}}]
`;

function input(over: Partial<FqdnTraceInput> = {}): FqdnTraceInput {
  const policies = policiesParse(POLICY, undefined, { dnsPolicy: true });
  const state = policyCompile({ policies, identities: ids, endpoints: [{ endpointId: 1, identity: CLIENT }] });
  return {
    name: 'api.test',
    state,
    sections: sectionIndex(policies.flatMap((p) => p.rules)),
    source: state.endpoints[0]!,
    learned: [],
    nowMs: NOW,
    ipcache: [],
    selectors: fqdnSelectorsOf(policies),
    proxy: true,
    steered: true,
    ...over,
  };
}

const learnedApi = {
  learned: [
    { address: '192.0.2.10', expiresAt: NOW + 29_400 },
    { address: '192.0.2.11', expiresAt: NOW - 5_000 },
  ],
  ipcache: [
    { cidr: '192.0.2.10/32', identity: API_ID },
    { cidr: '192.0.2.11/32', identity: API_ID },
  ],
};

test('learned addresses: TTL left (an expired one kept is marked), FQDN identity, verdict on the port', () => {
  const r = fqdnTrace(input({ ...learnedApi, port: 443, protocol: 6 }));
  assert.equal(r.verdict, 'ALLOWED');
  assert.deepEqual(r.selectors, ['fqdn:matchName:api.test.']);
  assert.equal(r.connection, 'TCP/443');
  assert.deepEqual(r.addresses.map((a) => [a.address, a.ttlSeconds, a.expired, a.identity, a.verdict]), [
    ['192.0.2.10', 30, false, API_ID, 'ALLOWED'],
    ['192.0.2.11', 0, true, API_ID, 'ALLOWED'],
  ]);
  assert.deepEqual(r.addresses[0]!.egress!.rules, ['CiliumNetworkPolicy prod/fq egress[0]']);
  const other = fqdnTrace(input({ ...learnedApi, port: 80, protocol: 6 }));
  assert.equal(other.verdict, 'DENIED');
  assert.equal(other.addresses[0]!.egress!.reason, 'default-deny');
});

test('without a port: every egress entry covering the address identity', () => {
  const r = fqdnTrace(input(learnedApi));
  assert.equal(r.connection, undefined);
  assert.deepEqual(r.addresses[0]!.ports, [{ port: 'TCP/443', verdict: 'ALLOWED', rules: ['CiliumNetworkPolicy prod/fq egress[0]'] }]);
  assert.equal(r.verdict, 'ALLOWED');
});

test('an address the proxy did not give an FQDN identity (no ipcache entry) is world and denied', () => {
  const r = fqdnTrace(input({ learned: [{ address: '192.0.2.99', expiresAt: NOW + 1000 }], port: 443, protocol: 6 }));
  assert.equal(r.addresses[0]!.identity, 9);
  assert.equal(r.verdict, 'DENIED');
});

test('a name never looked up: UNKNOWN, said plainly, and the lookup question still answered', () => {
  const r = fqdnTrace(input({ name: 'deb.mirror.test', port: 443, protocol: 6 }));
  assert.equal(r.verdict, 'UNKNOWN');
  assert.deepEqual(r.addresses, []);
  assert.deepEqual(r.selectors, []);
  assert.ok(r.dns.lookups.length > 0);
  assert.ok(r.dns.lookups.every((l) => l.allowed && l.rule === 'CiliumNetworkPolicy prod/fq egress[1]'), JSON.stringify(r.dns.lookups));
  const text = fqdnTraceFormat(r, ids, 'prod/c');
  assert.match(text, /no addresses learned for deb\.mirror\.test yet; the first lookup by a selected workload will learn them/);
  assert.match(text, /UDP and TCP to .*: allowed, by CiliumNetworkPolicy prod\/fq egress\[1\]/);
  assert.match(text, /verdict: UNKNOWN/);
});

test('a lookup no DNS rule allows is REFUSED, naming the policy; a named resolver is judged alone', () => {
  const r = fqdnTrace(input({ name: 'evil.test' }));
  assert.ok(r.dns.lookups.length > 0);
  assert.ok(r.dns.lookups.every((l) => !l.allowed && l.rule === 'CiliumNetworkPolicy prod/fq egress[1]'));
  assert.match(fqdnTraceFormat(r, ids, 'prod/c'), /REFUSED by the proxy, decided by CiliumNetworkPolicy prod\/fq egress\[1\]/);
  const world = fqdnTrace(input({ name: 'api.test', resolver: { address: '198.51.100.1', identity: 9 } }));
  assert.deepEqual(world.dns.lookups.map((l) => [l.resolver, l.protocol, l.allowed]), [['198.51.100.1', 'UDP', false], ['198.51.100.1', 'TCP', false]]);
  assert.match(world.dns.lookups[0]!.rule, /default deny/);
});

test('not steered or proxy off: no DNS rule applies, and the text says why', () => {
  const r = fqdnTrace(input({ steered: false }));
  assert.deepEqual(r.dns.lookups, []);
  assert.match(fqdnTraceFormat(r, ids, 'prod/c'), /not steered to the proxy/);
  assert.match(fqdnTraceFormat(fqdnTrace(input({ proxy: false })), ids, 'prod/c'), /dns\.proxy\.enabled: false/);
});

test('names: one DNS name, normalised; patterns, empty labels, bad characters and oversize refused', () => {
  assert.equal(fqdnNameProblem('API.Example.com.'), undefined);
  assert.equal(fqdnNameNormalize(' API.Example.com. '), 'api.example.com');
  assert.equal(fqdnNameProblem('_srv._tcp.example.com'), undefined);
  for (const bad of ['', '.', '*.example.com', 'a..b', '.a', 'a b.com', 'a/b', '-a.com', 'a-.com', `${'a'.repeat(64)}.com`, `${'a.'.repeat(127)}ab`, 'é.com', 'a\u0000.com']) {
    assert.ok(fqdnNameProblem(bad), `"${bad}" must be refused`);
  }
});
