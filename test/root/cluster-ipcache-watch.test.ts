import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Etcd3 } from 'etcd3';
import type { TraceResponse, WorkloadPolicy } from '../../common/schemas/policy.js';
import type { Workload } from '../../common/schemas/workload.js';
import { etcdStart, type EtcdServer } from '../helpers/etcd.js';
import { AgentFixture } from '../helpers/fixture.js';
import { waitFor } from '../helpers/sys.js';

const NS = 'cw';

/**
 * #14: two agents in cluster mode on one etcd (own pools, node IPs, pin roots, sockets) each follow the
 * other's workload addresses into their BPF ipcache, and a policy on host A selects host B's workload
 * by its labels. Traffic between two agents on one machine does not route, so the test reads what A
 * enforces: its ipcache, its compiled policy and its trace.
 */
describe('cluster mode: other nodes\' workloads in the ipcache and in policy (root)', { timeout: 240_000 }, () => {
  let etcd: EtcdServer | undefined;
  let a: AgentFixture | undefined;
  let b: AgentFixture | undefined;
  const ns: Record<string, string> = {};
  // The cluster's pools, the same on every node (each claims its CIDRs from them).
  const node = (tag: string, octet: number) =>
    new AgentFixture({
      tag,
      ipv4Pool: '10.244.0.0/16',
      ipv6Pool: 'fd00:244::/64',
      namespaces: [NS],
      // One netns: no routes between the two (test/root/cluster-hosts.test.ts has hosts that route).
      overrides: { cluster: { name: 'kitwatch', id: 11, nodeIP: `192.0.2.${octet}`, etcd: { endpoints: [etcd!.endpoint] }, autoDirectNodeRoutes: false } },
    });
  const register = (fx: AgentFixture, name: string, labels: Record<string, string>) =>
    fx.api.call<Workload>('POST', '/v1/workloads', { name, namespace: NS, labels, netns: `/var/run/netns/${ns[name]}` });
  const ipcacheOf = (fx: AgentFixture) => new Map(fx.agent.kernel.datapath.ipcacheList());

  before(async () => {
    etcd = await etcdStart();
    a = node('cwa', 244);
    b = node('cwb', 245);
    ns.wa = await a.netns('wa');
    for (const n of ['wb', 'wc']) ns[n] = await b.netns(n);
    await a.start();
    await b.start();
  });
  after(async () => {
    await a?.cleanup();
    await b?.cleanup();
    await etcd?.stop();
  });

  test('a policy on A allowing app=b admits B\'s workload by its labels; others stay denied; removal withdraws both', async () => {
    const wa = await register(a!, 'wa', { app: 'a' });
    await a!.api.call('PUT', '/v1/policies', {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'allow-b', namespace: NS },
      spec: { endpointSelector: { matchLabels: { app: 'a' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'b' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] }] },
    });
    const wb = await register(b!, 'wb', { app: 'b' });
    const wc = await register(b!, 'wc', { app: 'c' });
    assert.notEqual(wb.identity, wc.identity);

    // A maps B's addresses to B's identities and to B (host field not 0, the local host's).
    await waitFor('B\'s workloads in A\'s BPF ipcache', async () => {
      const m = ipcacheOf(a!);
      return [wb, wc].every((w) => m.get(`${w.ipv4}/32`)?.identity === w.identity && m.get(`${w.ipv6}/128`)?.identity === w.identity) || undefined;
    }, 30_000);
    const remote = ipcacheOf(a!).get(`${wb.ipv4}/32`)!;
    assert.notEqual(remote.hostId, 0);
    assert.deepEqual(ipcacheOf(a!).get(`${wa.ipv4}/32`), { identity: wa.identity, hostId: 0 }, 'A\'s own workload stays local');
    await waitFor('A in B\'s BPF ipcache', async () => ipcacheOf(b!).get(`${wa.ipv6}/128`)?.identity === wa.identity || undefined, 30_000);
    assert.equal(ipcacheOf(b!).get(`${wb.ipv4}/32`)?.hostId, 0, 'B\'s own entries are never overwritten by its own published ones');

    // A's compiled policy holds B's identity; its trace names the rule.
    await waitFor('an entry for B\'s identity in A\'s policy', async () => {
      const p = await a!.api.call<WorkloadPolicy>('GET', `/v1/workloads/${NS}/wa/policy`);
      return p.entries.some((e) => e.identity === wb.identity) || undefined;
    }, 30_000);
    const p = await a!.api.call<WorkloadPolicy>('GET', `/v1/workloads/${NS}/wa/policy`);
    assert.ok(!p.entries.some((e) => e.identity === wc.identity), 'app=c is not selected');
    const allowed = await a!.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { ip: wb.ipv4 }, to: { workload: `${NS}/wa` }, protocol: 'TCP', port: 80 });
    assert.equal(allowed.verdict, 'ALLOWED', allowed.text);
    assert.equal((allowed.result as { srcIdentity: number }).srcIdentity, wb.identity);
    assert.deepEqual((allowed.result as { ingress?: { rules: string[] } }).ingress?.rules, [`CiliumNetworkPolicy ${NS}/allow-b ingress[0]`]);
    const denied = await a!.api.call<TraceResponse>('POST', '/v1/policy/trace', { from: { ip: wc.ipv6 }, to: { workload: `${NS}/wa` }, protocol: 'TCP', port: 80 });
    assert.equal(denied.verdict, 'DENIED', denied.text);
    assert.equal((denied.result as { srcIdentity: number }).srcIdentity, wc.identity);

    // A full compile (a policy change) builds the universe again: the remote identity is still in it.
    await a!.api.call('PUT', '/v1/policies', {
      apiVersion: 'cilium.io/v2',
      kind: 'CiliumNetworkPolicy',
      metadata: { name: 'unrelated', namespace: NS },
      spec: { endpointSelector: { matchLabels: { app: 'nobody' } }, ingress: [{ fromEndpoints: [{ matchLabels: { app: 'a' } }] }] },
    });
    const rebuilt = await a!.api.call<WorkloadPolicy>('GET', `/v1/workloads/${NS}/wa/policy`);
    assert.ok(rebuilt.entries.some((e) => e.identity === wb.identity), 'B\'s identity survives a full compile');

    // Another writer (HostIP 192.0.2.77, no node) claims an address of A's node CIDR for B's identity:
    // A ignores it (its own CIDR) and so does B (A's CIDR, and HostIP is not A); both count it.
    // An address of the pool no node holds is bound to no node: refused by both too (192.0.2.77 is no node).
    const raw = new Etcd3({ hosts: etcd!.endpoint });
    const value = (ip: string) => `{"IP":"${ip}","Mask":null,"HostIP":"192.0.2.77","ID":${wb.identity},"Key":0,"Metadata":"","K8sNamespace":"${NS}","K8sPodName":"forged"}`;
    try {
      const aCidr = (await a!.api.call<{ ipam: { ipv4Pool: string } }>('GET', '/v1/status')).ipam.ipv4Pool;
      const forged = aCidr.replace(/\.0\/24$/, '.99');
      const unheld = '10.244.200.5';
      const ignored = async (fx: AgentFixture) => (await fx.agent.metrics.registry.getSingleMetric('kitnet_cluster_ipcache_ignored_total')!.get()).values[0]?.value ?? 0;
      const before = [await ignored(a!), await ignored(b!)];
      await raw.put(`cilium/state/ip/v1/default/${forged}`).value(value(forged));
      await raw.put(`cilium/state/ip/v1/default/${unheld}`).value(value(unheld));
      await waitFor('both entries counted as ignored on A and B', async () => ((await ignored(a!)) >= before[0]! + 2 && (await ignored(b!)) >= before[1]! + 2) || undefined, 30_000);
      for (const ip of [forged, unheld]) {
        assert.equal(ipcacheOf(a!).has(`${ip}/32`), false, ip);
        assert.equal(ipcacheOf(b!).has(`${ip}/32`), false, ip);
      }
      await raw.delete().key(`cilium/state/ip/v1/default/${forged}`).exec();
      await raw.delete().key(`cilium/state/ip/v1/default/${unheld}`).exec();
    } finally {
      raw.close();
    }

    // B's workload goes: its entries leave A's ipcache, its identity A's policy.
    await b!.api.call('DELETE', `/v1/workloads/${NS}/wb`);
    await waitFor('B\'s removed workload out of A\'s ipcache', async () => {
      const m = ipcacheOf(a!);
      return (!m.has(`${wb.ipv4}/32`) && !m.has(`${wb.ipv6}/128`)) || undefined;
    }, 30_000);
    await waitFor('its identity out of A\'s policy', async () => {
      const now = await a!.api.call<WorkloadPolicy>('GET', `/v1/workloads/${NS}/wa/policy`);
      return !now.entries.some((e) => e.identity === wb.identity) || undefined;
    }, 30_000);
    assert.equal(ipcacheOf(a!).get(`${wc.ipv4}/32`)?.identity, wc.identity, 'B\'s other workload stays');

    // A restarts while B's other workload goes: the pinned ipcache entry A held for it goes at A's start.
    await a!.stop();
    await b!.api.call('DELETE', `/v1/workloads/${NS}/wc`);
    await a!.start();
    const m = ipcacheOf(a!);
    assert.equal(m.has(`${wc.ipv4}/32`), false, 'an entry deleted while A was down is gone after its start');
    assert.equal(m.has(`${wc.ipv6}/128`), false);
    assert.deepEqual(m.get(`${wa.ipv4}/32`), { identity: wa.identity, hostId: 0 });
  });
});
