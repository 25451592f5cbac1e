// featuresProbe and netkit pairs against the real kernel. On a kernel without netkit (this host),
// netkit modes must fail with UnsupportedFeatureError and leave nothing behind; on a kernel with
// netkit (the lab VM), the same test file checks the pairs for real. Needs root.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { execFileSync, spawnSync } from 'node:child_process';
import { UnsupportedFeatureError } from '../../common/kernel-error.js';
import type { EndpointDeviceSpec } from '../../netkit/index.js';
import {
  GATEWAY_V4, endpointDeviceCreate, endpointDeviceDelete, endpointDeviceObserve, featuresProbe, macDerive,
  endpointDeviceOpen, netnsCreate,
} from '../../netkit/index.js';
import type { FlowEvent } from '../../bpf/index.js';
import { datapathLoad, datapathUnpinAll, DROP_REASON, LINK_ROLES, linkIsCurrent } from '../../bpf/index.js';
import { EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC } from '../../bpf/layout.gen.js';
import { EventSink, policyAllowAll } from './bpf-helpers.js';
import { ipj, isRoot, linkDelQuiet, linkExists, linkNames, netnsDelQuiet, pingEventually, rand } from './netkit-helpers.js';
import { kernelHasNetkit } from '../helpers/mode.js';
import { timeLimit } from '../helpers/timeouts.js';

/** A random hex group as the kernel prints it (no leading zeros), so addresses compare as text. */
const hex = (group: string): string => parseInt(group, 16).toString(16);

const skip = !isRoot && 'needs root';

test('featuresProbe: real probes, cached, no probe devices left', { skip, timeout: timeLimit(30_000) }, async () => {
  const f = await featuresProbe({ refresh: true });
  assert.equal(typeof f.kernelRelease, 'string');
  assert.ok(f.netkitDetail.length > 0 && (f.tcxDetail ?? '').length > 0 && (f.tcClsactDetail ?? '').length > 0);
  assert.equal(f.tcClsact, true, f.tcClsactDetail);
  if (!f.netkit) assert.match(f.netkitDetail, /EOPNOTSUPP|netkit/);
  assert.strictEqual(await featuresProbe(), f, 'cached');
  const names = await ipj<{ ifname: string; ifalias?: string }[]>(['link', 'show']);
  assert.deepEqual(names.filter((l) => l.ifname.startsWith('knprobe') || l.ifalias === 'kitnet-probe'), []);
});

interface Ctx { id: string; ns: string; links: string[] }

async function setup(t: { after: (fn: () => Promise<void>) => void }, nsCount = 1): Promise<Ctx[]> {
  const id = rand();
  const out: Ctx[] = [];
  t.after(async () => {
    for (const c of out) {
      for (const l of c.links) await linkDelQuiet(l);
      await netnsDelQuiet(c.ns);
    }
  });
  for (let i = 0; i < nsCount; i++) {
    const c: Ctx = { id, ns: `kitnet-t${id}${i}`, links: [`knt${id}k${i}`] };
    out.push(c);
    await netnsCreate(c.ns);
  }
  return out;
}

const specFor = (c: Ctx, i: number, mode: EndpointDeviceSpec['mode']): EndpointDeviceSpec => ({
  hostIfname: c.links[0]!, alias: `kitnet:test/${c.id}-nk${i}`, netnsPath: `/var/run/netns/${c.ns}`, peerIfname: 'eth0',
  mode, ipv4: `10.${(parseInt(c.id.slice(0, 2), 16) % 200) + 20}.9.${i + 10}`, ipv6: `fd00:${hex(c.id.slice(0, 4))}:${hex(c.id.slice(4))}:9::${i + 10}`,
});

test('netkit modes: UnsupportedFeatureError without netkit, nothing left behind', { skip, timeout: timeLimit(60_000) }, async (t) => {
  const f = await featuresProbe();
  if (f.netkit) {
    t.skip('this kernel has netkit; covered by the next test');
    return;
  }
  const [c] = await setup(t);
  for (const mode of ['netkit', 'netkit-l2'] as const) {
    const s = specFor(c!, 0, mode);
    await assert.rejects(endpointDeviceCreate(s), (e: unknown) =>
      e instanceof UnsupportedFeatureError && e.feature === 'netkit' && /Linux >= 6.7 with CONFIG_NETKIT/.test(e.message));
    assert.equal(await linkExists(s.hostIfname), false);
    assert.deepEqual(await linkNames(c!.ns), ['lo']);
  }
});

test('netkit L3 and L2 pairs: kind, mode, fixed MACs, peer blackholed until forward', { skip, timeout: timeLimit(60_000) }, async (t) => {
  // The lab VM (test/lab/) sets KITNET_EXPECT_NETKIT=1 when its kernel has CONFIG_NETKIT=y: there a
  // missing netkit is a failure (kernelHasNetkit throws), not a reason to skip.
  if (!(await kernelHasNetkit())) {
    t.skip(`no netkit here (${(await featuresProbe()).netkitDetail})`);
    return;
  }
  const [c0, c1] = await setup(t, 2);
  const l3 = specFor(c0!, 0, 'netkit');
  const l2 = specFor(c1!, 1, 'netkit-l2');
  const a = await endpointDeviceCreate(l3);
  const b = await endpointDeviceCreate(l2);
  assert.equal(a.peerPolicy, 'drop');
  const [hl3] = await ipj<{ linkinfo: { info_kind: string; info_data?: Record<string, unknown> } }[]>(['-d', 'link', 'show', 'dev', l3.hostIfname]);
  assert.equal(hl3?.linkinfo.info_kind, 'netkit');
  assert.equal(b.hostMac, macDerive(`${l2.hostIfname}/host`));
  assert.equal(b.peerMac, macDerive(`${l2.hostIfname}/peer`));
  assert.deepEqual((await endpointDeviceObserve(l3))?.problems, []);
  assert.deepEqual((await endpointDeviceObserve(l2))?.problems, []);
  // L3: no neighbour entries; L2: permanent gateway entries
  const n3 = await ipj<{ dst: string }[]>(['neigh', 'show', 'dev', 'eth0', 'nud', 'permanent'], c0!.ns);
  assert.deepEqual(n3, []);
  const n2 = await ipj<{ dst: string }[]>(['neigh', 'show', 'dev', 'eth0', 'nud', 'permanent'], c1!.ns);
  assert.ok(n2.some((n) => n.dst === GATEWAY_V4));

  assert.equal(await pingEventually(c0!.ns, l2.ipv4, 1), false, 'blackholed before programs');
  // the host's packets into a closed pair go nowhere either: the workload's device receives none
  assert.equal(a.policy, 'drop');
  const rx = () => Number(execFileSync('ip', ['netns', 'exec', c0!.ns, 'cat', '/sys/class/net/eth0/statistics/rx_packets'], { encoding: 'utf8' }));
  const rxBefore = rx();
  spawnSync('ping', ['-c', '3', '-i', '0.2', '-W', '1', l3.ipv4]);
  assert.equal(rx(), rxBefore, 'the host reached a closed netkit workload');
  await endpointDeviceOpen(l3);
  await endpointDeviceOpen(l2);
  assert.ok(await pingEventually(c0!.ns, l2.ipv4), 'L3 -> L2 IPv4');
  assert.ok(await pingEventually(c1!.ns, l3.ipv6), 'L2 -> L3 IPv6');
  assert.deepEqual([(await endpointDeviceObserve(l3))?.peerPolicy, (await endpointDeviceObserve(l3))?.policy], ['forward', 'forward']);

  assert.equal(await endpointDeviceDelete(l3.hostIfname), true);
  assert.equal(await endpointDeviceDelete(l2.hostIfname), true);
  assert.deepEqual(await linkNames(c0!.ns), ['lo']);
  assert.deepEqual(await linkNames(c1!.ns), ['lo']);
});

test('netkit L3 and L2 with the datapath: both programs find their endpoint, enforce and report; L2 gateway responder', { skip, timeout: timeLimit(120_000) }, async (t) => {
  // The lab VM (test/lab/) sets KITNET_EXPECT_NETKIT=1 when its kernel has CONFIG_NETKIT=y: there a
  // missing netkit is a failure (kernelHasNetkit throws), not a reason to skip.
  if (!(await kernelHasNetkit())) {
    t.skip(`no netkit here (${(await featuresProbe()).netkitDetail})`);
    return;
  }
  const [c0, c1] = await setup(t, 2);
  const pinRoot = `/sys/fs/bpf/kitnet-nkdp-${c0!.id}`;
  const dp = await datapathLoad({ pinRoot });
  const sink = new EventSink(dp);
  t.after(async () => {
    sink.close();
    dp.close();
    await datapathUnpinAll(pinRoot);
  });
  const l3 = specFor(c0!, 0, 'netkit');
  const l2 = specFor(c1!, 1, 'netkit-l2');
  const a = await endpointDeviceCreate(l3);
  const b = await endpointDeviceCreate(l2);
  const A = { endpointId: 301, identity: 5301 };
  const B = { endpointId: 302, identity: 5302 };
  dp.endpointUpsert(a.hostIfindex, { ...A, ipv4: l3.ipv4, ipv6: l3.ipv6, mac: a.peerMac, flags: EP_F_ENFORCE_SRC_IP });
  dp.endpointUpsert(b.hostIfindex, { ...B, ipv4: l2.ipv4, ipv6: l2.ipv6, mac: b.peerMac, hostMac: b.hostMac, flags: EP_F_ENFORCE_SRC_IP | EP_F_ENFORCE_SRC_MAC });
  for (const [spec, id] of [[l3, A.identity], [l2, B.identity]] as const) {
    dp.ipcacheUpsert(`${spec.ipv4}/32`, { identity: id, hostId: 0 });
    dp.ipcacheUpsert(`${spec.ipv6}/128`, { identity: id, hostId: 0 });
  }
  policyAllowAll(dp, A.endpointId);
  policyAllowAll(dp, B.endpointId);
  for (const d of [a, b]) {
    const res = await dp.attachDetailed({ ifname: d.hostIfname, ifindex: d.hostIfindex, kind: 'netkit' });
    assert.deepEqual(res.map((r) => [r.role, r.prog]), [['from_workload', 'from_workload'], ['to_workload', 'to_workload_netkit']]);
    await endpointDeviceOpen(d === a ? l3 : l2);
  }
  for (const d of [a, b]) {
    // The kernel keeps the peer link on the peer (netkit_dev_fetch): its info names the peer's ifindex
    // in the peer's namespace. What the reconcile loop and a restarted agent do next, checking and
    // attaching again, must find both links current and adopt them, not make them again.
    const before = dp.linkInfo(d.hostIfname);
    assert.equal(before.from_workload?.ifindex, d.peerIfindex, 'the peer link reports the peer');
    assert.equal(before.to_workload?.ifindex, d.hostIfindex, 'the primary link reports the host side');
    for (const role of LINK_ROLES) {
      assert.ok(linkIsCurrent(before[role]!, 'netkit', role, { ifindex: d.hostIfindex, peerIfindex: d.peerIfindex }, dp.progIds()), `${role} link current`);
    }
    const again = await dp.attachDetailed({ ifname: d.hostIfname, ifindex: d.hostIfindex, peerIfindex: d.peerIfindex, kind: 'netkit' });
    assert.deepEqual(again.map((r) => [r.role, r.adopted, r.linkId]), LINK_ROLES.map((role) => [role, true, before[role]!.id]), 'both links adopted');
  }

  // Each echo is seen twice: leaving one workload (its from_workload) and entering the other (the
  // primary-side program, which must charge the receiving endpoint, not whatever skb->ifindex is).
  const echoes = (evs: FlowEvent[], type: number) =>
    evs.filter((e) => (e.protocol === 1 || e.protocol === 58) && e.icmpType === type).map((e) => [e.direction, e.endpointId, e.ifindex, e.srcIdentity, e.dstIdentity]);
  assert.ok(await pingEventually(c0!.ns, l2.ipv4), 'L3 -> L2 IPv4 through both programs');
  let evs = await sink.waitFor((e) => echoes(e, 0).length >= 2);
  assert.deepEqual(echoes(evs, 8).slice(0, 2).sort(), [
    ['EGRESS', A.endpointId, a.hostIfindex, A.identity, B.identity],
    ['INGRESS', B.endpointId, b.hostIfindex, A.identity, B.identity],
  ]);
  assert.deepEqual(echoes(evs, 0).slice(0, 2).sort(), [
    ['EGRESS', B.endpointId, b.hostIfindex, B.identity, A.identity],
    ['INGRESS', A.endpointId, a.hostIfindex, B.identity, A.identity],
  ]);
  await sink.drain();
  assert.ok(await pingEventually(c1!.ns, l3.ipv6), 'L2 -> L3 IPv6');
  evs = await sink.waitFor((e) => echoes(e, 129).length >= 2);
  assert.deepEqual(echoes(evs, 128).slice(0, 2).sort(), [
    ['EGRESS', B.endpointId, b.hostIfindex, B.identity, A.identity],
    ['INGRESS', A.endpointId, a.hostIfindex, B.identity, A.identity],
  ]);

  // L2: with its gateway neighbour entry gone, the guest side resolves 169.254.1.1 through the responder.
  const repliesBefore = dp.metricsRead().NEIGH_REPLIES.packets;
  await ipj(['neigh', 'del', GATEWAY_V4, 'dev', 'eth0'], c1!.ns).catch(() => undefined);
  assert.ok(await pingEventually(c1!.ns, l3.ipv4), 'L2 -> L3 IPv4 after ARP through the responder');
  assert.ok(dp.metricsRead().NEIGH_REPLIES.packets > repliesBefore, 'the responder answered');

  // Enforcement on the primary side: B allows nothing in, so A's new connections die there, reported.
  await sink.drain();
  dp.policyClear(B.endpointId);
  dp.policyApply(B.endpointId, [{ op: 'upsert', entry: { identity: 0, protocol: 0, port: 0, portPrefixLen: 0, deny: false, direction: 'egress' } }]);
  dp.conntrackFlush();
  assert.equal(await pingEventually(c0!.ns, l2.ipv4, 1), false, 'denied towards B');
  evs = await sink.waitFor((e) => e.some((x) => x.verdict === 'DROPPED'));
  const drop = evs.find((x) => x.verdict === 'DROPPED');
  assert.deepEqual(
    drop && [drop.direction, drop.endpointId, drop.ifindex, drop.dropReason],
    ['INGRESS', B.endpointId, b.hostIfindex, DROP_REASON.POLICY_DENIED],
  );
  assert.equal(sink.lostEvents(), 0n);
});
