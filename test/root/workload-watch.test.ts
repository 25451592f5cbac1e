import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { datapathUnpinAll } from '../../bpf/index.js';
import { daemonRun } from '../../agent/daemon.js';
import { ApiClient, type ApiError } from '../../api/cli/client.js';
import type { Identity } from '../../api/schemas/identity.js';
import type { Workload } from '../../api/schemas/workload.js';
import { links, netnsAdd, netnsDel, ping, run, uniq, waitFor } from '../helpers/sys.js';

/** Workloads whose namespace or device disappears behind the agent's back. */
describe('vanishing namespaces and devices (root)', { timeout: 120_000 }, () => {
  const id = uniq();
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-watch-'));
  const pinRoot = `/sys/fs/bpf/kitnet-watch-${id}`;
  const socket = join(dir, 'kitnet.sock');
  const nsA = `kitnet-w-a-${id}`;
  const nsB = `kitnet-w-b-${id}`;
  const api = new ApiClient({ socket });
  let agent: Awaited<ReturnType<typeof daemonRun>> | undefined;

  const ours = async () => (await links()).filter((l) => l.ifalias?.startsWith('kitnet:watch/'));

  before(async () => {
    await netnsAdd(nsA);
    await netnsAdd(nsB);
    agent = await daemonRun({
      overrides: {
        stateDir: join(dir, 'state'),
        bpfPinRoot: pinRoot,
        logLevel: 'error',
        api: { socket },
        ipam: { ipv4Pool: '10.204.0.0/16', ipv6Pool: 'fd00:204::/64' },
        datapath: { mode: 'veth' },
      },
    });
  });

  after(async () => {
    await agent?.stop().catch(() => undefined);
    for (const l of await ours()) await run('ip', ['link', 'del', l.ifname]).catch(() => undefined);
    await netnsDel(nsA);
    await netnsDel(nsB);
    await datapathUnpinAll(pinRoot).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
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
    const endpoints = agent!.agent.kernel.datapath.endpointList();
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
    const endpoints = agent!.agent.kernel.datapath.endpointList();
    assert.equal(endpoints.filter(([, info]) => info.endpointId === w.endpointId).length, 1, 'one endpoint entry, under the new ifindex');
    for (const n of ['again', 'peer']) await api.call('DELETE', `/v1/workloads/watch/${n}`);
  });
});
