import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { peerAddress } from '../../api/hubble/cluster-peers.js';

describe('Hubble peer addresses of other cluster nodes', () => {
  test('the node address with this node\'s Hubble port; IPv4 first, IPv6 in brackets', () => {
    assert.equal(peerAddress({ name: 'b', ipv4: '192.0.2.2', ipv6: '2001:db8::2' }, '192.0.2.1:4244'), '192.0.2.2:4244');
    assert.equal(peerAddress({ name: 'b', ipv6: '2001:db8::2' }, '[2001:db8::1]:4245'), '[2001:db8::2]:4245');
  });
  test('no address without a TCP listener here, without a port, or for a node without addresses', () => {
    assert.equal(peerAddress({ name: 'b', ipv4: '192.0.2.2' }, 'unix:///run/kitnet/hubble.sock'), undefined);
    assert.equal(peerAddress({ name: 'b', ipv4: '192.0.2.2' }, 'somewhere'), undefined);
    assert.equal(peerAddress({ name: 'b' }, '192.0.2.1:4244'), undefined);
  });
});
