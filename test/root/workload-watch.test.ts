import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { ApiError } from '../../common/api-client.js';
import type { Identity } from '../../common/schemas/identity.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { netnsAdd, netnsDel, ping, run, waitFor } from '../helpers/sys.js';

/** Workloads whose namespace or device disappears behind the agent's back. */
describe('vanishing namespaces and devices (root)', { timeout: 120_000 }, () => {
  const fx = new AgentFixture({ tag: 'watch', ipv4Pool: '10.204.0.0/16', ipv6Pool: 'fd00:204::/64', namespaces: ['watch'] });
  const api = fx.api;
  let nsA: string;
  let nsB: string;
  const ours = () => fx.ownLinks();

  after(() => fx.cleanup());
  before(async () => {
    nsA = await fx.netns('a');
    nsB = await fx.netns('b');
    await fx.start();
  });

  test('a workload whose namespace is deleted is removed with everything kitnet made for it', async () => {
    const w = await api.call<Workload>('POST', '/v1/workloads', { name: 'gone', namespace: 'watch', labels: { app: 'gone' }, netns: `/var/run/netns/${nsA}` });
    await netnsDel(nsA);
    await waitFor('the workload to be removed', async () => {
      try {
        await api.call('GET', '/v1/workloads/watch/gone');
        return false;
      } catch (e) {
        return (e as ApiError).statusCode === 404;
      }
    }, 10_000);
    assert.deepEqual((await ours()).map((l) => l.ifname), []);
    const ids = await api.call<Identity[]>('GET', '/v1/identities');
    assert.ok(!ids.some((i) => i.id === w.identity), 'identity released');
    const endpoints = fx.agent.kernel.datapath.endpointList();
    assert.ok(!endpoints.some(([, info]) => info.endpointId === w.endpointId), 'endpoint map entry removed');
  });

  test('a workload device deleted from outside is recreated and works again', async () => {
    const peer = await api.call<Workload>('POST', '/v1/workloads', { name: 'peer', namespace: 'watch', netns: `/var/run/netns/${nsB}` });
    await netnsAdd(nsA);
    const w = await api.call<Workload>('POST', '/v1/workloads', { name: 'again', namespace: 'watch', netns: `/var/run/netns/${nsA}` });
    assert.ok(await ping(nsA, peer.ipv4));
    await run('ip', ['link', 'del', w.interfaces.host.name]);
    const repaired = await waitFor('the device to be recreated', async () => {
      const cur = await api.call<Workload>('GET', '/v1/workloads/watch/again');
      return cur.state === 'ready' && cur.interfaces.host.ifindex !== w.interfaces.host.ifindex ? cur : undefined;
    }, 10_000);
    assert.equal(repaired.ipv4, w.ipv4);
    assert.ok(await ping(nsA, peer.ipv4), 'IPv4 works again');
    assert.ok(await ping(nsA, peer.ipv6), 'IPv6 works again');
    const endpoints = fx.agent.kernel.datapath.endpointList();
    assert.equal(endpoints.filter(([, info]) => info.endpointId === w.endpointId).length, 1, 'one endpoint entry, under the new ifindex');
    for (const n of ['again', 'peer']) await api.call('DELETE', `/v1/workloads/watch/${n}`);
  });
});
