// What the DNS proxy's learned addresses may do to the ipcache (agent/dns/steering.ts,
// learnedKeyHolder): never displace, nor at expiry delete, an entry another holder has (this host's
// workloads and addresses, other nodes' workloads, a policy's own CIDR entry), now or later.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { hostDestinationsListedSet } from '../../agent/policy/host-destinations.js';
import { steeringHarness } from '../helpers/dns-steering-harness.js';

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toFQDNs: [{matchPattern: "*.test"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toEntities: [world]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
  egressDeny:
  - toCIDR: [192.0.2.99/32]
`;

const FQDN_BASE = (1 << 24) | (1 << 23);
const isFqdn = (id: number | undefined) => id !== undefined && (id & FQDN_BASE) === FQDN_BASE;

test('a learned address never takes or deletes another node\'s workload entry (remote, host field set)', async () => {
  const h = await steeringHarness(POLICY);
  try {
    await h.workloadAdd('a', 'a', '10.9.0.1', 'fd09::1');
    // Known before the answer: never written over, neither by the answer nor by a full sync.
    h.remote.set('10.200.0.5', 70_000);
    h.ipcache.set('10.200.0.5/32', { identity: 70_000, hostId: 1234 });
    await h.learn('10.9.0.1', [{ name: 'evil.test', addresses: ['10.200.0.5'], ttl: 0 }]);
    assert.deepEqual(h.ipcache.get('10.200.0.5/32'), { identity: 70_000, hostId: 1234 });
    h.engine.ipcacheSync();
    assert.deepEqual(h.ipcache.get('10.200.0.5/32'), { identity: 70_000, hostId: 1234 }, 'a full sync keeps it too');
    await h.expire();
    assert.deepEqual(h.ipcache.get('10.200.0.5/32'), { identity: 70_000, hostId: 1234 }, 'expiry does not delete it');
    // Appearing after the proxy wrote the address: the cluster watch writes over it; the proxy leaves it.
    await h.learn('10.9.0.1', [{ name: 'late.test', addresses: ['10.200.0.6'], ttl: 0 }]);
    assert.ok(isFqdn(h.ipcache.get('10.200.0.6/32')?.identity));
    h.remote.set('10.200.0.6', 70_001);
    h.ipcache.set('10.200.0.6/32', { identity: 70_001, hostId: 1234 });
    h.engine.ipcacheSync();
    assert.deepEqual(h.ipcache.get('10.200.0.6/32'), { identity: 70_001, hostId: 1234 }, 'a full sync does not rewrite it as a learned one');
    await h.learn('10.9.0.1', [{ name: 'late2.test', addresses: ['10.200.0.6'], ttl: 0 }]);
    assert.deepEqual(h.ipcache.get('10.200.0.6/32'), { identity: 70_001, hostId: 1234 }, 'a new label set is not written over it');
    await h.expire();
    assert.deepEqual(h.ipcache.get('10.200.0.6/32'), { identity: 70_001, hostId: 1234 }, 'nor deleted at expiry');
  } finally {
    await h.close();
  }
});

test('a policy\'s own /32 CIDR entry: merged with the learned labels, written back (not deleted) at expiry', async () => {
  const h = await steeringHarness(POLICY);
  try {
    const a = await h.workloadAdd('a', 'a', '10.9.0.1', 'fd09::1');
    const cidrEntry = h.ipcache.get('192.0.2.99/32');
    assert.ok(cidrEntry && cidrEntry.hostId === 0 && !isFqdn(cidrEntry.identity), 'the deny\'s CIDR entry');
    const denied = (id: number) => h.entries(a.endpointId).some((e) => e.direction === 'egress' && e.deny && e.identity === id);
    assert.ok(denied(cidrEntry.identity));
    await h.learn('10.9.0.1', [{ name: 'metadata.test', addresses: ['192.0.2.99'], ttl: 0 }]);
    // While learned: an identity carrying the prefix's own label, which the deny selects as it selects the prefix.
    const merged = h.ipcache.get('192.0.2.99/32')!;
    assert.ok(isFqdn(merged.identity) && merged.hostId === 0, JSON.stringify(merged));
    assert.ok(h.labels(merged.identity)?.includes('cidr:192.0.2.99/32'), String(h.labels(merged.identity)));
    assert.ok(h.labels(merged.identity)?.includes('fqdn:matchPattern:*.test.'), String(h.labels(merged.identity)));
    assert.ok(denied(merged.identity), 'the deny holds for the learned identity');
    h.engine.ipcacheSync();
    assert.ok(denied(h.ipcache.get('192.0.2.99/32')!.identity), 'and after a full sync');
    await h.expire();
    assert.deepEqual(h.ipcache.get('192.0.2.99/32'), cidrEntry, 'at expiry the policy\'s entry is back');
    assert.ok(denied(h.ipcache.get('192.0.2.99/32')!.identity));
  } finally {
    await h.close();
  }
});

test('a workload registered later at a learned address keeps its entry; the learned one comes back when it leaves', async () => {
  const h = await steeringHarness(POLICY);
  try {
    await h.workloadAdd('a', 'a', '10.9.0.1', 'fd09::1');
    await h.learn('10.9.0.1', [{ name: 'soon.test', addresses: ['10.9.0.50'], ttl: 3600 }]);
    const learned = h.ipcache.get('10.9.0.50/32');
    assert.ok(isFqdn(learned?.identity));
    const b = await h.workloadAdd('b', 'b', '10.9.0.50', 'fd09::50');
    await h.settle();
    assert.deepEqual(h.ipcache.get('10.9.0.50/32'), { identity: b.identity, hostId: 0 });
    // Another answer, a refresh, a full sync: the workload's entry stays.
    await h.learn('10.9.0.1', [{ name: 'soon2.test', addresses: ['10.9.0.50'], ttl: 0 }]);
    assert.deepEqual(h.ipcache.get('10.9.0.50/32'), { identity: b.identity, hostId: 0 });
    await h.expire();
    assert.deepEqual(h.ipcache.get('10.9.0.50/32'), { identity: b.identity, hostId: 0 }, 'not deleted when a learned name expires');
    h.engine.ipcacheSync();
    assert.deepEqual(h.ipcache.get('10.9.0.50/32'), { identity: b.identity, hostId: 0 });
    // The workload goes (the reconciler deletes its entries): the address is learned still, its entry returns.
    await h.store.transaction((tx) => tx.workloadDelete('prod', 'b'));
    h.ipcache.delete('10.9.0.50/32');
    h.ipcache.delete('fd09::50/128');
    await h.settle();
    assert.ok(isFqdn(h.ipcache.get('10.9.0.50/32')?.identity), JSON.stringify(h.ipcache.get('10.9.0.50/32')));
  } finally {
    await h.close();
  }
});

test('dns.proxy.maxTTL: learned addresses restored from a file of decades are held no longer; a deleted workload\'s share is released', async () => {
  const decades = Date.now() + 0x7fffffff * 1000;
  const h = await steeringHarness(POLICY, { maxTTL: 600 }, { version: 1, complete: true, identities: [], names: [{ name: 'old.test', addresses: [{ address: '192.0.2.40', expiresAt: decades, owner: 7 }, { address: '127.0.0.1', expiresAt: decades }] }] });
  try {
    const [kept] = h.steering.cache.entries('old.test');
    assert.equal(h.steering.cache.entries('old.test').length, 1, 'a special address an earlier run learned is not restored');
    assert.ok(kept && kept.address === '192.0.2.40' && kept.expiresAt <= Date.now() + 600_000, JSON.stringify(kept));
    assert.equal(h.steering.cache.ownedBy(7), 0, 'endpoint 7 is gone: no share');
    const a = await h.workloadAdd('a', 'a', '10.9.0.1', 'fd09::1');
    await h.learn('10.9.0.1', [{ name: 'x.test', addresses: ['192.0.2.41', '192.0.2.42'], ttl: 3600 }]);
    assert.equal(h.steering.cache.ownedBy(a.endpointId), 2);
    await h.store.transaction((tx) => tx.workloadDelete('prod', 'a'));
    assert.equal(h.steering.cache.ownedBy(a.endpointId), 0, 'released with the workload (its endpoint id may be given again)');
    assert.deepEqual(h.steering.cache.addresses('x.test'), ['192.0.2.41', '192.0.2.42'], 'the addresses stay until they expire');
  } finally {
    await h.close();
  }
});

test('an address the host just got: an answer learned right after the host-address watch wrote its entry leaves it host', async () => {
  const h = await steeringHarness(POLICY);
  const listed = [{ cidr: '127.0.0.1/8', loopback: true }];
  try {
    await h.workloadAdd('a', 'a', '10.9.0.1', 'fd09::1');
    hostDestinationsListedSet({ addresses: listed, localDelivery: [] });
    h.engine.hostDestinationsFollow();
    // An answer: the proxy reads the host's addresses as they are now.
    await h.learn('10.9.0.1', [{ name: 'one.test', addresses: ['198.51.100.1'], ttl: 60 }]);
    assert.ok(isFqdn(h.ipcache.get('198.51.100.1/32')?.identity));
    // The watch, as agent/host-address-watch.ts does it: the host's new address listed, its entries written.
    // (the kernel's local table has the subnet broadcast as a broadcast route)
    hostDestinationsListedSet({ addresses: [...listed, { cidr: '198.51.100.7/24', loopback: false }], localDelivery: ['198.51.100.255/32'] });
    assert.equal(h.engine.hostDestinationsFollow(), true);
    assert.deepEqual(h.ipcache.get('198.51.100.7/32'), { identity: 1, hostId: 0 });
    // A hostile resolver's answer with that address, at once: it must not take the host's entry.
    await h.learn('10.9.0.1', [{ name: 'two.test', addresses: ['198.51.100.7'], ttl: 60 }]);
    assert.deepEqual(h.ipcache.get('198.51.100.7/32'), { identity: 1, hostId: 0 }, 'still the host\'s');
    await h.learn('10.9.0.1', [{ name: 'three.test', addresses: ['198.51.100.255'], ttl: 60 }]);
    assert.deepEqual(h.ipcache.get('198.51.100.255/32'), { identity: 1, hostId: 0 }, 'its subnet broadcast too');
  } finally {
    hostDestinationsListedSet(undefined);
    await h.close();
  }
});
