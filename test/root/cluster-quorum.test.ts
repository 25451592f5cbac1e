import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import type { ApiError } from '../../common/api-client.js';
import type { PolicySummary, TraceResponse } from '../../common/schemas/policy.js';
import type { Workload } from '../../common/schemas/workload.js';
import { ClusterHosts, type ClusterHost } from '../helpers/cluster-hosts.js';
import { Prober } from '../helpers/prober-client.js';
import { waitFor } from '../helpers/sys.js';

const NS = 'qu';
const CLUSTER = 'kitqu';
const POLICIES = 'kitnet/state/policies/v1';

const allowFeToBe = (name: string) => ({
  apiVersion: 'cilium.io/v2',
  kind: 'CiliumNetworkPolicy',
  metadata: { name, namespace: NS },
  spec: { endpointSelector: { matchLabels: { app: 'be' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'fe' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] },
});

/**
 * #14 item 8 on a 3-member etcd cluster: two kitnet hosts (agents in their own network namespaces)
 * given all three members' endpoints. One member lost (quorum kept) changes nothing users see; two
 * lost (no quorum): the datapath keeps forwarding and enforcing across hosts, reads answer from the
 * local copies, writes are 503 AGENT_ERR_CLUSTER_UNAVAILABLE; quorum back: writes work and a workload
 * registered on host 1 reaches host 2's ipcache.
 */
describe('cluster mode on a 3-member etcd: one member lost, quorum lost and regained (root)', { timeout: 420_000 }, () => {
  const cluster = new ClusterHosts({ tag: 'qu', hosts: 2, etcdMembers: 3, cluster: { name: CLUSTER, id: 21, leaseTTLSeconds: 10 }, ipv4Pool: '10.243.0.0/16', ipv6Pool: 'fd00:243::/64' });
  let h1: ClusterHost;
  let h2: ClusterHost;
  let raw: Etcd3 | undefined;
  const probers: Record<string, Prober> = {};
  const w: Record<string, Workload> = {};
  const ns: Record<string, string> = {};

  const register = async (h: ClusterHost, name: string, labels: Record<string, string>) => {
    ns[name] ??= await cluster.workloadNetns(name);
    return h.api.call<Workload>('POST', '/v1/workloads', { name, namespace: NS, labels, netns: `/var/run/netns/${ns[name]}` });
  };
  const failure = (p: Promise<unknown>) => p.then(() => assert.fail('the call succeeded'), (e: ApiError) => e);
  const policyNames = async (h: ClusterHost) => (await h.api.call<PolicySummary[]>('GET', '/v1/policies')).map((p) => p.name).sort();
  /** The identity h's datapath gives packets from `ip` (its ipcache), traced to a workload of h. */
  const srcIdentity = async (h: ClusterHost, ip: string) => {
    const to = { workload: `${NS}/${h === h1 ? 'fe' : 'be'}` };
    return ((await h.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { ip }, to, protocol: 'TCP', port: 80 })).result as { srcIdentity: number }).srcIdentity;
  };
  /** Probes be:80 and be:81 (IPv4 and IPv6) from a prober until the outcome is `want` for both families. */
  const reaches = (from: Prober, want: [boolean, boolean], what: string) =>
    waitFor(what, async () => {
      const be = w.be!;
      const got = await from.probe([be.ipv4, be.ipv6].flatMap((addr) => [80, 81].map((port) => ({ addr, port, protocol: 'TCP' as const }))), 400);
      return got.join() === [...want, ...want].join() || undefined;
    }, 60_000);
  const prober = async (name: string) => {
    const p = new Prober(ns[name]!, [80, 81]);
    probers[name] = p;
    await p.ready;
    return p;
  };

  before(async () => {
    await cluster.setup();
    [h1, h2] = cluster.hosts as [ClusterHost, ClusterHost];
    await Promise.all([h1.start(), h2.start()]);
    raw = new Etcd3({ hosts: cluster.etcdCluster!.endpoints });
    w.fe = await register(h1, 'fe', { app: 'fe' });
    w.other = await register(h1, 'other', { app: 'other' });
    w.be = await register(h2, 'be', { app: 'be' });
    await prober('be');
    await Promise.all([prober('fe'), prober('other')]);
    await h1.api.call('PUT', '/v1/policies', allowFeToBe('fe-to-be'));
    await reaches(probers.fe!, [true, false], 'fe -> be:80 only, by the policy applied on h1');
    await reaches(probers.other!, [false, false], 'other -> be denied');
  });
  after(async () => {
    for (const p of Object.values(probers)) p.close();
    raw?.close();
    await cluster.cleanup();
  });

  test('one member of three lost: registrations, policy changes and their propagation work as before', async () => {
    const etcd = cluster.etcdCluster!;
    // Each member in turn, so whichever one an agent's client talks to is lost once.
    for (const member of [0, 1, 2]) {
      await etcd.down(member);
      try {
        const name = `one${member}`;
        w[name] = await register(h1, name, { app: 'fe', gen: name });
        await waitFor(`${name}'s identity in h2's ipcache with member ${member} down`, async () => (await srcIdentity(h2, w[name]!.ipv4)) === w[name]!.identity || undefined, 30_000);
        await h2.api.call('PUT', '/v1/policies', allowFeToBe(`during-${member}`));
        await waitFor(`policy during-${member} on h1`, async () => (await policyNames(h1)).includes(`during-${member}`) || undefined, 30_000);
        await h1.api.call('DELETE', `/v1/policies/cnp/${NS}/during-${member}`);
        await h1.api.call('DELETE', `/v1/workloads/${NS}/${name}`);
        delete w[name];
      } finally {
        await etcd.up(member);
      }
    }
    await waitFor('the during-* policies gone from h2', async () => (await policyNames(h2)).join() === 'fe-to-be' || undefined, 30_000);
  });

  test('quorum lost: forwarding and enforcement go on, reads answer, writes are 503; quorum back: writes work and state resyncs', async () => {
    const etcd = cluster.etcdCluster!;
    const beIdentityOnH1 = await srcIdentity(h1, w.be!.ipv4);
    await etcd.down(1);
    await etcd.down(2);
    try {
      await reaches(probers.fe!, [true, false], 'fe -> be:80 still allowed, 81 still denied, across hosts');
      await reaches(probers.other!, [false, false], 'other -> be still denied');
      for (const h of [h1, h2]) assert.deepEqual(await policyNames(h), ['fe-to-be'], `${h.name} lists policies from its local copy`);
      assert.equal((await h1.api.call<Workload>('GET', `/v1/workloads/${NS}/fe`)).identity, w.fe!.identity);
      assert.equal(await srcIdentity(h1, w.be!.ipv4), beIdentityOnH1, 'h1 still knows be by its identity');

      const reg = await failure(register(h1, 'late', { app: 'fe', gen: 'late' }));
      assert.equal(reg.statusCode, 503, reg.message);
      assert.equal(reg.code, 'AGENT_ERR_CLUSTER_UNAVAILABLE', reg.message);
      assert.match(reg.message, /etcd did not answer \(unreachable, or without quorum\).*nothing was changed; retry when etcd is back/);
      await assert.rejects(h1.api.call('GET', `/v1/workloads/${NS}/late`), /404|not registered/, 'the refused registration left nothing');
      // Labels this host already holds a number for need nothing from etcd: the workload works here at
      // once, and its addresses reach the cluster's ipcache once etcd is back (below).
      w.known = await register(h1, 'known', { app: 'fe' });
      assert.equal(w.known.identity, w.fe!.identity);
      const put = await failure(h2.api.call('PUT', '/v1/policies', allowFeToBe('during-outage')));
      assert.equal(put.statusCode, 503, put.message);
      assert.equal(put.code, 'AGENT_ERR_CLUSTER_UNAVAILABLE', put.message);
      assert.match(put.message, /etcd did not take the change .*nothing was changed on any host/);
      for (const h of [h1, h2]) assert.deepEqual(await policyNames(h), ['fe-to-be'], 'the refused write left nothing behind');
      await reaches(probers.fe!, [true, false], 'fe -> be:80 after the refused writes');
    } finally {
      await etcd.upAll();
    }
    assert.equal(await raw!.get(`${POLICIES}/CiliumNetworkPolicy/${NS}/during-outage`).string(), null, 'nothing of the refused policy reached etcd');

    // Writes work again (the agents' clients reconnect on their own); what is written reaches the other host.
    w.late = await waitFor('a registration on h1 once quorum is back', () => register(h1, 'late', { app: 'fe', gen: 'late' }).catch(() => undefined), 60_000);
    for (const [h, x] of [[h1, 'be'], [h2, 'fe'], [h2, 'known']] as const) {
      await waitFor(`${x}'s entry in ${h.name}'s ipcache after the outage`, async () => (await srcIdentity(h, w[x]!.ipv4)) === w[x]!.identity || undefined, 60_000);
    }
    await waitFor('late\'s identity in h2\'s ipcache', async () => (await srcIdentity(h2, w.late!.ipv4)) === w.late!.identity || undefined, 60_000);
    const lateProber = await prober('late');
    await reaches(lateProber, [true, false], 'late -> be:80 allowed on h2 by its labels, 81 denied');
    await reaches(await prober('known'), [true, false], 'known (registered during the outage) -> be:80 allowed on h2, 81 denied');
    await h2.api.call('PUT', '/v1/policies', allowFeToBe('after-outage'));
    await waitFor('the post-outage policy on h1', async () => (await policyNames(h1)).includes('after-outage') || undefined, 60_000);
  });
});
