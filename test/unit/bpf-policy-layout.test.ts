// The policy map layout has one definition (tools/gen/bpf-layout.ts): the generated TS layout matches the
// byte layout the policy compiler documents, and the compiler's encoder (agent/policy/map-key.ts) and the
// datapath's batch encoder (bpf/maps/policy.ts) produce the same bytes for every kind of entry, including
// the entries the real compiler emits. The BTF side (clang's layout) is covered by bpf-layout.test.ts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { identityLabels, labelFormat } from '../../common/labels.js';
import { reservedIdentityLabels } from '../../agent/identity/reserved.js';
import {
  DIRECTION_CODE,
  POLICY_F_DENY,
  POLICY_KEY_FULL_PREFIX,
  POLICY_KEY_SIZE,
  POLICY_KEY_STATIC_PREFIX,
  POLICY_VALUE_SIZE,
  policiesParse,
  policyCompile,
  policyEntriesEncode,
  policyKeyDecode,
  policyLookupKeyEncode,
} from '../../agent/policy/index.js';
import type { PolicyEntry } from '../../agent/policy/index.js';
import * as L from '../../bpf/layout.gen.js';
import { policyEntryDecode } from '../../bpf/maps/policy-key.js';
import { policyEntryOpsPack, policyWritesPack } from '../../bpf/maps/policy-pack.js';

describe('policy map layout (generated)', () => {
  test('struct policy_key / policy_value offsets', () => {
    assert.equal(L.POLICY_KEY.size, 16);
    assert.deepEqual(
      Object.entries(L.POLICY_KEY.fields).map(([n, f]) => [n, f.offset, f.size]),
      [['prefixlen', 0, 4], ['endpoint_id', 4, 4], ['identity', 8, 4], ['direction', 12, 1], ['protocol', 13, 1], ['port', 14, 2]],
    );
    assert.equal(L.POLICY_VALUE.size, 8);
    assert.deepEqual(
      Object.entries(L.POLICY_VALUE.fields).map(([n, f]) => [n, f.offset, f.size]),
      [['flags', 0, 1], ['pad0', 1, 3], ['cookie', 4, 4]],
    );
  });
  test('the compiler takes its constants from the generated layout', () => {
    assert.equal(POLICY_KEY_SIZE, L.POLICY_KEY.size);
    assert.equal(POLICY_VALUE_SIZE, L.POLICY_VALUE.size);
    assert.equal(POLICY_KEY_STATIC_PREFIX, L.POLICY_PREFIX_ANY_PROTO);
    assert.equal(POLICY_KEY_FULL_PREFIX, L.POLICY_PREFIX_FULL);
    assert.equal(L.POLICY_PREFIX_PROTO, L.POLICY_PREFIX_ANY_PROTO + 8);
    assert.equal(L.POLICY_PREFIX_FULL, L.POLICY_PREFIX_PROTO + 16);
    assert.equal(POLICY_F_DENY, L.POLICY_F_DENY);
    assert.deepEqual(DIRECTION_CODE, { ingress: L.DIR_INGRESS, egress: L.DIR_EGRESS });
    assert.ok(L.POLICY_MAP_MAX >= 1 << 20);
  });
});

function randomEntry(rnd: () => number): PolicyEntry {
  const kind = Math.floor(rnd() * 4);
  const protocol = kind === 0 ? 0 : [6, 17, 132, 1, 58][Math.floor(rnd() * 5)]!;
  const icmp = protocol === 1 || protocol === 58;
  const portPrefixLen = protocol === 0 || kind === 1 ? 0 : icmp ? 16 : Math.floor(rnd() * 17);
  const port = portPrefixLen === 0 ? 0 : icmp ? Math.floor(rnd() * 256) : Math.floor(rnd() * 65536);
  return {
    direction: rnd() < 0.5 ? 'ingress' : 'egress',
    identity: rnd() < 0.2 ? 0 : Math.floor(rnd() * 0x1ffffff),
    protocol,
    port,
    portPrefixLen,
    deny: rnd() < 0.3,
    rules: [],
  };
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

describe('compiler encoder == datapath encoder', () => {
  test('random entries: same key and value bytes, decode round-trips', () => {
    const rnd = lcg(42);
    for (let i = 0; i < 2000; i++) {
      const endpointId = Math.floor(rnd() * 0xffffffff);
      const e = randomEntry(rnd);
      const [agent] = policyEntriesEncode(endpointId, [e]);
      const packed = policyEntryOpsPack(endpointId, [{ op: 'upsert', entry: e }]);
      assert.equal(packed.keys.toString('hex'), agent!.key.toString('hex'), JSON.stringify(e));
      assert.equal(packed.values.toString('hex'), agent!.value.toString('hex'));
      const d = policyEntryDecode(packed.keys, packed.values);
      const a = policyKeyDecode(agent!.key);
      assert.deepEqual(
        [d.endpointId, d.identity, d.direction, d.protocol, d.port, d.portPrefixLen, d.prefixLen, d.deny],
        [a.endpointId, a.identity, a.direction, a.protocol, a.port, a.portPrefixLen, a.prefixLen, e.deny],
      );
    }
  });
  test('lookup keys are full-prefix keys with the port in network order', () => {
    const k = policyLookupKeyEncode(5, 300, 'ingress', 6, 8080);
    assert.equal(k.readUInt32LE(L.POLICY_KEY.fields.prefixlen.offset), L.POLICY_PREFIX_FULL);
    assert.equal(k.readUInt16BE(L.POLICY_KEY.fields.port.offset), 8080);
    assert.equal(k[L.POLICY_KEY.fields.direction.offset], L.DIR_INGRESS);
  });
  test('entries of the real compiler pack identically (raw writes and entry ops)', () => {
    const ids = new Map<number, string[]>();
    for (let i = 1; i <= 10; i++) ids.set(i, reservedIdentityLabels(i));
    ids.set(300, identityLabels({ app: 'web' }, 'prod').map(labelFormat));
    ids.set(301, identityLabels({ app: 'client' }, 'prod').map(labelFormat));
    const policies = policiesParse(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8000", endPort: 8099, protocol: TCP}, {port: "53", protocol: ANY}]}]
  - icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
  ingressDeny:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  egress:
  - toCIDR: [192.0.2.0/24]
`);
    const compiled = policyCompile({ policies, identities: ids, endpoints: [{ endpointId: 7, identity: 300 }] });
    const ep = compiled.endpoints[0]!;
    assert.ok(ep.entries.length > 10, `${ep.entries.length} entries`);
    const agent = policyEntriesEncode(7, ep.entries);
    const viaEntries = policyEntryOpsPack(7, ep.entries.map((entry) => ({ op: 'upsert' as const, entry })));
    const viaRaw = policyWritesPack(agent.map((a) => ({ op: 'upsert' as const, key: a.key, value: a.value })));
    assert.deepEqual(viaEntries.keys, Buffer.concat(agent.map((a) => a.key)));
    assert.deepEqual(viaEntries.values, Buffer.concat(agent.map((a) => a.value)));
    assert.deepEqual(viaRaw, viaEntries);
  });
  test('bad writes are rejected before anything reaches the kernel', () => {
    assert.throws(() => policyWritesPack([{ op: 'upsert', key: Buffer.alloc(15), value: Buffer.alloc(8) }]), /key is 15 bytes/);
    assert.throws(() => policyWritesPack([{ op: 'upsert', key: Buffer.alloc(16) }]), /needs a 8-byte value/);
    const e = { direction: 'ingress' as const, identity: 1, protocol: 0, port: 80, portPrefixLen: 16, deny: false };
    assert.throws(() => policyEntryOpsPack(1, [{ op: 'upsert', entry: e }]), /port needs a protocol/);
    assert.throws(() => policyEntryOpsPack(1, [{ op: 'upsert', entry: { ...e, protocol: 6, portPrefixLen: 17 } }]), /out of range/);
    assert.equal(policyWritesPack([{ op: 'delete', key: Buffer.alloc(16) }]).ops[0], 2);
  });
});
