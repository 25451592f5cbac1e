import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FQDN_IDENTITY_BASE, FqdnCache, fqdnLabelMatchers } from '../../agent/dns/fqdn-cache.js';
import { ipv4Number } from '../../agent/flows/directory.js';
import { LOCAL_IDENTITY_FLAG } from '../../agent/identity/reserved.js';
import { policiesParse, policyCompile } from '../../agent/policy/index.js';
import { reservedIdentityLabels } from '../../agent/identity/reserved.js';
import { identityLabels, labelFormat } from '../../common/labels.js';

test('TTL expiry keeps addresses a tracked connection uses', () => {
  const c = new FqdnCache();
  c.learn('api.test', ['192.0.2.1', '192.0.2.2'], 10, 0);
  c.learn('api.test', ['192.0.2.2'], 100, 5_000);
  assert.equal(c.expire(9_999, () => false), false);
  assert.equal(c.expire(10_000, (a) => a === '192.0.2.9'), true);
  assert.deepEqual(c.addresses('api.test'), ['192.0.2.2'], 'the later answer extended .2');
  assert.equal(c.expire(200_000, (a) => a === '192.0.2.2'), false, 'in use: kept past expiry');
  assert.equal(c.expire(200_000, () => false), true);
  assert.deepEqual(c.addresses('api.test'), []);
});

test('per-name cap drops the addresses expiring soonest', () => {
  const c = new FqdnCache({ maxAddressesPerName: 2 });
  c.learn('a.test', ['192.0.2.1'], 5, 0);
  c.learn('a.test', ['192.0.2.2'], 50, 0);
  c.learn('a.test', ['192.0.2.3'], 20, 0);
  assert.deepEqual(c.addresses('a.test').sort(), ['192.0.2.2', '192.0.2.3']);
});

test('snapshot and restore keep names, addresses and expiries', () => {
  const c = new FqdnCache();
  c.learn('a.test', ['192.0.2.1', '2001:db8::1'], 30, 1_000);
  const r = FqdnCache.restore(JSON.parse(JSON.stringify(c.snapshot())));
  assert.deepEqual(r.snapshot(), c.snapshot());
  assert.deepEqual(r.namesOf('2001:db8::1'), ['a.test']);
});

test('identities: one per selector set, stable, in the FQDN range; the compiler selects them', () => {
  const c = new FqdnCache();
  c.learn('api.test', ['192.0.2.1'], 30, 0);
  c.learn('www.test', ['192.0.2.2', '2001:db8::2'], 30, 0);
  c.learn('elsewhere.example', ['198.51.100.1'], 30, 0);
  const selectors = [{ matchName: 'api.test' }, { matchPattern: '*.test' }];
  const out = c.identities(selectors);
  const byAddr = new Map(out.ipcache.map((e) => [e.cidr, e.identity]));
  assert.equal(byAddr.has('198.51.100.1/32'), false, 'no selector matches: stays world');
  const api = byAddr.get('192.0.2.1/32')!;
  const www = byAddr.get('192.0.2.2/32')!;
  const www6 = byAddr.get('2001:db8::2/128')!;
  for (const id of [api, www, www6]) assert.equal(id & FQDN_IDENTITY_BASE, FQDN_IDENTITY_BASE);
  assert.deepEqual(out.identities.get(api), ['fqdn:matchName:api.test.', 'fqdn:matchPattern:*.test.', 'reserved:world', 'reserved:world-ipv4']);
  assert.deepEqual(out.identities.get(www6), ['fqdn:matchPattern:*.test.', 'reserved:world', 'reserved:world-ipv6']);
  assert.notEqual(api, www);
  // Stable: a new name with a new label set does not renumber the others.
  c.learn('aaa.test', ['192.0.2.3'], 30, 0);
  const again = c.identities([...selectors, { matchName: 'aaa.test' }], out.keys);
  const byAddr2 = new Map(again.ipcache.map((e) => [e.cidr, e.identity]));
  assert.equal(byAddr2.get('192.0.2.1/32'), api);
  assert.equal(byAddr2.get('192.0.2.2/32'), www);

  // The compiler turns toFQDNs: api.test into exactly api's identity.
  const ids = new Map<number, string[]>();
  for (let i = 1; i <= 10; i++) ids.set(i, reservedIdentityLabels(i));
  ids.set(301, identityLabels({ app: 'client' }, 'prod').map(labelFormat));
  for (const [id, labels] of out.identities) ids.set(id, labels);
  const yaml = `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: f, namespace: prod}\nspec:\n  endpointSelector: {}\n  egress: [{toFQDNs: [{matchName: api.test}]}]\n`;
  const compiled = policyCompile({ policies: policiesParse(yaml, undefined, { dnsPolicy: true }), identities: ids, endpoints: [{ endpointId: 1, identity: 301 }] });
  assert.deepEqual(compiled.endpoints[0]!.entries.filter((e) => e.direction === 'egress').map((e) => e.identity), [api]);
  assert.ok((api & LOCAL_IDENTITY_FLAG) !== 0);
});

test('learned addresses keep their covering CIDR: toCIDR of a wider prefix and toEntities world still select them, per address', () => {
  const c = new FqdnCache();
  c.learn('api.test', ['10.1.2.3', '192.0.2.7'], 30, 0);
  c.learn('v6.test', ['2001:db8::7'], 30, 0);
  const cover = (a: string) => (a.startsWith('10.') ? '10.1.0.0/16' : undefined);
  const out = c.identities([{ matchName: 'api.test' }, { matchName: 'v6.test' }], undefined, cover);
  const byAddr = new Map(out.ipcache.map((e) => [e.cidr, e.identity]));
  const in10 = byAddr.get('10.1.2.3/32')!;
  const outside = byAddr.get('192.0.2.7/32')!;
  const v6 = byAddr.get('2001:db8::7/128')!;
  assert.notEqual(in10, outside, 'a different covering prefix is a different label set');
  assert.deepEqual(out.identities.get(in10), ['fqdn:matchName:api.test.', 'cidr:10.1.0.0/16', 'reserved:world', 'reserved:world-ipv4']);

  const ids = new Map<number, string[]>();
  for (let i = 1; i <= 10; i++) ids.set(i, reservedIdentityLabels(i));
  ids.set(301, identityLabels({ app: 'client' }, 'prod').map(labelFormat));
  for (const [id, labels] of out.identities) ids.set(id, labels);
  const egressTo = (egress: string) => {
    const yaml = `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: f, namespace: prod}\nspec:\n  endpointSelector: {}\n  egress: ${egress}\n`;
    const compiled = policyCompile({ policies: policiesParse(yaml), identities: ids, endpoints: [{ endpointId: 1, identity: 301 }] });
    return new Set(compiled.endpoints[0]!.entries.filter((e) => e.direction === 'egress').map((e) => e.identity));
  };
  const wide = egressTo('[{toCIDR: [10.0.0.0/8, 10.1.0.0/16]}]');
  assert.ok(wide.has(in10) && !wide.has(outside) && !wide.has(v6), [...wide].join(','));
  const except = egressTo('[{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}, {toCIDR: [10.1.0.0/16]}]');
  assert.ok(except.has(in10), 'selected through the second rule');
  const carved = egressTo('[{toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}]');
  assert.ok(!carved.has(in10), 'the except carves its covering prefix out');
  const all4 = egressTo('[{toCIDR: [0.0.0.0/0]}]');
  assert.ok(all4.has(outside) && !all4.has(v6));
  const world = egressTo('[{toEntities: [world]}]');
  assert.ok(world.has(in10) && world.has(outside) && world.has(v6));
  const world6 = egressTo('[{toEntities: [world-ipv6]}]');
  assert.ok(world6.has(v6) && !world6.has(outside));
});

test('names by address (flows): by text and by IPv4 number, following learns and expiries', () => {
  const c = new FqdnCache();
  assert.equal(c.empty, true);
  assert.equal(c.namesByAddress('10.2.0.1'), undefined);
  c.learn('b.test', ['10.2.0.1', 'fd00::1'], 10, 0);
  c.learn('a.test', ['10.2.0.1'], 60, 0);
  assert.equal(c.empty, false);
  assert.deepEqual(c.namesByAddress('10.2.0.1'), ['a.test', 'b.test']);
  assert.deepEqual(c.namesByIpv4(0x0a020001), ['a.test', 'b.test']);
  assert.deepEqual(c.namesByAddress('fd00::1'), ['b.test']);
  assert.equal(c.namesByIpv4(0x0a020002), undefined);
  c.learn('c.test', ['10.2.0.2'], 10, 0);
  assert.deepEqual(c.namesByIpv4(0x0a020002), ['c.test'], 'a learn after a lookup is seen');
  assert.ok(c.expire(30_000, () => false));
  assert.deepEqual(c.namesByAddress('10.2.0.1'), ['a.test'], 'an expiry too');
  assert.equal(c.namesByAddress('fd00::1'), undefined);
  const restored = FqdnCache.restore(c.snapshot());
  assert.deepEqual(restored.namesByIpv4(0x0a020001), ['a.test']);
});

test('learn says whether a name gained an address; an answer that only moves expiries keeps the flows\' name index', () => {
  const c = new FqdnCache({ maxAddressesPerName: 2 });
  assert.equal(c.learn('a.test', ['10.2.0.1'], 10, 0), true);
  const before = c.namesByAddress('10.2.0.1');
  assert.equal(c.learn('a.test', ['10.2.0.1'], 60, 1000), false, 'the same address again');
  assert.equal(c.namesByAddress('10.2.0.1'), before, 'the index was not rebuilt: the same array');
  assert.deepEqual(c.entries('a.test'), [{ address: '10.2.0.1', expiresAt: 61_000 }], 'the expiry moved');
  assert.equal(c.learn('b.test', ['10.2.0.1'], 10, 0), true, 'another name for the address');
  assert.deepEqual(c.namesByAddress('10.2.0.1'), ['a.test', 'b.test']);
  assert.equal(c.learn('a.test', ['10.2.0.2', '10.2.0.3'], 100, 0), true);
  assert.deepEqual(c.addresses('a.test').sort(), ['10.2.0.2', '10.2.0.3'], 'the cap dropped the one expiring soonest... ');
  assert.deepEqual(c.namesByAddress('10.2.0.1'), ['b.test'], '...and the index follows the drop');
});

test('the flows\' name index follows any sequence of learns, caps, expiries and restores, looked up between them or not', () => {
  let seed = 3;
  const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 4) % n;
  const addresses = [...Array.from({ length: 12 }, (_, i) => `10.3.0.${i}`), 'fd00::3', 'fd00::4'];
  const names = Array.from({ length: 9 }, (_, i) => `n${i}.test`);
  let c = new FqdnCache({ maxAddressesPerName: 4 });
  let now = 0;
  const check = (step: number) => {
    for (const a of addresses) {
      const want = c.namesOf(a).sort();
      assert.deepEqual(c.namesByAddress(a) ?? [], want, `step ${step}: ${a}`);
      if (!a.includes(':')) assert.deepEqual(c.namesByIpv4(ipv4Number(a)) ?? [], want, `step ${step}: ${a} by number`);
    }
  };
  for (let step = 0; step < 3000; step++) {
    const k = rnd(10);
    if (k < 6) {
      const picked = Array.from({ length: 1 + rnd(3) }, () => addresses[rnd(addresses.length)]!);
      c.learn(names[rnd(names.length)]!, picked, 1 + rnd(30), now);
    } else if (k < 8) {
      now += rnd(10_000);
      c.expire(now, (a) => a === addresses[0]);
    } else if (k === 8) {
      c = FqdnCache.restore(c.snapshot(), { maxAddressesPerName: 4 });
    }
    if (rnd(3) === 0) check(step);
  }
  check(3000);
});

test('identitiesAdd (new answers only) gives what a full identities() gives, and new label sets get new numbers', () => {
  const selectors = [{ matchName: 'api.test' }, { matchPattern: '*.svc.test' }];
  const matchers = fqdnLabelMatchers(selectors);
  const c = new FqdnCache();
  c.learn('api.test', ['192.0.2.1'], 60, 0);
  c.learn('a.svc.test', ['192.0.2.2'], 60, 0);
  const ids = c.identities(selectors);
  // New: an address for a known label set, one shared by two selectors, one no selector matches, a v6 one.
  c.learn('b.svc.test', ['192.0.2.3'], 60, 0);
  c.learn('api.test', ['192.0.2.4'], 60, 0);
  c.learn('c.svc.test', ['192.0.2.4', '2001:db8::1'], 60, 0);
  c.learn('other.test', ['192.0.2.5'], 60, 0);
  const before = new Set(ids.identities.keys());
  const newNames = new Map([['192.0.2.3', new Set(['b.svc.test'])], ['192.0.2.4', new Set(['api.test', 'c.svc.test'])], ['192.0.2.5', new Set(['other.test'])], ['2001:db8::1', new Set(['c.svc.test'])]]);
  const { added, ipcache } = c.identitiesAdd(newNames, matchers, ids);
  const full = c.identities(selectors, ids.keys);
  const fullOf = new Map(full.ipcache.map((e) => [e.cidr, e.identity]));
  for (const e of ipcache) assert.equal(e.identity, fullOf.get(e.cidr), e.cidr);
  assert.deepEqual(ipcache.map((e) => e.cidr).sort(), ['192.0.2.3/32', '192.0.2.4/32', '2001:db8::1/128']);
  assert.equal(added.size, 2, 'api+svc for .4, svc v6 for 2001:db8::1');
  for (const id of added.keys()) assert.ok(!before.has(id) && ids.identities.has(id));
  assert.deepEqual(c.namesOf('192.0.2.4').sort(), ['api.test', 'c.svc.test']);
});

test('learned addresses count against the workload whose answer brought them, until they leave the cache', () => {
  const c = new FqdnCache({ maxAddressesPerName: 3 });
  assert.equal(c.unknownAmong(['192.0.2.1', '192.0.2.1', '192.0.2.2']), 2, 'each address once');
  c.learn('a.test', ['192.0.2.1', '192.0.2.2'], 10, 0, 7);
  // Another workload asking a name with a shared address: only the address new to the cache is its.
  c.learn('b.test', ['192.0.2.2', '192.0.2.3'], 100, 0, 8);
  assert.deepEqual([c.ownedBy(7), c.ownedBy(8), c.addressCount], [2, 1, 3]);
  assert.equal(c.unknownAmong(['192.0.2.2', '192.0.2.4']), 1);
  // The per-name cap pushes out a.test's soonest: .1 leaves the cache (7 holds one less).
  c.learn('a.test', ['192.0.2.5', '192.0.2.6'], 50, 0, 7);
  assert.deepEqual([c.ownedBy(7), c.addressCount], [3, 4]);
  // Expiry: a.test's addresses go at 50 s, but .2 stays (b.test has it until 100 s) and stays 7's.
  c.expire(60_000, () => false);
  assert.deepEqual(c.addresses('a.test'), []);
  assert.deepEqual([c.ownedBy(7), c.ownedBy(8), c.addressCount], [1, 1, 2]);
  c.expire(200_000, () => false);
  assert.deepEqual([c.ownedBy(7), c.ownedBy(8), c.addressCount], [0, 0, 0]);
  // A hundred addresses of one answer (the Set path) and an answer without an owner (restored state).
  const many = Array.from({ length: 100 }, (_, i) => `198.51.100.${i}`);
  assert.equal(c.unknownAmong([...many, ...many]), 100);
  c.learn('many.test', many.slice(0, 3), 10, 0);
  assert.deepEqual([c.ownedBy(7), c.addressCount], [0, 3]);
  // Who holds what survives a snapshot and restore (an agent restart), and leaves with the address.
  c.learn('x.test', ['203.0.113.1', '203.0.113.2'], 10, 0, 7);
  c.learn('y.test', ['203.0.113.3'], 20, 0, '10.1.0.9');
  const r = FqdnCache.restore(JSON.parse(JSON.stringify(c.snapshot())) as ReturnType<FqdnCache['snapshot']>);
  assert.deepEqual([r.ownedBy(7), r.ownedBy('10.1.0.9'), r.addressCount], [2, 1, 6]);
  r.expire(15_000, () => false);
  assert.deepEqual([r.ownedBy(7), r.ownedBy('10.1.0.9'), r.addressCount], [0, 1, 1]);
});

test('names per address are bounded (maxNamesPerAddress): a new name beyond it is not taken, also from a restored file', () => {
  const c = new FqdnCache({ maxNamesPerAddress: 3 });
  for (let i = 0; i < 5; i++) c.learn(`r${i}.wild.test`, ['192.0.2.9', `198.51.100.${i}`], 60, 0);
  assert.deepEqual(c.namesOf('192.0.2.9').sort(), ['r0.wild.test', 'r1.wild.test', 'r2.wild.test']);
  assert.equal(c.namesRefused, 2);
  assert.deepEqual(c.addresses('r4.wild.test'), ['198.51.100.4'], 'the name keeps its other addresses');
  // An address the name already had is refreshed, not refused.
  c.learn('r0.wild.test', ['192.0.2.9'], 600, 0);
  assert.equal(c.namesRefused, 2);
  assert.equal(c.has('r3.wild.test', '192.0.2.9'), false);
  c.learn('only.wild.test', ['192.0.2.9'], 60, 0);
  assert.equal(c.addresses('only.wild.test').length, 0, 'a name with nothing taken is not kept');
  const restored = FqdnCache.restore({ names: Array.from({ length: 5 }, (_, i) => ({ name: `r${i}.wild.test`, addresses: [{ address: '192.0.2.9', expiresAt: 1 }] })) }, { maxNamesPerAddress: 3 });
  assert.equal(restored.namesOf('192.0.2.9').length, 3);
});

test('identitiesAdd costs the new names only, whatever number of names the address already has', () => {
  const c = new FqdnCache({ maxNamesPerAddress: 100_000 });
  let calls = 0;
  const selectors = [{ matchPattern: '*.wild.test' }, { matchName: 'api.test' }];
  const matchers = fqdnLabelMatchers(selectors).map((m) => ({ label: m.label, match: (n: string) => (calls++, m.match(n)) }));
  for (let i = 0; i < 2000; i++) c.learn(`r${i}.wild.test`, ['192.0.2.9'], 60, 0);
  const ids = c.identities(selectors);
  c.learn('api.test', ['192.0.2.9'], 60, 0);
  calls = 0;
  const { ipcache, added } = c.identitiesAdd(new Map([['192.0.2.9', new Set(['api.test'])]]), matchers, ids);
  assert.equal(calls, matchers.length, 'one name matched, not 2001');
  assert.equal(added.size, 1, 'a new label set: the wildcard\'s and api.test\'s');
  const full = c.identities(selectors, ids.keys);
  assert.deepEqual(ipcache, full.ipcache, 'what a full computation gives');
});
