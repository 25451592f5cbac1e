import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { DNS_STATE_FILE, dnsStateRead, dnsStateWrite, dnsStateWriteSliced } from '../../agent/dns/state-file.js';
import { FqdnCache } from '../../agent/dns/fqdn-cache.js';
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
  assert.deepEqual(c.dns.proxy, { enabled: true, port: 0, minTTL: 0, maxTTL: 86400, maxIPsPerName: 1000, maxNamesPerIP: 1000, maxLearnedAddresses: 32768, maxLearnedAddressesPerWorkload: 8192, maxQueriesInFlight: 4096, maxQueriesInFlightPerWorkload: 512, maxTcpConnections: 256, maxTcpConnectionsPerWorkload: 16, fastPath: true });
  const bad = (dns: unknown, re: RegExp) => assert.throws(() => configParse({ dns }), (e: unknown) => e instanceof ConfigError && re.test(e.message));
  bad({ proxy: { port: 70000 } }, /dns\.proxy\.port/);
  bad({ proxy: { fastPath: 'yes' } }, /dns\.proxy\.fastPath/);
  assert.equal(configParse({ dns: { proxy: { fastPath: false } } }).dns.proxy.fastPath, false);
  bad({ proxy: { minTTL: -1 } }, /dns\.proxy\.minTTL/);
  bad({ proxy: { maxTTL: 0 } }, /dns\.proxy\.maxTTL/);
  bad({ proxy: { maxTTL: 2147483647 } }, /dns\.proxy\.maxTTL/);
  bad({ proxy: { minTTL: 600, maxTTL: 300 } }, /dns\.proxy\.minTTL: 600 is more than dns\.proxy\.maxTTL \(300\)/);
  assert.equal(configParse({ dns: { proxy: { maxTTL: 300 } } }).dns.proxy.maxTTL, 300);
  bad({ proxy: { maxIPsPerName: 0 } }, /dns\.proxy\.maxIPsPerName/);
  bad({ proxy: { maxNamesPerIP: 0 } }, /dns\.proxy\.maxNamesPerIP/);
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

test('learned state written while running: a slice of names per turn, names changing meanwhile, the same file a whole write gives', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-dns-state-'));
  try {
    const cache = new FqdnCache();
    const now = 1_000_000;
    for (let i = 0; i < 1000; i++) cache.learn(`n${i}.test`, [`10.3.${i >> 8}.${i & 255}`], 60, now, i % 2 ? i : `10.1.0.${i & 255}`);
    const ids: Array<[string, number]> = [['fqdn:*.test', 25165825]];
    // While it writes: the thread keeps running other work (turns counted), a name expires and is
    // learned again (it comes last in the cache's order: the file may then have it twice), new names arrive.
    // The change comes in the first turn after the writer has taken 300 names (between its slices),
    // whatever the machine's load: n5.test is then in the file twice, as it was and as it is.
    let midway = false;
    let changed = false;
    let turns = 0;
    let writing = true;
    const meanwhile = () => {
      turns++;
      if (midway && !changed) {
        changed = true;
        cache.expire(now + 61_000, (a) => a !== '10.3.0.5');
        cache.learn('n5.test', ['10.3.0.5', '10.3.9.9'], 600, now + 61_000);
        cache.learn('late.test', ['10.4.0.1'], 600, now + 61_000);
      }
      if (writing) setImmediate(meanwhile);
    };
    setImmediate(meanwhile);
    function* names() {
      let taken = 0;
      for (const n of cache.snapshotNames()) {
        if (++taken === 300) midway = true;
        yield n;
      }
    }
    const written = await dnsStateWriteSliced(dir, names(), () => ids, () => false);
    writing = false;
    assert.equal(written, true);
    assert.ok(turns >= 3, `the thread ran other work between slices (${turns} turns)`);
    const read = dnsStateRead(dir);
    assert.ok(read && !('error' in read), JSON.stringify(read));
    assert.deepEqual(read.identities, ids);
    assert.ok(changed, 'the names changed while the file was written');
    assert.deepEqual(read.names.filter((n) => n.name === 'n5.test').map((n) => n.addresses.length), [1, 2], 'n5.test as it was, then as it is');
    // Restored, it is what the cache now holds (the name written twice is merged, later expiries win).
    const restored = FqdnCache.restore(read);
    assert.deepEqual(restored.entries('n5.test').sort((a, b) => a.address.localeCompare(b.address)), cache.entries('n5.test').sort((a, b) => a.address.localeCompare(b.address)));
    assert.deepEqual(restored.namesOf('10.3.0.5'), ['n5.test']);
    assert.equal(restored.addressCount, cache.addressCount);
    assert.deepEqual(restored.snapshot().names.map((n) => n.name).sort(), cache.snapshot().names.map((n) => n.name).sort());
    // Nothing changing: byte for byte what the whole write gives.
    const whole = readFileSync(join(dir, DNS_STATE_FILE), 'utf8');
    dnsStateWrite(dir, { version: 1, names: cache.snapshot().names, identities: ids });
    const again = readFileSync(join(dir, DNS_STATE_FILE), 'utf8');
    await dnsStateWriteSliced(dir, cache.snapshotNames(), () => ids, () => false);
    assert.equal(readFileSync(join(dir, DNS_STATE_FILE), 'utf8'), again);
    assert.notEqual(whole, again, 'the first file was taken while names changed');
    assert.deepEqual(readdirSync(dir), [DNS_STATE_FILE], 'no temp file left');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('learned state written while running: given up (a clean stop began) before the rename, the file stays as it was', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-dns-state-'));
  try {
    const cache = new FqdnCache();
    for (let i = 0; i < 600; i++) cache.learn(`n${i}.test`, [`10.3.${i >> 8}.${i & 255}`], 60, 0);
    dnsStateWrite(dir, { version: 1, names: [], identities: [], complete: true });
    const before = readFileSync(join(dir, DNS_STATE_FILE), 'utf8');
    // 600 names: asked after the slices of 256 and 512 names, and before the rename.
    for (const after of [1, 2, 3]) {
      let asked = 0;
      assert.equal(await dnsStateWriteSliced(dir, cache.snapshotNames(), () => [], () => ++asked >= after), false, `cancelled at check ${after}`);
      assert.equal(readFileSync(join(dir, DNS_STATE_FILE), 'utf8'), before);
      assert.deepEqual(readdirSync(dir), [DNS_STATE_FILE], 'the temp file is removed');
    }
    let checks = 0;
    assert.equal(await dnsStateWriteSliced(dir, cache.snapshotNames(), () => [], () => (checks++, false)), true);
    assert.equal(checks, 3);
    // A directory it cannot write: an error for the caller to log, nothing left behind.
    rmSync(dir, { recursive: true, force: true });
    await assert.rejects(dnsStateWriteSliced(dir, cache.snapshotNames(), () => [], () => false), /ENOENT/);
    assert.equal(existsSync(dir), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

