import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { FlowEvent } from '../../bpf/index.js';
import { EndpointDirectory, ipv4Number } from '../../agent/flows/directory.js';
import { flowEnrich } from '../../agent/flows/enrich.js';
import { FILTER_BUDGET, FilterError, filterCompile, fqdnPatternCompile, filtersCompile, labelSelectorParse, type FlowFilter } from '../../agent/flows/filter.js';
import { flowSelectionCompile } from '../../agent/flows/selection.js';
import { observeFilters } from '../../api/cli/observe-filters.js';
import type { HubbleFlowRecord } from '../../agent/flows/hubble.js';
import { IdentityAllocator } from '../../agent/identity/allocator.js';
import { sqliteStoreOpen } from '../../agent/store/index.js';

async function fixture() {
  const store = sqliteStoreOpen(':memory:');
  const ids = new IdentityAllocator();
  const add = (name: string, ns: string, labels: Record<string, string>, n: number) =>
    store.transaction((tx) => {
      const identity = ids.acquire(tx, labels, ns);
      tx.workloadInsert({
        spec: { name, namespace: ns, kind: 'netns', labels, netns: '/x', requestedMode: 'auto', interface: 'eth0' },
        mode: 'veth', endpointId: n, identity, ipv4: `10.200.0.${n}`, ipv6: `fd00:200::${n}`, hostIfname: `kn${n}`,
      });
      return identity;
    });
  const webId = await add('web', 'shop', { app: 'web', tier: 'front' }, 2);
  const dbId = await add('db', 'shop', { app: 'db' }, 3);
  const dir = new EndpointDirectory(store);
  const base: FlowEvent = {
    timeNs: 1_700_000_000_000_000_000n, ifindex: 10, endpointId: 2, direction: 'EGRESS', family: 4, protocol: 6,
    srcAddr: '10.200.0.2', dstAddr: '10.200.0.3', srcPort: 40000, dstPort: 5432, icmpType: 0, icmpCode: 0, tcpFlags: 0x02,
    srcIdentity: webId, dstIdentity: dbId, verdict: 'FORWARDED', dropReason: 0, isReply: false, length: 60,
  };
  const mk = (over: Partial<FlowEvent>) => flowEnrich({ ...base, ...over }, dir, 'node-1');
  const flows: Record<string, HubbleFlowRecord> = {
    webToDbSyn: mk({}),
    dbToWebSynAck: mk({ endpointId: 2, direction: 'INGRESS', srcAddr: '10.200.0.3', dstAddr: '10.200.0.2', srcPort: 5432, dstPort: 40000, tcpFlags: 0x12, srcIdentity: dbId, dstIdentity: webId, isReply: true }),
    webToWorldDrop: mk({ dstAddr: '1.1.1.1', dstIdentity: 2, protocol: 17, dstPort: 53, tcpFlags: 0, verdict: 'DROPPED', dropReason: 133 }),
    webPing6: mk({ family: 6, srcAddr: 'fd00:200::2', dstAddr: 'fd00:200::3', protocol: 58, srcPort: 0, dstPort: 0, icmpType: 128, tcpFlags: 0 }),
  };
  return { flows, webId, dbId, store, mk };
}

const names = (pred: (r: HubbleFlowRecord) => boolean, flows: Record<string, HubbleFlowRecord>) =>
  Object.entries(flows).filter(([, f]) => pred(f)).map(([k]) => k).sort();

describe('flow filters', async () => {
  const { flows, webId, dbId, mk } = await fixture();
  const only = (f: FlowFilter) => names(filterCompile(f), flows);

  test('each field selects what it should', () => {
    assert.deepEqual(only({ source_ip: ['10.200.0.2'] }), ['webToDbSyn', 'webToWorldDrop']);
    assert.deepEqual(only({ destination_ip: ['1.0.0.0/8'] }), ['webToWorldDrop']);
    assert.deepEqual(only({ source_ip: ['fd00:200::/64'] }), ['webPing6']);
    assert.deepEqual(only({ source_pod: ['shop/'] }), ['dbToWebSynAck', 'webPing6', 'webToDbSyn', 'webToWorldDrop']);
    assert.deepEqual(only({ destination_pod: ['shop/we'] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ source_workload: ['db'] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ destination_workload: ['db'] }), ['webPing6', 'webToDbSyn']);
    assert.deepEqual(only({ source_label: ['app=web'] }), ['webPing6', 'webToDbSyn', 'webToWorldDrop']);
    assert.deepEqual(only({ source_label: ['k8s:app in (db, cache)'] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ source_label: ['app,!tier'] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ destination_label: ['reserved:world'] }), ['webToWorldDrop']);
    assert.deepEqual(only({ source_identity: [dbId] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ destination_identity: [webId] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ destination_port: ['5432'] }), ['webToDbSyn']);
    assert.deepEqual(only({ source_port: ['5432'] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ protocol: ['udp'] }), ['webToWorldDrop']);
    assert.deepEqual(only({ protocol: ['icmp'] }), ['webPing6']);
    assert.deepEqual(only({ protocol: ['ICMPv6'] }), ['webPing6']);
    assert.deepEqual(only({ verdict: ['DROPPED'] }), ['webToWorldDrop']);
    assert.deepEqual(only({ drop_reason_desc: ['POLICY_DENIED'] }), ['webToWorldDrop']);
    assert.deepEqual(only({ traffic_direction: ['ingress'] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ ip_version: ['IPv6'] }), ['webPing6']);
    assert.deepEqual(only({ tcp_flags: ['SYN'] }), ['dbToWebSynAck', 'webToDbSyn']);
    assert.deepEqual(only({ tcp_flags: ['SYN,ACK'] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ reply: [true] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ node_name: ['node-2'] }), []);
  });

  test('DHCP and DHCPv6 (client and server ports both) are named as such and selectable; other UDP to port 67 is not', () => {
    const dhcp = { dhcp4: mk({ protocol: 17, srcAddr: '0.0.0.0', dstAddr: '255.255.255.255', srcPort: 68, dstPort: 67, tcpFlags: 0 }),
      dhcp6: mk({ family: 6, protocol: 17, srcAddr: 'fe80::1', dstAddr: 'fe80::2', srcPort: 547, dstPort: 546, tcpFlags: 0 }),
      stray: mk({ protocol: 17, srcPort: 40000, dstPort: 67, tcpFlags: 0 }) };
    assert.deepEqual(Object.values(dhcp).map((r) => r.flow.Summary), ['DHCP', 'DHCPv6', 'UDP']);
    assert.deepEqual(names(filterCompile({ protocol: ['dhcp'] }), dhcp), ['dhcp4']);
    assert.deepEqual(names(filterCompile({ protocol: ['DHCPv6'] }), dhcp), ['dhcp6']);
    assert.deepEqual(names(filterCompile({ protocol: ['udp'] }), dhcp), ['dhcp4', 'dhcp6', 'stray']);
  });

  test('fields within a filter AND, values within a field OR', () => {
    assert.deepEqual(only({ source_workload: ['web'], protocol: ['tcp'] }), ['webToDbSyn']);
    assert.deepEqual(only({ protocol: ['tcp', 'udp'] }), ['dbToWebSynAck', 'webToDbSyn', 'webToWorldDrop']);
  });

  test('several filters OR; a blacklist subtracts', () => {
    const p = filtersCompile([{ verdict: ['DROPPED'] }, { reply: [true] }]);
    assert.deepEqual(names(p, flows), ['dbToWebSynAck', 'webToWorldDrop']);
    const q = filtersCompile([], [{ protocol: ['tcp'] }]);
    assert.deepEqual(names(q, flows), ['webPing6', 'webToWorldDrop']);
    const r = filtersCompile([{ source_workload: ['web'] }], [{ verdict: ['DROPPED'] }]);
    assert.deepEqual(names(r, flows), ['webPing6', 'webToDbSyn']);
  });

  test('label selectors: sources, operators, and a term written many times', () => {
    assert.deepEqual(only({ source_label: ['k8s:app!=web'] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ source_label: ['app notin (web)'] }), ['dbToWebSynAck']);
    assert.deepEqual(only({ source_label: ['any:app=web'] }), ['webPing6', 'webToDbSyn', 'webToWorldDrop']);
    assert.deepEqual(only({ source_label: ['container:app=web'] }), [], 'another source does not match k8s labels');
    assert.deepEqual(only({ source_label: ['app in ()'] }), []);
    assert.deepEqual(only({ destination_label: ['!reserved:world'] }), ['dbToWebSynAck', 'webPing6', 'webToDbSyn']);
    assert.deepEqual(only({ source_label: [`${'k8s:app,'.repeat(30)}k8s:tier`] }), ['webPing6', 'webToDbSyn', 'webToWorldDrop']);
    assert.deepEqual(only({ source_label: [`${'k8s:app,'.repeat(30)}nosuchkey`] }), []);
  });

  test("what one request's filters hold in all is bounded (FILTER_BUDGET); the error names the field and the limit", () => {
    const { values, labelRequirements, fqdnStars } = FILTER_BUDGET;
    const labels = (n: number, per: number, tag: string) => Array.from({ length: Math.ceil(n / per) }, (_, i): FlowFilter => ({ source_label: Array.from({ length: per }, (_, j) => `${tag}${i}x${j}`) }));
    // at each limit: accepted (and evaluated)
    assert.deepEqual(names(filtersCompile(labels(values / 2, 4, 'w'), labels(values / 2, 4, 'b')), flows), []);
    assert.deepEqual(names(filtersCompile([{ destination_fqdn: ['*'.repeat(fqdnStars)] }]), flows), []);
    const terms = (n: number) => Array.from({ length: n }, (_, j) => `t${j}`).join(',');
    assert.deepEqual(names(filtersCompile([{ source_label: [terms(labelRequirements / 2)] }], [{ destination_label: [terms(labelRequirements / 2)] }]), flows), []);
    // one past: refused, naming where
    assert.throws(() => filtersCompile(labels(values / 2, 4, 'w'), [...labels(values / 2, 4, 'b'), { verdict: ['DROPPED'] }]), /^FilterError: blacklist\[32\]: verdict: .*at most 256 values in all/);
    assert.throws(() => filtersCompile([{ source_label: [terms(labelRequirements / 2)] }], [{ destination_label: [terms(labelRequirements / 2 + 1)] }]), /blacklist\[0\]: destination_label: .*at most 256 requirements in all/);
    assert.throws(() => filtersCompile([{ source_fqdn: ['*a*'] }, { destination_fqdn: ['*'.repeat(fqdnStars - 1)] }]), /whitelist\[1\]: destination_fqdn: .*at most 64 "\*" in all/);
    // A field with the same values in several filters counts once: `kitnet observe` with six
    // either-side flags sends 64 filters of 6-7 values each (448), 13 distinct.
    const cli = observeFilters({ output: 'json', ip: ['10.200.0.2'], workload: ['web'], namespace: ['shop'], label: ['app=web'], identity: [String(webId)], port: ['5432'], verdict: ['forwarded'] });
    assert.equal(cli.length, 64);
    assert.deepEqual(names(filtersCompile(cli as FlowFilter[]), flows), ['dbToWebSynAck', 'webToDbSyn'], 'either side of each flag');
    // The review's request: 63 filters of 64 selectors of 31 terms that each fail at the last (34 ms
    // of the agent's thread per flow before). As written (63 times the same field) it is compiled
    // once and read once per flow; a flow's labels are looked at once, not 63 x 64 times.
    const review = Array.from({ length: 63 }, (): FlowFilter => ({ source_label: Array.from({ length: 64 }, () => `${'k8s:app,'.repeat(30)}nosuchkey`) }));
    let looks = 0;
    const looked = { flow: { get source() { looks++; return flows.webToDbSyn!.flow.source; } } } as unknown as HubbleFlowRecord;
    assert.equal(filtersCompile(review)(looked), false);
    assert.equal(looks, 1, "the flow's source labels were looked at once");
    // Each filter its own selectors: refused at its third filter (2 requirements a selector, 64 selectors a filter).
    const distinct = review.map((f, i): FlowFilter => ({ source_label: f.source_label!.map((v) => `${v}${i}`) }));
    assert.throws(() => filtersCompile(distinct), /whitelist\[2\]: source_label: the label selectors of one request may hold at most 256 requirements/);
    assert.throws(() => flowSelectionCompile({ whitelist: distinct as Array<{ source_label: string[] }> }), (e: Error & { code?: string }) => e.code === 'AGENT_ERR_API_VALIDATION' && /flow filter: whitelist\[2\]: source_label: .*256 requirements/.test(e.message));
  });

  test('bad values are rejected with a clear message', () => {
    assert.throws(() => filterCompile({ source_ip: ['10.0.0.300'] }), FilterError);
    assert.throws(() => filterCompile({ destination_port: ['http'] }), /not a port/);
    assert.throws(() => filterCompile({ tcp_flags: ['SYNN'] }), /unknown TCP flag/);
    assert.throws(() => labelSelectorParse('app in (a'), /cannot parse/);
  });
});

describe('FQDN filters (source_fqdn / destination_fqdn) and protocol dns', () => {
  async function named() {
    const { store, mk } = await fixture();
    const dir = new EndpointDirectory(store);
    const learned = new Map([['192.0.2.10', ['api.test']], ['192.0.2.11', ['a.b.svc.test', 'alias.test']]]);
    const byNumber = new Map([...learned].map(([a, n]) => [ipv4Number(a), n]));
    dir.fqdnNames = { active: () => true, of: (a) => learned.get(a), ofIpv4: (n) => byNumber.get(n) };
    const ev = (over: Partial<FlowEvent>) => flowEnrich({ ...mk({}).event, ...over }, dir, 'node-1');
    return {
      toApi: ev({ dstAddr: '192.0.2.10', dstIdentity: 16777217 }),
      fromApi: ev({ direction: 'INGRESS', srcAddr: '192.0.2.10', dstAddr: '10.200.0.2', srcIdentity: 16777217, isReply: true }),
      toNested: ev({ dstAddr: '192.0.2.11', dstIdentity: 16777218 }),
      toUnknown: ev({ dstAddr: '192.0.2.99', dstIdentity: 2 }),
    };
  }

  test('names are taken on the peer side when the event arrives, and filters match them as hubble does', async () => {
    const f = await named();
    assert.deepEqual(f.toApi.flow.destination_names, ['api.test']);
    assert.equal(f.toApi.flow.source_names, undefined);
    assert.deepEqual(f.fromApi.flow.source_names, ['api.test']);
    assert.equal(f.toUnknown.flow.destination_names, undefined);
    const match = (flt: FlowFilter) => Object.entries(f).filter(([, r]) => filterCompile(flt)(r)).map(([k]) => k);
    assert.deepEqual(match({ destination_fqdn: ['api.test'] }), ['toApi']);
    assert.deepEqual(match({ destination_fqdn: ['API.Test.'] }), ['toApi'], 'case and a trailing dot do not matter');
    assert.deepEqual(match({ source_fqdn: ['api.test'] }), ['fromApi']);
    assert.deepEqual(match({ destination_fqdn: ['*.test'] }), ['toApi', 'toNested'], '* crosses dots, as hubble');
    assert.deepEqual(match({ destination_fqdn: ['*.svc.test'] }), ['toNested']);
    assert.deepEqual(match({ destination_fqdn: ['api'] }), [], 'anchored at both ends');
    assert.deepEqual(match({ destination_fqdn: ['alias.test', 'nothing.test'] }), ['toNested']);
  });

  test('hostile patterns are refused naming the field (no regexp injection)', () => {
    for (const bad of ['a+b', '(a|b)', 'a\\.test', 'x y', 'ä.test', '']) {
      assert.throws(() => filterCompile({ destination_fqdn: [bad] }), (e: Error) => e instanceof FilterError && /destination_fqdn/.test(e.message), bad);
    }
    assert.throws(() => filterCompile({ source_fqdn: ['[a-z]'] }), /source_fqdn: "\[a-z\]" is not a name pattern/);
  });

  test('a follower\'s many-star pattern against long names is answered, not backtracked for hours', { timeout: 60_000 }, () => {
    // As the regular expression it replaced (`^[-a-z0-9_.]*a[-a-z0-9_.]*a...b$`), 4 stars took 4.9 s on such a name.
    const match = fqdnPatternCompile('destination_fqdn', `${'*a'.repeat(40)}*b`);
    assert.equal(match(`${'a.'.repeat(120)}c`), false);
    assert.equal(match(`${'a.'.repeat(120)}b`), true);
    assert.equal(match(`${'a.'.repeat(120)}B`), false, 'names are compared as written: a pattern matches lower case');
    assert.equal(match(`${'a'.repeat(60)}?b`), false, 'a character no pattern may hold matches nothing, not even *');
  });

  test('patterns match part by part: parts in order, never overlapping, anchored at both ends', () => {
    const m = (p: string, name: string) => fqdnPatternCompile('destination_fqdn', p)(name);
    assert.equal(m('a*b*c', 'axxbyyc'), true);
    assert.equal(m('a*b*c', 'acb'), false);
    assert.equal(m('ab*ba', 'aba'), false, 'the head and the tail do not share characters');
    assert.equal(m('ab*ba', 'abba'), true);
    assert.equal(m('*.test', '.test'), true);
    assert.equal(m('**', ''), true);
    assert.equal(m('*b*b*', 'abab'), true);
    assert.equal(m('*b*b*', 'ab'), false);
    // a backtracking scan compares ~250 x 250 characters here
    assert.equal(m(`*${'a'.repeat(200)}b`, 'a'.repeat(253)), false);
    assert.equal(m(`*${'a'.repeat(200)}b`, `${'a'.repeat(252)}b`), true);
  });
});
