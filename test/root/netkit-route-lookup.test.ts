// The per-workload route check of an observe (netkit/route.ts hostRouteLookup, hostRoutesPresent)
// against the real kernel: one FIB lookup per address instead of a dump of every route, and the
// same answers as the dump. A route of another workload, a covering prefix, the same prefix through
// another device and a policy rule that sends lookups to another table first must not be taken as
// the workload's route (or hide it). Needs root.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { endpointDeviceCreate, endpointDeviceObserve, endpointDeviceOpen, netnsCreate } from '../../netkit/index.js';
import { hostRouteLookup, hostRoutesPresent } from '../../netkit/route.js';
import { withNetns } from '../../netkit/netns-pool.js';
import { RT_TABLE_MAIN } from '../../netkit/uapi.js';
import { timeLimit } from '../helpers/timeouts.js';
import { isRoot, linkDelQuiet, netnsDelQuiet, rand, sh } from './netkit-helpers.js';

const skip = !isRoot && 'needs root';

test('route lookup per address: only the exact route through the device, from main, counts', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const ns = `kitnet-trl${rand()}`;
  t.after(() => netnsDelQuiet(ns));
  await netnsCreate(ns);
  const ip = (...args: string[]) => sh('ip', ['-n', ns, ...args]);
  for (const d of ['d0', 'd1']) {
    // veth, not dummy: the kernels kitnet runs on may lack the dummy module; up with carrier
    await ip('link', 'add', d, 'type', 'veth', 'peer', 'name', `${d}p`);
    await ip('link', 'set', `${d}p`, 'up');
    await ip('link', 'set', d, 'up');
  }
  const batch = [
    // the workload's own, through d0
    'route add 10.77.0.5/32 dev d0', '-6 route add fd77::5/128 dev d0',
    // another workload's, through d1
    'route add 10.77.0.6/32 dev d1', '-6 route add fd77::6/128 dev d1',
    // covering prefixes through d0: a lookup for a missing /32 answers these
    'route add 10.77.0.0/16 dev d0', '-6 route add fd77::/64 dev d0',
    // the same prefix through both devices, the other one preferred
    'route add 10.77.0.7/32 dev d1 metric 10', 'route add 10.77.0.7/32 dev d0 metric 100',
    '-6 route add fd77::7/128 dev d1 metric 10', '-6 route add fd77::7/128 dev d0 metric 100',
    // in main and in a table a rule consults first; and only in that table
    'route add 10.77.0.9/32 dev d0', 'route add 10.77.0.9/32 dev d0 table 100', 'route add 10.77.0.10/32 dev d0 table 100',
    '-6 route add fd77::9/128 dev d0', '-6 route add fd77::9/128 dev d0 table 100', '-6 route add fd77::10/128 dev d0 table 100',
    'rule add pref 100 lookup 100', '-6 rule add pref 100 lookup 100',
  ];
  for (const line of batch) await ip(...line.split(' '));
  await withNetns(`/var/run/netns/${ns}`, async (nl) => {
    const links = JSON.parse(await ip('-j', 'link', 'show')) as { ifname: string; ifindex: number }[];
    const d0 = links.find((l) => l.ifname === 'd0')!.ifindex;
    const d1 = links.find((l) => l.ifname === 'd1')!.ifindex;

    // the lookup answers the FIB entry through the device asked for, never another device's
    const own = await hostRouteLookup(nl, '10.77.0.5', d0);
    assert.deepEqual([own?.dst, own?.oif, own?.table], ['10.77.0.5/32', d0, RT_TABLE_MAIN]);
    const own6 = await hostRouteLookup(nl, 'fd77::5', d0);
    assert.deepEqual([own6?.dst, own6?.oif, own6?.table], ['fd77::5/128', d0, RT_TABLE_MAIN]);
    assert.equal(await hostRouteLookup(nl, '10.77.0.5', d1), undefined, 'nothing routes it through d1');
    const other = await hostRouteLookup(nl, '10.77.0.6', d0);
    assert.equal(other?.dst, '10.77.0.0/16', 'another workload\'s /32 through d1 is not answered for d0');
    const other6 = await hostRouteLookup(nl, 'fd77::6', d0);
    assert.equal(other6?.dst, 'fd77::/64');
    for (const [addr, d] of [['10.77.0.7', d0], ['10.77.0.7', d1], ['fd77::7', d0], ['fd77::7', d1]] as const) {
      const r = await hostRouteLookup(nl, addr, d);
      assert.equal(r?.oif, d, `${addr} through ${d}: the route through that device, whatever the metrics`);
      assert.equal(r?.dstLen, addr.includes(':') ? 128 : 32);
    }
    assert.equal((await hostRouteLookup(nl, '10.77.0.9', d0))?.table, 100, 'the rule sends the lookup to table 100 first');

    // presence: the dump's answer in every case
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.5', 'fd77::5'], d0), [true, true]);
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.5', 'fd77:0:0:0::5'], d1), [false, false]);
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.6', 'fd77::6'], d0), [false, false], 'the covering prefix is not the workload\'s route');
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.6', 'fd77::6'], d1), [true, true]);
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.7', 'fd77::7'], d0), [true, true]);
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.7', 'fd77::7'], d1), [true, true]);
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.9', 'fd77::9'], d0), [true, true], 'in main, though a rule answers from table 100');
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.10', 'fd77::10'], d0), [false, false], 'only in table 100 is not in main');
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.5', 'fd77::5'], 999_999), [false, false], 'a device that does not exist');
    await ip('link', 'set', 'd0', 'down');
    assert.deepEqual(await hostRoutesPresent(nl, ['10.77.0.5', 'fd77::5'], d0), [false, false], 'a device that is down has no routes');
  });
});

test('endpoint observe: a foreign route for the workload\'s address through another device is no route of its own', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const id = rand();
  const ns = `kitnet-trl${id}`;
  const host = `ktrl${id}`;
  const foreign = `ktrf${id}`;
  t.after(async () => {
    await linkDelQuiet(host);
    await linkDelQuiet(foreign);
    await netnsDelQuiet(ns);
  });
  await netnsCreate(ns);
  const octet = (parseInt(id.slice(0, 2), 16) % 200) + 20;
  const spec = {
    hostIfname: host, alias: `kitnet:test/route-lookup-${id}`, netnsPath: `/var/run/netns/${ns}`, peerIfname: 'eth0',
    mode: 'veth' as const, ipv4: `10.${octet}.77.5`, ipv6: `fd00:77:${parseInt(id.slice(0, 4), 16).toString(16)}:5::5`,
  };
  await endpointDeviceCreate(spec);
  await endpointDeviceOpen(spec);
  assert.deepEqual((await endpointDeviceObserve(spec))?.problems, []);

  await sh('ip', ['link', 'add', foreign, 'type', 'veth', 'peer', 'name', 'foreignp', 'netns', ns]);
  await sh('ip', ['-n', ns, 'link', 'set', 'foreignp', 'up']);
  await sh('ip', ['link', 'set', foreign, 'up']);
  // the workload's prefix through another device as well (lower metric: preferred by the kernel)
  await sh('ip', ['route', 'add', `${spec.ipv4}/32`, 'dev', foreign, 'metric', '1']);
  await sh('ip', ['-6', 'route', 'add', `${spec.ipv6}/128`, 'dev', foreign, 'metric', '1']);
  assert.deepEqual((await endpointDeviceObserve(spec))?.problems, [], 'its own routes are still there');

  // its own gone, the foreign ones stay: both reported missing
  await sh('ip', ['route', 'del', `${spec.ipv4}/32`, 'dev', host]);
  await sh('ip', ['-6', 'route', 'del', `${spec.ipv6}/128`, 'dev', host]);
  assert.deepEqual((await endpointDeviceObserve(spec))?.problems, [
    `host route ${spec.ipv4}/32 dev ${host} missing`,
    `host route ${spec.ipv6}/128 dev ${host} missing`,
  ]);
});
