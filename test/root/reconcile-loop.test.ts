import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { promValue } from '../helpers/prom.js';
import { ping, routes, run, waitFor } from '../helpers/sys.js';

/**
 * The reconcile loop against the real kernel: a failure after registration is retried with backoff
 * until it converges, and drift that no event announces is found by the periodic resync, all without
 * a restart.
 */
describe('reconcile loop: retries and resync (root)', { timeout: 120_000 }, () => {
  const fx = new AgentFixture({
    tag: 'rcl',
    ipv4Pool: '10.219.0.0/16',
    ipv6Pool: 'fd00:219::/64',
    namespaces: ['rcl'],
    // retries at most 2 s apart and a resync every 2 s: the test waits on conditions, not on these
    overrides: { reconcile: { resyncSeconds: 2, retryMaxSeconds: 2 } },
  });
  const api = fx.api;
  let nsA: string;
  let nsB: string;
  let nsC: string;
  let peer: Workload;
  const get = (name: string) => api.call<Workload>('GET', `/v1/workloads/rcl/${name}`);
  const metric = async (name: string, labels: Record<string, string> = {}) => promValue(await fx.agent.metrics.text(), name, labels);

  after(() => fx.cleanup());
  before(async () => {
    nsA = await fx.netns('a');
    nsB = await fx.netns('b');
    nsC = await fx.netns('c');
    await fx.start();
    peer = await api.call<Workload>('POST', '/v1/workloads', { name: 'peer', namespace: 'rcl', netns: `/var/run/netns/${nsB}` });
  });

  test('a device whose interface name is taken by a foreign link fails, is retried, and converges once the name is free', async () => {
    const w = await api.call<Workload>('POST', '/v1/workloads', { name: 'taken', namespace: 'rcl', netns: `/var/run/netns/${nsA}` });
    assert.equal(w.state, 'ready');
    assert.equal(w.retries, 0);
    assert.equal(w.nextRetryAt, null);
    assert.ok(await ping(nsA, peer.ipv4));
    const errorsBefore = await metric('kitnet_reconcile_total', { result: 'error' });
    const retriesBefore = await metric('kitnet_reconcile_retries_total');

    // Someone puts a device of their own under the workload's interface name, then the pair goes:
    // the agent hears of the removal and makes the pair again, which the name in use refuses. The swap
    // is one `ip -batch`, done within a millisecond: the agent hears of link changes and reconciles
    // while they happen, and between separate commands it once removed the renamed pair itself (the
    // delete then found no kn-old, a CI failure) and could take eth0 back before the foreign device had it.
    await run('ip', ['-n', nsA, 'link', 'add', 'foreign0', 'type', 'veth', 'peer', 'name', 'foreign1']);
    await run('ip', ['-n', nsA, '-batch', '-'], { input: ['link set eth0 down', 'link set eth0 name kn-old', 'link set foreign0 name eth0', 'link del kn-old', ''].join('\n') });
    const failed = await waitFor('the workload to fail and wait for a retry', async () => {
      const cur = await get('taken');
      return cur.state === 'error' && cur.retries >= 2 && cur.nextRetryAt !== null ? cur : undefined;
    }, 30_000);
    assert.ok(failed.error, 'the last error is shown');
    assert.ok(Date.parse(failed.nextRetryAt!) > Date.parse(w.createdAt));
    assert.ok((await metric('kitnet_reconcile_total', { result: 'error' })) >= errorsBefore + 2);
    assert.ok((await metric('kitnet_reconcile_retries_total')) >= retriesBefore + 2);

    // The name is freed inside the namespace: no event reaches the agent, only its retries see it.
    await run('ip', ['-n', nsA, 'link', 'del', 'eth0']); // and its peer foreign1
    const healed = await waitFor('the workload to converge', async () => {
      const cur = await get('taken');
      return cur.state === 'ready' ? cur : undefined;
    }, 30_000);
    assert.equal(healed.error, null);
    assert.equal(healed.retries, 0);
    assert.equal(healed.nextRetryAt, null);
    assert.equal(healed.ipv4, w.ipv4);
    assert.notEqual(healed.interfaces.host.ifindex, w.interfaces.host.ifindex, 'a new pair');
    assert.ok(await ping(nsA, peer.ipv4), 'IPv4 works again');
    assert.ok(await ping(nsA, peer.ipv6), 'IPv6 works again');
    const entries = fx.agent.kernel.datapath.endpointList().filter(([, info]) => info.endpointId === w.endpointId);
    assert.deepEqual(entries.map(([ifindex]) => ifindex), [healed.interfaces.host.ifindex], 'one endpoint entry, under the new ifindex');
    await api.call('DELETE', '/v1/workloads/rcl/taken');
  });

  test('host routes deleted behind the agent (no event) come back with the periodic resync', async () => {
    const w = await api.call<Workload>('POST', '/v1/workloads', { name: 'drift', namespace: 'rcl', netns: `/var/run/netns/${nsC}` });
    const dev = w.interfaces.host.name;
    await run('ip', ['route', 'del', `${w.ipv4}/32`, 'dev', dev]);
    // `ip route del` fails unless the route was there; no check that it is gone: a resync (every 2 s) or
    // the reconcile queued by the registration's store change may already have put it back
    await run('ip', ['-6', 'route', 'del', `${w.ipv6}/128`, 'dev', dev]);
    await waitFor('the host routes to be back', async () =>
      (await routes(4)).some((r) => r.dst === w.ipv4 && r.dev === dev) && (await routes(6)).some((r) => r.dst === w.ipv6 && r.dev === dev), 30_000);
    const cur = await get('drift');
    assert.equal(cur.state, 'ready');
    assert.equal(cur.interfaces.host.ifindex, w.interfaces.host.ifindex, 'repaired in place');
    assert.ok(await ping(nsC, peer.ipv4), 'IPv4 works again');
    assert.ok(await ping(nsC, peer.ipv6), 'IPv6 works again');
    assert.ok((await metric('kitnet_reconcile_total', { result: 'changed' })) >= 1);
    assert.ok((await metric('kitnet_reconcile_total', { result: 'unchanged' })) >= 1, 'resyncs that find nothing to do are counted too');
    assert.equal(typeof (await metric('kitnet_reconcile_queue_depth')), 'number');
    await api.call('DELETE', '/v1/workloads/rcl/drift');
  });
});
