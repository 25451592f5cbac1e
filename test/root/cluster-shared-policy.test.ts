import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import type { ApiError } from '../../common/api-client.js';
import type { Namespace, PolicyApplyResult, PolicySummary, TraceResponse, WorkloadPolicy } from '../../common/schemas/policy.js';
import type { Status } from '../../common/schemas/status.js';
import type { Workload } from '../../common/schemas/workload.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { AgentFixture } from '../helpers/fixture.js';
import { Prober } from '../helpers/prober-client.js';
import { waitFor } from '../helpers/sys.js';

const NS = 'csp';
/** A second namespace whose labels a namespace-selector policy reads. */
const NS2 = 'csp-team';
const PREFIX = 'kitnet/state/policies/v1';

const cnp = (name: string, spec: Record<string, unknown>, namespace = NS) => ({
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name, namespace },
  spec,
});
/** app=b admits app=a on 80/TCP only. */
const allowAtoB = (name: string) =>
  cnp(name, { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'a' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] });

/**
 * #14 item 5: two agents in cluster mode on one etcd share policies and namespace labels through
 * kitnet's own prefix; each compiles them locally. Real packets are checked between two workloads of
 * the same host (traffic between two agents on one machine does not route), real etcd throughout,
 * including values written behind kitnet's back and etcd going down.
 */
describe('cluster mode: policies and namespace labels shared through etcd (root)', { timeout: 420_000 }, () => {
  let etcd: EtcdServer | undefined;
  let raw: Etcd3 | undefined;
  let a: AgentFixture | undefined;
  let b: AgentFixture | undefined;
  const ns: Record<string, string> = {};
  const probers: Prober[] = [];
  const wl: Record<string, Workload> = {};
  // The cluster's pools, the same on every node; a node's IPv4 CIDR is a /16 (room for the filler
  // below). One netns: no routes between the two (they would go via addresses on no network).
  const node = (tag: string, octet: number) =>
    new AgentFixture({
      tag,
      ipv4Pool: '10.164.0.0/14',
      ipv6Pool: 'fd00:226::/64',
      namespaces: [NS, NS2],
      overrides: { cluster: { name: 'kitshare', id: 12, nodeIP: `192.0.2.${octet}`, etcd: { endpoints: [etcd!.endpoint] }, ipam: { ipv4MaskSize: 16 }, autoDirectNodeRoutes: false } },
    });
  const register = async (fx: AgentFixture, name: string, labels: Record<string, string>, namespace = NS) =>
    (wl[name] = await fx.api.call<Workload>('POST', '/v1/workloads', { name, namespace, labels, netns: `/var/run/netns/${ns[name]}` }));
  const names = async (fx: AgentFixture) => (await fx.api.call<PolicySummary[]>('GET', '/v1/policies')).map((p) => `${p.kind}/${p.namespace}/${p.name}`).sort();
  const has = async (fx: AgentFixture, name: string) => (await names(fx)).includes(`CiliumNetworkPolicy/${NS}/${name}`);
  const prober = async (name: string) => {
    const p = new Prober(ns[name]!, [80, 81]);
    probers.push(p);
    await p.ready;
    return p;
  };
  /** Probes 80 and 81 of `to` until the outcome is `want` (policy reaches the datapath asynchronously on a remote host). */
  const reaches = (from: Prober, to: Workload, want: [boolean, boolean], what: string) =>
    waitFor(what, async () => {
      const got = await from.probe([{ addr: to.ipv4, port: 80, protocol: 'TCP' }, { addr: to.ipv4, port: 81, protocol: 'TCP' }], 300);
      return (got[0] === want[0] && got[1] === want[1]) || undefined;
    }, 60_000);
  const failure = (p: Promise<unknown>) => p.then(() => assert.fail('the call succeeded'), (e: ApiError) => e);
  const metric = async (fx: AgentFixture, name: string) => (await fx.agent.metrics.registry.getSingleMetric(name)!.get()).values[0]?.value ?? 0;

  before(async () => {
    etcd = await etcdStart();
    raw = new Etcd3({ hosts: etcd.endpoint });
    a = node('cspa', 226);
    b = node('cspb', 227);
    for (const n of ['wa', 'wn']) ns[n] = await a.netns(n);
    for (const n of ['wb', 'wx']) ns[n] = await b.netns(n);
    await a.start();
    await b.start();
  });
  after(async () => {
    for (const p of probers) p.close();
    raw?.close();
    await a?.cleanup();
    await b?.cleanup();
    await etcd?.stop();
  });

  test('a policy applied on A is enforced on B (real packets); deleted on B, it is gone on A', async () => {
    const wb = await register(b!, 'wb', { app: 'b' });
    await register(b!, 'wx', { app: 'a' });
    await prober('wb');
    const fromX = await prober('wx');
    await reaches(fromX, wb, [true, true], 'wx reaches both ports of wb before any policy');

    const res = await a!.api.call<PolicyApplyResult>('PUT', '/v1/policies', allowAtoB('shared-allow'));
    assert.deepEqual(res.applied, [{ kind: 'CiliumNetworkPolicy', namespace: NS, name: 'shared-allow', action: 'created' }]);
    assert.ok(await has(a!, 'shared-allow'), 'the writer applied its own write before answering');
    const kv = await raw!.get(`${PREFIX}/CiliumNetworkPolicy/${NS}/shared-allow`).string();
    assert.equal((JSON.parse(kv!) as { metadata: { name: string } }).metadata.name, 'shared-allow', 'the validated document is the value under kitnet\'s prefix');

    await waitFor('the policy on B', async () => (await has(b!, 'shared-allow')) || undefined, 30_000);
    await reaches(fromX, wb, [true, false], 'B enforces A\'s policy: 80 allowed, 81 denied');
    const p = await b!.api.call<WorkloadPolicy>('GET', `/v1/workloads/${NS}/wb/policy`);
    assert.equal(p.ingressEnforced, true);
    const trace = await b!.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { workload: `${NS}/wx` }, to: { workload: `${NS}/wb` }, protocol: 'TCP', port: 80 });
    assert.equal(trace.verdict, 'ALLOWED', trace.text);
    assert.deepEqual((trace.result as { ingress?: { rules: string[] } }).ingress?.rules, [`CiliumNetworkPolicy ${NS}/shared-allow ingress[0]`]);

    await b!.api.call('DELETE', `/v1/policies/cnp/${NS}/shared-allow`);
    assert.equal(await has(b!, 'shared-allow'), false, 'B dropped it before answering');
    await waitFor('the policy gone from A', async () => !(await has(a!, 'shared-allow')) || undefined, 30_000);
    await reaches(fromX, wb, [true, true], 'no policy selects wb any more');
    assert.equal(await raw!.get(`${PREFIX}/CiliumNetworkPolicy/${NS}/shared-allow`).string(), null);
    const gone = await failure(a!.api.call('DELETE', `/v1/policies/cnp/${NS}/shared-allow`));
    assert.equal(gone.statusCode, 404, gone.message);
  });

  test('namespace labels set on B take effect on A\'s namespace-selector policy', async () => {
    const wa = await register(a!, 'wa', { app: 'a' });
    await register(a!, 'wn', { app: 'n' }, NS2);
    await prober('wa');
    const fromN = await prober('wn');
    await a!.api.call('PUT', '/v1/policies', {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'NetworkPolicy',
      metadata: { name: 'from-team-blue', namespace: NS },
      spec: { podSelector: { matchLabels: { app: 'a' } }, policyTypes: ['Ingress'], ingress: [{ from: [{ namespaceSelector: { matchLabels: { team: 'blue' } } }], ports: [{ port: 80, protocol: 'TCP' }] }] },
    });
    await reaches(fromN, wa, [false, false], 'wn is not in a team=blue namespace yet');

    const set = await b!.api.call<Namespace>('PUT', `/v1/namespaces/${NS2}`, { labels: { team: 'blue' } });
    assert.deepEqual(set.labels, { team: 'blue' });
    await waitFor('the labels on A', async () => {
      const list = await a!.api.call<Namespace[]>('GET', '/v1/namespaces');
      return list.find((n) => n.name === NS2)?.labels.team === 'blue' || undefined;
    }, 30_000);
    await reaches(fromN, wa, [true, false], 'A admits wn on 80 once B labelled its namespace');
    const w = await a!.api.call<Workload>('GET', `/v1/workloads/${NS2}/wn`);
    assert.ok(w.identityLabels.includes('k8s:io.cilium.k8s.namespace.labels.team=blue'), w.identityLabels.join(' '));

    // Deleting the key (etcdctl del) means no labels, on every host.
    await raw!.delete().key(`kitnet/state/namespaces/v1/${NS2}`).exec();
    await reaches(fromN, wa, [false, false], 'the labels gone, wn is denied again');
    await a!.api.call('DELETE', `/v1/policies/NetworkPolicy/${NS}/from-team-blue`);
  });

  test('concurrent applies from both hosts converge to the same state', async () => {
    const batch = (host: string, i: number) => [allowAtoB(`${host}-${i}`), cnp('contended', { endpointSelector: { matchLabels: { app: host } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: `${host}${i}` } }] }] })];
    await Promise.all([0, 1, 2, 3, 4].flatMap((i) => [a!.api.call('PUT', '/v1/policies', batch('a', i)), b!.api.call('PUT', '/v1/policies', batch('b', i))]));
    const inEtcd = async () => {
      const all = await raw!.getAll().prefix(`${PREFIX}/`).strings();
      return new Map(Object.entries(all).map(([k, v]) => [k.slice(PREFIX.length + 1), JSON.stringify(JSON.parse(v))]));
    };
    const onHost = async (fx: AgentFixture) =>
      new Map((await fx.api.call<PolicySummary[]>('GET', '/v1/policies')).map((p) => [`${p.kind}/${p.namespace || '-'}/${p.name}`, JSON.stringify(p.document)]));
    await waitFor('both hosts to hold what etcd holds', async () => {
      const want = await inEtcd();
      const [ha, hb] = [await onHost(a!), await onHost(b!)];
      return (want.size === 11 && [...want].every(([k, v]) => ha.get(k) === v && hb.get(k) === v) && ha.size === want.size && hb.size === want.size) || undefined;
    }, 60_000);
    for (const n of [...(await inEtcd()).keys()]) {
      const [kind, namespace, name] = n.split('/');
      await a!.api.call('DELETE', `/v1/policies/${kind}/${namespace}/${name}`);
    }
    await waitFor('B empty', async () => (await names(b!)).length === 0 || undefined, 30_000);
  });

  test('hostile values in etcd are ignored, counted and shown; they never evict a valid policy nor stop the agent', async () => {
    await a!.api.call('PUT', '/v1/policies', allowAtoB('keep'));
    await waitFor('keep on B', async () => (await has(b!, 'keep')) || undefined, 30_000);
    const keepDoc = JSON.stringify((await b!.api.call<PolicySummary[]>('GET', '/v1/policies')).find((p) => p.name === 'keep')!.document);
    const ignoredBefore = await metric(b!, 'kitnet_cluster_shared_ignored_total');
    const hostile: Record<string, string> = {
      [`${PREFIX}/CiliumNetworkPolicy/${NS}/not-json`]: '{"apiVersion": ',
      [`${PREFIX}/CiliumNetworkPolicy/${NS}/invalid`]: JSON.stringify(cnp('invalid', { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ toPorts: [{ ports: [{ port: '99999', protocol: 'TCP' }] }] }] })),
      [`${PREFIX}/CiliumNetworkPolicy/${NS}/huge`]: JSON.stringify({ ...cnp('huge', { endpointSelector: {} }), pad: 'x'.repeat(1100 * 1024) }),
      [`${PREFIX}/CiliumNetworkPolicy/${NS}/mismatch`]: JSON.stringify(allowAtoB('other-name')),
      [`${PREFIX}/CiliumNetworkPolicy/other-ns/in-ns`]: JSON.stringify(allowAtoB('in-ns')),
      [`${PREFIX}/CiliumNetworkPolicy/${NS}/keep`]: JSON.stringify(cnp('keep', { endpointSelector: { matchLabels: { app: 'b' } }, ingress: [{ fromEndpoints: 'everyone' }] })),
      [`${PREFIX}/garbage`]: '[]',
      ['kitnet/state/namespaces/v1/csp-bad']: JSON.stringify({ name: 'csp-bad', labels: { 'bad key!': 'x' } }),
      ['kitnet/state/namespaces/v1/csp-mismatch']: JSON.stringify({ name: 'csp-other', labels: {} }),
    };
    for (const [k, v] of Object.entries(hostile)) await raw!.put(k).value(v);
    for (const fx of [a!, b!]) {
      await waitFor('every hostile value counted', async () => (await metric(fx, 'kitnet_cluster_shared_ignored_total')) >= (fx === b ? ignoredBefore : 0) + Object.keys(hostile).length || undefined, 60_000);
      const status = await fx.api.call<Status>('GET', '/v1/status');
      const shown = status.warnings.filter((w) => w.key === 'cluster-policy-ignored' || w.key === 'cluster-namespace-ignored').map((w) => w.message).join('\n');
      for (const k of Object.keys(hostile)) assert.ok(shown.includes(k), `status names ${k}:\n${shown}`);
      assert.match(shown, /mismatch is ignored: the document is CiliumNetworkPolicy csp\/other-name, not what the key names/);
      assert.match(shown, /huge is ignored: value is larger than/);
      const list = await fx.api.call<PolicySummary[]>('GET', '/v1/policies');
      assert.deepEqual(list.map((p) => p.name), ['keep'], 'none of the hostile values applied');
      assert.equal(JSON.stringify(list[0]!.document), keepDoc, 'keep holds its last valid version');
    }
    await reaches(probers.find((p) => p.netns === ns.wx)!, wl.wb!, [true, false], 'B still enforces keep');

    // A valid value again clears the warning; deleting the hostile keys clears theirs.
    await b!.api.call('PUT', '/v1/policies', allowAtoB('keep'));
    await raw!.delete().prefix(`${PREFIX}/`).exec();
    for (const k of Object.keys(hostile).filter((k) => k.startsWith('kitnet/state/namespaces/'))) await raw!.delete().key(k).exec();
    for (const fx of [a!, b!]) {
      await waitFor('no warnings left', async () => (await fx.api.call<Status>('GET', '/v1/status')).warnings.length === 0 || undefined, 30_000);
      await waitFor('no policies left', async () => (await names(fx)).length === 0 || undefined, 30_000);
    }
  });

  test('an agent restarted after a policy was deleted meanwhile drops it, and takes one added meanwhile', async () => {
    await a!.api.call('PUT', '/v1/policies', [allowAtoB('old'), allowAtoB('stays')]);
    await waitFor('both on B', async () => ((await has(b!, 'old')) && (await has(b!, 'stays'))) || undefined, 30_000);
    await b!.stop();
    await a!.api.call('DELETE', `/v1/policies/cnp/${NS}/old`);
    await a!.api.call('PUT', '/v1/policies', allowAtoB('fresh'));
    await b!.start();
    assert.deepEqual(await names(b!), [`CiliumNetworkPolicy/${NS}/fresh`, `CiliumNetworkPolicy/${NS}/stays`], 'B\'s start listed etcd over its cache');
    const p = await b!.api.call<WorkloadPolicy>('GET', `/v1/workloads/${NS}/wb/policy`);
    assert.ok(!p.text.includes(`${NS}/old `), `nothing compiled from the deleted policy:\n${p.text}`);
    assert.match(p.text, new RegExp(`${NS}/fresh `));
    await a!.api.call('DELETE', `/v1/policies/cnp/${NS}/fresh`);
  });

  test('etcd down: reads answer from the local copy, writes are 503 and change nothing, the datapath enforces; etcd back: resync', async () => {
    // `stays` (app=a -> app=b on 80) is in force on both hosts.
    await waitFor('stays alone on B', async () => (await names(b!)).join() === `CiliumNetworkPolicy/${NS}/stays` || undefined, 30_000);
    const fromX = probers.find((p) => p.netns === ns.wx)!;
    const listsBefore = b!.agent.shared!.policies.follower.lists;
    await etcd!.down();
    try {
      for (const fx of [a!, b!]) assert.deepEqual(await names(fx), [`CiliumNetworkPolicy/${NS}/stays`], 'GET answers from the local copy');
      const put = await failure(a!.api.call('PUT', '/v1/policies', allowAtoB('during-outage')));
      assert.equal(put.statusCode, 503, put.message);
      assert.equal(put.code, 'AGENT_ERR_CLUSTER_UNAVAILABLE');
      assert.match(put.message, /etcd did not take the change .*nothing was changed on any host/);
      const del = await failure(b!.api.call('DELETE', `/v1/policies/cnp/${NS}/stays`));
      assert.equal(del.statusCode, 503, del.message);
      const label = await failure(b!.api.call('PUT', `/v1/namespaces/${NS2}`, { labels: { team: 'red' } }));
      assert.equal(label.statusCode, 503, label.message);
      for (const fx of [a!, b!]) assert.deepEqual(await names(fx), [`CiliumNetworkPolicy/${NS}/stays`], 'the refused writes left nothing behind');
      await reaches(fromX, wl.wb!, [true, false], 'B\'s datapath keeps enforcing');
    } finally {
      await etcd!.up();
    }
    assert.equal(await raw!.get(`${PREFIX}/CiliumNetworkPolicy/${NS}/during-outage`).string(), null, 'nothing reached etcd');
    assert.equal(await raw!.get(`kitnet/state/namespaces/v1/${NS2}`).string(), null);
    await waitFor('B to list again after the outage', async () => b!.agent.shared!.policies.follower.lists > listsBefore || undefined, 60_000);
    // A change written straight into etcd (as by another host) right after the outage reaches both.
    await raw!.put(`${PREFIX}/CiliumNetworkPolicy/${NS}/after-outage`).value(JSON.stringify(allowAtoB('after-outage')));
    for (const fx of [a!, b!]) await waitFor('the post-outage policy', async () => (await has(fx, 'after-outage')) || undefined, 60_000);
    await a!.api.call('PUT', '/v1/policies', allowAtoB('written-after'));
    await waitFor('a write through A after the outage on B', async () => (await has(b!, 'written-after')) || undefined, 60_000);
  });

  test('a policy that does not fit one host\'s maps applies where it fits and is shown as not applied there; the others stay', async () => {
    // B's ipcache fills with 40,000 addresses of A's CIDR (above its workloads') another writer says
    // are A's (A skips them as its own): B has less room for CIDR identities than A.
    const aNet = (await a!.api.call<{ ipam: { ipv4Pool: string } }>('GET', '/v1/status')).ipam.ipv4Pool.split('.').slice(0, 2).join('.');
    const forged = Array.from({ length: 40_000 }, (_, i) => `${aNet}.${20 + (i >> 8)}.${i & 255}`);
    for (let i = 0; i < forged.length; i += 128) {
      const value = (ip: string) => JSON.stringify({ IP: ip, Mask: null, HostIP: '192.0.2.226', ID: wl.wb!.identity, Key: 0, Metadata: '', K8sNamespace: NS, K8sPodName: 'filler' });
      await raw!.kv.txn({ success: forged.slice(i, i + 128).map((ip) => ({ request_put: { key: Buffer.from(`cilium/state/ip/v1/default/${ip}`), value: Buffer.from(value(ip)) } })) });
    }
    try {
      await waitFor('the filler in B\'s ipcache', async () => b!.agent.remote!.ipcache.size() >= forged.length || undefined, 120_000);
      const cidrs = Array.from({ length: 30_000 }, (_, i) => `10.150.${i >> 8}.${i & 255}/32`);
      const wide = cnp('wide', { endpointSelector: { matchLabels: { app: 'a' } }, egress: [{ toCIDR: cidrs }] });
      await a!.api.call('PUT', '/v1/policies', wide);
      assert.ok(await has(a!, 'wide'), 'A has room: applied there');
      const warning = async () => (await b!.api.call<Status>('GET', '/v1/status')).warnings.find((w) => w.key === 'cluster-policy-not-applied');
      const shown = await waitFor('B to show the policy as not applied', warning, 120_000);
      assert.match(shown.message, new RegExp(`CiliumNetworkPolicy/${NS}/wide is not applied on this host: .*ipcache max_entries`));
      assert.equal(await metric(b!, 'kitnet_cluster_shared_not_applied'), 1);
      assert.equal(await has(b!, 'wide'), false, 'not in B\'s list (which shows what B enforces)');
      assert.ok(await has(b!, 'stays'), 'B keeps the cluster\'s other policies');
      const p = await b!.api.call<WorkloadPolicy>('GET', `/v1/workloads/${NS}/wx/policy`);
      assert.equal(p.egressEnforced, false, 'nothing of it half-applied on B');
      await reaches(probers.find((x) => x.netns === ns.wx)!, wl.wb!, [true, false], 'B still enforces the others');
      await a!.api.call('DELETE', `/v1/policies/cnp/${NS}/wide`);
      await waitFor('the warning gone on B', async () => !(await warning()) || undefined, 60_000);
    } finally {
      for (let third = 20; third <= 20 + ((forged.length - 1) >> 8); third++) await raw!.delete().prefix(`cilium/state/ip/v1/default/${aNet}.${third}.`).exec();
    }
  });
});
