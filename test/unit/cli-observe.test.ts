import assert from 'node:assert/strict';
import { test } from 'node:test';
import { observeFilters } from '../../api/cli/observe-filters.js';

test('directional flags form one filter', () => {
  assert.deepEqual(observeFilters({ output: 'compact', fromWorkload: ['web'], verdict: ['dropped'], protocol: ['tcp'] }), [
    { source_workload: ['web'], verdict: ['DROPPED'], protocol: ['tcp'] },
  ]);
});

test('symmetric flags fork into source OR destination', () => {
  assert.deepEqual(observeFilters({ output: 'compact', workload: ['db'], ipv6: true }), [
    { ip_version: ['IPv6'], source_workload: ['db'] },
    { ip_version: ['IPv6'], destination_workload: ['db'] },
  ]);
  assert.equal(observeFilters({ output: 'compact', ip: ['10.0.0.1'], port: ['80'] }).length, 4);
});

test('namespaces become pod prefixes; no flags, no filters', () => {
  assert.deepEqual(observeFilters({ output: 'compact', toNamespace: ['shop'] }), [{ destination_pod: ['shop/'] }]);
  assert.deepEqual(observeFilters({ output: 'compact' }), []);
});

test('--to-fqdn / --from-fqdn are directional, --fqdn forks; --protocol dns passes through', () => {
  assert.deepEqual(observeFilters({ output: 'compact', toFqdn: ['api.test'], protocol: ['dns'] }), [{ destination_fqdn: ['api.test'], protocol: ['dns'] }]);
  assert.deepEqual(observeFilters({ output: 'compact', fromFqdn: ['*.test'] }), [{ source_fqdn: ['*.test'] }]);
  assert.deepEqual(observeFilters({ output: 'compact', fqdn: ['api.test'] }), [{ source_fqdn: ['api.test'] }, { destination_fqdn: ['api.test'] }]);
});
