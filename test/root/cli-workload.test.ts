import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { run, status } from '../helpers/sys.js';

const execFileP = promisify(execFile);
const BIN = fileURLToPath(new URL('../../../bin/kitnet.js', import.meta.url));

/** `kitnet workload add` for every kind, against a real agent on its unix socket. */
describe('CLI: workload add for kinds netns, vm and tap (root)', { timeout: 120_000 }, () => {
  const fx = new AgentFixture({ tag: 'cli', ipv4Pool: '10.215.0.0/24', ipv6Pool: 'fd00:215::/64', namespaces: ['cli'] });
  const tapDev = `kncli${fx.id}`.slice(0, 15);
  const cli = (...args: string[]) => execFileP(process.execPath, [BIN, '-s', fx.socket, ...args], { timeout: 60_000 });

  after(async () => {
    await fx.cleanup();
    await status('ip', ['link', 'del', tapDev]);
    await status('ip', ['netns', 'del', `kitnet-vm-cli-vm1`]);
  });
  before(async () => {
    await fx.start();
    await run('ip', ['tuntap', 'add', 'dev', tapDev, 'mode', 'tap']);
    await run('ip', ['link', 'set', tapDev, 'up']);
  });

  test('netns, vm and tap register from flags; -o json is the API object', async () => {
    const ns = await fx.netns('n1');
    const netnsW = JSON.parse((await cli('workload', 'add', 'n1', '-n', 'cli', '--netns', `/var/run/netns/${ns}`, '-l', 'app=n', '-o', 'json')).stdout) as Workload;
    assert.equal(netnsW.kind, 'netns');
    assert.equal(netnsW.state, 'ready');

    const vmText = (await cli('workload', 'add', 'vm1', '--kind', 'vm', '-n', 'cli', '-l', 'app=vm', '--mac', '52:54:00:12:34:56')).stdout;
    assert.match(vmText, /workload cli\/vm1 registered/);
    assert.match(vmText, /MAC 52:54:00:12:34:56/);
    assert.match(vmText, /start the VM: ip netns exec kitnet-vm-cli-vm1 qemu-system-x86_64/);

    const tapW = JSON.parse((await cli('workload', 'add', 't1', '--kind', 'tap', '--device', tapDev, '--mac', '52:54:00:aa:bb:cc', '-n', 'cli', '-o', 'json')).stdout) as Workload;
    assert.equal(tapW.kind, 'tap');
    assert.equal(tapW.interfaces.host.name, tapDev);

    const list = JSON.parse((await cli('workload', 'ls', '-o', 'json')).stdout) as Workload[];
    assert.deepEqual(list.map((w) => [w.name, w.kind]).sort(), [['n1', 'netns'], ['t1', 'tap'], ['vm1', 'vm']]);
    await cli('workload', 'rm', 'cli/n1', 'cli/vm1', 'cli/t1');
    assert.deepEqual(JSON.parse((await cli('workload', 'ls', '-o', 'json')).stdout), []);
  });

  test('cluster status on a single host says cluster mode is off', async () => {
    assert.match((await cli('cluster', 'status')).stdout, /^cluster mode off: /);
    assert.equal((JSON.parse((await cli('cluster', 'status', '-o', 'json')).stdout) as { mode: string }).mode, 'off');
  });

  test('a flag that does not fit the kind fails naming the field, and registers nothing', async () => {
    await assert.rejects(cli('workload', 'add', 't2', '--kind', 'tap', '--mac', '52:54:00:aa:bb:cd', '-n', 'cli'), (e: { stderr: string; code: number }) => {
      assert.notEqual(e.code, 0);
      assert.match(e.stderr, /device/);
      return true;
    });
    await assert.rejects(cli('workload', 'add', 'n2', '-n', 'cli', '--mac', '52:54:00:aa:bb:ce', '--netns', '/var/run/netns/x'), (e: { stderr: string }) => /mac/.test(e.stderr));
    await assert.rejects(cli('workload', 'add', 'n3', '--kind', 'pod'), (e: { stderr: string }) => /netns, vm, tap/.test(e.stderr));
    assert.deepEqual(JSON.parse((await cli('workload', 'ls', '-o', 'json')).stdout), []);
  });
});
