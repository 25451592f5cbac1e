import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { IdentityAllocator, lowestFree } from '../../agent/identity/allocator.js';
import { identityLabels, labelFormat, labelSetKey, workloadLabelKeyForbidden } from '../../common/labels.js';
import { IDENTITY_MIN } from '../../agent/identity/reserved.js';
import { sqliteStoreOpen, type StoreTx } from '../../agent/store/index.js';

describe('identity labels', () => {
  test('add namespace labels and default the k8s source', () => {
    const labels = identityLabels({ app: 'web', 'vm:role': 'db' }, 'prod').map(labelFormat);
    assert.deepEqual(labels, [
      'k8s:app=web',
      'k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod',
      'k8s:io.kubernetes.pod.namespace=prod',
      'vm:role=db',
    ]);
  });
  test('the key does not depend on label order', () => {
    const a = labelSetKey(identityLabels({ a: '1', b: '2' }, 'x'));
    const b = labelSetKey(identityLabels({ b: '2', a: '1' }, 'x'));
    assert.equal(a, b);
    assert.notEqual(a, labelSetKey(identityLabels({ a: '1', b: '2' }, 'y')));
  });
});

describe('workload label keys kitnet derives itself', () => {
  const forbidden = [
    'io.kubernetes.pod.namespace', 'k8s:io.kubernetes.pod.namespace', 'container:io.kubernetes.pod.namespace',
    'io.cilium.k8s.namespace.labels.team', 'k8s:io.cilium.k8s.namespace.labels.team', 'io.cilium.k8s.namespace.labels',
    'io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name',
    'io.cilium.k8s.policy.serviceaccount', 'unspec:io.cilium.k8s.policy.cluster', 'io.cilium.k8s.policy',
    'reserved:host', 'reserved:world', 'reserved:anything', 'cidr:10.0.0.0/8', 'fqdn:example.com',
  ];
  const allowed = [
    'app', 'k8s:app', 'vm:role', 'container:tier', 'kubernetes.io/metadata.name', 'io.kubernetes.pod.name',
    'io.cilium.k8s.policyx', 'io.cilium.k8s.namespace.labelsx', 'example.com/io.kubernetes.pod.namespace', 'reservedx:host',
  ];
  for (const key of forbidden) {
    test(`refuses ${key}, naming it`, () => {
      const why = workloadLabelKeyForbidden(key);
      assert.ok(why?.includes(`"${key}"`), String(why));
    });
  }
  for (const key of allowed) test(`allows ${key}`, () => assert.equal(workloadLabelKeyForbidden(key), undefined));

  test('a stored row with a forged label (registered before the check) does not forge its identity', () => {
    const labels = identityLabels({ app: 'x', 'io.cilium.k8s.namespace.labels.team': 'prod', 'reserved:host': '' }, 'dev').map(labelFormat);
    assert.deepEqual(labels, [
      'k8s:app=x',
      'k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=dev',
      'k8s:io.kubernetes.pod.namespace=dev',
    ]);
  });
});

describe('lowestFree', () => {
  test('finds gaps', () => {
    assert.equal(lowestFree([], 256, 300), 256);
    assert.equal(lowestFree([256, 257, 259], 256, 300), 258);
    assert.equal(lowestFree([1, 2, 256], 256, 300), 257);
    assert.equal(lowestFree([256, 257], 256, 257), undefined);
  });
});

describe('IdentityAllocator with the SQLite store', () => {
  function insertWorkload(tx: StoreTx, name: string, identity: number, n: number) {
    tx.workloadInsert({
      spec: { name, namespace: 'default', kind: 'netns', labels: {}, netns: '/x', requestedMode: 'auto', interface: 'eth0' },
      mode: 'veth',
      endpointId: n,
      identity,
      ipv4: `10.0.0.${n}`,
      ipv6: `fd00::${n}`,
      hostIfname: `kn${n}`,
    });
  }

  test('same labels share a number; new sets get the next; release when unused; stable across reopen', async () => {
    const store = sqliteStoreOpen(':memory:');
    const alloc = new IdentityAllocator();
    const acquire = (labels: Record<string, string>) => store.transaction((tx) => alloc.acquire(tx, labels, 'default'));
    const web = await acquire({ app: 'web' });
    assert.equal(web, IDENTITY_MIN);
    assert.equal(await acquire({ app: 'web' }), web);
    const db = await acquire({ app: 'db' });
    assert.equal(db, IDENTITY_MIN + 1);
    await store.transaction((tx) => {
      insertWorkload(tx, 'w1', web, 1);
      insertWorkload(tx, 'w2', web, 2);
    });
    // db has no workload: released; web is still referenced twice.
    assert.deepEqual(await store.transaction((tx) => tx.identitiesReleaseUnused()), [db]);
    assert.equal(store.identityGet(web)?.references, 2);
    await store.transaction((tx) => tx.workloadDelete('default', 'w1'));
    assert.deepEqual(await store.transaction((tx) => tx.identitiesReleaseUnused()), []);
    await store.transaction((tx) => tx.workloadDelete('default', 'w2'));
    assert.deepEqual(await store.transaction((tx) => tx.identitiesReleaseUnused()), [web]);
    assert.equal(store.identityList().length, 0);
    // Released numbers are not handed out again at once: allocation moves on round-robin.
    assert.equal(await acquire({ app: 'web' }), IDENTITY_MIN + 2);
    store.close();
  });
});
