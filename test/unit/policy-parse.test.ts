import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { policiesFromObjects, policiesParse, PolicyValidationError } from '../../agent/policy/index.js';
import { POLICY_LIMITS } from '../../agent/policy/limits.js';
import { policyObjectsBound } from '../../agent/policy/parse-documents.js';
import { yamlShapeEstimate } from '../../common/yaml-guard.js';
import type { ParsedPolicy } from '../../agent/policy/index.js';

const np = (name: string, ns?: string) => `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ${name}${ns ? `, namespace: ${ns}` : ''}}
spec:
  podSelector: {}
`;

function parseError(text: string, contentType?: string): PolicyValidationError {
  try {
    policiesParse(text, contentType);
  } catch (e) {
    assert.ok(e instanceof PolicyValidationError, String(e));
    return e;
  }
  assert.fail('expected a validation error');
}

describe('policiesParse: formats', () => {
  test('single YAML document', () => {
    const [p] = policiesParse(np('a', 'prod'));
    assert.equal(p!.kind, 'NetworkPolicy');
    assert.equal(p!.ref, 'NetworkPolicy prod/a');
  });
  test('multi-document YAML, empty documents skipped', () => {
    const ps = policiesParse(`---\n${np('a', 'x')}---\n---\n${np('b', 'y')}\n---\n`);
    assert.deepEqual(ps.map((p) => p.ref), ['NetworkPolicy x/a', 'NetworkPolicy y/b']);
  });
  test('JSON object, array and List', () => {
    const doc = { apiVersion: 'networking.k8s.io/v1', kind: 'NetworkPolicy', metadata: { name: 'a', namespace: 'x' }, spec: { podSelector: {} } };
    assert.equal(policiesParse(JSON.stringify(doc)).length, 1);
    assert.equal(policiesParse(JSON.stringify([doc, { ...doc, metadata: { name: 'b' } }])).length, 2);
    const list = { apiVersion: 'v1', kind: 'List', items: [doc, { ...doc, metadata: { name: 'c' } }] };
    assert.deepEqual(policiesParse(JSON.stringify(list), 'application/json').map((p) => p.ref), ['NetworkPolicy x/a', 'NetworkPolicy default/c']);
  });
  test('YAML List (kubectl get -o yaml)', () => {
    const ps = policiesParse(`apiVersion: v1\nkind: List\nitems:\n- apiVersion: cilium.io/v2\n  kind: CiliumNetworkPolicy\n  metadata: {name: a}\n  spec: {endpointSelector: {}}\n`);
    assert.equal(ps[0]!.ref, 'CiliumNetworkPolicy default/a');
  });
  test('namespace defaults to default; cluster-wide has none', () => {
    assert.equal(policiesParse(np('a'))[0]!.namespace, 'default');
    assert.equal((policiesParse(np('a'))[0]!.document.metadata as { namespace: string }).namespace, 'default');
    const [c] = policiesParse('apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cw}\nspec: {endpointSelector: {}}\n');
    assert.equal(c!.namespace, '');
    assert.equal(c!.ref, 'CiliumClusterwideNetworkPolicy cw');
  });
  test('CNP with specs yields one rule per spec, refs name the spec', () => {
    const [p] = policiesParse(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: multi, namespace: prod}
specs:
- endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEntities: [world]}]
- endpointSelector: {matchLabels: {app: b}}
  egress: [{toEntities: [cluster]}]
`);
    assert.equal(p!.rules.length, 2);
    assert.equal(p!.rules[1]!.sections[0]!.ref, 'CiliumNetworkPolicy prod/multi specs[1].egress[0]');
  });
});

describe('policiesParse: errors name the document and the field', () => {
  test('the example from issue 3', () => {
    const e = parseError(`${np('ok', 'x')}---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "99999"}]
`);
    assert.equal(
      e.message,
      'document 2 (CiliumNetworkPolicy prod/allow-web): spec.ingress[0].toPorts[0].ports[0].port: must be a port number 1-65535 or a port name',
    );
    assert.equal(e.code, 'AGENT_ERR_POLICY_INVALID');
    assert.equal(e.statusCode, 400);
    assert.equal(e.issues[0]!.path, 'spec.ingress[0].toPorts[0].ports[0].port');
  });
  test('one invalid document rejects the batch and every problem is listed', () => {
    const e = parseError(`${np('a', 'x')}---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]
    ports: [{port: 0}, {protocol: ICMP}, {port: http, endPort: 90}]
`);
    const lines = e.message.split('\n');
    assert.ok(lines.every((l) => l.startsWith('document 2 (NetworkPolicy x/bad): ')), e.message);
    const paths = e.issues.map((i) => i.path);
    assert.deepEqual(paths.sort(), [
      'spec.ingress[0].from[0].ipBlock.except[0]',
      'spec.ingress[0].ports[0].port',
      'spec.ingress[0].ports[1].protocol',
      'spec.ingress[0].ports[2].endPort',
    ]);
  });
  test('unknown fields are named', () => {
    const e = parseError('apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoint: [{}]}]\n');
    assert.match(e.message, /document 1 \(CiliumNetworkPolicy default\/a\): spec\.ingress\[0\]\.fromEndpoint: unknown field/);
  });
  test('unknown kind and apiVersion are clear', () => {
    assert.match(parseError('apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n').message, /document 1 \(Pod default\/p\): kind: unsupported kind "Pod"; expected NetworkPolicy/);
    assert.match(
      parseError('apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\n').message,
      /apiVersion: unsupported apiVersion "cilium.io\/v1" for CiliumNetworkPolicy; expected cilium.io\/v2/,
    );
    assert.match(parseError('apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\n').message, /expected networking.k8s.io\/v1/);
  });
  test('syntax errors', () => {
    assert.match(parseError('a: [1, 2\n').message, /document 1 \(YAML\): not valid YAML/);
    assert.match(parseError('{"a": ', 'application/json').message, /not valid JSON/);
    assert.match(parseError('{"a": ').message, /not valid YAML/);
    assert.equal(policiesParse('[{apiVersion: cilium.io/v2, kind: CiliumNetworkPolicy, metadata: {name: a}, spec: {endpointSelector: {}}}]').length, 1, 'YAML flow style');
    assert.match(parseError('- 1\n- 2\n').message, /document 1 \(\?\): must be an object/);
  });
  test('missing and invalid required fields', () => {
    assert.match(parseError('apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\nspec: {podSelector: {}}\n').message, /metadata\.name: is required/);
    assert.match(parseError('apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\n').message, /: spec: /);
    assert.match(parseError('apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\n').message, /spec: spec or specs is required/);
    assert.match(parseError('apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec: {ingress: []}\n').message, /spec\.endpointSelector: is required/);
    assert.match(parseError('apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {endpointSelector: {}}\n').message, /metadata\.namespace: must not be set/);
  });
  test('selectors: operators need the right values, label values must be strings', () => {
    const base = (sel: string) => `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: ${sel}\n`;
    assert.match(parseError(base('{matchExpressions: [{key: a, operator: In}]}')).message, /spec\.podSelector\.matchExpressions\[0\]\.values: must not be empty for operator In/);
    assert.match(parseError(base('{matchExpressions: [{key: a, operator: Exists, values: [x]}]}')).message, /values: must be empty for operator Exists/);
    assert.match(parseError(base('{matchExpressions: [{key: a, operator: Gt, values: ["1"]}]}')).message, /operator: /);
    assert.match(parseError(base('{matchLabels: {version: 1}}')).message, /spec\.podSelector\.matchLabels\.version: label values must be strings/);
  });
  test('Cilium specifics: entities, ICMP, CIDR, unsupported features', () => {
    const cnp = (rule: string) => `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: p}\nspec:\n  endpointSelector: {}\n  ${rule}\n`;
    assert.match(parseError(cnp('ingress: [{fromEntities: [everything]}]')).message, /spec\.ingress\[0\]\.fromEntities\[0\]: must be one of all, world/);
    assert.match(parseError(cnp('ingress: [{icmps: [{fields: [{type: Bogus}]}]}]')).message, /icmps\[0\]\.fields\[0\]\.type: must be 0-255 or an IPv4 ICMP type name/);
    assert.match(parseError(cnp('ingress: [{icmps: [{fields: [{type: 300, family: IPv6}]}]}]')).message, /must be 0-255 or an IPv6 ICMP type name/);
    assert.match(parseError(cnp('ingress: [{icmps: [{fields: [{type: 8}]}], toPorts: [{ports: [{port: "80"}]}]}]')).message, /icmps: icmps and toPorts cannot be used in the same rule/);
    assert.match(parseError(cnp('egress: [{toCIDR: [10.0.0.0/33]}]')).message, /spec\.egress\[0\]\.toCIDR\[0\]: "10.0.0.0\/33" is not a CIDR/);
    assert.match(parseError(cnp('egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: ["fd00::/64"]}]}]')).message, /toCIDRSet\[0\]\.except\[0\]: fd00::\/64 is not inside of 10.0.0.0\/8/);
    assert.match(parseError(cnp('egress: [{toFQDNs: [{matchName: "a com"}]}]')).message, /spec\.egress\[0\]\.toFQDNs\[0\]\.matchName: "a com" has characters/);
    assert.match(parseError(cnp('ingress: [{toPorts: [{ports: [{port: "80"}], rules: {http: [{}]}}]}]')).message, /toPorts\[0\]\.rules\.http: L7 rule type http is not supported by kitnet/);
    assert.match(parseError(cnp('ingress: [{toPorts: [{ports: [{port: "80", protocol: GRE}]}]}]')).message, /protocol: must be TCP, UDP, SCTP, ICMP, ICMPv6 or ANY/);
    assert.match(parseError(cnp('ingress: [{toPorts: [{ports: [{port: "90", endPort: 80}]}]}]')).message, /endPort: must be >= port \(90\)/);
  });
  test('duplicate names within a batch', () => {
    assert.match(parseError(`${np('a', 'x')}---\n${np('a', 'x')}`).message, /document 2 \(NetworkPolicy x\/a\): metadata\.name: duplicates document 1/);
  });
});

describe('policiesParse: normalisation', () => {
  const one = (yaml: string): ParsedPolicy => policiesParse(yaml)[0]!;
  test('NP policyTypes inference', () => {
    const types = (spec: string) => [...new Set(one(`apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n${spec}`).rules[0]!.sections.map((s) => s.direction))];
    assert.deepEqual(types(''), ['ingress']);
    assert.deepEqual(types('  egress: [{}]\n'), ['ingress', 'egress']);
    assert.deepEqual(types('  egress: []\n'), ['ingress']);
    assert.deepEqual(types('  policyTypes: [Egress]\n  ingress: [{}]\n'), ['egress']);
  });
  test('NP ports: protocol defaults to TCP, missing port = all ports, names kept', () => {
    const p = one('apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}, {protocol: UDP}, {port: dns, protocol: UDP}, {port: 1000, endPort: 2000, protocol: SCTP}]}]\n');
    assert.deepEqual(p.rules[0]!.sections[0]!.ports, [
      { protocol: 6, port: 80 },
      { protocol: 17, port: 0 },
      { protocol: 17, port: 'dns' },
      { protocol: 132, port: 1000, endPort: 2000 },
    ]);
  });
  test('CNP ICMP names and numbers become type matches', () => {
    const p = one('apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress: [{icmps: [{fields: [{type: EchoRequest}, {type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}, {type: "0"}]}]}]\n');
    assert.deepEqual(p.rules[0]!.sections[0]!.ports, [
      { protocol: 1, port: 8, endPort: 8 },
      { protocol: 1, port: 8, endPort: 8 },
      { protocol: 58, port: 128, endPort: 128 },
      { protocol: 1, port: 0, endPort: 0 },
    ]);
  });
  test('CNP enableDefaultDeny and empty rules', () => {
    const p = one('apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  enableDefaultDeny: {ingress: false}\n  ingress: [{}]\n  egressDeny: [{toEntities: [world]}]\n');
    assert.deepEqual(p.rules[0]!.defaultDeny, { ingress: false, egress: true });
    assert.deepEqual(p.rules[0]!.sections[0]!.peers, []);
    assert.deepEqual(p.rules[0]!.sections[1], { ref: 'CiliumNetworkPolicy default/a egressDeny[0]', direction: 'egress', deny: true, peers: [{ kind: 'entity', entity: 'world' }], ports: 'all' });
  });
  test('CIDRs are canonicalised; a bare address is a host prefix', () => {
    const p = one('apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  egress: [{toCIDR: [10.1.2.3/8, 192.0.2.1, "2001:db8:0:0::1"]}]\n');
    assert.deepEqual(p.rules[0]!.sections[0]!.peers, [
      { kind: 'cidr', cidr: '10.0.0.0/8', except: [] },
      { kind: 'cidr', cidr: '192.0.2.1/32', except: [] },
      { kind: 'cidr', cidr: '2001:db8::1/128', except: [] },
    ]);
  });
});

describe('request limits (agent/policy/limits.ts)', () => {
  const code = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      return `${(e as { code?: string }).code} ${(e as Error).message}`;
    }
    return 'accepted';
  };
  test('YAML beyond the document or node estimate is refused before parsing, naming the limit', () => {
    assert.match(code(() => policiesParse('a: 1\n---\n'.repeat(POLICY_LIMITS.documents + 1))), new RegExp(`AGENT_ERR_POLICY_TOO_LARGE .*limit is ${POLICY_LIMITS.documents} documents`));
    assert.match(code(() => policiesParse(`[${'1,'.repeat(POLICY_LIMITS.nodes)}1]`, 'application/yaml')), new RegExp(`AGENT_ERR_POLICY_TOO_LARGE .*limit is ${POLICY_LIMITS.nodes} nodes`));
  });
  test('the estimate counts documents, lines and flow items', () => {
    assert.deepEqual(yamlShapeEstimate('a: 1\n---\nb: [1, 2]\n\n--- \nc: {d: 1}\n...'), { documents: 3, nodes: 6 + 3 });
  });
  test('JSON values: documents, nodes and nesting are bounded; validation stops after the first problems', () => {
    assert.match(code(() => policyObjectsBound(Array.from({ length: POLICY_LIMITS.documents + 1 }, () => ({})))), /AGENT_ERR_POLICY_TOO_LARGE .*documents/);
    assert.match(code(() => policyObjectsBound([{ kind: 'List', items: Array.from({ length: POLICY_LIMITS.documents + 1 }, () => ({})) }])), /AGENT_ERR_POLICY_TOO_LARGE .*documents/);
    assert.match(code(() => policyObjectsBound([{ a: Array.from({ length: POLICY_LIMITS.nodes }, () => 1) }])), /AGENT_ERR_POLICY_TOO_LARGE .*nodes/);
    let deep: unknown = {};
    for (let i = 0; i < 20_000; i++) deep = { a: deep };
    assert.match(code(() => policyObjectsBound([deep])), /AGENT_ERR_POLICY_INVALID .*nested too deeply/);
    const err = code(() => policiesFromObjects(Array.from({ length: 100 }, () => ({ kind: 'x' }))));
    assert.equal(err.split('\n').filter((l) => l.includes('document ')).length, POLICY_LIMITS.issues);
  });
});
