import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pinRootLockPath, stateDirLockPath } from '../../agent/instance-lock.js';
import { agentProcessRun } from '../helpers/agent-process.js';
import { AgentFixture } from '../helpers/fixture.js';

/**
 * One agent per host (issue #12, item 8). A second agent on the same state dir and pin root, with the
 * same socket or another one, is refused before it touches anything: the first agent's pinned links
 * keep its programs (program ids read from the kernel before and after), its store stays byte for
 * byte, and the refusal names the running agent's pid and the lock file.
 */
describe('one agent per state dir and pin root (root)', { timeout: 300_000 }, () => {
  const fx = new AgentFixture({ tag: 'lock', ipv4Pool: '10.233.0.0/24', ipv6Pool: 'fd00:233::/64', namespaces: ['lock'] });
  const stateDir = join(fx.dir, 'state');
  let ifname = '';

  /** Program id per pinned link of the workload's device, as the kernel reports them. */
  const linkProgs = () => {
    const info = fx.agent.kernel.datapath.linkInfo(ifname);
    return Object.fromEntries(Object.entries(info).map(([role, i]) => [role, { link: i!.id, prog: i!.progId }]));
  };
  /** The store's files, hashed: a second agent that opened it would show (WAL, schema pragmas, restore writes). */
  const storeDigest = () =>
    ['kitnet.db', 'kitnet.db-wal']
      .map((f) => join(stateDir, f))
      .filter((p) => existsSync(p))
      .map((p) => `${p}:${createHash('sha256').update(readFileSync(p)).digest('hex')}`)
      .join(' ');
  const configFor = (name: string, keys: { stateDir: string; bpfPinRoot: string; socket: string }) => {
    const file = join(fx.dir, `${name}.yaml`);
    writeFileSync(
      file,
      [
        `stateDir: ${keys.stateDir}`,
        `bpfPinRoot: ${keys.bpfPinRoot}`,
        'logLevel: info',
        `api: { socket: ${keys.socket} }`,
        "ipam: { ipv4Pool: '10.233.0.0/24', ipv6Pool: 'fd00:233::/64' }",
        `datapath: { mode: ${String(fx.overrides.datapath?.mode ?? 'auto')} }`,
        '',
      ].join('\n'),
    );
    return file;
  };

  after(() => fx.cleanup());
  before(async () => {
    await fx.start();
    const ns = await fx.netns('a');
    const w = await fx.api.call<{ interfaces: { host: { name: string } } }>('POST', '/v1/workloads', { name: 'a', namespace: 'lock', labels: { app: 'a' }, netns: `/var/run/netns/${ns}` });
    ifname = w.interfaces.host.name;
    assert.ok(Object.keys(linkProgs()).length > 0, 'the workload has pinned links');
  });

  const cases = [
    { name: 'same socket', keys: () => ({ stateDir, bpfPinRoot: fx.pinRoot, socket: fx.socket }), lock: () => stateDirLockPath(stateDir), ownSocket: false },
    { name: 'another socket', keys: () => ({ stateDir, bpfPinRoot: fx.pinRoot, socket: join(fx.dir, 'other.sock') }), lock: () => stateDirLockPath(stateDir), ownSocket: true },
    {
      name: 'another state dir and socket, the same pin root',
      keys: () => ({ stateDir: join(fx.dir, 'state2'), bpfPinRoot: fx.pinRoot, socket: join(fx.dir, 'other2.sock') }),
      lock: () => pinRootLockPath(fx.pinRoot),
      ownSocket: true,
    },
  ];
  for (const c of cases) {
    test(`a second agent is refused (${c.name}) and touches nothing`, async () => {
      const progsBefore = linkProgs();
      const storeBefore = storeDigest();
      const keys = c.keys();
      const outcome = await agentProcessRun(configFor(c.name.replace(/\W+/g, '-'), keys), c.ownSocket ? keys.socket : undefined);
      assert.ok(outcome.exited, `the second agent started and served on ${keys.socket}; output:\n${outcome.output.slice(-2000)}`);
      assert.notEqual(outcome.code, 0, `exit status; output:\n${outcome.output.slice(-2000)}`);
      assert.deepEqual(linkProgs(), progsBefore, "the first agent's pinned links still run its programs");
      assert.equal(storeDigest(), storeBefore, "the first agent's store is untouched");
      assert.match(outcome.output, new RegExp(`another kitnet agent \\(pid ${process.pid}\\) holds ${c.lock().replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
      if (c.ownSocket) assert.equal(existsSync(keys.socket), false, 'the refused agent made no socket');
      if (keys.stateDir !== stateDir) assert.equal(existsSync(join(keys.stateDir, 'kitnet.db')), false, 'the refused agent made no store');
      // The first agent still serves.
      assert.equal((await fx.api.call<Array<{ name: string }>>('GET', '/v1/workloads')).length, 1);
    });
  }
});
