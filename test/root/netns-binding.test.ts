// A workload is bound to the network namespace it was registered into, not to the path that named it.
// A path may later name another namespace: a /proc/PID/ns/net path once the PID is reused by another
// process (after the workload's process died, across an agent restart or a reboot), a bind mount
// replaced. Before, the agent's restore re-made the workload's device, addresses and identity in
// whatever namespace the path named then. Here a bind mount stands in for the reused PID: the same
// path, another namespace, while the agent is down.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { ApiError } from '../../common/api-client.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { links, run, status, waitFor } from '../helpers/sys.js';

describe('a workload stays with the namespace it was registered into (root)', { timeout: 180_000 }, () => {
  const fx = new AgentFixture({ tag: 'nsbind', ipv4Pool: '10.233.0.0/16', ipv6Pool: 'fd00:233::/64', namespaces: ['bind'] });
  const path = join(fx.dir, 'web-netns');

  /** Unmounts every bind mount on `path` (a failed test may leave one). */
  const unmountAll = async () => {
    for (let i = 0; i < 4 && (await status('mountpoint', ['-q', path])) === 0; i++) await status('umount', [path]);
  };
  after(async () => {
    await unmountAll();
    await fx.cleanup();
  });

  test("after a restart, the path naming another namespace: the workload is removed, nothing is made there, the first namespace's device goes", async () => {
    const first = await fx.netns('first');
    const other = await fx.netns('other');
    writeFileSync(path, '');
    await run('mount', ['--bind', `/var/run/netns/${first}`, path]);
    await fx.start();
    const w = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'web', namespace: 'bind', netns: path });
    const inFirst = await links(first);
    assert.ok(inFirst.some((l) => l.ifname === 'eth0'), `the workload's device is in the namespace it was registered into: ${inFirst.map((l) => l.ifname).join(', ')}`);
    assert.equal((await fx.ownLinks()).length, 1);

    await fx.stop();
    await unmountAll();
    await run('mount', ['--bind', `/var/run/netns/${other}`, path]);
    await fx.start();

    await waitFor('the workload removed', async () =>
      fx.api.call('GET', '/v1/workloads/bind/web').then(() => false, (e: ApiError) => e.statusCode === 404), 30_000);
    const inOther = await links(other);
    assert.deepEqual(inOther.map((l) => l.ifname), ['lo'], 'nothing of the workload is made in the namespace the path names now');
    assert.deepEqual((await links(first)).map((l) => l.ifname), ['lo'], "the first namespace's device went with the workload");
    assert.deepEqual(await fx.ownLinks(), [], `no host side of ${w.interfaces.host.name} left`);
  });
});
