import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { DNS_STATE_FILE, dnsStateRead, dnsStateWrite } from '../../agent/dns/state-file.js';
import { configParse, ConfigError } from '../../agent/config.js';
import { upstreamParse } from '../../agent/dns/config.js';
import { policiesParse } from '../../agent/policy/index.js';
import { dnsSelectedEndpoints, fqdnSelectorsOf } from '../../agent/policy/fqdn-identities.js';
import { identityLabels, labelFormat } from '../../common/labels.js';

const cnp = (name: string, selector: string, egress: string) =>
  `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: ${name}, namespace: prod}\nspec:\n  endpointSelector: ${selector}\n  egress: ${egress}\n`;

test('steered endpoints: those a DNS rule applies to (a toFQDNs rule alone does not steer, as in Cilium)', () => {
  const policies = policiesParse(
    [
      cnp('dns', '{matchLabels: {app: a}}', '[{toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]}]'),
      cnp('fqdn', '{matchLabels: {app: b}}', '[{toFQDNs: [{matchName: api.test}, {matchPattern: "*.Test"}]}]'),
      cnp('deny', '{matchLabels: {app: c}}', '[{toPorts: [{ports: [{port: "53", protocol: UDP}]}]}]'),
    ].join('---\n'),
  );
  const ep = (endpointId: number, app: string) => ({ endpointId, labels: identityLabels({ app }, 'prod').map(labelFormat) });
  assert.deepEqual([...dnsSelectedEndpoints(policies, [ep(1, 'a'), ep(2, 'b'), ep(3, 'c'), ep(4, 'a')])], [1, 4]);
  assert.deepEqual(dnsSelectedEndpoints([], [ep(1, 'a')]).size, 0);
  assert.deepEqual(fqdnSelectorsOf(policies), [{ matchName: 'api.test.' }, { matchPattern: '*.test.' }]);
});

test('dns.proxy config: defaults, and errors naming the key', () => {
  const c = configParse({});
  assert.deepEqual(c.dns.proxy, { enabled: true, port: 0, minTTL: 0, maxIPsPerName: 1000, maxLearnedAddresses: 32768, maxLearnedAddressesPerWorkload: 8192, maxQueriesInFlight: 4096, maxQueriesInFlightPerWorkload: 512, maxTcpConnections: 256, maxTcpConnectionsPerWorkload: 16 });
  const bad = (dns: unknown, re: RegExp) => assert.throws(() => configParse({ dns }), (e: unknown) => e instanceof ConfigError && re.test(e.message));
  bad({ proxy: { port: 70000 } }, /dns\.proxy\.port/);
  bad({ proxy: { minTTL: -1 } }, /dns\.proxy\.minTTL/);
  bad({ proxy: { maxIPsPerName: 0 } }, /dns\.proxy\.maxIPsPerName/);
  bad({ proxy: { maxQueriesInFlight: 0 } }, /dns\.proxy\.maxQueriesInFlight/);
  bad({ proxy: { maxQueriesInFlightPerWorkload: 5000 } }, /dns\.proxy\.maxQueriesInFlightPerWorkload: 5000 is more than dns\.proxy\.maxQueriesInFlight \(4096\)/);
  bad({ proxy: { maxTcpConnections: 8 } }, /dns\.proxy\.maxTcpConnectionsPerWorkload: 16 is more than dns\.proxy\.maxTcpConnections \(8\)/);
  bad({ proxy: { maxTcpConnectionsPerWorkload: 1.5 } }, /dns\.proxy\.maxTcpConnectionsPerWorkload/);
  bad({ proxy: { maxLearnedAddresses: 100 } }, /dns\.proxy\.maxLearnedAddressesPerWorkload: 8192 is more than dns\.proxy\.maxLearnedAddresses \(100\)/);
  assert.equal(configParse({ dns: { proxy: { maxTcpConnections: 8, maxTcpConnectionsPerWorkload: 8 } } }).dns.proxy.maxTcpConnectionsPerWorkload, 8);
  bad({ proxy: { upstream: 'dns.example.com' } }, /dns\.proxy\.upstream: must be an IP address/);
  bad({ proxy: { upstream: '10.0.0.1:99999' } }, /dns\.proxy\.upstream/);
  bad({ proxy: { bogus: 1 } }, /dns\.proxy/);
  bad({ proxies: {} }, /dns/);
  assert.deepEqual(upstreamParse('10.0.0.2'), { address: '10.0.0.2', port: 53 });
  assert.deepEqual(upstreamParse('10.0.0.2:5353'), { address: '10.0.0.2', port: 5353 });
  assert.deepEqual(upstreamParse('[fd00::2]:53'), { address: 'fd00::2', port: 53 });
  assert.deepEqual(upstreamParse('fd00::2'), { address: 'fd00::2', port: 53 });
});

test('learned state file: round trip, and a hostile or broken file is refused whole', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-dns-state-'));
  try {
    assert.equal(dnsStateRead(dir), undefined, 'no file: nothing to restore');
    const state = { version: 1 as const, names: [{ name: 'api.test', addresses: [{ address: '192.0.2.1', expiresAt: 5 }, { address: '192.0.2.2', expiresAt: 5, owner: 12 }, { address: '2001:db8::2', expiresAt: 5, owner: '10.1.0.9' }] }], identities: [['k', 25165825] as [string, number]] };
    dnsStateWrite(dir, state);
    assert.deepEqual(dnsStateRead(dir), state);
    // A clean stop's file says so (its expiries are current: not extended on restore).
    dnsStateWrite(dir, { ...state, complete: true });
    assert.deepEqual(dnsStateRead(dir), { ...state, complete: true });
    const bad = (text: string, re: RegExp) => {
      writeFileSync(join(dir, DNS_STATE_FILE), text);
      const r = dnsStateRead(dir);
      assert.ok(r && 'error' in r && re.test(r.error), JSON.stringify(r));
    };
    bad('{', /not JSON/);
    bad('{"version": 2, "names": [], "identities": []}', /version/);
    bad('{"version": 1, "names": [{"name": "a", "addresses": [{"address": "x", "expiresAt": 1}]}], "identities": []}', /names\.0\.addresses\.0\.address: must be an IP address/);
    bad('{"version": 1, "names": [], "identities": [["k", -1]]}', /identities/);
    bad('{"version": 1, "names": [{"name": "a", "addresses": [{"address": "192.0.2.1", "expiresAt": 1, "owner": -3}]}], "identities": []}', /names\.0\.addresses\.0\.owner/);
    bad(`{"version": 1, "names": [{"name": "a", "addresses": [{"address": "192.0.2.1", "expiresAt": 1, "owner": "${'x'.repeat(65)}"}]}], "identities": []}`, /names\.0\.addresses\.0\.owner/);
    bad('{"version": 1, "names": [], "identities": [], "extra": 1}', /extra|Unrecognized/i);
    bad('{"version": 1, "names": [], "identities": [], "complete": "yes"}', /complete/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
