// Which resolvers the DNS proxy forwards a workload's query to (agent/dns/steering.ts, verdict): never
// one the workload could not reach itself, as the proxy's own sockets would reach it from the host.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ReservedIdentity } from '../../agent/identity/reserved.js';
import { specialAddressKind } from '../../agent/dns/special-address.js';
import { steeringHarness } from '../helpers/dns-steering-harness.js';

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toEntities: [world, host]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
`;

test('a query to a host-local or special resolver address is refused, whatever the policy allows; its identity is not world', async () => {
  const h = await steeringHarness(POLICY);
  try {
    await h.workloadAdd('a', 'a', '10.9.0.1', 'fd09::1');
    let port = 41000;
    const ask = (resolver: string) => h.query({ address: resolver.includes(':') ? 'fd09::1' : '10.9.0.1', port: port++ }, { address: resolver, port: 53 }, 'api.test');
    // An ordinary resolver in the world: allowed (DNS to world with matchPattern "*").
    assert.equal(ask('192.0.2.53').verdict.allowed, true);
    assert.equal(ask('2001:db8::53').verdict.allowed, true);
    // IPv4 link-local is routed by the host like any address: a cloud's metadata resolver
    assert.equal(ask('169.254.169.253').verdict.allowed, true);
    for (const [resolver, kind] of [
      ['127.0.0.53', 'loopback'], ['127.0.0.1', 'loopback'], ['0.0.0.0', 'unspecified'], ['::', 'unspecified'], ['::1', 'loopback'],
      ['::ffff:192.0.2.53', 'ipv4-mapped'], ['::ffff:127.0.0.1', 'ipv4-mapped'], ['::c000:235', 'ipv4-compatible'],
      ['fe80::1', 'link-local'], ['224.0.0.251', 'multicast'], ['ff02::fb', 'multicast'], ['255.255.255.255', 'broadcast'],
      ['169.254.1.53', 'the DNS proxy itself'], ['fd00:6b69:746e:6574::53', 'the DNS proxy itself'],
    ] as const) {
      const { verdict } = ask(resolver);
      assert.equal(verdict.allowed, false, resolver);
      assert.equal(verdict.refusal, 'resolver', resolver);
      assert.match(verdict.rule ?? '', new RegExp(`^resolver ${resolver.replace(/[.]/g, '\\.')} is (a |an |the )?${kind}`), resolver);
      assert.deepEqual(verdict.resolver, { address: resolver, port: 53 });
      const id = h.steering.identityOf(resolver);
      // An IPv4-mapped address is the IPv4 address it stands for (world for one in the world).
      if (kind === 'ipv4-mapped') assert.equal(id, h.steering.identityOf(resolver.slice('::ffff:'.length)), resolver);
      else assert.ok(id !== ReservedIdentity.world && id !== ReservedIdentity['world-ipv4'] && id !== ReservedIdentity['world-ipv6'], `${resolver}: identity ${id}`);
    }
    assert.equal(h.steering.identityOf('127.0.0.53'), ReservedIdentity.host);
    assert.equal(h.steering.identityOf('::ffff:127.0.0.53'), ReservedIdentity.host);
    assert.equal(h.steering.identityOf('::ffff:10.9.0.1'), h.store.workloadList()[0]!.identity, 'an IPv4-mapped address is the IPv4 address it maps to');
  } finally {
    await h.close();
  }
});

test('special addresses: the kinds', () => {
  for (const a of ['10.0.0.1', '192.0.2.1', '8.8.8.8', '100.64.0.1', '2001:db8::1', 'fd00::1', '64:ff9b::1.2.3.4']) assert.equal(specialAddressKind(a), undefined, a);
  assert.equal(specialAddressKind('0.1.2.3'), 'unspecified');
  assert.equal(specialAddressKind('169.254.169.254'), undefined, 'IPv4 link-local: routed by the host (cloud metadata)');
  assert.equal(specialAddressKind('240.0.0.1'), 'reserved');
  assert.equal(specialAddressKind('239.255.255.250'), 'multicast');
  assert.equal(specialAddressKind('febf::1'), 'link-local');
  assert.equal(specialAddressKind('fec0::1'), undefined);
  assert.equal(specialAddressKind('::ffff:102:304'), 'ipv4-mapped');
  assert.equal(specialAddressKind('1.2.3'), 'not an address');
  assert.equal(specialAddressKind('1.2.3.256'), 'not an address');
  assert.equal(specialAddressKind('zz::'), 'not an address');
});

test('a workload change just before stop: the check it queued does not read the closed store', async () => {
  const h = await steeringHarness(POLICY);
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  process.on('uncaughtException', onUncaught);
  try {
    // As the agent's shutdown does: a store change, steering stopped and the store closed in one turn.
    h.store.subscribe(() => undefined);
    await h.store.transaction((tx) => tx.namespacePut('prod', { team: 'x' }));
    const rec = await h.workloadAdd('b', 'b', '10.9.0.2', 'fd09::2');
    await h.store.transaction((tx) => tx.workloadDelete(rec.spec.namespace, rec.spec.name));
    await h.steering.stop();
    h.store.close();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(uncaught.map(String), []);
  } finally {
    process.off('uncaughtException', onUncaught);
  }
});
