import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { kvstoreLabelsKeyParse } from '../../agent/cluster/cilium-labels.js';
import { etcdClientCreate } from '../../agent/cluster/etcd-client.js';
import { IDENTITIES_PREFIX } from '../../agent/cluster/identity-allocator.js';
import { clusterIdentityRange } from '../../agent/cluster/identity-range.js';
import { IPCACHE_PREFIX, ipIdentityPairJson } from '../../agent/cluster/ipcache-publisher.js';
import { hostAddressesRecent } from '../../agent/cluster/host-addresses.js';
import { hostDestinationsFrom } from '../../agent/policy/host-destinations.js';
import { ipcacheValueJudge, IpcacheWatcher, peerNodeBinding, remoteIdentityLabels, type IpcacheWatchRules } from '../../agent/cluster/ipcache-watcher.js';
import type { PeerNode } from '../../agent/cluster/node-registry.js';
import { RemoteIpcache, remoteHostId, type RemoteIpcacheTarget } from '../../agent/cluster/remote-ipcache.js';
import { ClusterSession } from '../../agent/cluster/session.js';
import { cidrParse } from '../../agent/ipam.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { tcpGateStart, type TcpGate } from '../helpers/tcp-gate.js';
import { waitFor } from '../helpers/sys.js';

const log = pino({ level: 'silent' });
const range = clusterIdentityRange(3); // 196608-262143
/** This host: its node IP, loopback, and an interface address inside the cluster's pools. */
const hostAddrs: ReadonlySet<string> = new Set(['192.0.2.1', '127.0.0.1', '::1', '10.5.5.5']);
const rules: IpcacheWatchRules = {
  nodeIP: '192.0.2.1',
  range,
  localPools: [cidrParse('10.200.0.0/16'), cidrParse('fd00:200::/64')],
  clusterPools: [cidrParse('10.0.0.0/8'), cidrParse('fd00::/16')],
  hostAddresses: () => hostAddrs,
};
/** Node nb (192.0.2.2) as the node registry accepted it. */
const nb: PeerNode = { name: 'nb', ipv4: '192.0.2.2', ipv4Cidr: cidrParse('10.77.0.0/24'), ipv6Cidr: cidrParse('fd00:77::/112') };
const key = (ip: string) => `${IPCACHE_PREFIX}/${ip}`;
const pair = (ip: string, hostIP: string, id: number) => ipIdentityPairJson({ ip, hostIP, id, namespace: 'shop', podName: `p-${ip}` });

describe('cluster ipcache watch: what is accepted', () => {
  test('another node\'s entry (Cilium\'s own example shape), v4 and v6', () => {
    assert.deepEqual(ipcacheValueJudge(key('10.244.1.79'), pair('10.244.1.79', '172.18.0.3', 212954), rules), {
      entry: { ip: '10.244.1.79', identity: 212954, hostIP: '172.18.0.3', namespace: 'shop', podName: 'p-10.244.1.79' },
    });
    const v6 = ipcacheValueJudge(key('fd00:244::79'), pair('fd00:244::79', 'fd00::3', 212954), rules);
    assert.ok('entry' in v6 && v6.entry.ip === 'fd00:244::79');
  });

  test('this node\'s own entries are skipped, not counted as bad', () => {
    assert.deepEqual(ipcacheValueJudge(key('10.200.0.5'), pair('10.200.0.5', '192.0.2.1', 200000), rules), { own: true });
  });

  test('hostile and malformed values are refused with a reason', () => {
    const cases: Array<[string, string, RegExp]> = [
      [key('10.77.0.1'), '{"HostIP":', /not JSON/],
      [key('10.77.0.1'), '[1,2]', /not a JSON object/],
      [key('10.77.0.1'), 'null', /not a JSON object/],
      [key('10.77.0.1'), '{"IP":5,"HostIP":"192.0.2.2","ID":200000}', /not a string/],
      [key('10.77.0.1'), '{"IP":"nope","HostIP":"192.0.2.2","ID":200000}', /not an IP address/],
      [key('10.77.0.1'), pair('10.77.0.2', '192.0.2.2', 200000), /does not match the key/],
      [key('10.77.0.1'), pair('10.77.0.1', '192.0.2.2', 65000), /outside the cluster's range/],
      [key('10.77.0.1'), pair('10.77.0.1', '192.0.2.2', 1), /outside the cluster's range/],
      [key('10.77.0.1'), '{"IP":"10.77.0.1","HostIP":"192.0.2.2","ID":"200000"}', /outside the cluster's range/],
      [key('10.77.0.1'), '{"IP":"10.77.0.1","Mask":"////AA==","HostIP":"192.0.2.2","ID":200000}', /CIDR/],
      [key('10.200.3.4'), pair('10.200.3.4', '192.0.2.2', 200000), /this host's pool 10\.200\.0\.0\/16/],
      [key('fd00:200::9'), pair('fd00:200::9', '192.0.2.2', 200000), /this host's pool fd00:200::\/64/],
      // A zone stays in the text but not in the BPF key: fd00:9::3%x would be fd00:9::3's entry.
      [key('fd00:9::3%x'), pair('fd00:9::3%x', '192.0.2.2', 200000), /IPv6 zone/],
      [key('fd00:9::3'), pair('fd00:9::3', 'fd00::2%eth0', 200000), /IPv6 zone/],
      // Another text of an address: not the key of its canonical text.
      [key('172818689'), pair('10.77.1.1', '192.0.2.2', 200000), /does not match the key/],
      [key('10.77.257'), pair('10.77.1.1', '192.0.2.2', 200000), /does not match the key/],
    ];
    for (const [k, v, reason] of cases) {
      const verdict = ipcacheValueJudge(k, v, rules);
      assert.ok('reason' in verdict && reason.test(verdict.reason), `${v}: ${JSON.stringify(verdict)}`);
    }
  });

  test('only another node\'s workload addresses: never this host\'s, special ones, outside the cluster pools, or outside the node HostIP names', () => {
    const refused: Array<[string, RegExp]> = [
      ['192.0.2.1', /192\.0\.2\.1 is this host's own/],
      ['10.5.5.5', /10\.5\.5\.5 is this host's own/],
      ['127.0.0.1', /127\.0\.0\.0\/8 \(loopback\)/],
      ['0.0.0.0', /0\.0\.0\.0\/8 \(unspecified\)/],
      ['8.8.8.8', /outside the cluster's pools 10\.0\.0\.0\/8, fd00::\/16/],
      ['192.0.2.9', /outside the cluster's pools/],
      ['224.0.0.1', /multicast/],
      ['255.255.255.255', /broadcast/],
      ['169.254.1.1', /link-local/],
      ['::', /unspecified/],
      ['::1', /loopback/],
      ['fe80::1', /link-local/],
      ['ff02::1', /multicast/],
      ['2001:db8::1', /outside the cluster's pools/],
    ];
    for (const [ip, re] of refused) {
      const v = ipcacheValueJudge(key(ip), pair(ip, '192.0.2.66', 200000), rules);
      assert.ok('reason' in v, `${ip} accepted`);
      assert.match(v.reason, re);
    }
    // Bound to the node HostIP names, which the node registry must know.
    const bound = { ...rules, nodes: () => [peerNodeBinding(nb)] };
    const judge = (ip: string, hostIP: string) => ipcacheValueJudge(key(ip), pair(ip, hostIP, 200000), bound);
    assert.ok('entry' in judge('10.77.0.7', '192.0.2.2'));
    assert.ok('entry' in judge('fd00:77::7', '192.0.2.2'));
    assert.match((judge('10.66.0.1', '192.0.2.66') as { reason: string }).reason, /HostIP 192\.0\.2\.66 names no node this host knows .*: an address no known node holds waits for its node/);
    assert.match((judge('10.88.0.1', '192.0.2.2') as { reason: string }).reason, /10\.88\.0\.1 is outside the CIDR 10\.77\.0\.0\/24 of node nb, which HostIP 192\.0\.2\.2 names/);
    assert.match((judge('fd00:78::1', '192.0.2.2') as { reason: string }).reason, /outside the CIDR fd00:77::\/112 of node nb/);
    assert.match((judge('10.77.0.50', '192.0.2.66') as { reason: string }).reason, /HostIP 192\.0\.2\.66 names no node this host knows .*, and the address is in node nb's CIDR/);
    // Two nodes covering one address (the registry's claims keep CIDRs disjoint; a peer's need not be).
    const twice = { ...rules, nodes: () => [peerNodeBinding(nb), { name: 'nz', addresses: ['192.0.2.9'], cidrs: [cidrParse('10.77.0.0/25')] }] };
    assert.match((ipcacheValueJudge(key('10.77.0.5'), pair('10.77.0.5', '192.0.2.2', 200000), twice) as { reason: string }).reason, /in node nz's CIDR, but HostIP 192\.0\.2\.2 is not that node/);
  });

  test('this host\'s addresses: every destination its stack takes (interface addresses, broadcasts, anycast, link-local, multicast) and the node addresses', () => {
    const read = hostAddressesRecent(['192.0.2.1', 'FD00:0::1'], () => hostDestinationsFrom([
      { cidr: '127.0.0.1/8', loopback: true },
      { cidr: '198.51.100.7/24', loopback: false },
      { cidr: '2001:db8:5::7/64', loopback: false },
    ], ['198.51.100.7/32', '198.51.100.255/32', '2001:db8:5::/128', '2001:db8:5::7/128']));
    const host = read();
    for (const a of ['192.0.2.1', 'fd00::1', '127.0.0.1', '127.9.9.9', '198.51.100.7', '198.51.100.255', '2001:db8:5::7', '2001:db8:5::', 'fe80::1', '224.0.0.1', 'ff02::1', '255.255.255.255']) {
      assert.ok(host.has(a), a);
    }
    for (const a of ['192.0.2.2', '198.51.100.8', '2001:db8:5::8', '10.77.0.7']) assert.ok(!host.has(a), a);
    assert.ok(hostAddressesRecent([])().has('127.0.0.1'), 'the real interfaces: loopback at least');
  });

  test('label keys parse as Cilium writes them; anything else does not', () => {
    assert.deepEqual(kvstoreLabelsKeyParse('k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;'), [
      { source: 'k8s', key: 'app', value: 'baz' },
      { source: 'k8s', key: 'io.cilium.k8s.policy.cluster', value: 'cluster3' },
    ]);
    for (const bad of ['k8s:app=baz', '', 'app=baz;', 'k8s:app;', ';']) assert.equal(kvstoreLabelsKeyParse(bad), undefined, bad);
  });

  test('the host field names the remote node and is never 0 (0 is this host)', () => {
    assert.equal(remoteHostId('192.0.2.2'), 0xc0000202);
    assert.notEqual(remoteHostId('fd00::3'), 0);
    assert.notEqual(remoteHostId('fd00::3'), remoteHostId('fd00::4'));
  });
});

describe('cluster ipcache watch against a real etcd', () => {
  let etcd: EtcdServer;
  /** The watchers' way to etcd; the test's own client (`raw`) goes straight to it. */
  let gate: TcpGate;
  let raw: Etcd3;
  let session: ClusterSession;
  const watchers: IpcacheWatcher[] = [];

  /** A datapath stand-in that records what the sink writes, and the policy universe's remote identities. */
  function target(local: string[] = []) {
    const ipcache = new Map<string, { identity: number; hostId: number }>();
    const identities = new Map<number, readonly string[]>();
    let failNext = false;
    const t: RemoteIpcacheTarget = {
      exclusive: (fn) => fn(),
      local: () => ({ owns: (cidr) => local.includes(cidr.slice(0, cidr.indexOf('/'))), wish: () => undefined }),
      ipcacheUpsert: (cidr, e) => void ipcache.set(cidr, e),
      ipcacheDelete: (cidr) => void ipcache.delete(cidr),
      ipcacheRemoteList: () => [...ipcache].filter(([, e]) => e.hostId !== 0).map(([cidr, e]) => [cidr, e.identity]),
      identityLabels: (id) => remoteIdentityLabels(session, id, 'c3'),
      remoteIdentitiesUpdate: async (changes) => {
        if (failNext) {
          failNext = false;
          throw new Error('policy write failed (test)');
        }
        for (const [id, labels] of changes) {
          if (labels) identities.set(id, labels);
          else identities.delete(id);
        }
      },
    };
    return { t, ipcache, identities, failOnce: () => (failNext = true) };
  }

  async function follow(t: RemoteIpcacheTarget, r: IpcacheWatchRules = rules) {
    const sink = new RemoteIpcache(t, log);
    const w = new IpcacheWatcher(session, r, log);
    watchers.push(w);
    await w.start(sink, sink.adopt());
    return { sink, w };
  }

  before(async () => {
    etcd = await etcdStart();
    gate = await tcpGateStart(etcd.endpoint);
    raw = new Etcd3({ hosts: etcd.endpoint });
    session = await ClusterSession.open(etcdClientCreate({ endpoints: [gate.endpoint] }, undefined), log);
  });
  after(async () => {
    for (const w of watchers) await w.close().catch(() => undefined);
    await session?.close({ revoke: true }).catch(() => undefined);
    raw?.close();
    await gate?.close();
    await etcd?.stop();
  });

  test('listed, then watched: other nodes\' entries in, this node\'s and hostile ones out, deletions followed', async () => {
    const b = '192.0.2.2';
    await raw.put(`${IDENTITIES_PREFIX}/id/200100`).value('k8s:app=b;k8s:io.cilium.k8s.policy.cluster=c3;k8s:io.kubernetes.pod.namespace=shop;');
    await raw.put(`${IDENTITIES_PREFIX}/id/200101`).value('reserved:host;');
    await raw.put(key('10.77.0.5')).value(pair('10.77.0.5', b, 200100));
    await raw.put(key('10.200.0.5')).value(pair('10.200.0.5', rules.nodeIP, 200000)); // this node's own
    await raw.put(key('10.77.0.66')).value('{"IP":"10.77.0.66",'); // broken JSON
    await raw.put(key('10.200.7.7')).value(pair('10.200.7.7', b, 200100)); // in this host's pool
    await raw.put(key('10.77.0.8')).value(pair('10.77.0.8', b, 70000)); // another cluster's identity
    await raw.put(key('10.99.0.1')).value(pair('10.99.0.1', b, 200100)); // a local workload outside the pool
    const d = target(['10.99.0.1']);
    const { w, sink } = await follow(d.t);
    assert.deepEqual([...d.ipcache], [['10.77.0.5/32', { identity: 200100, hostId: remoteHostId(b) }]]);
    assert.deepEqual(d.identities.get(200100), ['k8s:app=b', 'k8s:io.cilium.k8s.policy.cluster=c3', 'k8s:io.kubernetes.pod.namespace=shop']);
    assert.equal(w.ignored, 3);

    // Through the watch: a new entry of a known identity, v6, and one whose identity claims reserved labels.
    await raw.put(key('fd00:77::6')).value(pair('fd00:77::6', b, 200100));
    await raw.put(key('10.77.0.9')).value(pair('10.77.0.9', b, 200101));
    await waitFor('the v6 entry in the ipcache', async () => d.ipcache.has('fd00:77::6/128'));
    await waitFor('the reserved-label identity refused', async () => sink.identitiesIgnored > 0 || undefined);
    assert.equal(d.identities.has(200101), false, 'an identity posing as reserved never reaches policy');

    // A value turning bad takes the entry out; deletions take entries out; the identity leaves with its last address.
    await raw.put(key('10.77.0.5')).value('{"IP":"10.77.0.5","HostIP":"192.0.2.2","ID":-1}');
    await waitFor('the entry whose value turned bad gone', async () => !d.ipcache.has('10.77.0.5/32'));
    assert.ok(d.identities.has(200100), 'still referenced by the v6 entry');
    await raw.delete().key(key('fd00:77::6')).exec();
    await waitFor('the deleted entry gone', async () => !d.ipcache.has('fd00:77::6/128'));
    await waitFor('the identity out of the policy universe', async () => !d.identities.has(200100));
    await raw.delete().key(key('10.77.0.9')).exec();
    await waitFor('the last remote entry gone', async () => d.ipcache.size === 0);
    assert.equal(sink.size(), 0);
    await w.close();
  });

  test('a zoned address never reaches a local workload\'s entry; another text of an address never removes its entry', async () => {
    const b = '192.0.2.6';
    await raw.delete().prefix(`${IPCACHE_PREFIX}/`).exec();
    await raw.put(`${IDENTITIES_PREFIX}/id/200500`).value('k8s:app=g;');
    await raw.put(key('10.77.1.1')).value(pair('10.77.1.1', b, 200500));
    // This host's workload at fd00:9::3: a key and IP with a zone would write the same BPF key.
    const d = target(['fd00:9::3']);
    const upserts: string[] = [];
    const upsert = d.t.ipcacheUpsert;
    d.t.ipcacheUpsert = (cidr, e) => {
      upserts.push(cidr);
      upsert(cidr, e);
    };
    const { w } = await follow(d.t);
    assert.ok(d.ipcache.has('10.77.1.1/32'));
    await raw.put(key('fd00:9::3%x')).value(pair('fd00:9::3%x', b, 200500));
    // 10.77.1.1 as a number and as a.b.c: a bad value and a deletion under them.
    await raw.put(key('172818689')).value('{"IP":"bad"}');
    await raw.delete().key(key('172818689')).exec();
    await raw.put(key('10.77.257')).value(pair('10.77.1.1', b, 200500));
    await raw.delete().key(key('10.77.257')).exec();
    await raw.put(key('10.77.1.2')).value(pair('10.77.1.2', b, 200500));
    await waitFor('the watch past the hostile keys', async () => d.ipcache.has('10.77.1.2/32') || undefined);
    await w.settled();
    assert.deepEqual(upserts.filter((c) => c.startsWith('fd00:9::3')), [], 'nothing written over the local workload\'s address');
    assert.deepEqual(d.ipcache.get('10.77.1.1/32'), { identity: 200500, hostId: remoteHostId(b) }, 'the canonical key\'s entry stays');
    assert.equal(w.ignored, 3, 'the zoned value and the two mismatched values');
    await w.close();
  });

  test('a hostile node claims this host\'s addresses, outside and special ones, another node\'s: none reaches the ipcache, and deleting them leaves the host\'s entries', async () => {
    const hostile = '192.0.2.66';
    await raw.delete().prefix(`${IPCACHE_PREFIX}/`).exec();
    await raw.put(`${IDENTITIES_PREFIX}/id/200600`).value('k8s:app=h;');
    const d = target();
    // This host's own entries (reserved:host, host field 0), as the policy's ipcache sync writes them.
    const own = { identity: 1, hostId: 0 };
    for (const ip of ['192.0.2.1', '127.0.0.1', '10.5.5.5']) d.ipcache.set(`${ip}/32`, own);
    const { w, sink } = await follow(d.t, { ...rules, nodes: () => [peerNodeBinding(nb)] });
    const claimed = ['192.0.2.1', '127.0.0.1', '10.5.5.5', '8.8.8.8', '0.0.0.0', '224.0.0.1', '255.255.255.255', '10.77.0.50', 'fe80::1', '10.66.0.1'];
    for (const ip of claimed) await raw.put(key(ip)).value(pair(ip, hostile, 200600));
    // nb outside its CIDR; nb inside it, as it should be.
    await raw.put(key('10.88.0.1')).value(pair('10.88.0.1', nb.ipv4!, 200600));
    await raw.put(key('10.77.0.7')).value(pair('10.77.0.7', nb.ipv4!, 200600));
    await raw.put(key('10.77.0.8')).value(pair('10.77.0.8', nb.ipv4!, 200600));
    await waitFor('the good entries', async () => (d.ipcache.has('10.77.0.7/32') && d.ipcache.has('10.77.0.8/32')) || undefined);
    await w.settled();
    assert.equal(w.ignored, claimed.length + 1);
    for (const ip of claimed) await raw.delete().key(key(ip)).exec();
    await raw.delete().key(key('10.77.0.8')).exec();
    await waitFor('a deletion followed', async () => !d.ipcache.has('10.77.0.8/32') || undefined);
    await w.settled();
    assert.deepEqual(
      [...d.ipcache].sort(),
      [['10.5.5.5/32', own], ['10.77.0.7/32', { identity: 200600, hostId: remoteHostId(nb.ipv4!) }], ['127.0.0.1/32', own], ['192.0.2.1/32', own]],
    );
    assert.equal(sink.size(), 1);
    await w.close();
  });

  test('an address no known node holds is bound to no node: a hostile writer\'s claim is refused, its node\'s entry waits for the node', async () => {
    await raw.delete().prefix(`${IPCACHE_PREFIX}/`).exec();
    await raw.put(`${IDENTITIES_PREFIX}/id/200900`).value('k8s:app=n;');
    const nodes: PeerNode[] = [];
    let changed: (() => void) | undefined;
    const d = target();
    const { w } = await follow(d.t, { ...rules, nodes: () => nodes.map(peerNodeBinding), nodesChanged: (fn) => ((changed = fn), () => (changed = undefined)) });
    // No node holds 10.82.0.0/24 yet: a node no registry knows (192.0.2.66) claims an address in it,
    // and nc, not known yet either, publishes its own workload there.
    await raw.put(key('10.82.0.9')).value(pair('10.82.0.9', '192.0.2.66', 200900));
    await raw.put(key('10.82.0.10')).value(pair('10.82.0.10', '192.0.2.8', 200900));
    await waitFor('both judged', async () => (w.ignored >= 2 ? true : undefined));
    await w.settled();
    assert.deepEqual([...d.ipcache.keys()], [], 'neither taken on the pool check alone');
    // Node nc joins with that CIDR.
    nodes.push({ name: 'nc', ipv4: '192.0.2.8', ipv4Cidr: cidrParse('10.82.0.0/24') });
    const listsBefore = w.lists;
    changed!();
    await waitFor('nc\'s entry judged again and taken', async () => d.ipcache.has('10.82.0.10/32') || undefined);
    assert.ok(w.lists > listsBefore, 'listed again');
    await w.settled();
    assert.equal(d.ipcache.has('10.82.0.9/32'), false, 'the hostile claim stays refused');
    await w.close();
    assert.equal(changed, undefined, 'unsubscribed at close');
  });

  test('this cluster\'s identities are judged as a peer\'s: no reserved, cidr or fqdn labels, no cluster label naming another cluster', async () => {
    const b = '192.0.2.7';
    await raw.delete().prefix(`${IPCACHE_PREFIX}/`).exec();
    const ids: Array<[number, string, RegExp | undefined]> = [
      [200800, 'k8s:app=x;k8s:io.cilium.k8s.policy.cluster=c3;', undefined],
      [200801, 'k8s:app=x;k8s:io.cilium.k8s.policy.cluster=cilium1;', /labels name another cluster \(cilium1\) than c3/],
      [200802, 'cidr:8.8.8.8/32=;k8s:app=x;', /cidr labels are this host's own/],
      [200803, 'fqdn:example.com=;', /fqdn labels are this host's own/],
      [200804, 'k8s:app=x;reserved:host=;', /reserved labels are this host's own/],
    ];
    for (const [id, labels, re] of ids) {
      await raw.put(`${IDENTITIES_PREFIX}/id/${id}`).value(labels);
      const got = await remoteIdentityLabels(session, id, 'c3');
      if (re) assert.match((got as { reason: string }).reason, re, labels);
      else assert.ok(Array.isArray(got), labels);
    }
    const d = target();
    const { w, sink } = await follow(d.t);
    for (const [i, [id]] of ids.entries()) await raw.put(key(`10.81.0.${i + 1}`)).value(pair(`10.81.0.${i + 1}`, b, id));
    await waitFor('the entries', async () => d.ipcache.size === ids.length || undefined);
    await w.settled();
    assert.deepEqual([...d.identities.keys()], [200800], 'only the identity of this cluster with its labels joins policy');
    assert.equal(sink.identitiesIgnored, ids.length - 1);
    await w.close();
  });

  test('a change the sink could not take is handed over again by a new list, with deletions missed meanwhile', async () => {
    const b = '192.0.2.3';
    await raw.delete().prefix(`${IPCACHE_PREFIX}/`).exec();
    await raw.put(`${IDENTITIES_PREFIX}/id/200200`).value('k8s:app=c;');
    await raw.put(`${IDENTITIES_PREFIX}/id/200201`).value('k8s:app=d;');
    await raw.put(key('10.78.0.1')).value(pair('10.78.0.1', b, 200200));
    const d = target();
    const { w } = await follow(d.t);
    assert.ok(d.ipcache.has('10.78.0.1/32'));
    const listsBefore = w.lists;
    d.failOnce();
    // The new identity's policy write fails: nothing of this batch is taken, and the watcher lists again.
    await raw.put(key('10.78.0.2')).value(pair('10.78.0.2', b, 200201));
    await raw.delete().key(key('10.78.0.1')).exec();
    await waitFor('a new list', async () => w.lists > listsBefore || undefined, 15_000);
    await waitFor('the list\'s difference applied', async () => d.ipcache.has('10.78.0.2/32') && !d.ipcache.has('10.78.0.1/32'));
    await w.settled();
    assert.deepEqual([...d.identities.keys()], [200201]);
    await w.close();
  });

  test('at a restart, remote entries the pinned ipcache still holds are taken over: those etcd no longer has go', async () => {
    const b = '192.0.2.4';
    await raw.delete().prefix(`${IPCACHE_PREFIX}/`).exec();
    await raw.put(`${IDENTITIES_PREFIX}/id/200300`).value('k8s:app=e;');
    await raw.put(key('10.79.0.2')).value(pair('10.79.0.2', b, 200300));
    const d = target();
    // Left by the previous run: one entry etcd still has, one deleted while the agent was down; a local one.
    d.ipcache.set('10.79.0.1/32', { identity: 200300, hostId: remoteHostId(b) });
    d.ipcache.set('10.79.0.2/32', { identity: 200300, hostId: remoteHostId(b) });
    d.ipcache.set('10.200.0.9/32', { identity: 200000, hostId: 0 });
    const { w, sink } = await follow(d.t);
    assert.deepEqual([...d.ipcache.keys()].sort(), ['10.200.0.9/32', '10.79.0.2/32']);
    assert.ok(d.identities.has(200300), 'the identity of a taken-over entry joins the policy universe');
    assert.equal(sink.size(), 1);
    await raw.delete().key(key('10.79.0.2')).exec();
    await waitFor('the taken-over entry follows its deletion', async () => !d.ipcache.has('10.79.0.2/32'));
    await waitFor('and its identity leaves', async () => !d.identities.has(200300));
    await w.close();
  });

  test('etcd killed and back with history compacted: the watcher lists again and follows what changed', async () => {
    const b = '192.0.2.5';
    await raw.delete().prefix(`${IPCACHE_PREFIX}/`).exec();
    await raw.put(`${IDENTITIES_PREFIX}/id/200400`).value('k8s:app=f;');
    await raw.put(key('10.80.0.1')).value(pair('10.80.0.1', b, 200400));
    const d = target();
    const { w } = await follow(d.t);
    assert.ok(d.ipcache.has('10.80.0.1/32'));
    const listsBefore = w.lists;
    // The watcher is kept away until the history it would resume from is gone: without the gate it
    // may reconnect between the restart and the compaction, and then it follows by the watch alone.
    gate.shut();
    await etcd.restart();
    // Changes after the restart, and the history with them compacted away.
    await raw.put(key('10.80.0.2')).value(pair('10.80.0.2', b, 200400));
    await raw.delete().key(key('10.80.0.1')).exec();
    const { header } = await raw.kv.range({ key: Buffer.from(key('10.80.0.2')) });
    await raw.kv.compact({ revision: header.revision, physical: true });
    gate.open();
    await waitFor('what changed while the watch was down', async () => (d.ipcache.has('10.80.0.2/32') && !d.ipcache.has('10.80.0.1/32')) || undefined, 30_000);
    assert.ok(w.lists > listsBefore, 'listed again after the connection broke');
    await w.close();
  });
});

describe('remote identities without usable labels (a hostile writer naming thousands)', () => {
  test('their labels are read outside the agent\'s mutex, once a minute at most, and told in one warning', async () => {
    const lines: string[] = [];
    const warnLog = pino({ level: 'warn' }, { write: (l: string) => lines.push(l) });
    let inside = false;
    let reads = 0;
    let readsInside = 0;
    const ipcache = new Map<string, { identity: number; hostId: number }>();
    const t: RemoteIpcacheTarget = {
      exclusive: async (fn) => {
        inside = true;
        try {
          return await fn();
        } finally {
          inside = false;
        }
      },
      local: () => ({ owns: () => false, wish: () => undefined }),
      ipcacheUpsert: (cidr, e) => void ipcache.set(cidr, e),
      ipcacheDelete: (cidr) => void ipcache.delete(cidr),
      ipcacheRemoteList: () => [],
      identityLabels: async (id) => {
        reads++;
        if (inside) readsInside++;
        await new Promise((r) => setImmediate(r)); // an etcd round trip
        return id % 2 ? undefined : { reason: 'a cidr: source' };
      },
      remoteIdentitiesUpdate: async () => undefined,
    };
    const sink = new RemoteIpcache(t, warnLog);
    const set = Array.from({ length: 3000 }, (_, i) => ({ ip: `10.77.${i >> 8}.${i & 255}`, identity: 200_000 + i, hostIP: '192.0.2.2', namespace: 'shop', podName: `p${i}` }));
    await sink.apply(set, []);
    assert.equal(reads, 3000);
    assert.equal(readsInside, 0, 'no etcd read under the agent\'s mutex');
    assert.equal(sink.identitiesIgnored, 3000);
    const warned = lines.filter((l) => l.includes('remote identities ignored'));
    assert.equal(warned.length, 1);
    assert.match(warned[0]!, /"count":3000/);
    assert.equal(ipcache.size, 3000, 'their addresses are still mapped (policies do not select them by labels)');
    // A list again (a broken watch, a full map's retry): not read again within the minute.
    await sink.apply(set, []);
    assert.equal(reads, 3000);
    assert.equal(sink.identitiesIgnored, 3000);
  });
});
