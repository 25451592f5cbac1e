import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { etcdClientCreate } from '../../agent/cluster/etcd-client.js';
import { ClusterSession } from '../../agent/cluster/session.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { waitFor } from '../helpers/sys.js';
import { clusterIdentityRange } from '../../agent/cluster/identity-range.js';
import { ipcacheValueJudge } from '../../agent/cluster/ipcache-watcher.js';
import { clusterConfigJson, clusterConfigKey, HEARTBEAT_KEY, kvstoreTimestamp, kvstoreTimestampParse, MeshMarkers, syncedKey } from '../../agent/cluster/mesh-markers.js';
import { goIpNetParse, nodeSummaryParse, peerIdentityJudge } from '../../agent/cluster/peer-formats.js';
import { IpcacheOwners, RemoteIpcache, remoteHostId } from '../../agent/cluster/remote-ipcache.js';
import { PeerCluster, type PeerConfig } from '../../agent/cluster/peers.js';
import { cidrParse } from '../../agent/ipam.js';
import { clusterStatusText } from '../../api/cli/cluster-status.js';

// The examples of ../shared/CLUSTER.md, as Cilium v1.19.4 wrote them for cluster `cilium1`, id 3.
const LABELS = 'k8s:app=frontend;k8s:io.cilium.k8s.policy.cluster=cilium1;k8s:io.kubernetes.pod.namespace=shop;';
const NODE =
  '{"Name":"k8s-node-1","Cluster":"cilium1","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.3"}],"IPv4AllocCIDR":null,' +
  '"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":null,"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"",' +
  '"IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":3,"Source":"","EncryptionKey":0,"Labels":null,"Annotations":null,' +
  '"NodeIdentity":0,"WireguardPubKey":"","BootID":""}';
const IPCACHE = '{"IP":"10.244.1.79","Mask":null,"HostIP":"172.18.0.3","ID":212954,"Key":0,"Metadata":"","K8sNamespace":"default","K8sPodName":"pod-212954"}';
const peer = { name: 'cilium1', range: clusterIdentityRange(3) };

describe('ClusterMesh keys (a kitnet cluster as a Cilium remote cluster)', () => {
  test('cluster config, canaries and heartbeat: the keys and values Cilium writes', () => {
    assert.equal(clusterConfigKey('cilium1'), 'cilium/cluster-config/cilium1');
    assert.equal(clusterConfigJson(3), '{"id":3,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}');
    assert.equal(HEARTBEAT_KEY, 'cilium/.heartbeat');
    assert.equal(syncedKey('kit', 'nodes'), 'cilium/synced/kit/cilium/state/nodes/v1');
    assert.equal(syncedKey('kit', 'identities'), 'cilium/synced/kit/cilium/state/identities/v1');
    assert.equal(syncedKey('kit', 'ip'), 'cilium/synced/kit/cilium/state/ip/v1');
    assert.equal(kvstoreTimestamp(new Date('2026-12-01T22:55:14.987Z')), '2026-12-01T22:55:14Z');
    assert.equal(kvstoreTimestampParse('2026-12-01T22:55:14Z')?.toISOString(), '2026-12-01T22:55:14.000Z');
    assert.equal(kvstoreTimestampParse('2026-12-01T23:55:14+01:00')?.toISOString(), '2026-12-01T22:55:14.000Z');
    for (const bad of ['', 'yesterday', '2026-13-45T99:00:00Z', '1764629714']) assert.equal(kvstoreTimestampParse(bad), undefined, bad);
  });
});

describe('reading a Cilium cluster: identities, nodes, ipcache values judged', () => {
  test('an id/ key of the peer: taken in its range with its labels', () => {
    assert.deepEqual(peerIdentityJudge('cilium/state/identities/v1/id/212954', LABELS, peer), {
      id: 212954,
      labels: ['k8s:app=frontend', 'k8s:io.cilium.k8s.policy.cluster=cilium1', 'k8s:io.kubernetes.pod.namespace=shop'],
    });
    // Without the cluster label (clustermesh-apiserver mirrors CRD identities as they are): it is added.
    assert.deepEqual(peerIdentityJudge('cilium/state/identities/v1/id/196608', 'k8s:app=x;', peer), { id: 196608, labels: ['k8s:app=x', 'k8s:io.cilium.k8s.policy.cluster=cilium1'] });
  });

  test('hostile id/ keys are refused with a reason', () => {
    const reasons: Array<[string, string, RegExp]> = [
      ['cilium/state/identities/v1/id/262144', LABELS, /outside cluster cilium1's range 196608-262143/],
      ['cilium/state/identities/v1/id/196607', LABELS, /outside/],
      ['cilium/state/identities/v1/id/2', 'reserved:host;', /outside/],
      ['cilium/state/identities/v1/id/0212954', LABELS, /not .*<number>/],
      ['cilium/state/identities/v1/id/21x', LABELS, /not .*<number>/],
      ['cilium/state/identities/v1/id/212954', 'k8s:app=frontend', /not a Cilium label key/],
      ['cilium/state/identities/v1/id/212954', ';', /not a Cilium label key/],
      ['cilium/state/identities/v1/id/212954', '{"garbage":', /not a Cilium label key/],
      ['cilium/state/identities/v1/id/212954', 'reserved:host=;k8s:app=x;', /reserved labels/],
      ['cilium/state/identities/v1/id/212954', 'k8s:app=x;k8s:io.cilium.k8s.policy.cluster=kitnet;', /name another cluster \(kitnet\)/],
      ['cilium/state/identities/v1/id/212954', 'cidr:8.8.8.8/32=;k8s:app=x;', /cidr labels are this host's own/],
      ['cilium/state/identities/v1/id/212954', 'fqdn:example.com=;', /fqdn labels are this host's own/],
    ];
    for (const [key, value, re] of reasons) {
      const v = peerIdentityJudge(key, value, peer);
      assert.ok('reason' in v, `${key} ${value} accepted`);
      assert.match(v.reason, re);
    }
  });

  test('a node key (Cilium\'s node JSON) read defensively', () => {
    assert.deepEqual(nodeSummaryParse('cilium/state/nodes/v1/cilium1/k8s-node-1', NODE), {
      name: 'k8s-node-1',
      cluster: 'cilium1',
      addresses: [{ type: 'InternalIP', ip: '172.18.0.3' }],
    });
    const withCidrs = JSON.stringify({
      ...JSON.parse(NODE),
      IPAddresses: [{ Type: 'InternalIP', IP: '172.18.0.3' }, { Type: 'CiliumInternalIP', IP: 'not-an-ip' }, 'junk', null],
      IPv4AllocCIDR: { IP: '10.244.1.0', Mask: Buffer.from([255, 255, 255, 0]).toString('base64') },
      IPv6AllocCIDR: { IP: 'fd00:244:1::', Mask: Buffer.from([...Array(8).fill(255), ...Array(8).fill(0)]).toString('base64') },
    });
    const n = nodeSummaryParse('cilium/state/nodes/v1/cilium1/k8s-node-1', withCidrs);
    assert.deepEqual(n, { name: 'k8s-node-1', cluster: 'cilium1', addresses: [{ type: 'InternalIP', ip: '172.18.0.3' }], ipv4AllocCIDR: '10.244.1.0/24', ipv6AllocCIDR: 'fd00:244:1::/64' });
    for (const [key, value, re] of [
      ['cilium/state/nodes/v1/cilium1/k8s-node-1', '{', /not JSON/],
      ['cilium/state/nodes/v1/cilium1/k8s-node-1', '[]', /not a JSON object/],
      ['cilium/state/nodes/v1/cilium1/k8s-node-1', NODE.replace('"Name":"k8s-node-1"', '"Name":""'), /Name or Cluster is empty/],
      ['cilium/state/nodes/v1/cilium1/other', NODE, /key does not match/],
      ['cilium/state/nodes/v1/kitnet/k8s-node-1', NODE, /key does not match/],
    ] as const) {
      const v = nodeSummaryParse(key, value);
      assert.ok('reason' in v);
      assert.match(v.reason, re);
    }
    // A zone is never taken as part of an address (the maps would drop it).
    const zoned = nodeSummaryParse('cilium/state/nodes/v1/cilium1/k8s-node-1', NODE.replace('"IP":"172.18.0.3"', '"IP":"fd00::3%eth0"'));
    assert.ok(!('reason' in zoned));
    assert.deepEqual(zoned.addresses, []);
    assert.equal(goIpNetParse({ IP: 'fd00:244:1::%x', Mask: Buffer.from([...Array(8).fill(255), ...Array(8).fill(0)]).toString('base64') }), undefined);
    assert.equal(goIpNetParse({ IP: '10.0.0.0', Mask: 'AAA' }), undefined);
    assert.equal(goIpNetParse({ IP: 'fd00::', Mask: Buffer.from([255, 255, 255, 0]).toString('base64') }), undefined);
    assert.equal(goIpNetParse('10.0.0.0/8'), undefined);
  });

  test('a peer\'s ipcache value: the documented example taken; its range, our pools and garbage refused', () => {
    // This cluster's pools, and this host's addresses: a peer holds neither.
    const host = new Set(['192.0.2.1', '172.18.0.99']);
    const rules = { nodeIP: '192.0.2.1', range: peer.range, localPools: [cidrParse('10.246.0.0/16'), cidrParse('fd00:246::/64')], peer: 'cilium1', hostAddresses: () => host };
    assert.deepEqual(ipcacheValueJudge('cilium/state/ip/v1/default/10.244.1.79', IPCACHE, rules), {
      entry: { ip: '10.244.1.79', identity: 212954, hostIP: '172.18.0.3', namespace: 'default', podName: 'pod-212954' },
    });
    const inOurPool = IPCACHE.replaceAll('10.244.1.79', '10.246.0.9');
    assert.match((ipcacheValueJudge('cilium/state/ip/v1/default/10.246.0.9', inOurPool, rules) as { reason: string }).reason, /this cluster's pool 10\.246\.0\.0\/16: peer cluster cilium1 cannot hold it/);
    for (const [ip, re] of [['172.18.0.99', /this host's own/], ['192.0.2.1', /this host's own/], ['127.0.0.1', /loopback/], ['0.0.0.0', /unspecified/], ['224.0.0.5', /multicast/], ['255.255.255.255', /broadcast/], ['fe80::5', /link-local/]] as const) {
      const v = ipcacheValueJudge(`cilium/state/ip/v1/default/${ip}`, IPCACHE.replaceAll('10.244.1.79', ip), rules);
      assert.ok('reason' in v, `${ip} accepted`);
      assert.match(v.reason, re);
    }
    const foreign = IPCACHE.replace('212954', String(5 << 16));
    assert.match((ipcacheValueJudge('cilium/state/ip/v1/default/10.244.1.79', foreign, rules) as { reason: string }).reason, /outside the cluster's range/);
    assert.match((ipcacheValueJudge('cilium/state/ip/v1/default/10.244.1.79', 'garbage', rules) as { reason: string }).reason, /not JSON/);
  });
});

describe('this cluster and its peers share one BPF ipcache: one holder per address', () => {
  /** Sources writing into one stand-in map through one owners table, as remote-sources.ts wires them. */
  function sources() {
    const map = new Map<string, { identity: number; hostId: number }>();
    const owners = new IpcacheOwners();
    let failing = false;
    const source = (name: string, rank: number, local: string[] = []) =>
      new RemoteIpcache(
        {
          exclusive: (fn) => fn(),
          local: () => ({ owns: (cidr) => local.includes(cidr.slice(0, cidr.indexOf('/'))), wish: () => undefined }),
          ipcacheUpsert: (cidr, e) => {
            if (failing) {
              failing = false;
              throw new Error('ipcache map full (test)');
            }
            map.set(cidr, e);
          },
          ipcacheDelete: (cidr) => void map.delete(cidr),
          ipcacheRemoteList: () => [],
          identityLabels: async (id) => [`k8s:app=a${id}`],
          remoteIdentitiesUpdate: async () => undefined,
          owners: { table: owners, rank, name },
        },
        pino({ level: 'silent' }),
      );
    return { map, source, failNext: () => (failing = true) };
  }
  const entry = (ip: string, identity: number, hostIP: string) => ({ ip, identity, hostIP, namespace: 'shop', podName: 'p' });

  test('this cluster\'s entry stays when a peer claims its address, and the peer\'s withdrawal does not delete it', async () => {
    const { map, source } = sources();
    const own = source('this cluster', 0);
    const p1 = source('peer cluster cilium1', 1);
    await own.apply([entry('10.77.0.5', 196613, '192.0.2.2')], []);
    await p1.apply([entry('10.77.0.5', 262145, '172.18.0.3')], []);
    assert.deepEqual(map.get('10.77.0.5/32'), { identity: 196613, hostId: remoteHostId('192.0.2.2') });
    assert.equal(own.identityOf('10.77.0.5'), 196613);
    assert.equal(p1.identityOf('10.77.0.5'), undefined, 'the peer does not hold it');
    assert.equal(p1.size(), 0);
    await p1.apply([], ['10.77.0.5']);
    assert.deepEqual(map.get('10.77.0.5/32'), { identity: 196613, hostId: remoteHostId('192.0.2.2') }, 'the peer\'s withdrawal leaves this cluster\'s entry');
    await own.apply([], ['10.77.0.5']);
    assert.equal(map.has('10.77.0.5/32'), false);
  });

  test('this cluster takes an address a peer holds; when it withdraws, the peer\'s entry is back', async () => {
    const { map, source } = sources();
    const own = source('this cluster', 0);
    const p1 = source('peer cluster cilium1', 1);
    await p1.apply([entry('10.77.0.6', 262145, '172.18.0.3')], []);
    await own.apply([entry('10.77.0.6', 196613, '192.0.2.2')], []);
    assert.equal(map.get('10.77.0.6/32')?.identity, 196613);
    assert.equal(p1.identityOf('10.77.0.6'), undefined);
    await own.apply([], ['10.77.0.6']);
    assert.deepEqual(map.get('10.77.0.6/32'), { identity: 262145, hostId: remoteHostId('172.18.0.3') });
    assert.equal(p1.identityOf('10.77.0.6'), 262145);
  });

  test('a claim whose write failed holds nothing: another source\'s entry is written', async () => {
    const { map, source, failNext } = sources();
    const own = source('this cluster', 0);
    const p1 = source('peer cluster cilium1', 1);
    failNext();
    await assert.rejects(own.apply([entry('10.77.0.8', 196613, '192.0.2.2')], []), /map full/);
    await p1.apply([entry('10.77.0.8', 262145, '172.18.0.3')], []);
    assert.equal(map.get('10.77.0.8/32')?.identity, 262145);
    assert.equal(p1.identityOf('10.77.0.8'), 262145);
  });

  test('between peers the first holder keeps an address; a change of the other never reaches the map', async () => {
    const { map, source } = sources();
    const p1 = source('peer cluster cilium1', 1);
    const p2 = source('peer cluster cilium2', 1);
    await p1.apply([entry('10.77.0.7', 262145, '172.18.0.3')], []);
    await p2.apply([entry('10.77.0.7', 327681, '172.19.0.3')], []);
    await p2.apply([entry('10.77.0.7', 327682, '172.19.0.3')], []);
    assert.equal(map.get('10.77.0.7/32')?.identity, 262145);
    await p1.apply([entry('10.77.0.7', 262146, '172.18.0.3')], []);
    assert.equal(map.get('10.77.0.7/32')?.identity, 262146, 'the holder\'s own change is written');
    await p2.apply([], ['10.77.0.7']);
    assert.equal(map.get('10.77.0.7/32')?.identity, 262146);
    await p1.apply([], ['10.77.0.7']);
    assert.equal(map.has('10.77.0.7/32'), false);
  });
});

describe('kitnet cluster status (text)', () => {
  test('single-host mode says so; cluster mode shows etcd, lease, heartbeat, nodes, counts and peers', () => {
    assert.equal(clusterStatusText({ mode: 'off', message: 'cluster mode off: single host' }), 'cluster mode off: single host');
    const text = clusterStatusText({
      mode: 'on',
      name: 'kit',
      id: 9,
      identityRange: clusterIdentityRange(9),
      nodeIP: '192.0.2.1',
      etcd: { endpoints: ['http://127.0.0.1:2379'], state: 'connected', lastError: null },
      lease: { id: '7587', ttlSeconds: 890, grantedTtlSeconds: 900 },
      heartbeat: { at: '2026-12-01T22:55:14.000Z', ageSeconds: 12 },
      canaries: { 'cilium/state/nodes/v1': '2026-12-01T22:55:14Z', 'cilium/state/identities/v1': null, 'cilium/state/ip/v1': null },
      nodes: [{ name: 'n1', cluster: 'kit', addresses: [{ type: 'InternalIP', ip: '192.0.2.1' }], ipv4AllocCIDR: '10.1.0.0/24' }],
      identities: { local: 2, remote: 3 },
      ipcache: { local: 4, remote: 5 },
      peers: [{ name: 'cilium1', id: 3, endpoints: ['http://127.0.0.1:2380'], state: 'unreachable', lastError: 'connect ECONNREFUSED', heartbeat: null, identities: 1, ipcacheEntries: 2, ignored: { identities: 1, ipcache: 2, nodes: 0 }, nodes: [] }],
    });
    for (const re of [/Cluster: +kit \(id 9, identities 589824-655359\)/, /Lease: +7587 \(TTL 890s of 900s left\)/, /Heartbeat: +written 12s ago/, /nodes\/v1 2026-12-01T22:55:14Z, identities\/v1 not yet/, /Identities: +2 local, 3 remote/, /IP cache: +4 local, 5 remote/, /n1 +192\.0\.2\.1 \(InternalIP\) +10\.1\.0\.0\/24/, /cilium1 +3 +unreachable \(connect ECONNREFUSED\) +never +1 +2 +0 +1\/2\/0/]) {
      assert.match(text, re);
    }
  });
});

describe('ClusterMesh keys in a real etcd', () => {
  let etcd: EtcdServer | undefined;
  let session: ClusterSession | undefined;
  let markers: MeshMarkers | undefined;
  const log = pino({ level: 'silent' });
  before(async () => {
    etcd = await etcdStart();
    session = await ClusterSession.open(etcdClientCreate({ endpoints: [etcd.endpoint] }, undefined), log);
  });
  after(async () => {
    markers?.close();
    await session?.close({ revoke: true });
    await etcd?.stop();
  });

  test('config at start, a canary once per prefix, the heartbeat on every tick; keys another node\'s lease took are written again', async () => {
    const { client } = session!;
    markers = new MeshMarkers(session!, { name: 'kit', id: 9, heartbeatMs: 200 }, log);
    await markers.start();
    assert.equal(await client.get('cilium/cluster-config/kit').string(), clusterConfigJson(9));
    assert.equal(await client.get(syncedKey('kit', 'ip')).string(), null, 'no canary before the prefix is complete');
    await markers.markSynced('ip');
    const canary = await client.get(syncedKey('kit', 'ip')).string();
    assert.match(canary ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    await markers.markSynced('ip');
    assert.equal(await client.get(syncedKey('kit', 'ip')).string(), canary, 'written once');
    // Keys under this node's lease (they go with the node).
    const lease = await session!.nodeLeaseId();
    for (const key of ['cilium/cluster-config/kit', syncedKey('kit', 'ip'), HEARTBEAT_KEY]) {
      const kv = (await client.get(key).exec()).kvs[0];
      assert.equal(kv?.lease, lease, key);
    }
    // Another node's copies went with its lease: the next tick writes them again.
    await client.delete().key('cilium/cluster-config/kit').exec();
    await client.delete().key(syncedKey('kit', 'ip')).exec();
    const first = markers.lastHeartbeat!;
    await waitFor('config and canary written again, heartbeat moved on', async () =>
      ((await client.get('cilium/cluster-config/kit').string()) === clusterConfigJson(9) && (await client.get(syncedKey('kit', 'ip')).string()) === canary && markers!.lastHeartbeat! > first) || undefined,
    10_000);
  });
});

describe('a peer cluster in a real etcd: its entries bound to its nodes\' pod CIDRs', () => {
  let etcd: EtcdServer | undefined;
  let peerCluster: PeerCluster | undefined;
  const log = pino({ level: 'silent' });
  before(async () => {
    etcd = await etcdStart();
  });
  after(async () => {
    await peerCluster?.close();
    await etcd?.stop();
  });

  test('a pod inside the pod CIDR of the node its HostIP names is taken; public, unbound and wide-node claims are refused and counted', async () => {
    const raw = etcdClientCreate({ endpoints: [etcd!.endpoint] }, undefined);
    const net = (cidr: string) => {
      const c = cidrParse(cidr);
      const bytes = c.family === 4 ? 4 : 16;
      const mask = Buffer.alloc(bytes);
      for (let i = 0; i < c.prefixLength; i++) mask[i >> 3]! |= 0x80 >> (i & 7);
      return { IP: c.text.slice(0, c.text.indexOf('/')), Mask: mask.toString('base64') };
    };
    const node = (name: string, ip: string, v4: string | null, secondary: string[] = []) =>
      JSON.stringify({ ...JSON.parse(NODE), Name: name, IPAddresses: [{ Type: 'InternalIP', IP: ip }], IPv4AllocCIDR: v4 && net(v4), IPv4SecondaryAllocCIDRs: secondary.map(net) });
    const pod = (ip: string, hostIP: string) => IPCACHE.replaceAll('10.244.1.79', ip).replace('172.18.0.3', hostIP);
    try {
      await raw.put(`cilium/state/identities/v1/id/212954`).value(LABELS);
      await raw.put('cilium/state/nodes/v1/cilium1/k8s-node-1').value(node('k8s-node-1', '172.18.0.3', '10.244.1.0/24', ['10.245.9.0/24']));
      // Hostile: a node whose pod CIDR is the whole IPv4 space, one inside this cluster's pool.
      await raw.put('cilium/state/nodes/v1/cilium1/wide').value(node('wide', '172.18.0.66', '0.0.0.0/0'));
      await raw.put('cilium/state/nodes/v1/cilium1/inside').value(node('inside', '172.18.0.67', '10.246.5.0/24'));
      const taken = ['10.244.1.79', '10.245.9.4'];
      for (const ip of taken) await raw.put(`cilium/state/ip/v1/default/${ip}`).value(pod(ip, '172.18.0.3'));
      // Hostile: a public address, one outside the node's CIDR, one in it naming no node, one of the wide node.
      const refused = [['8.8.8.8', '172.18.0.3'], ['10.244.2.5', '172.18.0.3'], ['10.244.1.80', '172.18.0.77'], ['1.1.1.1', '172.18.0.66']] as const;
      for (const [ip, hostIP] of refused) await raw.put(`cilium/state/ip/v1/default/${ip}`).value(pod(ip, hostIP));

      const map = new Map<string, { identity: number; hostId: number }>();
      peerCluster = new PeerCluster(
        { name: 'cilium1', id: 3, etcd: { endpoints: [etcd!.endpoint] } } as PeerConfig,
        undefined,
        {
          nodeIP: '192.0.2.1',
          clusterPools: [cidrParse('10.246.0.0/16'), cidrParse('fd00:246::/64')],
          hostAddresses: () => new Set(['192.0.2.1']),
          target: (identityLabels, _range, name) => ({
            exclusive: (fn) => fn(),
            owners: { table: new IpcacheOwners(), rank: 1, name },
            local: () => ({ owns: () => false, wish: () => undefined }),
            ipcacheUpsert: (cidr, e) => void map.set(cidr, e),
            ipcacheDelete: (cidr) => void map.delete(cidr),
            ipcacheRemoteList: () => [],
            identityLabels,
            remoteIdentitiesUpdate: async () => undefined,
          }),
        },
        log,
      );
      await peerCluster.start();
      await waitFor('the peer\'s pods', async () => (taken.every((ip) => map.has(`${ip}/32`)) ? true : undefined));
      const status = await peerCluster.status();
      assert.deepEqual([...map.keys()].sort(), taken.map((ip) => `${ip}/32`).sort(), 'only pods inside the pod CIDRs of the node HostIP names');
      assert.equal(status.ignored.ipcache, refused.length, 'each refused entry counted');
      assert.equal(status.ignored.nodes, 2, 'the wide node and the one inside this cluster\'s pool');

      // The node goes: its pods are judged again and leave.
      await raw.delete().key('cilium/state/nodes/v1/cilium1/k8s-node-1').exec();
      await waitFor('the node\'s pods gone', async () => (map.size === 0 ? true : undefined));
    } finally {
      raw.close();
    }
  });
});
