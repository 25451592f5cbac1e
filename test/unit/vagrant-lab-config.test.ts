// The Vagrant lab's layout and host configs (vagrant/lab-config.ts): the addresses the Vagrantfile gives
// the VMs are the ones each host's kitnet config announces, the config passes the agent's own loader,
// and a bad environment variable is refused by name.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { configLoad } from '../../agent/config.js';
import { hostConfig, LAB_POOLS, labPlan, LabEnvError } from '../../vagrant/lab-config.js';

const CLI = fileURLToPath(new URL('../../vagrant/lab-config.js', import.meta.url));

test('defaults: etcd and two hosts on 10.77.0.0/24 and fd77::/64', () => {
  const plan = labPlan({});
  assert.deepEqual(plan.cluster, { name: 'kitnet-lab', id: 7 });
  assert.deepEqual(plan.etcd, { name: 'etcd', ipv4: '10.77.0.10', ipv6: 'fd77::10', endpoint: 'http://10.77.0.10:2379' });
  assert.deepEqual(plan.hosts, [
    { name: 'host1', ipv4: '10.77.0.11', ipv6: 'fd77::11' },
    { name: 'host2', ipv4: '10.77.0.12', ipv6: 'fd77::12' },
  ]);
});

test('KITNET_LAB_HOSTS, the networks and the cluster come from the environment', () => {
  const plan = labPlan({ KITNET_LAB_HOSTS: '3', KITNET_LAB_NET: '192.168.50.0/24', KITNET_LAB_NET6: 'fd00:aa:1::/64', KITNET_LAB_CLUSTER: 'lab-b', KITNET_LAB_CLUSTER_ID: '200' });
  assert.deepEqual(plan.hosts.map((h) => [h.name, h.ipv4, h.ipv6]), [
    ['host1', '192.168.50.11', 'fd00:aa:1::11'],
    ['host2', '192.168.50.12', 'fd00:aa:1::12'],
    ['host3', '192.168.50.13', 'fd00:aa:1::13'],
  ]);
  assert.equal(plan.etcd.endpoint, 'http://192.168.50.10:2379');
  assert.deepEqual(plan.cluster, { name: 'lab-b', id: 200 });
  // empty means unset (a Vagrantfile passes ENV through as it is)
  assert.equal(labPlan({ KITNET_LAB_HOSTS: '' }).hosts.length, 2);
});

test('a host config names its own private addresses, the etcd node and the lab pools, and the agent loads it', () => {
  const plan = labPlan({ KITNET_LAB_HOSTS: '2' });
  const text = hostConfig(plan, 'host2');
  const doc = parse(text) as { nodeName: string; ipam: unknown; cluster: Record<string, unknown> };
  assert.equal(doc.nodeName, 'host2');
  assert.deepEqual(doc.ipam, { ipv4Pool: LAB_POOLS.ipv4Pool, ipv6Pool: LAB_POOLS.ipv6Pool });
  assert.equal(doc.cluster.nodeIP, '10.77.0.12');
  assert.equal(doc.cluster.nodeIPv6, 'fd77::12');
  assert.deepEqual(doc.cluster.etcd, { endpoints: ['http://10.77.0.10:2379'] });
  assert.deepEqual(doc.cluster.ipam, { ipv4MaskSize: 24, ipv6MaskSize: 112 });
  // the agent's loader, as `kitnet config check` and the service read the file
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-vagrant-config-'));
  try {
    writeFileSync(join(dir, 'config.yaml'), text);
    const loaded = configLoad(join(dir, 'config.yaml'), {}, {});
    assert.equal(loaded.cluster?.nodeIP, '10.77.0.12');
    assert.equal(loaded.cluster?.name, 'kitnet-lab');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('hostile or mistaken environment values are refused naming the variable', () => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ KITNET_LAB_HOSTS: '0' }, /^KITNET_LAB_HOSTS="0": must be a number of hosts from 1 to 9/],
    [{ KITNET_LAB_HOSTS: '10' }, /^KITNET_LAB_HOSTS="10"/],
    [{ KITNET_LAB_HOSTS: '2; reboot' }, /^KITNET_LAB_HOSTS=/],
    [{ KITNET_LAB_NET: '10.77.0.0/16' }, /^KITNET_LAB_NET="10.77.0.0\/16": must be an IPv4 \/24/],
    [{ KITNET_LAB_NET: '10.300.0.0/24' }, /^KITNET_LAB_NET=.*bytes 0-255/],
    [{ KITNET_LAB_NET6: 'fd77::/48' }, /^KITNET_LAB_NET6=/],
    [{ KITNET_LAB_NET6: 'fd77::1\n::/64' }, /^KITNET_LAB_NET6=/],
    [{ KITNET_LAB_CLUSTER: 'Lab_A' }, /^KITNET_LAB_CLUSTER="Lab_A": must be a cluster name/],
    [{ KITNET_LAB_CLUSTER_ID: '0' }, /^KITNET_LAB_CLUSTER_ID="0": must be a cluster id from 1 to 255/],
    [{ KITNET_LAB_CLUSTER_ID: '256' }, /^KITNET_LAB_CLUSTER_ID=/],
  ];
  for (const [env, message] of cases) {
    assert.throws(() => labPlan(env), (err: Error) => err instanceof LabEnvError && message.test(err.message), JSON.stringify(env));
  }
  assert.throws(() => hostConfig(labPlan({}), 'host3'), /no host "host3" in the lab \(hosts: host1, host2; KITNET_LAB_HOSTS/);
});

test('the command line the Vagrantfile and host.sh call: plan as JSON, config as YAML, exit 2 with the message', () => {
  const run = (args: string[], env: Record<string, string> = {}) => spawnSync(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8' });
  const plan = run(['plan'], { KITNET_LAB_HOSTS: '3' });
  assert.equal(plan.status, 0, plan.stderr);
  assert.equal((JSON.parse(plan.stdout) as { hosts: unknown[] }).hosts.length, 3);
  const config = run(['config', 'host1']);
  assert.equal(config.status, 0, config.stderr);
  assert.match(config.stdout, /nodeIP: 10\.77\.0\.11/);
  const bad = run(['plan'], { KITNET_LAB_HOSTS: 'many' });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^lab-config: KITNET_LAB_HOSTS="many": must be a number of hosts/);
  assert.equal(bad.stdout, '');
  assert.equal(run(['config']).status, 2);
});
