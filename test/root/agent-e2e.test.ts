import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import type { ApiError } from '../../common/api-client.js';
import type { Identity } from '../../common/schemas/identity.js';
import type { Status } from '../../common/schemas/status.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { kernelHasNetkit, testMode } from '../helpers/mode.js';
import { links, ping, routes, run, waitFor } from '../helpers/sys.js';
import { timeLimit } from '../helpers/timeouts.js';

/**
 * The walking skeleton end to end, as root with real kernel objects: an agent with its own state dir,
 * socket, pin root and address pools; workloads in real namespaces; traffic; flows; restart; removal.
 */
describe('agent end to end (root)', { timeout: timeLimit(240_000) }, () => {
  const fx = new AgentFixture({
    tag: 'e2e',
    // A /29 leaves five usable IPv4 addresses: small enough to exhaust in the test.
    ipv4Pool: '10.201.0.0/29',
    ipv6Pool: 'fd00:201::/64',
    namespaces: ['e2e'],
    overrides: { nodeName: 'e2e-node' },
  });
  const api = fx.api;
  const nsNames: string[] = [];
  const ns = (i: number) => `/var/run/netns/${nsNames[i]}`;
  let a: Workload;
  let b: Workload;

  const kitnetLinks = () => fx.ownLinks();
  const pinnedLinks = () => (existsSync(join(fx.pinRoot, 'links')) ? readdirSync(join(fx.pinRoot, 'links')) : []);
  const register = (body: Record<string, unknown>) => api.call<Workload>('POST', '/v1/workloads', body);
  const expectApiError = async (p: Promise<unknown>, status: number, code: string) => {
    await assert.rejects(p, (e: ApiError) => {
      assert.equal(e.statusCode, status, e.message);
      assert.equal(e.code, code, e.message);
      return true;
    });
  };

  after(() => fx.cleanup());
  before(async () => {
    for (const n of ['a', 'b', 'c', 'd', 'e', 'f']) nsNames.push(await fx.netns(n));
    await fx.start();
  });

  test('registers two workloads with dual-stack addresses and identities', async () => {
    a = await register({ name: 'e2e-a', namespace: 'e2e', labels: { app: 'a' }, netns: ns(0) });
    b = await register({ name: 'e2e-b', namespace: 'e2e', labels: { app: 'b' }, netns: ns(1), ipv4: '10.201.0.5', ipv6: 'fd00:201::b' });
    assert.equal(a.state, 'ready');
    assert.equal(a.mode, testMode);
    assert.equal(a.ipv4, '10.201.0.2');
    assert.equal(a.ipv6, 'fd00:201::2');
    assert.equal(b.ipv4, '10.201.0.5');
    assert.equal(b.ipv6, 'fd00:201::b');
    assert.ok(a.identity >= 256 && b.identity >= 256 && a.identity !== b.identity);
    assert.ok(a.identityLabels.includes('k8s:app=a'));
    assert.ok(a.identityLabels.includes('k8s:io.kubernetes.pod.namespace=e2e'));
    assert.ok(a.interfaces.host.ifindex! > 0 && a.interfaces.workload.ifindex! > 0);
    // Kernel state: the host link carries our alias; the workload side has both addresses.
    const hostLink = (await kitnetLinks()).find((l) => l.ifname === a.interfaces.host.name);
    assert.equal(hostLink?.ifalias, 'kitnet:e2e/e2e-a');
    const addrs = await run('ip', ['-n', nsNames[0]!, '-o', 'addr', 'show', 'dev', 'eth0']);
    assert.match(addrs, /10\.201\.0\.2\/32/);
    assert.match(addrs, /fd00:201::2\/128/);
    assert.deepEqual(pinnedLinks().length > 0, true);
  });

  test('the two workloads reach each other over IPv4 and IPv6', async () => {
    assert.ok(await ping(nsNames[0]!, b.ipv4), 'IPv4 a -> b');
    assert.ok(await ping(nsNames[1]!, a.ipv4), 'IPv4 b -> a');
    assert.ok(await ping(nsNames[0]!, b.ipv6), 'IPv6 a -> b');
    assert.ok(await ping(nsNames[1]!, a.ipv6), 'IPv6 b -> a');
  });

  test('flows of both directions appear with identities and names', async () => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- free-form Hubble JSON, asserted field by field
    type Line = { flow: Record<string, any>; node_name: string; time: string };
    const flows = await waitFor('ICMP flows in both directions', async () => {
      const text = await new Promise<string>((resolve, reject) => {
        let acc = '';
        api.stream('/v1/flows?last=4095', (l) => (acc += `${l}\n`)).then(() => resolve(acc), reject);
      });
      const lines = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Line);
      const icmp = lines.filter((l) => l.flow.l4?.ICMPv4 || l.flow.l4?.ICMPv6);
      const has = (src: Workload, dst: Workload, v: 'IPv4' | 'IPv6', dir: string) =>
        icmp.some(
          (l) =>
            l.flow.IP.ipVersion === v &&
            l.flow.source.identity === src.identity &&
            l.flow.destination.identity === dst.identity &&
            l.flow.source.pod_name === src.name &&
            l.flow.destination.pod_name === dst.name &&
            l.flow.traffic_direction === dir,
        );
      const ok =
        has(a, b, 'IPv4', 'EGRESS') && has(a, b, 'IPv4', 'INGRESS') && has(b, a, 'IPv4', 'EGRESS') &&
        has(a, b, 'IPv6', 'EGRESS') && has(b, a, 'IPv6', 'EGRESS');
      return ok ? lines : undefined;
    });
    const sample = flows.find((l) => l.flow.l4?.ICMPv4 && l.flow.traffic_direction === 'EGRESS' && l.flow.source.pod_name === 'e2e-a')!;
    assert.equal(sample.node_name, 'e2e-node');
    assert.equal(sample.flow.Type, 'L3_L4');
    assert.equal(sample.flow.verdict, 'FORWARDED');
    assert.equal(sample.flow.source.namespace, 'e2e');
    assert.ok((sample.flow.source.labels as string[]).includes('k8s:app=a'));
    assert.match(sample.time, /^\d{4}-\d\d-\d\dT/);
    assert.equal(typeof sample.flow.is_reply, 'boolean');
  });

  test('rejected registrations return 4xx naming the problem and leave nothing behind', async () => {
    const before = { links: (await kitnetLinks()).length, pins: pinnedLinks().length, workloads: (await api.call<Workload[]>('GET', '/v1/workloads')).length };
    await expectApiError(register({ name: 'e2e-a', namespace: 'e2e', netns: ns(2) }), 409, 'AGENT_ERR_WORKLOAD_EXISTS');
    await expectApiError(register({ name: 'e2e-x', namespace: 'e2e', netns: '/var/run/netns/kitnet-does-not-exist' }), 422, 'AGENT_ERR_WORKLOAD_NETNS');
    await expectApiError(register({ name: 'e2e-x', namespace: 'e2e', netns: '/etc/hostname' }), 422, 'AGENT_ERR_WORKLOAD_NETNS');
    await expectApiError(register({ name: 'e2e-x', namespace: 'e2e', netns: ns(2), ipv4: '10.201.0.5' }), 409, 'AGENT_ERR_IPAM_ADDRESS_TAKEN');
    await expectApiError(register({ name: 'e2e-x', namespace: 'e2e', netns: ns(2), ipv6: 'fd00:201::b' }), 409, 'AGENT_ERR_IPAM_ADDRESS_TAKEN');
    await expectApiError(register({ name: 'e2e-x', namespace: 'e2e', netns: ns(2), ipv4: '10.99.0.5' }), 422, 'AGENT_ERR_IPAM_OUT_OF_POOL');
    await expectApiError(register({ name: 'e2e-x', namespace: 'e2e', netns: ns(2), ipv6: 'fd00:999::5' }), 422, 'AGENT_ERR_IPAM_OUT_OF_POOL');
    if (!(await kernelHasNetkit())) await expectApiError(register({ name: 'e2e-x', namespace: 'e2e', netns: ns(2), mode: 'netkit' }), 422, 'AGENT_ERR_DATAPATH_UNSUPPORTED');
    const after = { links: (await kitnetLinks()).length, pins: pinnedLinks().length, workloads: (await api.call<Workload[]>('GET', '/v1/workloads')).length };
    assert.deepEqual(after, before);
    assert.equal((await links(nsNames[2])).filter((l) => l.ifname !== 'lo').length, 0, 'nothing created in the namespace');
  });

  test('an exhausted pool is a 409 and a partial kernel failure rolls back', async () => {
    // Pool /29: .2 (a) and .5 (b) are taken; .3, .4, .6 remain.
    const extra = [];
    for (const [i, name] of [[2, 'e2e-c'], [3, 'e2e-d'], [4, 'e2e-e']] as const) {
      extra.push(await register({ name, namespace: 'e2e', labels: { app: 'a' }, netns: ns(i) }));
    }
    // Same labels, same namespace: one identity shared by a, c, d, e.
    assert.ok(extra.every((w) => w.identity === a.identity));
    await expectApiError(register({ name: 'e2e-f', namespace: 'e2e', netns: ns(5) }), 409, 'AGENT_ERR_IPAM_POOL_EXHAUSTED');
    // A kernel-side failure after the store write: the interface name is taken inside the namespace.
    await run('ip', ['-n', nsNames[5]!, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0peer']);
    await api.call('DELETE', '/v1/workloads/e2e/e2e-e');
    const linksBefore = (await kitnetLinks()).length;
    await expectApiError(register({ name: 'e2e-f', namespace: 'e2e', netns: ns(5) }), 409, 'AGENT_ERR_WORKLOAD_INTERFACE');
    assert.equal((await kitnetLinks()).length, linksBefore, 'no host link left behind');
    await assert.rejects(api.call('GET', '/v1/workloads/e2e/e2e-f'), (e: ApiError) => e.statusCode === 404);
    for (const n of ['e2e-c', 'e2e-d']) await api.call('DELETE', `/v1/workloads/e2e/${n}`);
    const ids = await api.call<Identity[]>('GET', '/v1/identities');
    assert.equal(ids.find((i) => i.id === a.identity)?.references, 1);
  });

  test('status reports host facts, kernel features and the mode in use', async () => {
    const s = await api.call<Status>('GET', '/v1/status');
    const netkit = await kernelHasNetkit();
    assert.equal(s.kernel.netkit, netkit);
    assert.equal(s.kernel.tcx, true);
    assert.equal(s.datapath.autoMode, netkit ? 'netkit' : 'veth');
    assert.equal(s.counts.workloads, 2);
    assert.deepEqual(s.counts.workloadsByMode, { [testMode]: 2 });
    assert.ok(s.host.os.kernel.length > 0);
    assert.ok(s.counts.flowsProcessed > 0);
  });

  test('an agent restart keeps workloads, identities and connectivity, and repairs a damaged device', async () => {
    const identitiesBefore = await api.call<Identity[]>('GET', '/v1/identities');
    const pinsBefore = pinnedLinks().sort();
    await fx.stop();
    // The datapath is pinned: traffic keeps flowing while no agent runs.
    assert.ok(await ping(nsNames[0]!, b.ipv4), 'IPv4 while the agent is down');
    // What a crash between creating b's pair and configuring it leaves: the device without addresses.
    const peerB = b.interfaces.workload.name;
    await run('ip', ['-n', nsNames[1]!, 'addr', 'flush', 'dev', peerB]);
    await fx.start();
    const addrsB = await run('ip', ['-n', nsNames[1]!, '-j', 'addr', 'show', 'dev', peerB]);
    const restored = (JSON.parse(addrsB) as Array<{ addr_info: Array<{ local: string }> }>)[0]!.addr_info.map((x) => x.local);
    assert.ok(restored.includes(b.ipv4) && restored.includes(b.ipv6), `b's addresses restored: ${restored.join(' ')}`);
    const list = await api.call<Workload[]>('GET', '/v1/workloads');
    assert.deepEqual(list.map((w) => [w.name, w.identity, w.ipv4, w.ipv6, w.state]).sort(), [
      ['e2e-a', a.identity, a.ipv4, a.ipv6, 'ready'],
      ['e2e-b', b.identity, b.ipv4, b.ipv6, 'ready'],
    ]);
    for (const w of [a, b]) assert.equal(list.find((x) => x.name === w.name)?.interfaces.host.ifindex, w.interfaces.host.ifindex, `${w.name}: device adopted, not recreated`);
    assert.deepEqual(await api.call<Identity[]>('GET', '/v1/identities'), identitiesBefore);
    assert.deepEqual(pinnedLinks().sort(), pinsBefore);
    assert.ok(await ping(nsNames[0]!, b.ipv4), 'IPv4 after restart');
    assert.ok(await ping(nsNames[1]!, a.ipv6), 'IPv6 after restart');
  });

  test('removing the workloads leaves no links, routes, addresses, pins or rows', async () => {
    for (const w of [a, b]) await api.call('DELETE', `/v1/workloads/${w.namespace}/${w.name}`);
    assert.deepEqual(await kitnetLinks(), []);
    assert.deepEqual(pinnedLinks(), []);
    const r4 = await routes(4);
    const r6 = await routes(6);
    assert.ok(!r4.some((r) => r.dst.startsWith('10.201.0.')), 'no host IPv4 routes');
    assert.ok(!r6.some((r) => r.dst.startsWith('fd00:201:')), 'no host IPv6 routes');
    for (const i of [0, 1]) {
      assert.deepEqual((await links(nsNames[i])).map((l) => l.ifname), ['lo'], 'workload side gone');
    }
    assert.deepEqual(await api.call<Workload[]>('GET', '/v1/workloads'), []);
    assert.deepEqual((await api.call<Identity[]>('GET', '/v1/identities')).filter((i) => !i.reserved), []);
    await fx.stop();
    const db = new Database(join(fx.dir, 'state', 'kitnet.db'), { readonly: true });
    try {
      assert.equal((db.prepare('SELECT COUNT(*) AS n FROM workloads').get() as { n: number }).n, 0);
      assert.equal((db.prepare('SELECT COUNT(*) AS n FROM identities').get() as { n: number }).n, 0);
    } finally {
      db.close();
    }
  });
});
