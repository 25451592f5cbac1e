import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { cidrParse, IpamError, Pool } from '../../agent/ipam.js';
import { workloadsOutsidePools } from '../../agent/pool-check.js';
import type { WorkloadRecord } from '../../agent/store/types.js';

describe('cidrParse', () => {
  test('canonicalises v4 and v6 networks', () => {
    assert.equal(cidrParse('10.200.3.4/16').text, '10.200.0.0/16');
    assert.equal(cidrParse('fd00:200:0:0::1/64').text, 'fd00:200::/64');
    assert.equal(cidrParse('fd00:200::/64').family, 6);
  });
  for (const bad of ['10.200.0.0', '10.200.0.0/33', 'banana/8', 'fd00::/129', '']) {
    test(`rejects ${JSON.stringify(bad)}`, () => assert.throws(() => cidrParse(bad), IpamError));
  }
});

describe('Pool', () => {
  test('allocates the lowest free address, skipping network and .1', () => {
    const p = new Pool('10.200.0.0/16');
    assert.equal(p.allocate(new Set(), 'ipv4'), '10.200.0.2');
    assert.equal(p.allocate(new Set(['10.200.0.2', '10.200.0.3']), 'ipv4'), '10.200.0.4');
    assert.equal(p.allocate(new Set(['10.200.0.3']), 'ipv4'), '10.200.0.2');
  });
  test('allocates IPv6 in canonical text', () => {
    const p = new Pool('fd00:200::/64');
    assert.equal(p.allocate(new Set(), 'ipv6'), 'fd00:200::2');
    assert.equal(p.allocate(new Set(['fd00:200::2']), 'ipv6'), 'fd00:200::3');
  });
  test('reports exhaustion with the pool and field', () => {
    const p = new Pool('10.9.9.0/30'); // usable: .2 only (.3 is broadcast)
    assert.equal(p.allocate(new Set(), 'ipv4'), '10.9.9.2');
    assert.throws(() => p.allocate(new Set(['10.9.9.2']), 'ipv4'), (e: IpamError) => e.code === 'POOL_EXHAUSTED' && /ipv4: pool 10\.9\.9\.0\/30/.test(e.message));
  });
  test('check accepts a free in-pool address and canonicalises it', () => {
    const p = new Pool('fd00:200::/64');
    assert.equal(p.check('fd00:200:0::0:10', new Set(), 'ipv6'), 'fd00:200::10');
  });
  test('check rejects out-of-pool, taken, wrong family, reserved and malformed addresses', () => {
    const p = new Pool('10.200.0.0/16');
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return (e as IpamError).code;
      }
      return 'none';
    };
    assert.equal(code(() => p.check('10.201.0.5', new Set(), 'ipv4')), 'OUT_OF_POOL');
    assert.equal(code(() => p.check('10.200.0.0', new Set(), 'ipv4')), 'OUT_OF_POOL');
    assert.equal(code(() => p.check('10.200.255.255', new Set(), 'ipv4')), 'OUT_OF_POOL');
    assert.equal(code(() => p.check('10.200.0.9', new Set(['10.200.0.9']), 'ipv4')), 'ADDRESS_TAKEN');
    assert.equal(code(() => p.check('fd00::1', new Set(), 'ipv4')), 'BAD_ADDRESS');
    assert.equal(code(() => p.check('10.200.0.300', new Set(), 'ipv4')), 'BAD_ADDRESS');
  });
  test('fills a pool densely across octet boundaries', () => {
    const p = new Pool('10.200.0.0/16');
    const used = new Set<string>();
    for (let i = 0; i < 600; i++) used.add(p.allocate(used, 'ipv4'));
    assert.equal(used.size, 600);
    assert.ok(used.has('10.200.2.89'));
    assert.ok(!used.has('10.200.2.90'));
  });
});

describe('workloadsOutsidePools', () => {
  const rec = (name: string, ipv4: string, ipv6: string) => ({ spec: { name, namespace: 'ns' }, ipv4, ipv6 }) as unknown as WorkloadRecord;
  test('names each workload address outside its pool, with the pool and its key', () => {
    const records = [rec('in', '10.1.0.5', 'fd00:1::5'), rec('out4', '10.2.0.5', 'fd00:1::6'), rec('out6', '10.1.0.6', 'fd00:9::6')];
    assert.deepEqual(workloadsOutsidePools(records, { ipv4Pool: '10.1.0.0/24', ipv6Pool: 'fd00:1::/64' }), [
      { workload: 'ns/out4', address: '10.2.0.5', pool: '10.1.0.0/24', key: 'ipam.ipv4Pool' },
      { workload: 'ns/out6', address: 'fd00:9::6', pool: 'fd00:1::/64', key: 'ipam.ipv6Pool' },
    ]);
    assert.deepEqual(workloadsOutsidePools(records, { ipv4Pool: '10.0.0.0/8', ipv6Pool: 'fd00::/16' }), []);
  });
});
