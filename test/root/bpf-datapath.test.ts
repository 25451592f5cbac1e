// The datapath on a real veth pair with its peer in a fresh netns: attach with tcx, ping both families,
// check flow events (addresses, identities, direction, ICMP types, aggregation), then restart the
// "agent" (close + load on the same pin root) and check state and links were adopted, then detach and
// device removal. Real kernel only; temporary pin root and names; cleanup registered first.
import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import type { FlowEvent, KitnetDatapath } from '../../bpf/index.js';
import { datapathLoad, datapathUnpinAll, DROP_REASON } from '../../bpf/index.js';
import { macParse } from '../../bpf/addr.js';
import { EP_F_ENFORCE_SRC_IP, EP_F_ENFORCE_SRC_MAC, IDENTITY_HOST } from '../../bpf/layout.gen.js';
import { ETH_P_IP, ETH_P_IPV6, EventSink, icmp6Pseudo, ipv4, ipv6, onesSum, policyAllowAll, sh, shOk, udp } from './bpf-helpers.js';
import { endpointDeviceCreate, endpointDeviceOpen, type EndpointDeviceSpec } from '../../netkit/index.js';
import { kernelHasNetkit } from '../helpers/mode.js';
import { timeLimit } from '../helpers/timeouts.js';

const tag = String(process.pid % 100000);
const NS = `kitnet-t-${tag}`;
const HOST = `ktb${tag}h`;
const PEER = `ktb${tag}p`;
const sub = process.pid % 250;
const HOST4 = `10.252.${sub}.1`;
const EP4 = `10.252.${sub}.2`;
const HOST6 = `fd00:252:${sub.toString(16)}:1::1`; // never `fd00:252:0::1`: the kernel writes a 0 group as ::
const EP6 = `fd00:252:${sub.toString(16)}:1::2`;
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
    const pinged = BigInt(Date.now()) * 1_000_000n;
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
    // Wall-clock time (not the kernel's monotonic clock), between the ping and now however slow the
    // machine (1 s either side: the offset is taken once, NTP may slew the wall clock since).
    const now = BigInt(Date.now()) * 1_000_000n;
    assert.ok(req[0]!.timeNs >= pinged - 1_000_000_000n && req[0]!.timeNs <= now + 1_000_000_000n, `wall-clock time: ${req[0]!.timeNs} between ${pinged} and ${now}`);
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

// ---------------------------------------------------------------------------------------------------
// Frames that are not plain IPv4 / IPv6 / ARP, sent for real (AF_PACKET) from inside the workload's
// namespace. The receive path moves the outer tag of a frame into skb metadata before tcx and, after
// tcx, strips VID 0 tags and delivers the packet inside: a double-tagged frame with a forged source
// reached the host's sockets with that source before the datapath dropped such frames. The
// destination here is a UDP socket on the host-side address; a plain datagram sent the same way right
// after each attack is the control that the path delivers at all.
// ---------------------------------------------------------------------------------------------------

const ETH_P_8021Q = 0x8100;
const ETH_P_8021AD = 0x88a8;

/** One frame: MACs, then VLAN tags ([TPID, VID] outermost first), EtherType, payload. */
function frame(dst: string, src: string, tags: Array<[number, number]>, type: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(12 + tags.length * 4 + 2);
  head.set(macParse(dst), 0);
  head.set(macParse(src), 6);
  tags.forEach(([tpid, vid], i) => {
    head.writeUInt16BE(tpid, 12 + i * 4);
    head.writeUInt16BE(vid, 14 + i * 4);
  });
  head.writeUInt16BE(type, 12 + tags.length * 4);
  return Buffer.concat([head, payload]);
}

/** IPv4 / UDP (no UDP checksum, allowed in IPv4) or IPv6 / UDP with its mandatory checksum. */
function udpPacket(src: string, dst: string, dport: number, data: string): { type: number; packet: Buffer } {
  const body = Buffer.from(data);
  if (!src.includes(':')) {
    const p = ipv4(src, dst, 17, udp(40000, dport, body));
    p.writeUInt16BE(~onesSum(p.subarray(0, 20)) & 0xffff, 10);
    return { type: ETH_P_IP, packet: p };
  }
  const u = udp(40000, dport, body);
  const pseudo = icmp6Pseudo(src, dst, u.length);
  pseudo[39] = 17;
  u.writeUInt16BE(~onesSum(pseudo, u) & 0xffff || 0xffff, 6);
  return { type: ETH_P_IPV6, packet: ipv6(src, dst, 17, u) };
}

/**
 * Sends each frame, in order, from a raw AF_PACKET socket on `ifname` inside `netns` (or the host);
 * returns per frame 'sent' or the errno name the send failed with (a program dropping the frame at the
 * device's tcx egress makes the send fail with ENOBUFS).
 */
function framesSend(netns: string | undefined, ifname: string, frames: Buffer[]): string[] {
  const py = [
    'import errno,socket,sys',
    's=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)',
    's.bind((sys.argv[1],0))',
    'for h in sys.argv[2:]:',
    '  try: s.send(bytes.fromhex(h)); print("sent")',
    '  except OSError as e: print(errno.errorcode.get(e.errno, e.errno))',
  ].join('\n');
  const args = ['python3', '-c', py, ifname, ...frames.map((f) => f.toString('hex'))];
  return sh(netns ? 'ip' : args[0]!, netns ? ['netns', 'exec', netns, ...args] : args.slice(1)).trim().split('\n');
}

/** UDP socket on the host that records who each datagram claims to come from. */
class Listener {
  readonly got: Array<{ from: string; data: string }> = [];
  private constructor(readonly socket: Socket) {
    socket.on('message', (msg, rinfo) => this.got.push({ from: rinfo.address, data: msg.toString() }));
  }
  static async open(addr: string): Promise<Listener> {
    const socket = createSocket(addr.includes(':') ? 'udp6' : 'udp4');
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(0, addr, () => resolve());
    });
    return new Listener(socket);
  }
  get port(): number {
    return this.socket.address().port;
  }
  /** Waits for the datagram carrying `data` (deadline), then returns everything received so far. */
  async until(data: string, timeoutMs = 5000): Promise<Array<{ from: string; data: string }>> {
    const end = Date.now() + timeoutMs;
    while (!this.got.some((g) => g.data === data) && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    return [...this.got];
  }
}

type WorkloadDevice = 'veth' | 'netkit' | 'netkit-l2';

/**
 * The same attacks on each device mode: veth + tcx here, and netkit L3 / L2 (programs on the netkit
 * primary) where the kernel has netkit (the lab VM runs this file: test/lab/README.md).
 */
function nonIpSuite(mode: WorkloadDevice, octet: number, skip: string | false): void {
  describe(`frames that are not plain IP: real frames from a workload (${mode})`, { skip, timeout: timeLimit(180_000) }, () => {
    const vtag = String(process.pid % 100000);
    const m = mode === 'veth' ? 'v' : mode === 'netkit' ? 'n' : 'l';
    const VNS = `kitnet-tv${m}-${vtag}`;
    const VHOST = `ktv${vtag}${m}h`;
    const VPEER = mode === 'veth' ? `ktv${vtag}${m}p` : 'eth0';
    const vsub = process.pid % 250;
    const V_HOST4 = `10.${octet}.${vsub}.1`;
    const V_EP4 = `10.${octet}.${vsub}.2`;
    const V_FORGED4 = `10.${octet}.${vsub}.3`; // on the same link, so no reverse-path filter could hide the forgery
    // the fixed :1 group keeps a vsub of 0 from being folded into `::` when addresses are compared as text
    const V_HOST6 = `fd00:${octet}:${vsub.toString(16)}:1::1`;
    const V_EP6 = `fd00:${octet}:${vsub.toString(16)}:1::2`;
    const V_FORGED6 = `fd00:${octet}:${vsub.toString(16)}:1::3`;
    const V_EP = { endpointId: 78, identity: 4201 };
    const pinRoot = `/sys/fs/bpf/kitnet-test-l2${m}-${process.pid}`;
    let dp: KitnetDatapath | undefined;
    let sink: EventSink | undefined;
    let ifindex = 0;
    let hostMac = '';
    let epMac = '';
    const listeners: Listener[] = [];
    let seq = 0;
  // what the sender's send() says of a frame the program drops: a veth hands it on (the program runs
  // at the host side's tcx ingress); netkit runs it in the peer's transmit, which reports the drop
  const droppedSend = mode === 'veth' ? 'sent' : 'ENOBUFS';

    const cleanup = async () => {
      for (const l of listeners.splice(0)) l.socket.close();
      sink?.close();
      dp?.close();
      shOk('ip', ['netns', 'del', VNS]);
      shOk('ip', ['link', 'del', VHOST]);
      await datapathUnpinAll(pinRoot);
    };

    before(async () => {
      await cleanup();
      sh('ip', ['netns', 'add', VNS]);
      const inNs = (...args: string[]) => sh('ip', ['netns', 'exec', VNS, ...args]);
      inNs('ip', 'link', 'set', 'lo', 'up');
      let flags = EP_F_ENFORCE_SRC_IP | EP_F_ENFORCE_SRC_MAC;
      let nkSpec: EndpointDeviceSpec | undefined;
      let responderMac: string | undefined;
      if (mode === 'veth') {
        sh('ip', ['link', 'add', VHOST, 'type', 'veth', 'peer', 'name', VPEER]);
        sh('ip', ['link', 'set', VPEER, 'netns', VNS]);
        sh('ip', ['addr', 'add', `${V_HOST4}/24`, 'dev', VHOST]);
        sh('ip', ['-6', 'addr', 'add', `${V_HOST6}/64`, 'dev', VHOST, 'nodad']);
        sh('ip', ['link', 'set', VHOST, 'up']);
        inNs('ip', 'addr', 'add', `${V_EP4}/24`, 'dev', VPEER);
        inNs('ip', '-6', 'addr', 'add', `${V_EP6}/64`, 'dev', VPEER, 'nodad');
        inNs('ip', 'link', 'set', VPEER, 'up');
      } else {
        // the pair as the agent makes it (addresses, routes, gateway neighbours); the host's addresses
        // for this test on the netkit primary
        nkSpec = { hostIfname: VHOST, alias: `kitnet:test/l2-${vtag}${m}`, netnsPath: `/var/run/netns/${VNS}`, peerIfname: VPEER, mode, ipv4: V_EP4, ipv6: V_EP6 };
        const d = await endpointDeviceCreate(nkSpec);
        sh('ip', ['addr', 'add', `${V_HOST4}/32`, 'dev', VHOST]);
        sh('ip', ['-6', 'addr', 'add', `${V_HOST6}/128`, 'dev', VHOST, 'nodad']);
        if (mode === 'netkit') flags = EP_F_ENFORCE_SRC_IP;
        else responderMac = d.hostMac;
      }
      ifindex = ifindexOf(VHOST);
      hostMac = readFileSync(`/sys/class/net/${VHOST}/address`, 'utf8').trim();
      epMac = inNs('cat', `/sys/class/net/${VPEER}/address`).trim();

      dp = await datapathLoad({ pinRoot });
      sink = new EventSink(dp);
      dp.endpointUpsert(ifindex, { ...V_EP, ipv4: V_EP4, ipv6: V_EP6, mac: epMac, flags, ...(responderMac ? { hostMac: responderMac } : {}) });
      policyAllowAll(dp, V_EP.endpointId);
      dp.ipcacheUpsert(`${V_HOST4}/32`, { identity: IDENTITY_HOST, hostId: 0 });
      dp.ipcacheUpsert(`${V_HOST6}/128`, { identity: IDENTITY_HOST, hostId: 0 });
      dp.ipcacheUpsert(`${V_EP4}/32`, { identity: V_EP.identity, hostId: 0 });
      dp.ipcacheUpsert(`${V_EP6}/128`, { identity: V_EP.identity, hostId: 0 });
      await dp.attach({ ifname: VHOST, ifindex, kind: mode === 'veth' ? 'tcx' : 'netkit' });
      if (nkSpec) await endpointDeviceOpen(nkSpec);
      listeners.push(await Listener.open(V_HOST4), await Listener.open(V_HOST6));
    });
    after(cleanup);

    /** A datagram to the host's listener as an Ethernet payload (EtherType + packet). */
    function datagram(family: 4 | 6, src: string, data: string): { type: number; packet: Buffer } {
      const l = listeners[family === 4 ? 0 : 1]!;
      return udpPacket(src, family === 4 ? V_HOST4 : V_HOST6, l.port, data);
    }

    /**
     * Sends `attack` (built around a datagram from `src`) and then a plain control datagram from the
     * workload's own address; returns what send() said of the attack, the attack datagrams the host's
     * socket received once the control arrived, and the flow events of the attack.
     */
    async function attempt(family: 4 | 6, src: string, build: (d: { type: number; packet: Buffer }) => Buffer) {
      assert.ok(dp && sink);
      const id = `${process.pid}-${++seq}`;
      const l = listeners[family === 4 ? 0 : 1]!;
      const own = family === 4 ? V_EP4 : V_EP6;
      const control = datagram(family, own, `control-${id}`);
      await sink.drain(0);
      const sent = framesSend(VNS, VPEER, [build(datagram(family, src, `attack-${id}`)), frame(hostMac, epMac, [], control.type, control.packet)]);
      assert.equal(sent[1], 'sent', 'send() of the control');
      const got = await l.until(`control-${id}`);
      assert.ok(got.some((g) => g.data === `control-${id}` && g.from === own), 'the control datagram arrives (the path and the listener work)');
      const evs = await sink.waitFor((e) => e.some((x) => x.verdict === 'DROPPED'));
      return { sent: sent[0], delivered: got.filter((g) => g.data === `attack-${id}`), drops: evs.filter((x) => x.verdict === 'DROPPED') };
    }

    const dropView = (e: FlowEvent) => [e.direction, e.dropReason, e.etherType, e.family, e.srcAddr, e.endpointId, e.srcIdentity];

    test('ping through the programs (ARP and IP pass)', () => {
      assert.ok(ping(V_EP4, 1) && ping(V_EP6, 1));
    });

    for (const family of [4, 6] as const) {
      test(`802.1ad VID 0 + 802.1Q VID 0 around IPv${family} with a forged source: dropped (UNSUPPORTED_L3_PROTOCOL), not delivered`, async () => {
        const forged = family === 4 ? V_FORGED4 : V_FORGED6;
        const r = await attempt(family, forged, (d) => frame(hostMac, epMac, [[ETH_P_8021AD, 0], [ETH_P_8021Q, 0]], d.type, d.packet));
        assert.deepEqual(r.delivered, [], 'the host received a datagram with the forged source');
        assert.equal(r.sent, droppedSend, 'send() of the attack');
        assert.deepEqual(r.drops.map(dropView), [['EGRESS', DROP_REASON.UNSUPPORTED_L3_PROTOCOL, ETH_P_8021AD, family, forged, V_EP.endpointId, V_EP.identity]]);
      });

      test(`802.1Q VID 0 around IPv${family}, forged or the workload's own source: dropped, not delivered`, async () => {
        for (const src of family === 4 ? [V_FORGED4, V_EP4] : [V_FORGED6, V_EP6]) {
          const r = await attempt(family, src, (d) => frame(hostMac, epMac, [[ETH_P_8021Q, 0]], d.type, d.packet));
          assert.deepEqual(r.delivered, [], src);
          assert.equal(r.sent, droppedSend, `send() of the attack from ${src}`);
          assert.deepEqual(r.drops.map(dropView), [['EGRESS', DROP_REASON.UNSUPPORTED_L3_PROTOCOL, ETH_P_8021Q, family, src, V_EP.endpointId, V_EP.identity]], src);
        }
      });
    }

    test('three tags, other EtherTypes and 802.3 frames are dropped with a reason and a flow', async () => {
      assert.ok(dp && sink);
      const d = udpPacket(V_FORGED4, V_HOST4, 9, 'x');
      const cases: Array<[string, Buffer, number, number]> = [
        ['three VID 0 tags', frame(hostMac, epMac, [[ETH_P_8021AD, 0], [ETH_P_8021Q, 0], [ETH_P_8021Q, 0]], d.type, d.packet), DROP_REASON.UNSUPPORTED_L3_PROTOCOL, ETH_P_8021AD],
        ['IPv4 under a local experimental EtherType', frame(hostMac, epMac, [], 0x88b5, d.packet), DROP_REASON.UNSUPPORTED_L3_PROTOCOL, 0x88b5],
        ['LLDP', frame('01:80:c2:00:00:0e', epMac, [], 0x88cc, Buffer.alloc(32)), DROP_REASON.UNSUPPORTED_L3_PROTOCOL, 0x88cc],
        ['802.3 / LLC (length 38)', frame(hostMac, epMac, [], 38, Buffer.alloc(46)), DROP_REASON.UNSUPPORTED_L2_PROTOCOL, 38],
      ];
      for (const [what, f, reason, type] of cases) {
        await sink.drain(0);
        const dropped: bigint = dp.metricsRead().EGRESS_DROPPED.packets;
        assert.deepEqual(framesSend(VNS, VPEER, [f]), [droppedSend], what);
        const evs = await sink.waitFor((e) => e.some((x) => x.verdict === 'DROPPED'));
        assert.deepEqual(evs.filter((x) => x.verdict === 'DROPPED').map((e) => [e.direction, e.dropReason, e.etherType, e.endpointId]), [['EGRESS', reason, type, V_EP.endpointId]], what);
        assert.equal(dp.metricsRead().EGRESS_DROPPED.packets, dropped + 1n, what);
      }
    });

    test('towards the workload too: a double-tagged frame sent on the host side is dropped (INGRESS)', async () => {
      assert.ok(dp && sink);
      await sink.drain(0);
      const d = udpPacket(V_HOST4, V_EP4, 9, 'x');
      const sent = framesSend(undefined, VHOST, [frame(epMac, hostMac, [[ETH_P_8021AD, 0], [ETH_P_8021Q, 0]], d.type, d.packet)]);
      if (mode === 'veth') assert.deepEqual(sent, ['ENOBUFS'], 'tcx egress dropped the frame');
      const evs = await sink.waitFor((e) => e.some((x) => x.verdict === 'DROPPED'));
      assert.deepEqual(
        evs.filter((x) => x.verdict === 'DROPPED').map((e) => [e.direction, e.dropReason, e.etherType, e.family, e.srcAddr, e.dstAddr, e.srcIdentity, e.dstIdentity]),
        [['INGRESS', DROP_REASON.UNSUPPORTED_L3_PROTOCOL, ETH_P_8021AD, 4, V_HOST4, V_EP4, IDENTITY_HOST, V_EP.identity]],
      );
    });
  });
}

const netkitHere = await kernelHasNetkit();
nonIpSuite('veth', 247, false);
nonIpSuite('netkit', 246, !netkitHere && 'no netkit in this kernel (the lab VM has it)');
nonIpSuite('netkit-l2', 245, !netkitHere && 'no netkit in this kernel (the lab VM has it)');
