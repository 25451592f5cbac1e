import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { endianness } from 'node:os';
import {
  LpmTable,
  policyKeyDecode,
  policyKeyEncode,
  policyLookupKeyEncode,
  policyValueDecode,
  policyValueEncode,
  POLICY_KEY_SIZE,
} from '../../agent/policy/index.js';

const hostU32 = (v: number) => {
  const b = Buffer.alloc(4);
  if (endianness() === 'LE') b.writeUInt32LE(v);
  else b.writeUInt32BE(v);
  return b.toString('hex');
};

describe('policy map key layout', () => {
  test('byte layout: prefixlen, endpoint, identity, direction, protocol, port (network order)', () => {
    const k = policyKeyEncode({ endpointId: 7, identity: 0x1000001, direction: 'egress', protocol: 6, port: 8080, portPrefixLen: 16 });
    assert.equal(k.length, POLICY_KEY_SIZE);
    assert.equal(k.toString('hex'), hostU32(96) + hostU32(7) + hostU32(0x1000001) + '02' + '06' + '1f90');
  });
  test('prefix lengths: any protocol 72, protocol 80, port prefix 80+n', () => {
    const p = (protocol: number, port: number, portPrefixLen: number) =>
      policyKeyDecode(policyKeyEncode({ endpointId: 1, identity: 2, direction: 'ingress', protocol, port, portPrefixLen })).prefixLen;
    assert.equal(p(0, 0, 0), 72);
    assert.equal(p(17, 0, 0), 80);
    assert.equal(p(6, 1024, 6), 86);
    assert.equal(p(6, 80, 16), 96);
  });
  test('bits beyond the prefix are zeroed', () => {
    const k = policyKeyEncode({ endpointId: 1, identity: 2, direction: 'ingress', protocol: 6, port: 1023, portPrefixLen: 6 });
    assert.equal(k.readUInt16BE(14), 0);
  });
  test('decode round-trips', () => {
    const key = { endpointId: 65536, identity: 300, direction: 'ingress' as const, protocol: 58, port: 128, portPrefixLen: 16 };
    const d = policyKeyDecode(policyKeyEncode(key));
    assert.deepEqual({ ...d, prefixLen: undefined }, { ...key, prefixLen: undefined });
  });
  test('a port without protocol is rejected', () => {
    assert.throws(() => policyKeyEncode({ endpointId: 1, identity: 0, direction: 'ingress', protocol: 0, port: 80, portPrefixLen: 16 }));
  });
  test('value: flags and cookie', () => {
    const v = policyValueEncode({ deny: true, cookie: 42 });
    assert.equal(v.length, 8);
    assert.equal(v[0], 1);
    assert.deepEqual(policyValueDecode(v), { deny: true, cookie: 42 });
    assert.deepEqual(policyValueDecode(policyValueEncode({ deny: false })), { deny: false, cookie: 0 });
  });
});

describe('LpmTable (kernel LPM trie semantics)', () => {
  const t = new LpmTable<string>();
  const ins = (name: string, protocol: number, port: number, portPrefixLen: number, identity = 5) =>
    t.insert(policyKeyEncode({ endpointId: 1, identity, direction: 'ingress', protocol, port, portPrefixLen }), name);
  ins('any', 0, 0, 0);
  ins('tcp', 6, 0, 0);
  ins('tcp-0-1023', 6, 0, 6);
  ins('tcp-80', 6, 80, 16);
  ins('other-identity', 0, 0, 0, 6);
  const look = (protocol: number, port: number, identity = 5, endpointId = 1, direction: 'ingress' | 'egress' = 'ingress') =>
    t.lookup(policyLookupKeyEncode(endpointId, identity, direction, protocol, port));
  test('longest prefix wins', () => {
    assert.equal(look(6, 80), 'tcp-80');
    assert.equal(look(6, 81), 'tcp-0-1023');
    assert.equal(look(6, 1024), 'tcp');
    assert.equal(look(17, 53), 'any');
  });
  test('endpoint, identity and direction always match exactly', () => {
    assert.equal(look(6, 80, 6), 'other-identity');
    assert.equal(look(6, 80, 7), undefined);
    assert.equal(look(6, 80, 5, 2), undefined);
    assert.equal(look(6, 80, 5, 1, 'egress'), undefined);
  });
});
