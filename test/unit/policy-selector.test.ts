import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { identityLabels, labelFormat } from '../../common/labels.js';
import { policiesParse } from '../../agent/policy/index.js';
import {
  ciliumPeerSelector,
  ciliumSubjectSelector,
  identityLabelParse,
  selectorFromLabelSelector,
  selectorMatchesStrings,
} from '../../agent/policy/selector.js';
import type { Selector } from '../../agent/policy/types.js';

const pod = (labels: Record<string, string>, ns: string, nsLabels: Record<string, string> = {}) =>
  identityLabels(labels, ns, nsLabels).map(labelFormat);

const webProd = pod({ app: 'web', tier: 'front' }, 'prod', { env: 'production' });
const dbProd = pod({ app: 'db' }, 'prod', { env: 'production' });
const webDev = pod({ app: 'web' }, 'dev', { env: 'development' });
const host = ['reserved:host'];

const k8s = (sel: Parameters<typeof selectorFromLabelSelector>[0]) => selectorFromLabelSelector(sel, 'k8s');
const m = (sel: Selector, labels: string[]) => selectorMatchesStrings(sel, labels);

describe('identity labels', () => {
  test('parse source, key, value', () => {
    assert.deepEqual(identityLabelParse('k8s:app=web'), { source: 'k8s', key: 'app', value: 'web' });
    assert.deepEqual(identityLabelParse('reserved:host'), { source: 'reserved', key: 'host', value: '' });
    assert.deepEqual(identityLabelParse('k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x'), {
      source: 'k8s',
      key: 'io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name',
      value: 'x',
    });
  });
});

describe('selector operators', () => {
  test('empty selector selects everything', () => {
    assert.ok(m(k8s({}), webProd) && m(k8s(undefined), host));
  });
  test('matchLabels', () => {
    assert.ok(m(k8s({ matchLabels: { app: 'web' } }), webProd));
    assert.ok(!m(k8s({ matchLabels: { app: 'web' } }), dbProd));
    assert.ok(!m(k8s({ matchLabels: { app: 'web', tier: 'front' } }), webDev), 'all labels must match');
  });
  test('In / NotIn / Exists / DoesNotExist', () => {
    const e = (operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist', values?: string[]) => k8s({ matchExpressions: [{ key: 'tier', operator, values }] });
    assert.ok(m(e('In', ['front', 'back']), webProd));
    assert.ok(!m(e('In', ['back']), webProd));
    assert.ok(!m(e('In', ['front']), dbProd), 'In needs the key');
    assert.ok(!m(e('NotIn', ['front']), webProd));
    assert.ok(m(e('NotIn', ['back']), webProd));
    assert.ok(m(e('NotIn', ['front']), dbProd), 'NotIn holds when the key is absent');
    assert.ok(m(e('Exists'), webProd) && !m(e('Exists'), dbProd));
    assert.ok(!m(e('DoesNotExist'), webProd) && m(e('DoesNotExist'), dbProd));
  });
  test('matchLabels and matchExpressions AND together', () => {
    const s = k8s({ matchLabels: { app: 'web' }, matchExpressions: [{ key: 'tier', operator: 'Exists' }] });
    assert.ok(m(s, webProd) && !m(s, webDev));
  });
  test('sources: k8s:, any:, bare keys in Cilium selectors, reserved:', () => {
    const vm = ['vm:app=web', 'k8s:io.kubernetes.pod.namespace=prod'];
    assert.ok(m(selectorFromLabelSelector({ matchLabels: { app: 'web' } }, 'any'), vm), 'bare key = any source');
    assert.ok(m(selectorFromLabelSelector({ matchLabels: { 'any:app': 'web' } }, 'any'), vm));
    assert.ok(!m(selectorFromLabelSelector({ matchLabels: { 'k8s:app': 'web' } }, 'any'), vm));
    assert.ok(m(selectorFromLabelSelector({ matchLabels: { 'k8s:app': 'web' } }, 'any'), webProd));
    assert.ok(m(selectorFromLabelSelector({ matchLabels: { 'reserved:host': '' } }, 'any'), host));
  });
});

describe('namespace scoping', () => {
  const any = (sel: Parameters<typeof selectorFromLabelSelector>[0]) => selectorFromLabelSelector(sel, 'any');
  test('namespaced CNP peers are restricted to the policy namespace', () => {
    const s = ciliumPeerSelector(any({ matchLabels: { app: 'web' } }), 'prod');
    assert.ok(m(s, webProd) && !m(s, webDev));
  });
  test('... unless they name the namespace (k8s: or any:)', () => {
    const s = ciliumPeerSelector(any({ matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'dev' } }), 'prod');
    assert.ok(m(s, webDev) && !m(s, webProd));
    const s2 = ciliumPeerSelector(any({ matchExpressions: [{ key: 'io.kubernetes.pod.namespace', operator: 'Exists' }] }), 'prod');
    assert.ok(m(s2, webDev) && m(s2, webProd));
  });
  test('... or select on namespace labels', () => {
    const s = ciliumPeerSelector(any({ matchLabels: { 'k8s:io.cilium.k8s.namespace.labels.env': 'development' } }), 'prod');
    assert.ok(m(s, webDev) && !m(s, webProd));
  });
  test('reserved selectors are never scoped', () => {
    assert.ok(m(ciliumPeerSelector(any({ matchLabels: { 'reserved:host': '' } }), 'prod'), host));
  });
  test('cluster-wide peers only match endpoints with a namespace', () => {
    const s = ciliumPeerSelector(any({}), '');
    assert.ok(m(s, webProd) && m(s, webDev) && !m(s, host) && !m(s, ['reserved:world']));
  });
  test('a namespaced subject always applies in its namespace', () => {
    const s = ciliumSubjectSelector(any({ matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'dev', app: 'web' } }), 'prod');
    assert.ok(m(s, webProd) && !m(s, webDev));
    assert.ok(m(ciliumSubjectSelector(any({}), ''), webDev), 'cluster-wide subject is unscoped');
  });
});

describe('NetworkPolicy peers', () => {
  const peers = (from: string) => {
    const [p] = policiesParse(`apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: prod}\nspec:\n  podSelector: {}\n  ingress: [{from: ${from}}]\n`);
    const s = p!.rules[0]!.sections[0]!;
    return (labels: string[]) => s.peers !== 'all' && s.peers.some((x) => x.kind === 'selector' && m(x.selector, labels));
  };
  test('podSelector alone: policy namespace only', () => {
    const f = peers('[{podSelector: {matchLabels: {app: web}}}]');
    assert.ok(f(webProd) && !f(webDev) && !f(dbProd));
  });
  test('empty podSelector: all pods of the namespace', () => {
    const f = peers('[{podSelector: {}}]');
    assert.ok(f(webProd) && f(dbProd) && !f(webDev) && !f(host));
  });
  test('namespaceSelector matches namespace labels', () => {
    const f = peers('[{namespaceSelector: {matchLabels: {env: development}}}]');
    assert.ok(f(webDev) && !f(webProd));
    const byName = peers('[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}}]');
    assert.ok(byName(webDev) && !byName(webProd));
  });
  test('empty namespaceSelector: every pod in every namespace, never reserved identities', () => {
    const f = peers('[{namespaceSelector: {}}]');
    assert.ok(f(webDev) && f(webProd) && !f(host) && !f(['reserved:world']));
  });
  test('podSelector AND namespaceSelector in one peer', () => {
    const f = peers('[{namespaceSelector: {matchLabels: {env: production}}, podSelector: {matchLabels: {app: db}}}]');
    assert.ok(f(dbProd) && !f(webProd) && !f(webDev));
  });
  test('separate peers OR', () => {
    const f = peers('[{namespaceSelector: {matchLabels: {env: development}}}, {podSelector: {matchLabels: {app: db}}}]');
    assert.ok(f(dbProd) && f(webDev) && !f(webProd));
  });
  test('namespaceSelector matchExpressions', () => {
    const f = peers('[{namespaceSelector: {matchExpressions: [{key: env, operator: NotIn, values: [production]}]}}]');
    assert.ok(f(webDev) && !f(webProd));
  });
});
