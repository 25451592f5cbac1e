import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import type { ClusterStatus, ClusterStatusOn } from '../../common/schemas/cluster.js';
import type { WorkloadPolicy } from '../../common/schemas/policy.js';
import type { Workload } from '../../common/schemas/workload.js';
import type { ApiClient } from '../../common/api-client.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { AgentFixture } from '../helpers/fixture.js';
import { Prober } from '../helpers/prober-client.js';
import { run, waitFor } from '../helpers/sys.js';

const NS = 'mesh';
const PEER = 'cilium1';
const PEER_ID = 3;
/** Pod addresses of the peer cluster, routed from this host to veths into namespaces standing in for pods. */
const POD_X = '10.77.46.5';
const POD_Y = '10.77.46.6';
const POD_OUT = '10.77.46.7';
/** Pod x's IPv6 address (Cilium publishes both families the same way). */
const POD_X6 = 'fd00:77:46::5';
const ID_X = 212954;
const ID_Y = 212955;
/** Cluster 5's range: the peer (cluster 3) may not hand it out. */
const ID_OUT = (5 << 16) + 1;

const labelKey = (app: string, cluster = PEER) => `k8s:app=${app};k8s:io.cilium.k8s.policy.cluster=${cluster};k8s:io.kubernetes.pod.namespace=${NS};`;
const ipcacheJson = (ip: string, id: number, pod: string) =>
  `{"IP":"${ip}","Mask":null,"HostIP":"172.18.0.3","ID":${id},"Key":0,"Metadata":"","K8sNamespace":"${NS}","K8sPodName":"${pod}"}`;
/** The node carrying the pods, with the pod CIDRs (cluster-pool IPAM) their entries are bound to. */
const NODE =
  '{"Name":"k8s-node-1","Cluster":"cilium1","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.3"}],"IPv4AllocCIDR":{"IP":"10.77.46.0","Mask":"////AA=="},' +
  '"IPv4SecondaryAllocCIDRs":null,"IPv6AllocCIDR":{"IP":"fd00:77:46::","Mask":"//////////////////8AAA=="},"IPv6SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv6HealthIP":"",' +
  '"IPv4IngressIP":"","IPv6IngressIP":"","ClusterID":3,"Source":"","EncryptionKey":0,"Labels":null,"Annotations":null,' +
  '"NodeIdentity":0,"WireguardPubKey":"","BootID":""}';

/**
 * A "Cilium cluster" in its own etcd, written as Cilium v1.19 writes it (../shared/CLUSTER.md): its
 * cluster config, identities (master `id/` and per-node `value/` keys), pod addresses, a node, the
 * canaries and the heartbeat; plus what a hostile or broken peer could write.
 */
async function ciliumClusterWrite(endpoint: string): Promise<void> {
  const c = new Etcd3({ hosts: endpoint });
  try {
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const kv: Array<[string, string]> = [
      [`cilium/cluster-config/${PEER}`, `{"id":${PEER_ID},"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}`],
      [`cilium/state/identities/v1/id/${ID_X}`, labelKey('x')],
      [`cilium/state/identities/v1/value/${labelKey('x')}/172.18.0.3`, String(ID_X)],
      [`cilium/state/identities/v1/id/${ID_Y}`, labelKey('y')],
      [`cilium/state/identities/v1/value/${labelKey('y')}/172.18.0.3`, String(ID_Y)],
      [`cilium/state/ip/v1/default/${POD_X}`, ipcacheJson(POD_X, ID_X, 'pod-x')],
      [`cilium/state/ip/v1/default/${POD_X6}`, ipcacheJson(POD_X6, ID_X, 'pod-x')],
      [`cilium/state/ip/v1/default/${POD_Y}`, ipcacheJson(POD_Y, ID_Y, 'pod-y')],
      [`cilium/state/nodes/v1/${PEER}/k8s-node-1`, NODE],
      // Hostile: an identity of another cluster's range labelled app=x, and a pod using it.
      [`cilium/state/identities/v1/id/${ID_OUT}`, labelKey('x')],
      [`cilium/state/ip/v1/default/${POD_OUT}`, ipcacheJson(POD_OUT, ID_OUT, 'pod-out')],
      // Hostile: an identity posing as this (kitnet) cluster's, garbage, an address of this host's pool.
      [`cilium/state/identities/v1/id/${ID_X + 10}`, labelKey('x', 'kitmesh')],
      ['cilium/state/ip/v1/default/10.77.46.9', '{"IP":"10.77.46.9",'],
      ['cilium/state/ip/v1/default/10.246.0.200', ipcacheJson('10.246.0.200', ID_X, 'pod-in-our-pool')],
      ['cilium/state/nodes/v1/cilium1/broken', '{"Name":""}'],
      ...(['nodes', 'identities', 'ip'] as const).map((p): [string, string] => [`cilium/synced/${PEER}/cilium/state/${p}/v1`, now]),
      ['cilium/.heartbeat', now],
    ];
    for (const [k, v] of kv) await c.put(k).value(v);
  } finally {
    c.close();
  }
}

/** A namespace with a veth standing in for a pod of the peer cluster at `ip`, routed from the host. */
async function podAdd(fx: AgentFixture, name: string, ip: string, hostIf: string, ip6?: string): Promise<string> {
  const ns = await fx.netns(name);
  await run('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await run('ip', ['link', 'set', hostIf, 'up']);
  const mac = (JSON.parse(await run('ip', ['-j', 'link', 'show', hostIf])) as Array<{ address: string }>)[0]!.address;
  for (const args of [
    ['link', 'set', 'lo', 'up'],
    ['link', 'set', 'eth0', 'up'],
    ['addr', 'add', `${ip}/32`, 'dev', 'eth0'],
    ['route', 'add', '169.254.46.1', 'dev', 'eth0'],
    ['neigh', 'add', '169.254.46.1', 'lladdr', mac, 'dev', 'eth0'],
    ['route', 'add', 'default', 'via', '169.254.46.1', 'dev', 'eth0'],
    ...(ip6
      ? [
          ['-6', 'addr', 'add', `${ip6}/128`, 'dev', 'eth0', 'nodad'],
          ['-6', 'neigh', 'add', 'fe80::46:1', 'lladdr', mac, 'dev', 'eth0'],
          ['-6', 'route', 'add', 'default', 'via', 'fe80::46:1', 'dev', 'eth0'],
        ]
      : []),
  ]) {
    await run('ip', ['-n', ns, ...args]);
  }
  await run('ip', ['route', 'replace', `${ip}/32`, 'dev', hostIf]);
  if (ip6) await run('ip', ['-6', 'route', 'replace', `${ip6}/128`, 'dev', hostIf]);
  return ns;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- free-form Hubble JSON, asserted field by field
type FlowLine = { flow: Record<string, any> };
async function flows(api: ApiClient): Promise<FlowLine[]> {
  const text = await new Promise<string>((resolve, reject) => {
    let acc = '';
    api.stream('/v1/flows?last=4095', (l) => (acc += `${l}\n`)).then(() => resolve(acc), reject);
  });
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as FlowLine);
}

/** `etcdctl get --prefix cilium/` as key -> value (etcdctl prints a key line, then a value line). */
async function etcdctlGet(endpoint: string): Promise<Map<string, string>> {
  const out = await run('etcdctl', ['--endpoints', endpoint, 'get', '--prefix', 'cilium/']);
  const lines = out.replace(/\n$/, '').split('\n');
  const m = new Map<string, string>();
  for (let i = 0; i + 1 < lines.length; i += 2) m.set(lines[i]!, lines[i + 1]!);
  return m;
}

/**
 * #14 items 6 and 7: a kitnet cluster publishes what Cilium's clustermesh reads of a remote cluster,
 * and reads a Cilium cluster (a second etcd written in Cilium's own format) as a ClusterMesh peer: the
 * peer's pods become ipcache entries and identities here, a CNP selects them by labels including the
 * cluster label, real traffic from a namespace at the pod's address is admitted or denied, and hostile
 * peer entries are ignored.
 */
describe('ClusterMesh: kitnet as a Cilium cluster, and a Cilium cluster as kitnet\'s peer (root)', { timeout: 300_000 }, () => {
  let etcd: EtcdServer | undefined;
  let peerEtcd: EtcdServer | undefined;
  let fx: AgentFixture | undefined;
  const probers: Prober[] = [];
  const hostIfs: string[] = [];
  const pods: Record<string, string> = {};
  let wl: Workload | undefined;
  const clusterStatus = async () => {
    const s = await fx!.api.call<ClusterStatus>('GET', '/v1/cluster');
    assert.equal(s.mode, 'on');
    return s as ClusterStatusOn;
  };
  const ipcache = () => new Map(fx!.agent.kernel.datapath.ipcacheList());

  before(async () => {
    etcd = await etcdStart();
    peerEtcd = await etcdStart();
    await ciliumClusterWrite(peerEtcd.endpoint);
    fx = new AgentFixture({
      tag: 'cmesh',
      ipv4Pool: '10.246.0.0/16',
      ipv6Pool: 'fd00:246::/64',
      namespaces: [NS],
      overrides: {
        cluster: {
          name: 'kitmesh',
          id: 12,
          nodeIP: '192.0.2.46',
          heartbeatSeconds: 1,
          etcd: { endpoints: [etcd.endpoint] },
          peers: [{ name: PEER, id: PEER_ID, etcd: { endpoints: [peerEtcd.endpoint] } }],
        },
      },
    });
    const tag = fx.id.slice(-5);
    for (const [name, ip] of [['px', POD_X], ['py', POD_Y], ['po', POD_OUT]] as const) {
      const hostIf = `km${name}${tag}`;
      hostIfs.push(hostIf);
      pods[name] = await podAdd(fx, name, ip, hostIf, name === 'px' ? POD_X6 : undefined);
    }
    pods.wl = await fx.netns('wl');
    await fx.start();
  });
  after(async () => {
    for (const p of probers) p.close();
    await fx?.cleanup();
    for (const i of hostIfs) await run('ip', ['link', 'del', i]).catch(() => undefined);
    await etcd?.stop();
    await peerEtcd?.stop();
  });

  test('the kvstore holds cluster-config, the sync canaries and a heartbeat in Cilium\'s format (etcdctl)', async () => {
    const ts = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/;
    const kv = await waitFor('the ip canary (written once the restore published this node\'s addresses)', async () => {
      const m = await etcdctlGet(etcd!.endpoint);
      return m.has('cilium/synced/kitmesh/cilium/state/ip/v1') ? m : undefined;
    }, 30_000);
    assert.equal(kv.get('cilium/cluster-config/kitmesh'), '{"id":12,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}');
    for (const p of ['nodes', 'identities', 'ip']) assert.match(kv.get(`cilium/synced/kitmesh/cilium/state/${p}/v1`) ?? '', ts, p);
    assert.match(kv.get('cilium/.heartbeat') ?? '', ts);
    // Nothing of the peer is ever written here, and nothing here into the peer.
    assert.ok(![...kv.keys()].some((k) => k.includes(PEER)), [...kv.keys()].join(' '));
    // Under this node's lease (they go with the node), as Cilium's agents write them.
    // Lease ids are 64-bit: kept as text (a JSON number loses their low bits).
    const raw = (await run('etcdctl', ['--endpoints', etcd!.endpoint, '-w', 'json', 'get', '--prefix', 'cilium/'])).replace(/"lease":(\d+)/g, '"lease":"$1"');
    const json = JSON.parse(raw) as { kvs: Array<{ key: string; lease?: string }> };
    const leased = new Map(json.kvs.map((e) => [Buffer.from(e.key, 'base64').toString(), e.lease ?? 0]));
    const status = await clusterStatus();
    for (const k of ['cilium/cluster-config/kitmesh', 'cilium/.heartbeat', 'cilium/synced/kitmesh/cilium/state/ip/v1']) {
      assert.equal(BigInt(leased.get(k) ?? 0).toString(16), BigInt(status.lease!.id).toString(16), k);
    }
    // The heartbeat moves on (every second here; every minute by default).
    const first = kv.get('cilium/.heartbeat');
    await waitFor('a newer heartbeat', async () => ((await etcdctlGet(etcd!.endpoint)).get('cilium/.heartbeat') !== first) || undefined, 30_000);
    const peerKeys = await etcdctlGet(peerEtcd!.endpoint);
    assert.ok(![...peerKeys.keys()].some((k) => k.includes('kitmesh')), 'the peer\'s etcd is only read');
  });

  test('a CNP allowing cluster=cilium1 + app=x admits the peer\'s pod; app=y and an out-of-range identity are denied; flows name the peer identity', async () => {
    wl = await fx!.api.call<Workload>('POST', '/v1/workloads', { name: 'wl', namespace: NS, labels: { app: 'srv' }, netns: `/var/run/netns/${pods.wl}` });
    await fx!.api.call('PUT', '/v1/policies', {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'from-cilium1', namespace: NS },
      spec: {
        endpointSelector: { matchLabels: { app: 'srv' } },
        ingress: [{ fromEndpoints: [{ matchLabels: { 'k8s:io.cilium.k8s.policy.cluster': PEER, app: 'x' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }],
      },
    });
    await waitFor('the peer\'s pods in the BPF ipcache', async () => {
      const m = ipcache();
      return (m.get(`${POD_X}/32`)?.identity === ID_X && m.get(`${POD_X6}/128`)?.identity === ID_X && m.get(`${POD_Y}/32`)?.identity === ID_Y) || undefined;
    }, 30_000);
    const m = ipcache();
    assert.notEqual(m.get(`${POD_X}/32`)!.hostId, 0, 'a remote entry');
    assert.equal(m.has(`${POD_OUT}/32`), false, 'an identity outside the peer\'s range is refused');
    assert.equal(m.has('10.77.46.9/32'), false, 'garbage is refused');
    assert.deepEqual(m.get(`${wl.ipv4}/32`), { identity: wl.identity, hostId: 0 });
    assert.equal(m.has('10.246.0.200/32'), false, 'an address of this host\'s pool is refused');
    const policy = await fx!.api.call<WorkloadPolicy>('GET', `/v1/workloads/${NS}/wl/policy`);
    assert.ok(policy.entries.some((e) => e.identity === ID_X), 'the peer\'s app=x identity is selected');
    assert.ok(!policy.entries.some((e) => e.identity === ID_Y || e.identity === ID_X + 10 || e.identity === ID_OUT));

    const server = new Prober(pods.wl!, [80]);
    probers.push(server);
    const [px, py, po] = ['px', 'py', 'po'].map((n) => new Prober(pods[n]!, [81]));
    probers.push(px!, py!, po!);
    await Promise.all(probers.map((p) => p.ready));
    const to80 = [{ addr: wl.ipv4, port: 80, protocol: 'TCP' as const }];
    assert.deepEqual((await px!.probeRetrying(to80, 500, 4)).results, [true], 'app=x of cilium1 is admitted');
    assert.deepEqual((await px!.probeRetrying([{ addr: wl.ipv6, port: 80, protocol: 'TCP' }], 500, 4)).results, [true], 'over IPv6 too');
    assert.deepEqual(await py!.probe(to80, 1000), [false], 'app=y of cilium1 is denied');
    assert.deepEqual(await po!.probe(to80, 1000), [false], 'an identity outside cilium1\'s range is world here: denied');
    assert.deepEqual(await px!.probe([{ addr: wl.ipv4, port: 81, protocol: 'TCP' }], 1000), [false], 'only port 80 is allowed');

    const lines = await waitFor('flows naming the peer identities', async () => {
      const all = await flows(fx!.api);
      const ok = (id: number, verdict: string) => all.some((l) => l.flow.source?.identity === id && l.flow.destination?.pod_name === 'wl' && l.flow.verdict === verdict);
      const v6 = all.some((l) => l.flow.IP?.source === POD_X6 && l.flow.source?.identity === ID_X && l.flow.verdict === 'FORWARDED');
      return (ok(ID_X, 'FORWARDED') && ok(ID_Y, 'DROPPED') && v6) ? all : undefined;
    }, 30_000);
    const admitted = lines.find((l) => l.flow.source?.identity === ID_X && l.flow.verdict === 'FORWARDED' && l.flow.traffic_direction === 'INGRESS')!;
    assert.equal(admitted.flow.IP.source, POD_X);
    assert.ok((admitted.flow.source.labels as string[]).includes(`k8s:io.cilium.k8s.policy.cluster=${PEER}`), JSON.stringify(admitted.flow.source));
    assert.ok((admitted.flow.source.labels as string[]).includes('k8s:app=x'));
    const out = lines.find((l) => l.flow.IP?.source === POD_OUT && l.flow.destination?.pod_name === 'wl');
    if (out) assert.ok(out.flow.source.identity !== ID_OUT, 'the out-of-range identity is never used');
  });

  test('GET /v1/cluster and the metric show the peer, its nodes and what was ignored', async () => {
    const s = await clusterStatus();
    assert.equal(s.name, 'kitmesh');
    assert.equal(s.id, 12);
    assert.deepEqual(s.identityRange, { min: 12 << 16, max: (13 << 16) - 1 });
    assert.equal(s.etcd.state, 'connected');
    assert.ok(s.lease && s.lease.ttlSeconds > 0 && s.lease.grantedTtlSeconds >= s.lease.ttlSeconds);
    assert.ok(s.heartbeat && s.heartbeat.ageSeconds <= 60);
    assert.ok(Object.values(s.canaries).every((v) => v !== null), JSON.stringify(s.canaries));
    assert.deepEqual(s.ipcache.local, 2);
    assert.ok(s.ipcache.remote >= 3 && s.identities.remote >= 2, JSON.stringify(s));
    const [p] = s.peers;
    assert.equal(p?.name, PEER);
    assert.equal(p.state, 'synced');
    assert.ok(p.heartbeat && p.heartbeat.ageSeconds >= 0);
    assert.equal(p.identities, 2, 'app=x and app=y; the out-of-range and the one naming kitmesh are refused');
    assert.equal(p.ipcacheEntries, 3);
    assert.ok(p.ignored.identities >= 2 && p.ignored.ipcache >= 3 && p.ignored.nodes >= 1, JSON.stringify(p.ignored));
    assert.deepEqual(p.nodes, [{ name: 'k8s-node-1', cluster: PEER, addresses: [{ type: 'InternalIP', ip: '172.18.0.3' }], ipv4AllocCIDR: '10.77.46.0/24', ipv6AllocCIDR: 'fd00:77:46::/112' }]);
    // The CLI shows the same.
    const bin = fileURLToPath(new URL('../../../bin/kitnet.js', import.meta.url));
    const text = (await promisify(execFile)(process.execPath, [bin, '-s', fx!.socket, 'cluster', 'status'], { timeout: 60_000 })).stdout;
    assert.match(text, /Cluster: +kitmesh \(id 12, identities 786432-851967\)/);
    assert.match(text, /etcd: +connected http:\/\/127\.0\.0\.1:\d+/);
    assert.match(text, /Lease: +\d+ \(TTL \d+s of \d+s left\)/);
    assert.match(text, /cilium1 +3 +synced +\d+s ago +2 +3 +1 /);
    const ignored = (await fx!.agent.metrics.registry.getSingleMetric('kitnet_cluster_ipcache_ignored_total')!.get()).values[0]?.value ?? 0;
    assert.ok(ignored >= 6, `ignored ${ignored}`);
  });

  test('the peer\'s etcd down: its entries stay and keep admitting, status shows it; back: resync applies what changed', async () => {
    await peerEtcd!.down();
    const down = await waitFor('the peer shown unreachable', async () => {
      const p = (await clusterStatus()).peers[0]!;
      return p.state === 'unreachable' ? p : undefined;
    }, 30_000);
    assert.ok(down.lastError, 'the error is named');
    assert.equal(down.ipcacheEntries, 3, 'entries kept while the peer is down');
    assert.equal(ipcache().get(`${POD_X}/32`)?.identity, ID_X);
    const px = probers[1]!;
    assert.deepEqual((await px.probeRetrying([{ addr: wl!.ipv4, port: 80, protocol: 'TCP' }], 500, 4)).results, [true], 'still admitted');
    await peerEtcd!.up();
    await waitFor('the peer synced again', async () => (await clusterStatus()).peers[0]!.state === 'synced' || undefined, 60_000);
    // A pod gone from the peer while followed again: its entry and identity leave.
    const c = new Etcd3({ hosts: peerEtcd!.endpoint });
    try {
      await c.delete().key(`cilium/state/ip/v1/default/${POD_Y}`).exec();
    } finally {
      c.close();
    }
    await waitFor('pod y out of the ipcache', async () => !ipcache().has(`${POD_Y}/32`) || undefined, 30_000);
    assert.equal(ipcache().get(`${POD_X}/32`)?.identity, ID_X);
    assert.equal((await clusterStatus()).peers[0]!.identities, 2, 'the identity key itself stays in the peer');
  });

  test('a restart keeps the peer\'s pinned entries (adopted, then listed); without the peer in the config they go', async () => {
    await fx!.stop();
    await fx!.start();
    assert.equal(ipcache().get(`${POD_X}/32`)?.identity, ID_X, 'the peer\'s entry across a restart');
    assert.equal((await fx!.api.call<WorkloadPolicy>('GET', `/v1/workloads/${NS}/wl/policy`)).entries.some((e) => e.identity === ID_X), true);
    await fx!.stop();
    (fx!.overrides.cluster as { peers: unknown[] }).peers = [];
    await fx!.start();
    const m = ipcache();
    assert.equal(m.has(`${POD_X}/32`), false, 'a peer no longer configured leaves the ipcache at start');
    assert.deepEqual(m.get(`${wl!.ipv4}/32`), { identity: wl!.identity, hostId: 0 });
    assert.deepEqual((await clusterStatus()).peers, []);
  });
});
