import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { NODE_CIDRS_PREFIX } from '../../agent/cluster/node-cidr.js';
import { NODES_PREFIX } from '../../agent/cluster/node-registry.js';
import type { PolicySummary, TraceResponse } from '../../common/schemas/policy.js';
import type { Workload } from '../../common/schemas/workload.js';
import { join } from 'node:path';
import { hubbleClient } from '../../api/hubble/client.js';
import { ClusterHosts, HUBBLE_PORT, type ClusterHost } from '../helpers/cluster-hosts.js';
import { timeLimit } from '../helpers/timeouts.js';
import { promValue } from '../helpers/prom.js';
import { Prober } from '../helpers/prober-client.js';
import { ping, routes, run, waitFor } from '../helpers/sys.js';

const NS = 'xh';
const CLUSTER = 'kitxh';
type FlowLine = { flow?: { verdict: string; IP: { source: string; destination: string }; l4?: { TCP?: { destination_port: number } }; source: { identity: number; pod_name?: string; namespace?: string; labels?: string[] }; destination: { pod_name?: string } } };

/**
 * #14 item 4: three kitnet hosts, each an agent in a network namespace of its own with a node address
 * on a shared bridge, one real etcd. Each host claims node CIDRs from the cluster pools and routes to
 * the other two's; workloads on three hosts reach each other (ping, TCP, v4 and v6); a policy PUT
 * through host 1 is enforced on host 3, the receiver, which admits the remote workload by its labels
 * and names both remote senders (from hosts 1 and 2) in its flows; hostile node entries change
 * nothing; a node killed without cleanup leaves both others' routes and ipcache within its TTL.
 */
describe('cluster mode across hosts: node CIDRs, routes, cross-host traffic and policy (root)', { timeout: timeLimit(420_000) }, () => {
  const cluster = new ClusterHosts({ tag: 'xh', hosts: 3, cluster: { name: CLUSTER, id: 12, leaseTTLSeconds: 5 }, ipv4Pool: '10.236.0.0/16', ipv6Pool: 'fd00:236::/64', hubble: true });
  let h1: ClusterHost;
  let h2: ClusterHost;
  let h3: ClusterHost;
  let hosts: ClusterHost[];
  let raw: Etcd3 | undefined;
  const probers: Prober[] = [];
  const w: Record<string, Workload> = {};
  const ns: Record<string, string> = {};

  const metrics = async (h: ClusterHost) => {
    let text = '';
    await h.api.stream('/metrics', (l) => (text += `${l}\n`));
    return text;
  };
  const flows = async (h: ClusterHost): Promise<FlowLine[]> => {
    let text = '';
    await h.api.stream('/v1/flows?last=4095', (l) => (text += `${l}\n`));
    return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as FlowLine);
  };
  /** Waits for a flow from `src` matching; on timeout the error shows what h had from it. */
  const flowWait = async (h: ClusterHost, what: string, src: string, match: (f: NonNullable<FlowLine['flow']>) => boolean) => {
    try {
      await waitFor(what, async () => (await flows(h)).some((f) => f.flow?.IP.source === src && match(f.flow)), timeLimit(30_000));
    } catch (err) {
      const seen = (await flows(h)).filter((f) => f.flow?.IP.source === src).slice(-3);
      throw new Error(`${(err as Error).message}; flows from ${src}: ${JSON.stringify(seen)}`, { cause: err });
    }
  };
  const register = async (h: ClusterHost, name: string, labels: Record<string, string>) => {
    ns[name] = await cluster.workloadNetns(name);
    w[name] = await h.api.call<Workload>('POST', '/v1/workloads', { name, namespace: NS, labels, netns: `/var/run/netns/${ns[name]}` });
  };
  const cidrsOf = async (h: ClusterHost) => (await h.api.call<{ ipam: { ipv4Pool: string; ipv6Pool: string } }>('GET', '/v1/status')).ipam;
  const net24 = (a: string) => a.split('.').slice(0, 3).join('.');
  /** h's node routes (v4 and v6) reach each of `to`'s CIDRs through that host's node addresses. */
  const routesTo = async (h: ClusterHost, to: ReadonlyArray<{ host: ClusterHost; c: { ipv4Pool: string; ipv6Pool: string } }>) => {
    const [r4, r6] = [await h.nodeRoutes(4), await h.nodeRoutes(6)];
    return to.every(({ host, c }) => r4.some((r) => r.dst === c.ipv4Pool && r.gateway === host.nodeIPv4 && r.dev === 'eth0') &&
      r6.some((r) => r.dst === c.ipv6Pool && r.gateway === host.nodeIPv6 && r.dev === 'eth0'));
  };
  /** The source identity h's compiled policy state gives an address (what its ipcache resolves it to). */
  const identityOn = async (h: ClusterHost, ip: string, to: string) =>
    ((await h.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { ip }, to: { workload: `${NS}/${to}` }, protocol: 'TCP', port: 80 })).result as { srcIdentity: number }).srcIdentity;

  before(async () => {
    await cluster.setup();
    hosts = cluster.hosts;
    [h1, h2, h3] = hosts as [ClusterHost, ClusterHost, ClusterHost];
    await Promise.all(hosts.map((h) => h.start()));
    raw = new Etcd3({ hosts: cluster.etcd!.endpoint });
  });
  after(async () => {
    for (const p of probers) p.close();
    raw?.close();
    await cluster.cleanup();
  });

  test('each node is in etcd in Cilium\'s node JSON with its own CIDRs, and each routes to the other two\'s', async () => {
    const cs = await Promise.all(hosts.map(cidrsOf));
    assert.equal(new Set(cs.map((c) => c.ipv4Pool)).size, 3, `three distinct IPv4 CIDRs: ${JSON.stringify(cs)}`);
    assert.equal(new Set(cs.map((c) => c.ipv6Pool)).size, 3, `three distinct IPv6 CIDRs: ${JSON.stringify(cs)}`);
    for (const c of cs) {
      assert.match(c.ipv4Pool, /^10\.236\.\d+\.0\/24$/);
      assert.match(c.ipv6Pool, /^fd00:236::(\w+:0)?\/112$/);
    }
    for (const [i, h] of hosts.entries()) {
      // Waited for: under emulation an agent's 5 s lease can expire while the hosts start, taking the
      // entry with it until the agent writes it again under a new lease.
      const kv = await waitFor(`${h.name}'s node entry in etcd`, async () => (await raw!.get(`${NODES_PREFIX}/${CLUSTER}/${h.name}`).exec()).kvs[0], timeLimit(30_000));
      const entry = JSON.parse(kv.value.toString()) as Record<string, unknown>;
      assert.equal(entry.Name, h.name);
      assert.equal(entry.Cluster, CLUSTER);
      assert.equal(entry.ClusterID, 12);
      assert.deepEqual(entry.IPAddresses, [{ Type: 'InternalIP', IP: h.nodeIPv4 }, { Type: 'InternalIP', IP: h.nodeIPv6 }]);
      assert.deepEqual(entry.IPv4AllocCIDR, { IP: cs[i]!.ipv4Pool.split('/')[0], Mask: '////AA==' });
      assert.notEqual(kv.lease, '0', `${h.name}'s node entry is leased`);
    }

    await Promise.all(hosts.map(async (from, i) => {
      const others = hosts.map((host, j) => ({ host, c: cs[j]! })).filter((_, j) => j !== i);
      await waitFor(`${from.name}'s routes to ${others.map((o) => o.host.name).join(' and ')}'s CIDRs`, async () => (await routesTo(from, others)) || undefined, timeLimit(30_000));
    }));
    for (const h of hosts) {
      assert.equal((await h.nodeRoutes(4)).length, 2, `${h.name}: two IPv4 node routes, none for its own CIDR`);
      assert.equal((await h.nodeRoutes(6)).length, 2, `${h.name}: two IPv6 node routes, none for its own CIDR`);
    }
  });

  test('workloads on three hosts reach each other; a policy PUT through host 1 is enforced on host 3, whose flows name both remote senders', async () => {
    await register(h1, 'fe', { app: 'fe' });
    await register(h2, 'other', { app: 'other' });
    await register(h3, 'be', { app: 'be' });
    const [c1, c2, c3] = await Promise.all(hosts.map(cidrsOf));
    assert.equal(net24(w.fe!.ipv4), net24(c1!.ipv4Pool), 'fe\'s address is in h1\'s CIDR');
    assert.equal(net24(w.other!.ipv4), net24(c2!.ipv4Pool), 'other\'s address is in h2\'s CIDR');
    assert.equal(net24(w.be!.ipv4), net24(c3!.ipv4Pool), 'be\'s address is in h3\'s CIDR');
    for (const src of ['fe', 'other']) {
      for (const addr of [w.be!.ipv4, w.be!.ipv6]) {
        await waitFor(`ping ${src} -> be ${addr}`, async () => ping(ns[src]!, addr), timeLimit(30_000));
      }
    }
    assert.ok(await ping(ns.be!, w.fe!.ipv6), 'be (h3) -> fe (h1) IPv6');
    assert.ok(await ping(ns.fe!, w.other!.ipv4), 'fe (h1) -> other (h2) IPv4');
    const server = new Prober(ns.be!, [80, 81]);
    const client = new Prober(ns.fe!, [7]);
    const bystander = new Prober(ns.other!, [7]);
    probers.push(server, client, bystander);
    await Promise.all([server.ready, client.ready, bystander.ready]);
    const tcp = (addr: string, port: number) => ({ addr, port, protocol: 'TCP' as const });
    const open = await client.probeRetrying([tcp(w.be!.ipv4, 80), tcp(w.be!.ipv6, 80), tcp(w.be!.ipv4, 81)], 500, 4);
    assert.deepEqual(open.results, [true, true, true], 'TCP across hosts with no policy');
    const openOther = await bystander.probeRetrying([tcp(w.be!.ipv4, 80), tcp(w.be!.ipv6, 80)], 500, 4);
    assert.deepEqual(openOther.results, [true, true], 'other (h2) -> be (h3) with no policy');

    // A policy PUT through host 1, which has no endpoint it selects: app=fe may reach app=be on 80/TCP,
    // nothing else may. Policies are shared through etcd, so host 3 (be's) must enforce it.
    await h1.api.call('PUT', '/v1/policies', {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'fe-to-be', namespace: NS },
      spec: { endpointSelector: { matchLabels: { app: 'be' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'fe' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] },
    });
    // h3 applies it from its watch: wait until its compiled state (what its datapath enforces) says so
    const verdictOn3 = async (from: string, port: number) =>
      (await h3.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { ip: from }, to: { workload: `${NS}/be` }, protocol: 'TCP', port })).verdict;
    let verdicts: string[] = [];
    await waitFor('h3 to enforce the policy PUT through h1', async () => {
      verdicts = [await verdictOn3(w.fe!.ipv4, 80), await verdictOn3(w.fe!.ipv4, 81), await verdictOn3(w.other!.ipv4, 80)];
      return verdicts.join() === 'ALLOWED,DENIED,DENIED' || undefined;
    }, timeLimit(30_000)).catch((err: Error) => assert.fail(`${err.message}: fe:80, fe:81, other:80 traced ${verdicts.join(', ')}`));
    assert.ok((await h3.api.call<PolicySummary[]>('GET', '/v1/policies')).some((p) => p.name === 'fe-to-be' && p.namespace === NS), 'h3 lists the policy');

    const allowed = await client.probeRetrying([tcp(w.be!.ipv4, 80), tcp(w.be!.ipv6, 80)], 500, 4);
    assert.deepEqual(allowed.results, [true, true], 'fe (h1) -> be (h3):80 allowed, v4 and v6');
    assert.deepEqual(await client.probe([tcp(w.be!.ipv4, 81), tcp(w.be!.ipv6, 81)], 700), [false, false], 'fe (h1) -> be (h3):81 denied');
    assert.deepEqual(await bystander.probe([tcp(w.be!.ipv4, 80), tcp(w.be!.ipv6, 80)], 700), [false, false], 'other (h2) -> be (h3):80 denied');
    assert.equal(await ping(ns.fe!, w.be!.ipv4), false, 'ICMP is not in the policy');

    // h3's flows name the remote workloads, each from its own host, with their identities and labels.
    await flowWait(h3, 'a forwarded flow fe -> be:80 on h3 naming fe', w.fe!.ipv4, (f) => f.verdict === 'FORWARDED' && f.l4?.TCP?.destination_port === 80 &&
      f.source.identity === w.fe!.identity && f.source.pod_name === 'fe' && f.source.namespace === NS && !!f.source.labels?.includes('k8s:app=fe') && f.destination.pod_name === 'be');
    await flowWait(h3, 'a dropped flow other -> be:80 on h3 naming other', w.other!.ipv4, (f) => f.verdict === 'DROPPED' && f.l4?.TCP?.destination_port === 80 &&
      f.source.identity === w.other!.identity && f.source.pod_name === 'other' && f.source.namespace === NS && !!f.source.labels?.includes('k8s:app=other') && f.destination.pod_name === 'be');
  });

  test('hostile node entries are ignored with a log line: no route over a local CIDR, the agents stay up', async () => {
    const c1 = await cidrsOf(h1);
    const before = await Promise.all(hosts.map(async (h) => ({ r4: await h.nodeRoutes(4), r6: await h.nodeRoutes(6) })));
    const key = (n: string) => `${NODES_PREFIX}/${CLUSTER}/${n}`;
    const mask24 = '////AA==';
    const node = (name: string, o: Record<string, unknown>) => JSON.stringify({ Name: name, Cluster: CLUSTER, IPAddresses: [{ Type: 'InternalIP', IP: `${cluster.subnet4}.77` }], IPv4AllocCIDR: null, IPv6AllocCIDR: null, ClusterID: 12, ...o });
    // The sound entries below claim their CIDRs first, create-only, as a node does (an unclaimed CIDR is refused).
    const claimKey = (cidr: string) => `${NODE_CIDRS_PREFIX}/${CLUSTER}/${cidr}`;
    const claims: Record<string, string> = { '10.236.202.0/24': 'sound', '10.236.203.0/24': 'taken', '10.236.204.0/24': 'offlink' };
    for (const [cidr, n] of Object.entries(claims)) {
      assert.ok((await raw!.if(claimKey(cidr), 'Create', '==', 0).then(raw!.put(claimKey(cidr)).value(n)).commit()).succeeded, `${cidr} claimed for ${n}`);
    }
    const hostile: Record<string, string> = {
      garbage: '{"Name": "garbage", ',
      oversized: node('oversized', { Labels: { pad: 'x'.repeat(200_000) }, IPv4AllocCIDR: { IP: '10.236.200.0', Mask: mask24 } }),
      'over-h1': node('over-h1', { IPv4AllocCIDR: { IP: c1.ipv4Pool.split('/')[0], Mask: mask24 } }),
      everything: node('everything', { IPv4AllocCIDR: { IP: '0.0.0.0', Mask: 'AAAAAA==' } }),
      'gw-in-pool': node('gw-in-pool', { IPAddresses: [{ Type: 'InternalIP', IP: '10.236.0.9' }], IPv4AllocCIDR: { IP: '10.236.201.0', Mask: mask24 } }),
    };
    for (const [n, v] of Object.entries(hostile)) await raw!.put(key(n)).value(v);
    try {
      for (const h of hosts) {
        await waitFor(`${h.name} to log every hostile entry as ignored`, async () => {
          const keys = new Set(h.logged(/cluster node entry ignored/).map((l) => String(l.key)));
          return Object.keys(hostile).every((n) => keys.has(key(n))) || undefined;
        }, timeLimit(30_000));
        assert.equal(await h.api.call<{ status?: string }>('GET', '/healthz').then(() => true), true, `${h.name} still serves`);
      }
      // A sound entry written after them is taken by every host: the watches went on (and shows the hostile ones were not merely slow).
      await raw!.put(key('sound')).value(node('sound', { IPv4AllocCIDR: { IP: '10.236.202.0', Mask: mask24 } }));
      const hasSound = async (h: ClusterHost) => (await h.nodeRoutes(4)).some((r) => r.dst === '10.236.202.0/24');
      await Promise.all(hosts.map((h) => waitFor(`the sound entry's route on ${h.name}`, async () => (await hasSound(h)) || undefined, timeLimit(30_000))));
      await raw!.delete().key(key('sound')).exec();
      await Promise.all(hosts.map((h) => waitFor(`the sound entry's route gone from ${h.name} with its key`, async () => !(await hasSound(h)) || undefined, timeLimit(30_000))));

      // Sound entries the kernel cannot route: an operator message naming the route, errno and what to do.
      await run('ip', ['-n', h1.netns, 'route', 'add', '10.236.203.0/24', 'dev', 'eth0']);
      await raw!.put(key('taken')).value(node('taken', { IPv4AllocCIDR: { IP: '10.236.203.0', Mask: mask24 } }));
      await raw!.put(key('offlink')).value(node('offlink', { IPAddresses: [{ Type: 'InternalIP', IP: '203.0.113.5' }], IPv4AllocCIDR: { IP: '10.236.204.0', Mask: mask24 } }));
      try {
        const errors = async () => h1.logged(/^route 10\.236\.20[34]\.0\/24/).map((l) => String(l.msg));
        await waitFor('h1 to explain both refused routes', async () => (await errors()).length >= 2 || undefined, timeLimit(30_000));
        const msgs = await errors();
        assert.ok(msgs.some((m) => /^route 10\.236\.203\.0\/24 via [\d.]+ dev eth0 \(node taken\): EEXIST — a route for 10\.236\.203\.0\/24 that is not kitnet's .*ip route del 10\.236\.203\.0\/24/.test(m)), msgs.join('\n'));
        assert.ok(msgs.some((m) => /^route 10\.236\.204\.0\/24 via 203\.0\.113\.5 \(node offlink\): ENETUNREACH — 203\.0\.113\.5 is not on a network directly connected to this host; .*cluster\.autoDirectNodeRoutes/.test(m)), msgs.join('\n'));
        assert.equal(promValue(await metrics(h1), 'kitnet_cluster_node_routes_failing'), 2);
        assert.deepEqual((await routes(4, h1.netns)).find((r) => r.dst === '10.236.203.0/24'), { dst: '10.236.203.0/24', dev: 'eth0', flags: [], scope: 'link' } as never, 'the operator\'s route stays as it was');
      } finally {
        await raw!.delete().key(key('taken')).exec();
        await raw!.delete().key(key('offlink')).exec();
        await run('ip', ['-n', h1.netns, 'route', 'del', '10.236.203.0/24', 'dev', 'eth0']);
      }
      await waitFor('the failures cleared with their entries', async () => promValue(await metrics(h1), 'kitnet_cluster_node_routes_failing') === 0 || undefined, timeLimit(30_000));
      // h2 and h3 route 10.236.203.0/24 to "taken" (nothing of the operator's is in their way): gone with the entry
      await Promise.all(hosts.map((h, i) => waitFor(`${h.name}'s node routes as before`, async () => {
        const [r4, r6] = [await h.nodeRoutes(4), await h.nodeRoutes(6)];
        return (JSON.stringify(r4) === JSON.stringify(before[i]!.r4) && JSON.stringify(r6) === JSON.stringify(before[i]!.r6)) || undefined;
      }, timeLimit(30_000))));
      assert.ok(promValue(await metrics(h1), 'kitnet_cluster_node_events_total', { event: 'ignored' }) >= Object.keys(hostile).length);
    } finally {
      for (const n of Object.keys(hostile)) await raw!.delete().key(key(n)).exec();
      for (const cidr of Object.keys(claims)) await raw!.delete().key(claimKey(cidr)).exec();
    }
  });

  test('a node killed with SIGKILL: its routes and ipcache entries leave both other hosts within the lease TTL; the survivors keep each other\'s', async () => {
    const [c1, c2, c3] = await Promise.all(hosts.map(cidrsOf));
    // each survivor, with the workload it must keep learning from the other survivor
    const survivors = [{ h: h1, keeps: 'be', peer: h3, c: c3!, local: 'fe' }, { h: h3, keeps: 'fe', peer: h1, c: c1!, local: 'be' }];
    for (const { h } of survivors) {
      assert.equal(promValue(await metrics(h), 'kitnet_cluster_nodes'), 2, `${h.name} knows two other nodes`);
      assert.equal(promValue(await metrics(h), 'kitnet_cluster_ipcache_remote_entries'), 4, `${h.name}'s ipcache has both remote workloads' two addresses each`);
    }
    await h2.kill('SIGKILL');
    await Promise.all(survivors.map(async ({ h }) => {
      await waitFor(`h2's routes gone from ${h.name}`, async () => {
        const [r4, r6] = [await h.nodeRoutes(4), await h.nodeRoutes(6)];
        return (!r4.some((r) => r.dst === c2!.ipv4Pool) && !r6.some((r) => r.dst === c2!.ipv6Pool)) || undefined;
      }, timeLimit(60_000));
      await waitFor(`other's entries gone from ${h.name}'s ipcache`, async () => promValue(await metrics(h), 'kitnet_cluster_ipcache_remote_entries') === 2 || undefined, timeLimit(60_000));
    }));
    for (const { h, keeps, peer, c, local } of survivors) {
      assert.equal(promValue(await metrics(h), 'kitnet_cluster_nodes'), 1, `${h.name} knows one other node`);
      assert.ok(await routesTo(h, [{ host: peer, c }]), `${h.name} still routes to ${peer.name}'s CIDRs`);
      assert.notEqual(await identityOn(h, w.other!.ipv4, local), w.other!.identity, `other's address no longer resolves to its identity on ${h.name}`);
      assert.equal(await identityOn(h, w[keeps]!.ipv4, local), w[keeps]!.identity, `${keeps}'s address (on ${peer.name}) still resolves on ${h.name}`);
      assert.ok(h.logged(/cluster node left/).some((l) => l.node === 'h2'), `${h.name} logged the departure`);
    }
    assert.equal(await raw!.get(`${NODES_PREFIX}/${CLUSTER}/h2`).string(), null, 'h2\'s node entry expired with its lease');

    // h2 comes back: the same CIDRs (its claims), routes again on h1 and h3.
    await h2.start();
    assert.deepEqual(await cidrsOf(h2), c2, 'a restarted node gets its CIDRs back');
    await Promise.all(survivors.map(({ h }) =>
      waitFor(`h2's routes back on ${h.name}`, async () => (await routesTo(h, [{ host: h2, c: c2! }])) || undefined, timeLimit(30_000))));
  });

  test('Hubble: Peer.Notify and GetNodes name the other nodes at their node address and Hubble port; a node that dies is PEER_DELETED on both others', async () => {
    type Note = { name: string; address: string; type: string; tls?: { server_name: string } };
    const added = (h: ClusterHost): Note => ({ name: h.name, address: `${h.nodeIPv4}:${HUBBLE_PORT}`, type: 'PEER_ADDED', tls: { server_name: h.name } });
    const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
    // h1's and h2's streams (h2 was restarted by the test before: it announces the cluster afresh)
    const watchers = [h1, h2].map((h) => ({ h, grpc: hubbleClient(`unix://${join(h.dir, 'hubble.sock')}`), notes: [] as Note[] }));
    try {
      const streams = watchers.map(({ grpc, notes }) => {
        const s = grpc.stream('peer', 'Notify', {});
        s.on('data', (m: Note) => notes.push(m));
        s.on('error', () => undefined); // CANCELLED at the end
        return s;
      });
      for (const { h, notes } of watchers) {
        const others = hosts.filter((o) => o !== h);
        await waitFor(`${h.name} to announce itself and ${others.map((o) => o.name).join(' and ')}`, async () => others.every((o) => notes.some((n) => n.name === o.name)) || undefined, timeLimit(30_000));
        assert.deepEqual(notes[0], added(h), `${h.name} names itself first`);
        assert.deepEqual(notes.slice(1, 3).sort(byName), others.map(added));
      }
      const nodes = (await watchers[0]!.grpc.call('observer', 'GetNodes')).nodes as Array<{ name: string; address: string; state: string }>;
      assert.deepEqual(nodes[0] && [nodes[0].name, nodes[0].address, nodes[0].state], ['h1', `${h1.nodeIPv4}:${HUBBLE_PORT}`, 'NODE_CONNECTED']);
      assert.deepEqual(nodes.slice(1).sort(byName).map((n) => [n.name, n.address, n.state]), [
        ['h2', `${h2.nodeIPv4}:${HUBBLE_PORT}`, 'UNKNOWN_NODE_STATE'],
        ['h3', `${h3.nodeIPv4}:${HUBBLE_PORT}`, 'UNKNOWN_NODE_STATE'],
      ]);
      await h3.kill('SIGKILL');
      await Promise.all(watchers.map(({ h, notes }) =>
        waitFor(`h3 PEER_DELETED on ${h.name}'s stream after its lease`, async () => notes.some((n) => n.name === 'h3' && n.type === 'PEER_DELETED') || undefined, timeLimit(60_000))));
      for (const { notes } of watchers) assert.deepEqual(notes.at(-1), { ...added(h3), type: 'PEER_DELETED' });
      const after = (await watchers[0]!.grpc.call('observer', 'GetNodes')).nodes as Array<{ name: string }>;
      assert.deepEqual(after.map((n) => n.name), ['h1', 'h2']);
      for (const s of streams) s.cancel();
    } finally {
      for (const { grpc } of watchers) grpc.close();
    }
  });
});
