import assert from 'node:assert/strict';
import type { NetworkInterfaceInfo } from 'node:os';
import { test } from 'node:test';
import type { IpcacheEntry } from '../../bpf/index.js';
import type { KernelOps } from '../../agent/kernel-ops.js';
import type { Store } from '../../agent/store/store.js';
import type { CompiledPolicy } from '../../agent/policy/index.js';
import { HOST_RANGES, HostDestinationSet, hostDestinationSetListed, ipv4Dotted, hostDestinationsFrom, hostDestinationsListedSet, hostDestinationsOf, interfaceAddressDestinations } from '../../agent/policy/host-destinations.js';
import { ipcacheSyncSteps } from '../../agent/policy/ipcache-sync.js';
import { stepsRun } from '../../agent/policy/slices.js';

test('host destinations of one interface address: the address; a loopback device\'s whole prefix; nothing derived from the prefix', () => {
  // no network or broadcast address, no anycast: those come from the kernel's local table (a LAN
  // machine may own 192.0.2.0 on a kernel that has no broadcast route for it)
  assert.deepEqual(interfaceAddressDestinations('192.0.2.1/24', false), ['192.0.2.1/32']);
  assert.deepEqual(interfaceAddressDestinations('198.51.100.0/31', false), ['198.51.100.0/32']);
  assert.deepEqual(interfaceAddressDestinations('198.51.100.9/32', false), ['198.51.100.9/32']);
  // a loopback device's IPv4 prefix is local as a whole (`local 127.0.0.0/8 dev lo table local`)
  assert.deepEqual(interfaceAddressDestinations('127.0.0.1/8', true), ['127.0.0.1/32', '127.0.0.0/8']);
  assert.deepEqual(interfaceAddressDestinations('169.254.1.53/32', true), ['169.254.1.53/32']);
  assert.deepEqual(interfaceAddressDestinations('2001:db8::fe/64', false), ['2001:db8::fe/128']);
  assert.deepEqual(interfaceAddressDestinations('::1/128', true), ['::1/128']);
  // link-local addresses are inside fe80::/10, which HOST_RANGES holds whole
  assert.deepEqual(interfaceAddressDestinations('fe80::1:2ff:fe00:1/64', false), []);
});

test('host destinations of an interface list (node:os, before the kernel\'s listing): the fixed ranges first, the addresses, each prefix once', () => {
  const a = (address: string, cidr: string | null, internal = false): NetworkInterfaceInfo =>
    (address.includes(':')
      ? { address, cidr, internal, family: 'IPv6', netmask: '', mac: '00:00:00:00:00:00', scopeid: 0 }
      : { address, cidr, internal, family: 'IPv4', netmask: '', mac: '00:00:00:00:00:00' }) as NetworkInterfaceInfo;
  const got = hostDestinationsOf({
    lo: [a('127.0.0.1', '127.0.0.1/8', true), a('::1', '::1/128', true)],
    eth0: [a('192.0.2.1', '192.0.2.1/24'), a('192.0.2.7', '192.0.2.7/24'), a('2001:db8::fe', '2001:db8::fe/64'), a('fe80::1', 'fe80::1/64')],
    odd: [a('203.0.113.5', null)],
  });
  assert.deepEqual(got, [
    '255.255.255.255/32', '224.0.0.0/4', 'fe80::/10', 'ff00::/8',
    '127.0.0.1/32', '127.0.0.0/8', '::1/128',
    '192.0.2.1/32', '192.0.2.7/32', '2001:db8::fe/128',
    '203.0.113.5/32',
  ]);
  assert.deepEqual(HOST_RANGES, got.slice(0, 4));
});

test('host destinations of the kernel\'s listing: the addresses and the local table\'s deliveries, those inside the fixed ranges once', () => {
  // as `ip route show table local` lists them for 127.0.0.1/8, 198.51.100.1/24 and fd00:9::1/64 with
  // forwarding on, plus AnyIP (`ip route add local 203.0.113.0/24 dev lo`)
  const localDelivery = [
    '127.0.0.0/8', '127.0.0.1/32', '127.255.255.255/32', '198.51.100.1/32', '198.51.100.255/32', '203.0.113.0/24',
    '::1/128', 'fd00:9::/128', 'fd00:9::1/128', 'fe80::1:2ff:fe00:1/128', 'ff00::/8', 'bogus',
  ];
  assert.deepEqual(hostDestinationsFrom([
    { cidr: '127.0.0.1/8', loopback: true }, { cidr: '198.51.100.1/24', loopback: false }, { cidr: 'bogus/99', loopback: false },
    { cidr: 'fd00:9::1/64', loopback: false }, { cidr: '192.0.2.9/24', loopback: false },
  ], localDelivery), [
    ...HOST_RANGES, '127.0.0.1/32', '127.0.0.0/8', '198.51.100.1/32', 'fd00:9::1/128', '192.0.2.9/32',
    '127.255.255.255/32', '198.51.100.255/32', '203.0.113.0/24', '::1/128', 'fd00:9::/128',
  ], 'no 198.51.100.0: the kernel has no route delivering it locally');
});

test('the set of the kernel\'s listing: none before a listing, one per listing, a new listing seen at once', () => {
  try {
    hostDestinationsListedSet(undefined);
    assert.equal(hostDestinationSetListed(), undefined, 'no listing: the caller reads node:os');
    hostDestinationsListedSet({ addresses: [{ cidr: '198.51.100.1/24', loopback: false }], localDelivery: [] });
    const first = hostDestinationSetListed()!;
    assert.equal(first.has('198.51.100.1'), true);
    assert.equal(first.has('198.51.100.2'), false);
    assert.equal(hostDestinationSetListed(), first, 'the same listing: the same set, not built again');
    // The watch lists an address added since: the next question sees it.
    hostDestinationsListedSet({ addresses: [{ cidr: '198.51.100.1/24', loopback: false }, { cidr: '198.51.100.2/24', loopback: false }], localDelivery: [] });
    assert.equal(hostDestinationSetListed()!.has('198.51.100.2'), true);
    hostDestinationsListedSet(undefined);
    assert.equal(hostDestinationSetListed(), undefined, 'the watch stopped: node:os again');
  } finally {
    hostDestinationsListedSet(undefined);
  }
});

test('HostDestinationSet: an address or a prefix inside a host prefix, never one that only contains one', () => {
  const s = new HostDestinationSet(['192.0.2.1/32', '192.0.2.255/32', '2001:db8::/128', ...HOST_RANGES]);
  for (const yes of ['192.0.2.1', '192.0.2.255', '192.0.2.255/32', '255.255.255.255', '224.0.0.251', '239.1.2.3/32', '2001:db8::', 'fe80::1', 'febf::1', 'fe80::/64', 'ff02::1:2']) {
    assert.equal(s.has(yes), true, yes);
  }
  for (const no of ['192.0.2.2', '192.0.2.0/24', '0.0.0.0/0', '::/0', 'fec0::1', '2001:db8::1', '223.255.255.255', 'not an address']) {
    assert.equal(s.has(no), false, no);
  }
});

test('ipv4Dotted: plain dotted decimal only; anything else is left to the general parse', () => {
  assert.equal(ipv4Dotted('0.0.0.0'), 0);
  assert.equal(ipv4Dotted('192.0.2.1'), 0xc0000201);
  assert.equal(ipv4Dotted('255.255.255.255'), 0xffffffff);
  for (const no of ['', '1.2.3', '1.2.3.4.5', '1.2.3.256', '01.2.3.4', '1.2.3.04', '1..3.4', '.1.2.3', '1.2.3.4.', '1.2.3.4/32', '1.2.3.-4', '0x1.2.3.4', '::1', '1.2.3.4 ', '1234.1.1.1']) {
    assert.equal(ipv4Dotted(no), undefined, JSON.stringify(no));
  }
});

test('HostDestinationSet: a bare IPv4 address judged by number as the general parse judges its /32', () => {
  const sets = [new HostDestinationSet(['192.0.2.1/32', '198.51.100.0/24', '10.0.0.0/7', ...HOST_RANGES]), new HostDestinationSet(['0.0.0.0/0'])];
  let seed = 42;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const addresses = ['192.0.2.1', '192.0.2.2', '198.51.100.0', '198.51.100.255', '198.51.101.0', '9.255.255.255', '10.0.0.0', '11.255.255.255', '12.0.0.0', '0.0.0.0'];
  for (let i = 0; i < 3000; i++) addresses.push(Array.from({ length: 4 }, () => Math.floor(rand() * 256)).join('.'));
  for (const s of sets) for (const a of addresses) assert.equal(s.has(a), s.has(`${a}/32`), a);
  assert.equal(sets[0]!.has('10.1.2.3'), true);
  assert.equal(sets[0]!.has('12.1.2.3'), false);
});

/** A datapath's ipcache as a map, for ipcacheSyncSteps. */
function fakeKernel(): { kernel: KernelOps; ipcache: Map<string, IpcacheEntry> } {
  const ipcache = new Map<string, IpcacheEntry>();
  const datapath = {
    ipcacheList: () => [...ipcache],
    ipcacheUpsert: (cidr: string, e: IpcacheEntry) => void ipcache.set(cidr, e),
    ipcacheDelete: (cidr: string) => void ipcache.delete(cidr),
    mapCapacity: () => ({ ipcache: 1000 }),
  };
  return { kernel: { datapath } as unknown as KernelOps, ipcache };
}

test('ipcache sync: host destinations are host (1), win over policy CIDRs and learned addresses on and inside them, and go with the address', () => {
  const { kernel, ipcache } = fakeKernel();
  const store = { workloadList: () => [{ ipv4: '10.200.0.5', ipv6: 'fd00:200::5', identity: 300 }] } as unknown as Store;
  const compiled = {
    ipcache: [
      { cidr: '192.0.2.0/24', identity: 16777217 }, // contains host prefixes: stays a CIDR identity
      { cidr: '192.0.2.255/32', identity: 16777218 }, // the subnet broadcast itself
      { cidr: '224.0.0.251/32', identity: 16777219 }, // inside 224.0.0.0/4
      { cidr: 'fe80::/64', identity: 16777220 }, // inside fe80::/10
      { cidr: '198.51.100.0/24', identity: 16777221 },
    ],
    ipBlocks: [],
  } as unknown as CompiledPolicy;
  const learned: Array<[string, number]> = [['fe80::1/128', 16777300], ['203.0.113.9/32', 16777301]];
  const hostsBefore = [...HOST_RANGES, '192.0.2.1/32', '192.0.2.0/32', '192.0.2.255/32', '2001:db8::fe/128', '2001:db8::/128'];
  stepsRun(ipcacheSyncSteps(kernel, store, compiled, learned, hostsBefore));
  const identity = (cidr: string) => ipcache.get(cidr)?.identity;
  for (const cidr of hostsBefore) assert.equal(identity(cidr), 1, cidr);
  assert.equal(identity('224.0.0.251/32'), 1);
  assert.equal(identity('fe80::/64'), 1);
  assert.equal(identity('fe80::1/128'), 1);
  assert.equal(identity('192.0.2.0/24'), 16777217);
  assert.equal(identity('198.51.100.0/24'), 16777221);
  assert.equal(identity('203.0.113.9/32'), 16777301);
  assert.equal(identity('10.200.0.5/32'), 300);
  assert.equal(identity('fd00:200::5/128'), 300);

  // the address moves to another subnet: the old one's entries go, the new one's come
  const hostsAfter = [...HOST_RANGES, '198.51.100.1/32', '198.51.100.0/32', '198.51.100.255/32'];
  stepsRun(ipcacheSyncSteps(kernel, store, compiled, learned, hostsAfter));
  for (const cidr of ['192.0.2.1/32', '192.0.2.0/32', '2001:db8::fe/128', '2001:db8::/128']) assert.equal(identity(cidr), undefined, cidr);
  assert.equal(identity('192.0.2.255/32'), 16777218, 'the policy CIDR is its own again');
  for (const cidr of hostsAfter) assert.equal(identity(cidr), 1, cidr);
});
