import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, describe, test } from 'node:test';
import { promisify } from 'node:util';
import type { Status } from '../../common/schemas/status.js';
import { KITNET_BIN } from '../helpers/agent-process.js';
import { AgentFixture } from '../helpers/fixture.js';

const execFileP = promisify(execFile);

/**
 * Changing the pools under existing workloads: the workloads keep their addresses, and the agent says
 * so on start (log) and in `kitnet status` (warnings naming the workload, the address and the pool).
 */
describe('a pool changed under existing workloads (root)', { timeout: 180_000 }, () => {
  const fx = new AgentFixture({ tag: 'pool', ipv4Pool: '10.235.0.0/24', ipv6Pool: 'fd00:235::/64', namespaces: ['pool'] });
  after(() => fx.cleanup());

  test('status warns about each address outside the new pools; none while they fit', async () => {
    await fx.start();
    const ns = await fx.netns('a');
    const w = await fx.api.call<{ ipv4: string; ipv6: string }>('POST', '/v1/workloads', { name: 'a', namespace: 'pool', labels: { app: 'a' }, netns: `/var/run/netns/${ns}` });
    assert.deepEqual((await fx.api.call<Status>('GET', '/v1/status')).warnings, []);
    await fx.stop();

    Object.assign(fx.overrides, { ipam: { ipv4Pool: '10.236.0.0/24', ipv6Pool: 'fd00:235::/64' } });
    await fx.start();
    const s = await fx.api.call<Status>('GET', '/v1/status');
    assert.deepEqual(s.warnings, [{ key: 'ipam.ipv4Pool', workload: 'pool/a', message: `workload pool/a has ${w.ipv4}, outside the configured pool 10.236.0.0/24` }]);
    const cli = await execFileP(process.execPath, [KITNET_BIN, '-s', fx.socket, 'status'], { timeout: 60_000 });
    assert.match(cli.stdout, new RegExp(`Warning: +ipam\\.ipv4Pool: workload pool/a has ${w.ipv4.replace(/\./g, '\\.')}, outside`));
    // The workload itself is untouched: same address, still ready.
    const after_ = await fx.api.call<{ ipv4: string; state: string }>('GET', '/v1/workloads/pool/a');
    assert.equal(after_.ipv4, w.ipv4);
    assert.equal(after_.state, 'ready');
  });
});
