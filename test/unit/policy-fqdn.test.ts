import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { LOCAL_IDENTITY_FLAG, reservedIdentityLabels } from '../../agent/identity/reserved.js';
import { fqdnMatcher, fqdnNormalize, fqdnSelectorLabel, fqdnSelectorProblem } from '../../agent/policy/fqdn.js';
import { policiesParse, policyCompile, PolicyValidationError } from '../../agent/policy/index.js';
import { policiesParseOffThread } from '../../agent/policy/parse-offthread.js';
import { identityLabels, labelFormat } from '../../common/labels.js';

const pattern = (p: string) => fqdnMatcher({ matchPattern: p });

describe('fqdn matchPattern (Cilium semantics)', () => {
  test('* matches within one label, never a dot', () => {
    const m = pattern('*.example.com');
    assert.equal(m('a.example.com'), true);
    assert.equal(m('a-b_c9.example.com.'), true);
    assert.equal(m('a.b.example.com'), false);
    assert.equal(m('example.com'), false);
    assert.equal(m('aexample.com'), false);
    assert.equal(m('a.example.com.evil.net'), false);
  });
  test('* inside a label, runs of stars count as one', () => {
    assert.equal(pattern('api*.example.com')('api.example.com'), true);
    assert.equal(pattern('api*.example.com')('api-v2.example.com'), true);
    assert.equal(pattern('api*.example.com')('xapi.example.com'), false);
    assert.equal(pattern('a***b.test')('a-x-b.test'), true);
    assert.equal(pattern('a***b.test')('a.b.test'), false);
    assert.equal(pattern('sub.*.test')('sub.x.test'), true);
    assert.equal(pattern('sub.*.test')('sub.x.y.test'), false);
  });
  test('leading **. matches one or more whole labels', () => {
    const m = pattern('**.test');
    assert.equal(m('a.test'), true);
    assert.equal(m('a.b.c.test.'), true);
    assert.equal(m('test'), false);
    assert.equal(m('atest'), false);
    assert.equal(pattern('***.test')('a.b.test'), true, 'more than two stars followed by a dot is the same');
    // Only leading: elsewhere ** is a one-label star.
    assert.equal(pattern('a.**.test')('a.b.test'), true);
    assert.equal(pattern('a.**.test')('a.b.c.test'), false);
  });
  test('bare * (and **, *., **.) matches every DNS name and the root', () => {
    for (const p of ['*', '**', '*.', '**.']) {
      const m = pattern(p);
      assert.equal(m('a.b.c.example.com'), true, p);
      assert.equal(m('x'), true, p);
      assert.equal(m('.'), true, p);
      assert.equal(m('bad name.com'), false, `${p}: not DNS characters`);
      assert.equal(m('a..b'), false, `${p}: empty label`);
    }
  });
  test('case-insensitive, trailing dot implied on both sides', () => {
    assert.equal(pattern('*.Example.COM')('A.EXAMPLE.com.'), true);
    assert.equal(pattern('*.example.com.')('a.example.com'), true);
    assert.equal(fqdnMatcher({ matchName: 'API.test' })('api.TEST.'), true);
    assert.equal(fqdnMatcher({ matchName: 'api.test.' })('api.test'), true);
    assert.equal(fqdnMatcher({ matchName: 'api.test' })('x.api.test'), false);
    assert.equal(fqdnNormalize(' A.b '), 'a.b.');
  });
  test('literal characters are not regex syntax', () => {
    // `.` is a literal dot, `-` and `_` literal: nothing else is allowed by validation.
    assert.equal(pattern('a.b')('axb'), false);
    assert.equal(pattern('a-b_c.test')('a-b_c.test'), true);
    assert.equal(pattern('a-b_c.test')('a-bxc.test'), false);
  });
  test('the same answers as the regular expression it replaced, on 31,000 generated pairs', () => {
    // The matcher was `new RegExp(source)` of this source (exponential in its stars on a hostile name);
    // kept here as the reference the label-by-label matcher must agree with.
    const DNS_CHAR = '[-a-z0-9_]';
    const referenceSource = (pattern: string) => {
      const p = pattern.trim().toLowerCase();
      const bare = p.endsWith('.') ? p.slice(0, -1) : p;
      if (bare.length > 0 && /^\*+$/.test(bare)) return `^(?:(?:${DNS_CHAR}+\\.)+|\\.)$`;
      const fq = p.endsWith('.') ? p : `${p}.`;
      let out = '';
      let i = 0;
      const lead = /^\*{2,}\./.exec(fq);
      if (lead) {
        out += `(?:${DNS_CHAR}+\\.)+`;
        i = lead[0].length;
      }
      for (; i < fq.length; i++) {
        const c = fq[i]!;
        if (c === '.') out += '\\.';
        else if (c === '*') {
          while (fq[i + 1] === '*') i++;
          out += `${DNS_CHAR}*`;
        } else out += c;
      }
      return `^${out}$`;
    };
    let seed = 7;
    const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2147483648) >> 8) % n;
    const pick = (chars: string, max: number, min = 0) => Array.from({ length: min + rand(max - min + 1) }, () => chars[rand(chars.length)]).join('');
    const patterns = ['*', '**', '*.', '**.', '**.a', '***.a.b', 'a.**', '**..', 'a..b', '.'];
    for (let i = 0; i < 300; i++) patterns.push(pick('ab*.-', 7, 1));
    let compared = 0;
    for (const p of patterns) {
      const mine = pattern(p);
      const ref = new RegExp(referenceSource(p));
      for (let j = 0; j < 100; j++) {
        const name = pick('abAB.-_ *', 8);
        assert.equal(mine(name), ref.test(fqdnNormalize(name)), `pattern ${JSON.stringify(p)}, name ${JSON.stringify(name)}`);
        compared++;
      }
    }
    assert.equal(compared, 31_000);
  });
  test('a hostile name against a many-star pattern is answered, not backtracked for hours', { timeout: 60_000 }, () => {
    // The regular expression of this pattern took 5.8 s with 6 stars on this name, and grows ~x60 a star.
    const stars = `${'*a'.repeat(40)}*b.test`;
    const name = `${'a'.repeat(63)}.test`;
    assert.equal(pattern(stars)(name), false);
    assert.equal(pattern(stars)(`${'a'.repeat(62)}b.test`), true);
    assert.equal(pattern(`**.${stars}`)(`${'x.'.repeat(100)}${name}`), false);
  });
  test('labels name a selector in normal form', () => {
    assert.equal(fqdnSelectorLabel({ matchName: 'API.test' }), 'fqdn:matchName:api.test.');
    assert.equal(fqdnSelectorLabel({ matchPattern: '*.Test.' }), 'fqdn:matchPattern:*.test.');
  });
  test('validation: characters, length, exactly one field', () => {
    assert.equal(fqdnSelectorProblem({ matchName: 'a.com' }), undefined);
    assert.equal(fqdnSelectorProblem({ matchPattern: '**.a.com' }), undefined);
    assert.match(fqdnSelectorProblem({ matchName: 'a*.com' })!.message, /characters other than/);
    assert.match(fqdnSelectorProblem({ matchPattern: 'a(.com' })!.message, /characters other than/);
    assert.match(fqdnSelectorProblem({ matchPattern: 'a .com' })!.message, /characters other than/);
    assert.match(fqdnSelectorProblem({ matchPattern: `${'a'.repeat(256)}` })!.message, /at most 255/);
    assert.match(fqdnSelectorProblem({ matchName: 'a', matchPattern: 'b' })!.message, /only one of/);
    assert.match(fqdnSelectorProblem({})!.message, /one of matchName or matchPattern is required/);
  });
});

const cnp = (egress: string) => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress: ${egress}
`;

function issues(yaml: string, dnsPolicy: boolean): string {
  try {
    policiesParse(yaml, undefined, { dnsPolicy });
  } catch (e) {
    assert.ok(e instanceof PolicyValidationError, String(e));
    return e.message;
  }
  assert.fail('expected a validation error');
}

const FQDN_RULES = `
    - toFQDNs: [{matchName: api.test}, {matchPattern: "*.test"}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system}}]
      toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]`;

describe('toFQDNs and rules.dns in policy parsing', () => {
  test('refused where the proxy does not run (dnsPolicy: false), naming each field, after validation', () => {
    const msg = issues(cnp(FQDN_RULES), false);
    assert.match(msg, /spec\.egress\[0\]\.toFQDNs: toFQDNs is valid but not supported here: .*issue #17/);
    assert.match(msg, /spec\.egress\[1\]\.toPorts\[0\]\.rules\.dns: rules\.dns is valid but not supported here/);
  });
  test('accepted by default: policy apply (the parser thread) takes them, YAML and JSON alike', async () => {
    assert.equal(policiesParse(cnp(FQDN_RULES)).length, 1);
    assert.equal((await policiesParseOffThread(cnp(FQDN_RULES), 'application/yaml')).length, 1);
    const json = { apiVersion: 'cilium.io/v2', kind: 'CiliumClusterwideNetworkPolicy', metadata: { name: 'c' }, spec: { endpointSelector: {}, egress: [{ toFQDNs: [{ matchPattern: '**.test' }] }] } };
    assert.equal((await policiesParseOffThread(json)).length, 1);
  });
  test('invalid selectors are reported as such, gate or not', () => {
    for (const gate of [false, true]) {
      assert.match(issues(cnp('[{toFQDNs: [{matchName: "a b"}]}]'), !gate), /egress\[0\]\.toFQDNs\[0\]\.matchName: "a b" has characters/);
      assert.match(issues(cnp('[{toFQDNs: [{matchPattern: "a/b"}]}]'), !gate), /toFQDNs\[0\]\.matchPattern: .*characters/);
      assert.match(issues(cnp('[{toFQDNs: [{matchName: a, matchPattern: b}]}]'), !gate), /toFQDNs\[0\]: only one of/);
      assert.match(issues(cnp('[{toFQDNs: [{matchRegex: a}]}]'), !gate), /toFQDNs\[0\]\.matchRegex: unknown field/);
      assert.match(issues(cnp('[{toFQDNs: [{matchName: 5}]}]'), !gate), /toFQDNs\[0\]\.matchName: must be a string/);
      assert.match(issues(cnp('[{toFQDNs: [null]}]'), !gate), /toFQDNs\[0\]: /);
      assert.match(issues(cnp('[{toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchPattern: [a]}]}}]}]'), !gate), /rules\.dns\[0\]\.matchPattern: must be a string/);
      assert.match(issues(cnp('[{toPorts: [{ports: [{port: "53"}], rules: "x"}]}]'), !gate), /toPorts\[0\]\.rules: /);
    }
  });
  test("Cilium's combination rules", () => {
    assert.match(issues(cnp('[{toFQDNs: [{matchName: a.test}], toCIDR: [10.0.0.0/8]}]'), true), /toFQDNs: combining toFQDNs and toCIDR/);
    assert.match(issues(cnp('[{toFQDNs: [{matchName: a.test}], toEndpoints: [{}]}]'), true), /combining toFQDNs and toEndpoints/);
    assert.match(issues(cnp('[{toPorts: [{rules: {dns: [{matchName: a.test}]}}]}]'), true), /toPorts\[0\]\.ports: port 53 must be specified for DNS rules/);
    assert.match(issues(cnp('[{toPorts: [{ports: [{port: "54"}], rules: {dns: [{matchName: a.test}]}}]}]'), true), /ports\[0\]\.port: DNS rules apply to port 53 only/);
    assert.match(issues(cnp('[{toPorts: [{ports: [{port: "53", endPort: 60}], rules: {dns: [{matchName: a.test}]}}]}]'), true), /endPort: DNS rules do not support port ranges/);
    assert.match(issues(cnp('[{toPorts: [{ports: [{port: "53", protocol: SCTP}], rules: {dns: [{matchName: a.test}]}}]}]'), true), /protocol: DNS rules apply to UDP, TCP or ANY/);
    const ingress = cnp('[]').replace('egress: []', 'ingress: [{toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchName: a.test}]}}]}]');
    assert.match(issues(ingress, true), /ingress\[0\]\.toPorts\[0\]\.rules\.dns: DNS rules are not allowed on ingress/);
    const deny = cnp('[]').replace('egress: []', 'egressDeny: [{toFQDNs: [{matchName: a.test}]}]');
    assert.match(issues(deny, true), /egressDeny\[0\]\.toFQDNs: toFQDNs is not allowed in egressDeny/);
  });
  test('other L7 rule types stay refused', () => {
    assert.match(issues(cnp('[{toPorts: [{ports: [{port: "80"}], rules: {http: [{}]}}]}]'), true), /rules\.http: L7 rule type http is not supported by kitnet/);
    assert.match(issues(cnp('[{toPorts: [{ports: [{port: "9092"}], rules: {kafka: [{}]}}]}]'), true), /rules\.kafka: L7 rule type kafka is not supported/);
    assert.match(issues(cnp('[{toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchName: a}], http: [{}]}}]}]'), true), /rules\.http: /);
  });
  test('normalised: FQDN peers select fqdn: identities, DNS rules ride on the port', () => {
    const [p] = policiesParse(cnp(FQDN_RULES), undefined, { dnsPolicy: true });
    const [s0, s1] = p!.rules[0]!.sections;
    assert.deepEqual(s0!.peers, [
      { kind: 'selector', selector: { requirements: [{ source: 'fqdn', key: 'matchName:api.test.', operator: 'Exists', values: [] }] } },
      { kind: 'selector', selector: { requirements: [{ source: 'fqdn', key: 'matchPattern:*.test.', operator: 'Exists', values: [] }] } },
    ]);
    assert.deepEqual(s1!.ports, [{ protocol: -1, port: 53, dns: [{ matchPattern: '*' }] }]);
  });
  test('compiled: only the identities labelled with the selector, none learned = nothing allowed', () => {
    const ids = new Map<number, string[]>();
    for (let i = 1; i <= 10; i++) ids.set(i, reservedIdentityLabels(i));
    ids.set(301, identityLabels({ app: 'client' }, 'prod').map(labelFormat));
    const endpoints = [{ endpointId: 1, identity: 301 }];
    const policies = policiesParse(cnp('[{toFQDNs: [{matchName: API.test}]}]'), undefined, { dnsPolicy: true });
    const none = policyCompile({ policies, identities: ids, endpoints }).endpoints[0]!;
    assert.equal(none.egressEnforced, true);
    assert.deepEqual(none.entries.filter((e) => e.direction === 'egress'), []);
    const learned = new Map(ids);
    const API = LOCAL_IDENTITY_FLAG | 0x8001;
    const OTHER = LOCAL_IDENTITY_FLAG | 0x8002;
    learned.set(API, [fqdnSelectorLabel({ matchName: 'api.test' })]);
    learned.set(OTHER, [fqdnSelectorLabel({ matchName: 'other.test' })]);
    const out = policyCompile({ policies, identities: learned, endpoints }).endpoints[0]!;
    assert.deepEqual(out.entries.filter((e) => e.direction === 'egress').map((e) => e.identity), [API]);
  });
});
