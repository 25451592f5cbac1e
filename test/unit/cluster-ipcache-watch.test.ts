import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { kvstoreLabelsKeyParse } from '../../agent/cluster/cilium-labels.js';
import { etcdClientCreate } from '../../agent/cluster/etcd-client.js';
import { IDENTITIES_PREFIX } from '../../agent/cluster/identity-allocator.js';
import { clusterIdentityRange } from '../../agent/cluster/identity-range.js';
import { IPCACHE_PREFIX, ipIdentityPairJson } from '../../agent/cluster/ipcache-publisher.js';
import { ipcacheValueJudge, IpcacheWatcher, remoteIdentityLabels } from '../../agent/cluster/ipcache-watcher.js';
import { RemoteIpcache, remoteHostId, type RemoteIpcacheTarget } from '../../agent/cluster/remote-ipcache.js';
import { ClusterSession } from '../../agent/cluster/session.js';
import { cidrParse } from '../../agent/ipam.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { tcpGateStart, type TcpGate } from '../helpers/tcp-gate.js';
import { waitFor } from '../helpers/sys.js';

const log = pino({ level: 'silent' });
const range = clusterIdentityRange(3); // 196608-262143
const rules = { nodeIP: '192.0.2.1', range, localPools: [cidrParse('10.200.0.0/16'), cidrParse('fd00:200::/64')] };
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
      localAddresses: () => new Set(local),
      ipcacheUpsert: (cidr, e) => void ipcache.set(cidr, e),
      ipcacheDelete: (cidr) => void ipcache.delete(cidr),
      ipcacheRemoteList: () => [...ipcache].filter(([, e]) => e.hostId !== 0).map(([cidr, e]) => [cidr, e.identity]),
      identityLabels: (id) => remoteIdentityLabels(session, id),
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

  async function follow(t: RemoteIpcacheTarget) {
    const sink = new RemoteIpcache(t, log);
    const w = new IpcacheWatcher(session, rules, log);
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
