// The DNS proxy's read of the datapath's `dns_redirect` map (bpf/maps/dns.ts, originalDestination): the
// destination a steered client addressed, read for every query through buffers kept for it and a
// result shared while the destination stays the same. Entries are written into the pinned map as the
// datapath writes them; the reads must follow every change: another resolver for the same client, the
// same bytes under the other family, a client with no entry. Real kernel, temporary pin root.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { KitnetDatapath } from '../../bpf/index.js';
import { datapathLoad, datapathUnpinAll } from '../../bpf/index.js';
import { ipv4Parse, ipv6Parse } from '../../bpf/addr.js';
import { structEncode } from '../../bpf/layout.js';
import { DNS_REDIRECT_KEY, DNS_REDIRECT_VALUE, FAMILY_IPV4, FAMILY_IPV6 } from '../../bpf/layout.gen.js';
import type { DnsSteeringMaps } from '../../bpf/maps/dns.js';
import { BpfMap } from '../../bpf/maps/map.js';
import { native } from '../../common/native.js';

const padded = (bytes: Uint8Array) => {
  const out = new Uint8Array(16);
  out.set(bytes);
  return out;
};

describe('dns_redirect reads (the steered query\'s resolver)', { timeout: 60_000 }, () => {
  const pinRoot = `/sys/fs/bpf/kitnet-test-dnsredir-${process.pid}`;
  let dp: KitnetDatapath | undefined;
  let maps: DnsSteeringMaps;
  let redirect: BpfMap;
  let fd = -1;

  /** Writes what the datapath writes when `client` (address, port, protocol) sends a query to `to`. */
  function steer(client: string, port: number, protocol: number, to: { family: 4 | 6; addr: Uint8Array; port: number }): void {
    const v6 = client.includes(':');
    const key = structEncode(DNS_REDIRECT_KEY, { addr: padded(v6 ? ipv6Parse(client) : ipv4Parse(client)), port, protocol, family: v6 ? FAMILY_IPV6 : FAMILY_IPV4 });
    redirect.update(key, structEncode(DNS_REDIRECT_VALUE, { addr: padded(to.addr), port: to.port }));
  }

  before(async () => {
    await datapathUnpinAll(pinRoot);
    dp = await datapathLoad({ pinRoot });
    const m = dp.dnsSteering?.();
    assert.ok(m, 'the datapath has the DNS steering maps');
    maps = m;
    fd = native().objGet(join(pinRoot, 'maps', 'dns_redirect'));
    redirect = new BpfMap('dns_redirect', fd);
  });
  after(async () => {
    if (fd >= 0) native().fdClose(fd);
    dp?.close();
    await datapathUnpinAll(pinRoot);
  });

  test('each read follows the map: another resolver, the other family with the same bytes, no entry', () => {
    const r1 = { family: 4 as const, addr: ipv4Parse('10.9.0.53'), port: 53 };
    const r2 = { family: 4 as const, addr: ipv4Parse('10.9.0.54'), port: 5353 };
    steer('10.1.0.5', 40000, 17, r1);
    const first = maps.originalDestination('10.1.0.5', 40000, 17);
    assert.deepEqual(first, { address: '10.9.0.53', port: 53 });
    assert.ok(Object.isFrozen(first), 'shared between queries: never changed in place');
    assert.equal(maps.originalDestination('10.1.0.5', 40000, 17), first, 'the same destination: the same object');
    assert.equal(maps.originalDestination('10.1.0.5', 40000, 6), undefined, 'another protocol: no entry');
    assert.equal(maps.originalDestination('10.1.0.6', 40000, 17), undefined, 'another client: no entry');

    steer('10.1.0.5', 40000, 17, r2); // the same socket asks another resolver
    assert.deepEqual(maps.originalDestination('10.1.0.5', 40000, 17), { address: '10.9.0.54', port: 5353 });
    assert.deepEqual(first, { address: '10.9.0.53', port: 53 }, 'what an earlier query got stays');

    // An IPv6 client whose resolver's 16 bytes start as r2's: its own family, not the last result.
    steer('fd00:1::5', 40000, 17, { family: 6, addr: padded(ipv4Parse('10.9.0.54')), port: 5353 });
    assert.deepEqual(maps.originalDestination('fd00:1::5', 40000, 17), { address: 'a09:36::', port: 5353 });
    steer('fd00:1::5', 40001, 6, { family: 6, addr: ipv6Parse('fd00:9::53'), port: 53 });
    assert.deepEqual(maps.originalDestination('fd00:1::5', 40001, 6), { address: 'fd00:9::53', port: 53 });
    assert.deepEqual(maps.originalDestination('10.1.0.5', 40000, 17), { address: '10.9.0.54', port: 5353 });
  });
});
