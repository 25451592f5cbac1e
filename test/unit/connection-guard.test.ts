// Whose share a TCP connection to the API or Hubble listener counts against (api/connection-guard.ts).
// The listeners' limits against real hostile clients: api-tcp-listener, hubble-tcp-listener (unit) and
// hubble-tcp-ipv6-share (root: clients from many addresses of one IPv6 /64).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connectionSourceKey } from '../../api/connection-guard.js';

test('whose share a connection counts against: an IPv4 address (mapped or not), an IPv6 /64', () => {
  assert.equal(connectionSourceKey('192.0.2.7'), '192.0.2.7');
  assert.equal(connectionSourceKey('::ffff:192.0.2.7'), '192.0.2.7', 'an IPv4 client of a dual-stack socket');
  assert.equal(connectionSourceKey('2001:db8:1:2:aaaa:bbbb:cccc:dddd'), '2001:db8:1:2::/64');
  assert.equal(connectionSourceKey('2001:db8:1:2::1'), '2001:db8:1:2::/64', 'another address of the same /64');
  assert.equal(connectionSourceKey('2001:db8:1:3::1'), '2001:db8:1:3::/64');
  assert.equal(connectionSourceKey('fe80::1%eth0'), 'fe80::/64');
  assert.equal(connectionSourceKey('::1'), '::/64');
  assert.equal(connectionSourceKey('::ffff:zz'), '::ffff:zz', 'not an address: kept as given');
  assert.equal(connectionSourceKey(undefined), '?');
  // Other prefix lengths (hubble.ipv6ClientPrefix): whole bytes, bits within a byte, every address alone.
  assert.equal(connectionSourceKey('2001:db8:1:2ff::1', 56), '2001:db8:1:200::/56');
  assert.equal(connectionSourceKey('2001:db8:1:2ff::1', 60), '2001:db8:1:2f0::/60');
  assert.equal(connectionSourceKey('2001:db8:1:2::1', 128), '2001:db8:1:2::1/128');
  assert.equal(connectionSourceKey('2001:db8:1:2::2', 128), '2001:db8:1:2::2/128');
  assert.equal(connectionSourceKey('192.0.2.7', 128), '192.0.2.7', 'IPv4 is per address whatever the IPv6 prefix');
});

