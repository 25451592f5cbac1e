import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Registry } from 'prom-client';
import type { Dhcp4Stats } from '../../agent/addressing/dhcp4-server.js';
import { addressingMetricsRegister } from '../../agent/addressing/metrics.js';
import { promValue } from '../helpers/prom.js';

test('addressing metrics: answers by protocol and message, ignored frames by protocol and reason, read at each scrape', async () => {
  const stats: Dhcp4Stats = {
    frames: 9, offers: 1, acks: 2, naks: 0, routerAdverts: 3, dhcp6: { advertise: 1 }, ignored: {},
    ignoredByProtocol: { dhcp: { relayed: 1 }, dhcpv6: { 'foreign-duid': 2 }, ra: {} },
  };
  const registry = new Registry();
  addressingMetricsRegister(registry, stats);
  let text = await registry.metrics();
  assert.equal(promValue(text, 'kitnet_addressing_frames_total'), 9);
  assert.equal(promValue(text, 'kitnet_addressing_answers_total', { protocol: 'dhcp', message: 'ack' }), 2);
  assert.equal(promValue(text, 'kitnet_addressing_answers_total', { protocol: 'dhcpv6', message: 'advertise' }), 1);
  assert.equal(promValue(text, 'kitnet_addressing_answers_total', { protocol: 'ra', message: 'advertisement' }), 3);
  assert.equal(promValue(text, 'kitnet_addressing_ignored_total', { protocol: 'dhcp', reason: 'relayed' }), 1);
  assert.equal(promValue(text, 'kitnet_addressing_ignored_total', { protocol: 'dhcpv6', reason: 'foreign-duid' }), 2);
  stats.ignoredByProtocol.dhcpv6['foreign-duid'] = 5;
  stats.ignoredByProtocol.ra['rate-limited'] = 4;
  text = await registry.metrics();
  assert.equal(promValue(text, 'kitnet_addressing_ignored_total', { protocol: 'dhcpv6', reason: 'foreign-duid' }), 5);
  assert.equal(promValue(text, 'kitnet_addressing_ignored_total', { protocol: 'ra', reason: 'rate-limited' }), 4);
});
