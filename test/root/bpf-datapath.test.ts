// The datapath on a real veth pair with its peer in a fresh netns: attach with tcx, ping both families,
// check flow events (addresses, identities, direction, ICMP types, aggregation), then restart the
// "agent" (close + load on the same pin root) and check state and links were adopted, then detach and
// device removal. Real kernel only; temporary pin root and names; cleanup registered first.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import type { FlowEvent, KitnetDatapath } from '../../bpf/index.js';
import { datapathLoad, datapathUnpinAll } from '../../bpf/index.js';
import { EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC, IDENTITY_HOST } from '../../bpf/layout.gen.js';
import { EventSink, policyAllowAll, sh, shOk } from './bpf-helpers.js';
import { timeLimit } from '../helpers/timeouts.js';

const tag = String(process.pid % 100000);
const NS = `kitnet-t-${tag}`;
const HOST = `ktb${tag}h`;
const PEER = `ktb${tag}p`;
const sub = process.pid % 250;
const HOST4 = `10.252.${sub}.1`;
const EP4 = `10.252.${sub}.2`;
const HOST6 = `fd00:252:${sub.toString(16)}::1`;
const EP6 = `fd00:252:${sub.toString(16)}::2`;
const IDENTITY = 4200;

function ifindexOf(ifname: string): number {
  return Number(readFileSync(`/sys/class/net/${ifname}/ifindex`, 'utf8'));
}

function ping(addr: string, count = 1): boolean {
  return shOk('ping', ['-n', '-q', '-c', String(count), '-i', '0.1', '-W', '2', addr]);
}

const echo = (evs: FlowEvent[], type: number) => evs.filter((e) => (e.protocol === 1 || e.protocol === 58) && e.icmpType === type);

describe('datapath on a veth pair (tcx, real traffic)', { timeout: timeLimit(120_000) }, () => {
  const pinRoot = `/sys/fs/bpf/kitnet-test-${process.pid}`;
  let dp: KitnetDatapath | undefined;
  let sink: EventSink | undefined;
  let ifindex = 0;

  const cleanup = async () => {
    sink?.close();
    dp?.close();
    shOk('ip', ['netns', 'del', NS]);
    shOk('ip', ['link', 'del', HOST]);
    await datapathUnpinAll(pinRoot);
  };

  before(async () => {
    await cleanup();
    sh('ip', ['netns', 'add', NS]);
    sh('ip', ['link', 'add', HOST, 'type', 'veth', 'peer', 'name', PEER]);
    sh('ip', ['link', 'set', PEER, 'netns', NS]);
    sh('ip', ['addr', 'add', `${HOST4}/24`, 'dev', HOST]);
    sh('ip', ['-6', 'addr', 'add', `${HOST6}/64`, 'dev', HOST, 'nodad']);
    sh('ip', ['link', 'set', HOST, 'up']);
    const inNs = (...args: string[]) => sh('ip', ['netns', 'exec', NS, ...args]);
    inNs('ip', 'link', 'set', 'lo', 'up');
    inNs('ip', 'addr', 'add', `${EP4}/24`, 'dev', PEER);
    inNs('ip', '-6', 'addr', 'add', `${EP6}/64`, 'dev', PEER, 'nodad');
    inNs('ip', 'link', 'set', PEER, 'up');
    ifindex = ifindexOf(HOST);
    assert.ok(ping(EP4), 'baseline IPv4 connectivity without programs');
  });
  after(cleanup);

  function endpointInfo() {
    const mac = sh('ip', ['netns', 'exec', NS, 'cat', `/sys/class/net/${PEER}/address`]).trim();
    return { endpointId: 77, identity: IDENTITY, ipv4: EP4, ipv6: EP6, mac, flags: EP_F_ENFORCE_SRC_IP | EP_F_ENFORCE_SRC_MAC };
  }

  test('attach creates and pins tcx links', async () => {
    dp = await datapathLoad({ pinRoot });
    sink = new EventSink(dp);
    dp.endpointUpsert(ifindex, endpointInfo());
    policyAllowAll(dp, endpointInfo().endpointId);
    dp.ipcacheUpsert(`${HOST4}/32`, { identity: IDENTITY_HOST, hostId: 0 });
    dp.ipcacheUpsert(`${HOST6}/128`, { identity: IDENTITY_HOST, hostId: 0 });
    const res = await dp.attachDetailed({ ifname: HOST, ifindex, kind: 'tcx' });
    assert.deepEqual(res.map((r) => [r.prog, r.adopted]), [['from_workload', false], ['to_workload', false]]);
    assert.deepEqual(await dp.attachedList(), [HOST]);
    const info = dp.linkInfo(HOST);
    assert.equal(info.from_workload?.ifindex, ifindex);
    assert.equal(info.to_workload?.progId, dp.progIds().to_workload);
    // idempotent: attaching again adopts what is there
    const again = await dp.attachDetailed({ ifname: HOST, ifindex, kind: 'tcx' });
    assert.deepEqual(again.map((r) => r.adopted), [true, true]);
    assert.deepEqual(again.map((r) => r.linkId), res.map((r) => r.linkId));
  });

  test('IPv4 ping: request INGRESS towards the workload, reply EGRESS; established echoes aggregated', async () => {
    assert.ok(dp && sink);
    await sink.drain(50);
    assert.ok(ping(EP4, 4), 'ping through the programs (anti-spoofing on)');
    const evs = await sink.waitFor((e) => echo(e, 0).length > 0);
    await sink.drain(100);
    const req = echo(evs, 8);
    const rep = echo(evs, 0);
    assert.equal(req.length, 1, 'one event for four requests of one ping session');
    assert.equal(rep.length, 1);
    assert.deepEqual(
      [req[0]!.direction, req[0]!.family, req[0]!.srcAddr, req[0]!.dstAddr, req[0]!.srcIdentity, req[0]!.dstIdentity, req[0]!.isReply, req[0]!.ifindex, req[0]!.endpointId],
      ['INGRESS', 4, HOST4, EP4, IDENTITY_HOST, IDENTITY, false, ifindex, 77],
    );
    assert.deepEqual(
      [rep[0]!.direction, rep[0]!.srcAddr, rep[0]!.dstAddr, rep[0]!.srcIdentity, rep[0]!.dstIdentity, rep[0]!.isReply],
      ['EGRESS', EP4, HOST4, IDENTITY, IDENTITY_HOST, true],
    );
    const now = BigInt(Date.now()) * 1_000_000n;
    assert.ok(req[0]!.timeNs < now + 1_000_000_000n && req[0]!.timeNs > now - 10_000_000_000n, 'wall-clock time');
    assert.ok(req[0]!.length >= 84);
  });

  test('IPv6 ping: ICMPv6 echo request/reply events', async () => {
    assert.ok(dp && sink);
    assert.ok(ping(EP6, 3));
    const evs = await sink.waitFor((e) => echo(e, 129).length > 0);
    await sink.drain(100);
    const req = echo(evs, 128);
    const rep = echo(evs, 129);
    assert.equal(req.length, 1);
    assert.equal(rep.length, 1);
    assert.deepEqual([req[0]!.family, req[0]!.srcAddr, req[0]!.dstAddr, req[0]!.direction, req[0]!.srcIdentity], [6, HOST6, EP6, 'INGRESS', IDENTITY_HOST]);
    assert.deepEqual([rep[0]!.srcAddr, rep[0]!.direction, rep[0]!.isReply, rep[0]!.dstIdentity], [EP6, 'EGRESS', true, IDENTITY_HOST]);
  });

  test('monitor aggregation 0 reports every packet', async () => {
    assert.ok(dp && sink);
    dp.configSet({ monitorAggregation: 0 });
    assert.ok(ping(EP4, 3));
    const evs = await sink.waitFor((e) => echo(e, 0).length >= 3);
    await sink.drain(100);
    assert.equal(echo(evs, 8).length, 3);
    assert.equal(echo(evs, 0).length, 3);
    assert.equal(sink.lostEvents(), 0n);
  });

  test('restart: maps keep their state, pinned links are adopted with the new programs, traffic flows throughout', async () => {
    assert.ok(dp && sink);
    const linksBefore = dp.linkInfo(HOST);
    const progsBefore = dp.progIds();
    sink.close();
    dp.close();
    sink = undefined;
    dp = undefined;

    // agent down: the pinned links and maps keep the datapath working
    assert.ok(ping(EP4, 2), 'forwarding while no agent runs');

    dp = await datapathLoad({ pinRoot });
    sink = new EventSink(dp);
    assert.deepEqual(dp.endpointList(), [[ifindex, endpointInfo()]]);
    assert.deepEqual(new Set(dp.ipcacheList().map(([c]) => c)), new Set([`${HOST4}/32`, `${HOST6}/128`]));
    assert.equal(dp.configGet().monitorAggregation, 0, 'config survived');
    dp.configSet({ monitorAggregation: 1 });
    assert.ok(dp.conntrackList().some((e) => e.protocol === 1 && e.dstAddr === EP4), 'conntrack survived');

    const res = await dp.attachDetailed({ ifname: HOST, ifindex, kind: 'tcx' });
    assert.deepEqual(res.map((r) => r.adopted), [true, true]);
    const linksAfter = dp.linkInfo(HOST);
    for (const p of ['from_workload', 'to_workload'] as const) {
      assert.equal(linksAfter[p]?.id, linksBefore[p]?.id, `${p}: same link`);
      assert.equal(linksAfter[p]?.progId, dp.progIds()[p], `${p}: runs the newly loaded program`);
      assert.notEqual(linksAfter[p]?.progId, progsBefore[p]);
    }
    assert.ok(ping(EP4, 2));
    const evs = await sink.waitFor((e) => echo(e, 0).length > 0);
    assert.ok(echo(evs, 8).length >= 1 && echo(evs, 0).length >= 1, 'events through the new reader');
    await sink.drain(100);
  });

  test('detach unpins; traffic still flows without programs and produces no events', async () => {
    assert.ok(dp && sink);
    await dp.detach(HOST);
    await dp.detach(HOST); // idempotent
    assert.deepEqual(await dp.attachedList(), []);
    assert.deepEqual(dp.linkInfo(HOST), {});
    // Events the programs wrote before the detach may still be on their way: collect them first.
    await sink.settle();
    const before = dp.metricsRead();
    assert.ok(ping(EP4, 2));
    assert.equal((await sink.drain(200)).length, 0);
    assert.equal(dp.metricsRead().INGRESS_FORWARDED.packets, before.INGRESS_FORWARDED.packets);
  });

  test('a device that disappears leaves a stale pin that detach tolerates and attach replaces', async () => {
    assert.ok(dp);
    await dp.attach({ ifname: HOST, ifindex, kind: 'tcx' });
    const old = dp.linkInfo(HOST);
    sh('ip', ['link', 'del', HOST]);
    assert.equal(dp.linkInfo(HOST).from_workload?.ifindex, 0, 'kernel detached the link with the device');

    // same name, new device: the stale links are replaced, not adopted
    sh('ip', ['link', 'add', HOST, 'type', 'veth', 'peer', 'name', PEER]);
    const newIfindex = ifindexOf(HOST);
    const res = await dp.attachDetailed({ ifname: HOST, ifindex: newIfindex, kind: 'tcx' });
    assert.deepEqual(res.map((r) => r.adopted), [false, false]);
    assert.notEqual(dp.linkInfo(HOST).from_workload?.id, old.from_workload?.id);

    sh('ip', ['link', 'del', HOST]);
    await dp.detach(HOST);
    assert.deepEqual(await dp.attachedList(), []);
  });
});
