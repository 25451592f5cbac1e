import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { reconcilePlan } from '../../agent/reconcile/plan.js';
import { apiCall, testAgentStart, type TestAgent } from '../helpers/agent.js';
import { testMode } from '../helpers/mode.js';
import { netnsAdd, netnsDel, routes, run, status, uniq, waitFor } from '../helpers/sys.js';

interface DLink { ifname: string; ifindex: number; address?: string; master?: string; operstate?: string; flags?: string[]; linkinfo?: { info_kind?: string } }

const dlinks = async (netns?: string): Promise<DLink[]> =>
  JSON.parse(await run('ip', [...(netns ? ['-n', netns] : []), '-j', '-d', 'link', 'show'])) as DLink[];
const addrsOf = async (netns: string, dev: string): Promise<string[]> => {
  const out = JSON.parse(await run('ip', ['-n', netns, '-j', 'addr', 'show', 'dev', dev])) as Array<{ addr_info: Array<{ local: string; scope: string }> }>;
  return out.flatMap((l) => l.addr_info.map((a) => a.local));
};

/**
 * kind vm and kind tap against the real kernel: the namespace, pair, bridge and tap kitnet builds for
 * a VM (and removes, down to the namespace when it made it), adopting a user's namespace, restart
 * adoption, the namespace watch; and adopting an existing host tap with tcx, leaving it in place.
 */
describe('kind vm / kind tap plumbing (root)', { timeout: 120_000 }, () => {
  const id = uniq();
  let t: TestAgent;
  const call = <T>(method: string, path: string, body?: unknown) => apiCall<T>(t.url, method, path, body);
  const userNs = `kitnet-vmt-user-${id}`;
  const tapDev = `kntap${id}`.slice(0, 15);
  const dummyDev = `knveth${id}`.slice(0, 13);
  const nsName = (w: string) => `kitnet-vm-vmt-${w}`;

  before(async () => {
    await status('modprobe', ['tun']); // the test makes taps of its own; hosts without udev lack /dev/net/tun
    t = await testAgentStart(`vmt-${id}`, { ipam: { ipv4Pool: '10.213.0.0/24', ipv6Pool: 'fd00:213::/64' } });
  });

  after(async () => {
    await t?.stop().catch(() => undefined);
    for (const n of [userNs, nsName(`a${id}`), nsName(`b${id}`), nsName(`c${id}`), nsName(`w${id}`)]) await netnsDel(n);
    await status('ip', ['link', 'del', tapDev]);
    await status('ip', ['link', 'del', dummyDev]);
  });

  test('registers a VM: namespace, pair, bridge and tap, guest MAC in the endpoint map; removal cleans all', async () => {
    const name = `a${id}`;
    const w = await call<Workload>('POST', '/v1/workloads', { kind: 'vm', name, namespace: 'vmt', labels: { app: 'vm' } });
    assert.equal(w.state, 'ready');
    assert.equal(w.kind, 'vm');
    assert.equal(w.mode, testMode === 'netkit' ? 'netkit-l2' : 'veth');
    const vm = w.vm!;
    assert.ok(vm, 'vm object in the response');
    assert.equal(vm.netnsPath, `/var/run/netns/${nsName(name)}`);
    assert.equal(vm.netnsCreated, true);
    assert.equal(vm.tap, 'tap0');
    assert.match(vm.mac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    assert.equal(parseInt(vm.mac.slice(0, 2), 16) & 3, 2, 'locally administered unicast');
    assert.equal(vm.gatewayMac, w.interfaces.host.mac);
    assert.deepEqual(vm.addresses, { ipv4: `${w.ipv4}/32`, ipv6: `${w.ipv6}/128` });
    assert.ok(vm.qemuNetdev.includes(`ifname=tap0,script=no,downscript=no`) && vm.qemuNetdev.includes(`mac=${vm.mac}`));
    assert.ok(vm.runHint.startsWith(`ip netns exec ${nsName(name)} qemu-system-x86_64`));

    const inside = await dlinks(nsName(name));
    const by = (n: string) => inside.find((l) => l.ifname === n);
    assert.equal(by('br0')?.linkinfo?.info_kind, 'bridge');
    assert.equal(by('tap0')?.linkinfo?.info_kind, 'tun');
    assert.equal(by('uplink0')?.linkinfo?.info_kind, testMode);
    assert.equal(by('tap0')?.master, 'br0');
    assert.equal(by('uplink0')?.master, 'br0');
    assert.ok(by('br0')?.flags?.includes('UP') && by('uplink0')?.flags?.includes('UP') && by('tap0')?.flags?.includes('UP'));
    for (const dev of ['uplink0', 'br0', 'tap0']) assert.deepEqual(await addrsOf(nsName(name), dev), [], `${dev} carries no addresses`);
    const hostLink = (await dlinks()).find((l) => l.ifname === w.interfaces.host.name);
    assert.equal(hostLink?.linkinfo?.info_kind, testMode);
    assert.ok((await routes(4)).some((r) => r.dst === w.ipv4 && r.dev === w.interfaces.host.name), 'host /32 route');
    assert.ok((await routes(6)).some((r) => r.dst === w.ipv6 && r.dev === w.interfaces.host.name), 'host /128 route');
    const ep = new Map(t.datapath.endpointList()).get(w.interfaces.host.ifindex!);
    assert.equal(ep?.mac, vm.mac, 'the guest MAC is the endpoint MAC (anti-spoofing)');
    assert.ok((await t.datapath.attachedList()).includes(w.interfaces.host.name));

    // What the periodic resync finds right after registration: nothing to do, and the links stay. A
    // netkit peer link reports the peer's ifindex; a check that wanted the host side's re-attached
    // every netkit workload on every resync.
    const rec = t.agent.store.workloadGet('vmt', name)!;
    assert.deepEqual(reconcilePlan(rec, await t.agent.reconciler.workloadObserve(rec)), [], 'the resync finds no drift');
    const links = t.datapath.linkInfo(w.interfaces.host.name);
    await t.agent.controller.reconcileNow('vmt', name);
    assert.deepEqual(t.datapath.linkInfo(w.interfaces.host.name), links, 'a reconcile keeps the links as they are');

    await call('DELETE', `/v1/workloads/vmt/${name}`);
    assert.equal(existsSync(vm.netnsPath), false, 'the namespace kitnet made is gone');
    assert.equal((await dlinks()).some((l) => l.ifname === w.interfaces.host.name), false, 'host side gone');
    assert.equal((await routes(4)).some((r) => r.dst === w.ipv4), false);
    assert.equal(new Map(t.datapath.endpointList()).has(w.interfaces.host.ifindex!), false);
  });

  test('adopts a user namespace, keeps it (and what else is in it) on removal; restart adoption keeps devices', async () => {
    const path = await netnsAdd(userNs);
    await run('ip', ['-n', userNs, 'link', 'add', 'keepme', 'type', 'veth', 'peer', 'name', 'keepme2']);
    const name = `b${id}`;
    const w = await call<Workload>('POST', '/v1/workloads', { kind: 'vm', name, namespace: 'vmt', netns: path, mac: '52:54:00:aa:bb:01' });
    assert.equal(w.vm?.netnsCreated, false);
    assert.equal(w.vm?.mac, '52:54:00:aa:bb:01');
    assert.ok(w.vm?.runHint.startsWith(`nsenter --net=${path} qemu-system-x86_64`));
    const tapBefore = (await dlinks(userNs)).find((l) => l.ifname === 'tap0');
    assert.equal(tapBefore?.master, 'br0');

    // A restart converges the stored workload again: everything adopted, nothing re-created.
    const r = await t.agent.workloads.exclusive(() => t.agent.reconciler.syncAll());
    assert.equal(r.failed, 0);
    const again = await call<Workload>('GET', `/v1/workloads/vmt/${name}`);
    assert.equal(again.interfaces.host.ifindex, w.interfaces.host.ifindex);
    assert.equal((await dlinks(userNs)).find((l) => l.ifname === 'tap0')?.ifindex, tapBefore?.ifindex);

    // Someone takes the tap out of the bridge: a converge puts it back.
    await run('ip', ['-n', userNs, 'link', 'set', 'tap0', 'nomaster']);
    await t.agent.workloads.repair('vmt', name);
    assert.equal((await dlinks(userNs)).find((l) => l.ifname === 'tap0')?.master, 'br0');

    await call('DELETE', `/v1/workloads/vmt/${name}`);
    assert.ok(existsSync(path), 'an adopted namespace stays');
    assert.deepEqual((await dlinks(userNs)).map((l) => l.ifname).sort(), ['keepme', 'keepme2', 'lo']);
  });

  test('a namespace with the name kitnet would pick is not taken over', async () => {
    const name = `c${id}`;
    await netnsAdd(nsName(name));
    await assert.rejects(call('POST', '/v1/workloads', { kind: 'vm', name, namespace: 'vmt' }), /422.*AGENT_ERR_WORKLOAD_NETNS/);
    assert.ok(existsSync(`/var/run/netns/${nsName(name)}`));
    await netnsDel(nsName(name));
  });

  test('deleting the VM namespace removes the workload (watch)', async () => {
    const name = `w${id}`;
    await call<Workload>('POST', '/v1/workloads', { kind: 'vm', name, namespace: 'vmt' });
    await run('ip', ['netns', 'del', nsName(name)]);
    await waitFor('workload removed by the watch', async () =>
      call('GET', `/v1/workloads/vmt/${name}`).then(() => false, (e: Error) => /404/.test(e.message)), 10_000);
  });

  test('kind tap adopts a host tap with tcx and leaves it in place on removal', async () => {
    await run('ip', ['tuntap', 'add', 'dev', tapDev, 'mode', 'tap']);
    await run('ip', ['link', 'set', tapDev, 'up']);
    await run('ip', ['link', 'add', dummyDev, 'type', 'veth', 'peer', 'name', `${dummyDev}p`.slice(0, 15)]);
    const tapIfindex = (await dlinks()).find((l) => l.ifname === tapDev)!.ifindex;
    // validation and refusals
    await assert.rejects(call('POST', '/v1/workloads', { kind: 'tap', name: 'tx', namespace: 'vmt', device: tapDev }), /400.*mac/);
    await assert.rejects(call('POST', '/v1/workloads', { kind: 'tap', name: 'tx', namespace: 'vmt', device: 'kn-nope0', mac: '52:54:00:00:00:09' }), /422.*AGENT_ERR_WORKLOAD_DEVICE/);
    await assert.rejects(call('POST', '/v1/workloads', { kind: 'tap', name: 'tx', namespace: 'vmt', device: dummyDev, mac: '52:54:00:00:00:09' }), /422.*AGENT_ERR_WORKLOAD_DEVICE/);

    const w = await call<Workload>('POST', '/v1/workloads', { kind: 'tap', name: 'tap1', namespace: 'vmt', labels: { app: 'libvirt' }, device: tapDev, mac: '52:54:00:00:00:07' });
    assert.equal(w.state, 'ready');
    assert.equal(w.mode, 'tap');
    assert.deepEqual(w.tap, { device: tapDev, mac: '52:54:00:00:00:07' });
    assert.equal(w.interfaces.host.name, tapDev);
    assert.equal(w.interfaces.host.ifindex, tapIfindex);
    assert.ok((await t.datapath.attachedList()).includes(tapDev), 'programs attached (tcx)');
    assert.equal(new Map(t.datapath.endpointList()).get(tapIfindex)?.mac, '52:54:00:00:00:07');
    assert.ok((await routes(4)).some((r) => r.dst === w.ipv4 && r.dev === tapDev), 'host /32 route via the tap');
    assert.ok((await routes(6)).some((r) => r.dst === w.ipv6 && r.dev === tapDev), 'host /128 route via the tap');
    await assert.rejects(call('POST', '/v1/workloads', { kind: 'tap', name: 'tap2', namespace: 'vmt', device: tapDev, mac: '52:54:00:00:00:08' }), /409.*AGENT_ERR_WORKLOAD_DEVICE_IN_USE.*already used/);

    await call('DELETE', '/v1/workloads/vmt/tap1');
    assert.ok((await dlinks()).some((l) => l.ifname === tapDev && l.ifindex === tapIfindex), 'the tap stays');
    assert.equal((await t.datapath.attachedList()).includes(tapDev), false);
    assert.equal((await routes(4)).some((r) => r.dst === w.ipv4), false);
    assert.equal((await routes(6)).some((r) => r.dst === w.ipv6), false);
    assert.equal(new Map(t.datapath.endpointList()).has(tapIfindex), false);

    // a tap that vanishes (the VM stopped) takes its workload with it
    await call<Workload>('POST', '/v1/workloads', { kind: 'tap', name: 'tap3', namespace: 'vmt', device: tapDev, mac: '52:54:00:00:00:07' });
    await run('ip', ['link', 'del', tapDev]);
    await waitFor('tap workload removed by the watch', async () =>
      call('GET', '/v1/workloads/vmt/tap3').then(() => false, (e: Error) => /404/.test(e.message)), 10_000);
  });
});
