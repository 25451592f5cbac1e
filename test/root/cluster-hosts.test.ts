import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import { NODES_PREFIX } from '../../agent/cluster/node-registry.js';
import type { TraceResponse } from '../../common/schemas/policy.js';
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
 * #14 item 4: kitnet hosts, each an agent in a network namespace of its own with a node address on a
 * shared bridge, one real etcd. Each host claims node CIDRs from the cluster pools and routes to the
 * others'; workloads on two hosts reach each other (ping, TCP, v4 and v6); a policy on the receiving
 * host admits the remote workload by its labels and the flow there names it; hostile node entries
 * change nothing; a node killed without cleanup leaves the others' routes and ipcache within its TTL.
 */
describe('cluster mode across hosts: node CIDRs, routes, cross-host traffic and policy (root)', { timeout: timeLimit(420_000) }, () => {
  const cluster = new ClusterHosts({ tag: 'xh', hosts: 2, cluster: { name: CLUSTER, id: 12, leaseTTLSeconds: 5 }, ipv4Pool: '10.236.0.0/16', ipv6Pool: 'fd00:236::/64', hubble: true });
  let h1: ClusterHost;
  let h2: ClusterHost;
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

  before(async () => {
    await cluster.setup();
    [h1, h2] = cluster.hosts as [ClusterHost, ClusterHost];
    await Promise.all([h1.start(), h2.start()]);
    raw = new Etcd3({ hosts: cluster.etcd!.endpoint });
  });
  after(async () => {
    for (const p of probers) p.close();
    raw?.close();
    await cluster.cleanup();
  });

  test('each node is in etcd in Cilium\'s node JSON with its own CIDRs, and each routes to the other\'s', async () => {
    const [c1, c2] = [await cidrsOf(h1), await cidrsOf(h2)];
    assert.notEqual(c1.ipv4Pool, c2.ipv4Pool);
    assert.notEqual(c1.ipv6Pool, c2.ipv6Pool);
    for (const c of [c1, c2]) {
      assert.match(c.ipv4Pool, /^10\.236\.\d+\.0\/24$/);
      assert.match(c.ipv6Pool, /^fd00:236::(\w+:0)?\/112$/);
    }
    const entry = JSON.parse((await raw!.get(`${NODES_PREFIX}/${CLUSTER}/h2`).string())!) as Record<string, unknown>;
    assert.equal(entry.Name, 'h2');
    assert.equal(entry.Cluster, CLUSTER);
    assert.equal(entry.ClusterID, 12);
    assert.deepEqual(entry.IPAddresses, [{ Type: 'InternalIP', IP: h2.nodeIPv4 }, { Type: 'InternalIP', IP: h2.nodeIPv6 }]);
    assert.deepEqual(entry.IPv4AllocCIDR, { IP: c2.ipv4Pool.split('/')[0], Mask: '////AA==' });
    const lease = (await raw!.get(`${NODES_PREFIX}/${CLUSTER}/h2`).exec()).kvs[0]!.lease;
    assert.notEqual(lease, '0', 'the node entry is leased');

    for (const [from, to, c] of [[h1, h2, c2], [h2, h1, c1]] as const) {
      await waitFor(`${from.name}'s routes to ${to.name}'s CIDRs`, async () => {
        const [r4, r6] = [await from.nodeRoutes(4), await from.nodeRoutes(6)];
        return (r4.some((r) => r.dst === c.ipv4Pool && r.gateway === to.nodeIPv4 && r.dev === 'eth0') && r6.some((r) => r.dst === c.ipv6Pool && r.gateway === to.nodeIPv6 && r.dev === 'eth0')) || undefined;
      }, timeLimit(30_000));
      assert.equal((await from.nodeRoutes(4)).length, 1, 'one IPv4 node route: none for the own CIDR');
    }
  });

  test('workloads on two hosts reach each other: ping and TCP, IPv4 and IPv6, from addresses of their node\'s CIDR', async () => {
    await register(h1, 'fe', { app: 'fe' });
    await register(h1, 'other', { app: 'other' });
    await register(h2, 'be', { app: 'be' });
    const [c1, c2] = [await cidrsOf(h1), await cidrsOf(h2)];
    assert.equal(w.fe!.ipv4.split('.').slice(0, 3).join('.'), c1.ipv4Pool.split('.').slice(0, 3).join('.'), 'fe\'s address is in h1\'s CIDR');
    assert.equal(w.be!.ipv4.split('.').slice(0, 3).join('.'), c2.ipv4Pool.split('.').slice(0, 3).join('.'), 'be\'s address is in h2\'s CIDR');
    for (const addr of [w.be!.ipv4, w.be!.ipv6]) {
      await waitFor(`ping fe -> be ${addr}`, async () => ping(ns.fe!, addr), timeLimit(30_000));
    }
    assert.ok(await ping(ns.be!, w.fe!.ipv6), 'be -> fe IPv6');
    const server = new Prober(ns.be!, [80, 81]);
    const client = new Prober(ns.fe!, [7]);
    const bystander = new Prober(ns.other!, [7]);
    probers.push(server, client, bystander);
    await Promise.all([server.ready, client.ready, bystander.ready]);
    const tcp = (addr: string, port: number) => ({ addr, port, protocol: 'TCP' as const });
    const open = await client.probeRetrying([tcp(w.be!.ipv4, 80), tcp(w.be!.ipv6, 80), tcp(w.be!.ipv4, 81)], 500, 4);
    assert.deepEqual(open.results, [true, true, true], 'TCP across hosts with no policy');

    // A policy on the receiving host: app=fe may reach app=be on 80/TCP, nothing else may.
    await h2.api.call('PUT', '/v1/policies', {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'fe-to-be', namespace: NS },
      spec: { endpointSelector: { matchLabels: { app: 'be' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'fe' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] },
    });
    const allowed = await client.probeRetrying([tcp(w.be!.ipv4, 80), tcp(w.be!.ipv6, 80)], 500, 4);
    assert.deepEqual(allowed.results, [true, true], 'fe -> be:80 allowed, v4 and v6');
    assert.deepEqual(await client.probe([tcp(w.be!.ipv4, 81), tcp(w.be!.ipv6, 81)], 700), [false, false], 'fe -> be:81 denied');
    assert.deepEqual(await bystander.probe([tcp(w.be!.ipv4, 80), tcp(w.be!.ipv6, 80)], 700), [false, false], 'other -> be:80 denied');
    assert.equal(await ping(ns.fe!, w.be!.ipv4), false, 'ICMP is not in the policy');

    // h2's flows name the remote workload and its identity.
    await flowWait(h2, 'a forwarded flow fe -> be:80 on h2 naming fe', w.fe!.ipv4, (f) => f.verdict === 'FORWARDED' && f.l4?.TCP?.destination_port === 80 &&
      f.source.identity === w.fe!.identity && f.source.pod_name === 'fe' && f.source.namespace === NS && !!f.source.labels?.includes('k8s:app=fe') && f.destination.pod_name === 'be');
    await flowWait(h2, 'a dropped flow other -> be:80 on h2 naming other', w.other!.ipv4, (f) => f.verdict === 'DROPPED' && f.source.identity === w.other!.identity && f.source.pod_name === 'other');
  });

  test('hostile node entries are ignored with a log line: no route over a local CIDR, the agents stay up', async () => {
    const c1 = await cidrsOf(h1);
    const before = { h1: await h1.nodeRoutes(4), h2: await h2.nodeRoutes(4), h16: await h1.nodeRoutes(6) };
    const key = (n: string) => `${NODES_PREFIX}/${CLUSTER}/${n}`;
    const mask24 = '////AA==';
    const node = (name: string, o: Record<string, unknown>) => JSON.stringify({ Name: name, Cluster: CLUSTER, IPAddresses: [{ Type: 'InternalIP', IP: `${cluster.subnet4}.77` }], IPv4AllocCIDR: null, IPv6AllocCIDR: null, ClusterID: 12, ...o });
    const hostile: Record<string, string> = {
      garbage: '{"Name": "garbage", ',
      oversized: node('oversized', { Labels: { pad: 'x'.repeat(200_000) }, IPv4AllocCIDR: { IP: '10.236.200.0', Mask: mask24 } }),
      'over-h1': node('over-h1', { IPv4AllocCIDR: { IP: c1.ipv4Pool.split('/')[0], Mask: mask24 } }),
      everything: node('everything', { IPv4AllocCIDR: { IP: '0.0.0.0', Mask: 'AAAAAA==' } }),
      'gw-in-pool': node('gw-in-pool', { IPAddresses: [{ Type: 'InternalIP', IP: '10.236.0.9' }], IPv4AllocCIDR: { IP: '10.236.201.0', Mask: mask24 } }),
    };
    for (const [n, v] of Object.entries(hostile)) await raw!.put(key(n)).value(v);
    try {
      for (const h of [h1, h2]) {
        await waitFor(`${h.name} to log every hostile entry as ignored`, async () => {
          const keys = new Set(h.logged(/cluster node entry ignored/).map((l) => String(l.key)));
          return Object.keys(hostile).every((n) => keys.has(key(n))) || undefined;
        }, timeLimit(30_000));
        assert.equal(await h.api.call<{ status?: string }>('GET', '/healthz').then(() => true), true, `${h.name} still serves`);
      }
      // A sound entry written after them is taken: the watch went on (and shows the hostile ones were not merely slow).
      await raw!.put(key('sound')).value(node('sound', { IPv4AllocCIDR: { IP: '10.236.202.0', Mask: mask24 } }));
      await waitFor('the sound entry\'s route on h1', async () => (await h1.nodeRoutes(4)).some((r) => r.dst === '10.236.202.0/24') || undefined, timeLimit(30_000));
      await raw!.delete().key(key('sound')).exec();
      await waitFor('the sound entry\'s route gone with its key', async () => !(await h1.nodeRoutes(4)).some((r) => r.dst === '10.236.202.0/24') || undefined, timeLimit(30_000));

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
      assert.deepEqual(await h1.nodeRoutes(4), before.h1);
      assert.deepEqual(await h2.nodeRoutes(4), before.h2);
      assert.deepEqual(await h1.nodeRoutes(6), before.h16);
      assert.ok(promValue(await metrics(h1), 'kitnet_cluster_node_events_total', { event: 'ignored' }) >= Object.keys(hostile).length);
    } finally {
      for (const n of Object.keys(hostile)) await raw!.delete().key(key(n)).exec();
    }
  });

  test('a node killed with SIGKILL: its routes and ipcache entries leave the other host within the lease TTL', async () => {
    const c2 = await cidrsOf(h2);
    assert.equal(promValue(await metrics(h1), 'kitnet_cluster_nodes'), 1);
    assert.ok(promValue(await metrics(h1), 'kitnet_cluster_ipcache_remote_entries') >= 2, 'be\'s addresses are in h1\'s ipcache');
    await h2.kill('SIGKILL');
    await waitFor('h2\'s routes gone from h1', async () => {
      const [r4, r6] = [await h1.nodeRoutes(4), await h1.nodeRoutes(6)];
      return (!r4.some((r) => r.dst === c2.ipv4Pool) && !r6.some((r) => r.dst === c2.ipv6Pool)) || undefined;
    }, timeLimit(60_000));
    await waitFor('be\'s entries gone from h1\'s ipcache', async () => promValue(await metrics(h1), 'kitnet_cluster_ipcache_remote_entries') === 0 || undefined, timeLimit(60_000));
    assert.equal(promValue(await metrics(h1), 'kitnet_cluster_nodes'), 0);
    const trace = await h1.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { ip: w.be!.ipv4 }, to: { workload: `${NS}/fe` }, protocol: 'TCP', port: 80 });
    assert.notEqual((trace.result as { srcIdentity: number }).srcIdentity, w.be!.identity, 'be\'s address no longer resolves to its identity on h1');
    assert.equal(await raw!.get(`${NODES_PREFIX}/${CLUSTER}/h2`).string(), null, 'h2\'s node entry expired with its lease');
    assert.ok(h1.logged(/cluster node left/).some((l) => l.node === 'h2'), 'h1 logged the departure');

    // h2 comes back: the same CIDRs (its claims), routes again on h1.
    await h2.start();
    assert.deepEqual(await cidrsOf(h2), c2, 'a restarted node gets its CIDRs back');
    await waitFor('h2\'s routes back on h1', async () => (await h1.nodeRoutes(4)).some((r) => r.dst === c2.ipv4Pool) || undefined, timeLimit(30_000));
  });

  test('Hubble: Peer.Notify and GetNodes name the other node at its node address and Hubble port; a node that dies is PEER_DELETED', async () => {
    type Note = { name: string; address: string; type: string; tls?: { server_name: string } };
    const grpc = hubbleClient(`unix://${join(h1.dir, 'hubble.sock')}`);
    try {
      const notes: Note[] = [];
      const s = grpc.stream('peer', 'Notify', {});
      s.on('data', (m: Note) => notes.push(m));
      s.on('error', () => undefined); // CANCELLED at the end
      await waitFor('h1 and h2 announced', async () => notes.some((n) => n.name === 'h2') || undefined, timeLimit(30_000));
      assert.deepEqual(notes.slice(0, 2), [
        { name: 'h1', address: `${h1.nodeIPv4}:${HUBBLE_PORT}`, type: 'PEER_ADDED', tls: { server_name: 'h1' } },
        { name: 'h2', address: `${h2.nodeIPv4}:${HUBBLE_PORT}`, type: 'PEER_ADDED', tls: { server_name: 'h2' } },
      ]);
      const nodes = (await grpc.call('observer', 'GetNodes')).nodes as Array<{ name: string; address: string; state: string }>;
      assert.deepEqual(nodes.map((n) => [n.name, n.address, n.state]), [
        ['h1', `${h1.nodeIPv4}:${HUBBLE_PORT}`, 'NODE_CONNECTED'],
        ['h2', `${h2.nodeIPv4}:${HUBBLE_PORT}`, 'UNKNOWN_NODE_STATE'],
      ]);
      await h2.kill('SIGKILL');
      await waitFor('h2 PEER_DELETED on h1\'s stream after its lease', async () => notes.some((n) => n.name === 'h2' && n.type === 'PEER_DELETED') || undefined, timeLimit(60_000));
      assert.deepEqual(notes.at(-1), { name: 'h2', address: `${h2.nodeIPv4}:${HUBBLE_PORT}`, type: 'PEER_DELETED', tls: { server_name: 'h2' } });
      const after = (await grpc.call('observer', 'GetNodes')).nodes as Array<{ name: string }>;
      assert.deepEqual(after.map((n) => n.name), ['h1']);
      s.cancel();
    } finally {
      grpc.close();
    }
  });
});
