// The DNS fast path's name plans (bpf/native/src/dnsfast.c, plan_allows; agent/dns/verdict.ts,
// dnsPlanNames): the thread forwards a name never asked when the rules deciding that workload's queries
// to that resolver allow it. Its matching must never allow what the agent's (agent/policy/fqdn.ts) refuses:
// a query forwarded is a query the resolver has seen. Held against the agent's matchers over generated
// selectors and names, hostile ones included.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dnsPlanNames, dnsQueryPlan, sectionIndex } from '../../agent/dns/verdict.js';
import { reservedIdentityLabels } from '../../agent/identity/reserved.js';
import { fqdnMatcher, fqdnNormalize } from '../../agent/policy/fqdn.js';
import type { FqdnSelector } from '../../agent/policy/fqdn.js';
import { policiesParse, policyCompile } from '../../agent/policy/index.js';
import { identityLabels, labelFormat } from '../../common/labels.js';
import { native } from '../../common/native.js';

const line = (s: FqdnSelector) => (s.matchName ? `n${fqdnNormalize(s.matchName)}` : `p${fqdnNormalize(s.matchPattern!)}`);
const threadAllows = (s: FqdnSelector, name: string) => native().dnsFastPlanAllows(line(s), name);

const LABELS = ['a', 'b', 'ab', 'ba', 'x-y', '_s', '1', 'mirror', 'test'];
const PATTERN_LABELS = ['*', '**', '***', 'a*', '*b', 'a*b', '*a*', '**a', 'mirror', 'test', 'ab', '*-*', '_*', '1*1'];

/** Every name of 1-3 labels over LABELS, plus the root and a few odd ones. */
function names(): string[] {
  const out = ['', 'test', 'a.b.c.d.test', 'mirror.test', 'a.mirror.test', 'a.b.mirror.test', `${'a'.repeat(63)}.test`];
  for (const x of LABELS) {
    out.push(x);
    for (const y of LABELS) {
      out.push(`${x}.${y}`);
      for (const z of ['test', 'mirror', 'ab']) out.push(`${x}.${y}.${z}`);
    }
  }
  return out;
}

function selectors(): FqdnSelector[] {
  const out: FqdnSelector[] = [{ matchPattern: '*' }, { matchPattern: '**' }, { matchPattern: '*.' }, { matchPattern: '**.' }, { matchPattern: '.' }, { matchName: '.' }];
  for (const x of PATTERN_LABELS) {
    out.push({ matchPattern: x }, { matchPattern: `${x}.test` }, { matchPattern: `${x}.mirror.test.` }, { matchPattern: `**.${x}.test` }, { matchPattern: ` ${x.toUpperCase()}.TEST ` });
    for (const y of PATTERN_LABELS.slice(0, 6)) out.push({ matchPattern: `${x}.${y}` }, { matchPattern: `${x}.${y}.test` });
  }
  for (const n of ['test', 'a.test', 'mirror.test', 'A.B.Test.', 'x-y.ab.test']) out.push({ matchName: n });
  return out;
}

test('the thread allows a name exactly when the agent\'s matcher does (every generated selector and name)', () => {
  let allowed = 0;
  let checked = 0;
  for (const s of selectors()) {
    const agent = fqdnMatcher(s);
    for (const name of names()) {
      const want = agent(name);
      assert.equal(threadAllows(s, name), want, `${JSON.stringify(s)} vs ${JSON.stringify(name)}`);
      checked++;
      if (want) allowed++;
    }
  }
  // The corpus must exercise both answers, not agree on "no" everywhere.
  assert.ok(allowed > 1000 && checked - allowed > 1000, `${allowed} allowed of ${checked}`);
});

test('names the thread never reads plainly are never allowed by it, whatever the plan', () => {
  for (const name of ['API.test', 'a\\032b.test', 'a b.test', 'a*.test', '*.test', `${'a.'.repeat(130)}test`]) {
    assert.equal(native().dnsFastPlanAllows('w', name), false, name);
    assert.equal(native().dnsFastPlanAllows('p**.', name), false, name);
  }
  // An empty label (never read from the wire) fails every pattern, as in the agent's matcher.
  assert.equal(native().dnsFastPlanAllows('p**.\np*.test.\np**.test.', 'a..test'), false);
});

test('hostile patterns: many stars against long names are answered at once, as the agent answers them', () => {
  const pattern: FqdnSelector = { matchPattern: `${'*a'.repeat(30)}*b.test` };
  const name = `${'a'.repeat(60)}.test`;
  const started = process.hrtime.bigint();
  assert.equal(threadAllows(pattern, name), fqdnMatcher(pattern)(name));
  assert.equal(threadAllows(pattern, `${'a'.repeat(60)}b.test`), true);
  // Not a timing threshold: a backtracking matcher takes minutes here, this one microseconds.
  assert.ok(process.hrtime.bigint() - started < 10_000_000_000n);
});

test('a plan\'s text: one line per selector, several selectors any of which allows; malformed text is refused', () => {
  const plan = 'napi.test.\np*.mirror.test.';
  assert.equal(native().dnsFastPlanAllows(plan, 'api.test'), true);
  assert.equal(native().dnsFastPlanAllows(plan, 'a.mirror.test'), true);
  assert.equal(native().dnsFastPlanAllows(plan, 'a.b.mirror.test'), false);
  assert.equal(native().dnsFastPlanAllows('', 'api.test'), false, 'no selector: nothing');
  for (const bad of ['xapi.test.', 'nAPI.test.', 'napi.test', 'n', 'wx', 'n*.test.', 'p a.test.', 'napi.test.\n\nnb.test.', `n${'a'.repeat(300)}.`]) {
    assert.throws(() => native().dnsFastPlanAllows(bad, 'api.test'), /selectors must be lines/, JSON.stringify(bad));
  }
});

const ids = new Map<number, string[]>();
for (let i = 1; i <= 10; i++) ids.set(i, reservedIdentityLabels(i));
ids.set(301, identityLabels({ app: 'client' }, 'prod').map(labelFormat));
ids.set(400, identityLabels({ 'k8s-app': 'kube-dns' }, 'kube-system').map(labelFormat));

function planOf(egress: string) {
  const yaml = `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: d, namespace: prod}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n${egress}`;
  const policies = policiesParse(yaml, undefined, { dnsPolicy: true });
  const state = policyCompile({ policies, identities: ids, endpoints: [{ endpointId: 1, identity: 301 }] });
  return dnsQueryPlan(state, sectionIndex(policies.flatMap((p) => p.rules)), state.endpoints[0]!, 400, 17, 53);
}
const TO_DNS = '  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}}]\n';

test('dnsPlanNames: the DNS rules as the thread takes them; every name for a rule without DNS rules; nothing for a denied resolver', () => {
  const rules = planOf(`${TO_DNS}    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchName: API.test}, {matchPattern: "*.mirror.test"}, {matchName: api.test.}]}}]\n`);
  assert.equal(dnsPlanNames(rules), 'napi.test.\np*.mirror.test.', 'normalised, each once');
  assert.equal(dnsPlanNames(rules), dnsPlanNames(rules), 'made once per plan');
  assert.equal(dnsPlanNames(planOf(`${TO_DNS}    toPorts: [{ports: [{port: "53", protocol: UDP}]}]\n`)), 'w');
  assert.equal(dnsPlanNames(planOf(`${TO_DNS}    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchName: a.test}]}}]\n${TO_DNS}`)), 'w', 'an L3-only rule beside: every name');
  assert.equal(dnsPlanNames(planOf('  - toEntities: [world]\n')), undefined, 'the resolver not allowed at L3/L4');
});
