// Policy enforcement on crafted packets (BPF_PROG_TEST_RUN), IPv4 and IPv6: allow/deny by remote
// identity, the identity-0 wildcard, protocol-any, port prefixes, ICMP types in the port slot, deny over
// allow, default deny, conntrack (replies of allowed connections pass, replies of denied ones do not;
// ICMP errors of tracked connections pass), neighbour discovery and ARP bypass, drop events and metrics.
// One test writes the entries of the real policy compiler and checks the datapath against its oracle.
// Real kernel, temporary pin root; the skb appears on `lo` (ifindex 1) with this test's own maps.
import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import { identityLabels, labelFormat } from '../../common/labels.js';
import { reservedIdentityLabels } from '../../agent/identity/reserved.js';
import { policiesParse, policyCompile, policyDecide, policyEntriesEncode } from '../../agent/policy/index.js';
import type { FlowEvent, KitnetDatapath, PolicyEntryFields } from '../../bpf/index.js';
import { DROP_REASON } from '../../bpf/index.js';
import { ipv4Parse, ipv6Parse } from '../../bpf/addr.js';
import { structEncode } from '../../bpf/layout.js';
import { CT_ENTRY, CT_KEY, DIR_EGRESS, IDENTITY_HOST, TCX_DROP, TCX_PASS } from '../../bpf/layout.gen.js';
import { BpfMap } from '../../bpf/maps/map.js';
import { native } from '../../common/native.js';
import type { EventSink } from './bpf-helpers.js';
import { ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, TCP, eth, fragHdr, icmp, ipv4, ipv6, tcp, udp, LO, testRunDatapathUse } from './bpf-helpers.js';

const EP = { endpointId: 21, identity: 300, ipv4: '10.252.0.2', ipv6: 'fd00:252::2', mac: '02:00:00:00:00:02', flags: 0 };
const CLIENT = 301; // identity of REMOTE4 / REMOTE6
const OTHER = 302; // identity of OTHER4 / OTHER6
const REMOTE4 = '10.253.0.9';
const REMOTE6 = 'fd00:253::9';
const OTHER4 = '10.253.1.9';
const OTHER6 = 'fd00:253:1::9';
const WORLD4 = '192.0.2.1';
const WORLD6 = '2001:db8::1';
const HOST6 = 'fd00:252:9::1'; // an address of this host (ipcache: host)

type Prog = 'from_workload' | 'to_workload';
type Entry = Omit<PolicyEntryFields, 'deny'> & { deny?: boolean };

const ANY_PROTO = { protocol: 0, port: 0, portPrefixLen: 0 };
const sctp = (sport: number, dport: number) => udp(sport, dport); // same first 4 bytes: ports

describe('policy enforcement (BPF_PROG_TEST_RUN)', { timeout: 120_000 }, () => {
  let dp: KitnetDatapath;
  let sink: EventSink;
  const pinRoot = testRunDatapathUse('policy', EP, (d, s) => {
    dp = d;
    sink = s;
    dp.ipcacheUpsert(`${REMOTE4}/32`, { identity: CLIENT, hostId: 0 });
    dp.ipcacheUpsert(`${REMOTE6}/128`, { identity: CLIENT, hostId: 0 });
    dp.ipcacheUpsert(`${OTHER4}/32`, { identity: OTHER, hostId: 0 });
    dp.ipcacheUpsert(`${OTHER6}/128`, { identity: OTHER, hostId: 0 });
    dp.ipcacheUpsert(`${HOST6}/128`, { identity: IDENTITY_HOST, hostId: 0 });
  });
  beforeEach(() => {
    dp.policyClear();
    dp.conntrackFlush();
  });

  function setPolicy(entries: Entry[]): void {
    dp.policyClear(EP.endpointId);
    dp.policyApply(
      EP.endpointId,
      entries.map((e) => ({ op: 'upsert' as const, entry: { deny: false, ...e } })),
    );
  }

  async function run(prog: Prog, frame: Buffer): Promise<{ retval: number; events: FlowEvent[] }> {
    const { retval } = dp.testRun(prog, frame, { ifindex: LO });
    return { retval, events: await sink.settle() };
  }

  /** Runs and returns 'PASS' or the drop reason; a drop must come with exactly one DROPPED event. */
  async function verdict(prog: Prog, frame: Buffer): Promise<'PASS' | number> {
    const r = await run(prog, frame);
    if (r.retval === TCX_PASS) {
      assert.ok(r.events.every((e) => e.verdict === 'FORWARDED'), 'forwarded packets have no drop events');
      return 'PASS';
    }
    assert.equal(r.retval, TCX_DROP);
    assert.equal(r.events.length, 1, 'one drop event');
    const e = r.events[0]!;
    assert.equal(e.verdict, 'DROPPED');
    assert.equal(e.reportReason, 'DROP');
    return e.dropReason;
  }

  const v4 = (src: string, dst: string, proto: number, l4: Buffer) => eth(ETH_P_IP, ipv4(src, dst, proto, l4));
  const v6 = (src: string, dst: string, proto: number, l4: Buffer) => eth(ETH_P_IPV6, ipv6(src, dst, proto, l4));
  const DENIED = DROP_REASON.POLICY_DENIED;
  const DENY = DROP_REASON.POLICY_DENY;

  test('allow by remote identity and port; everything else is denied (133) with a DROPPED event', async () => {
    setPolicy([{ direction: 'egress', identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16 }]);
    assert.equal(await verdict('from_workload', v4(EP.ipv4, REMOTE4, 6, tcp(40000, 443, TCP.SYN))), 'PASS');
    assert.equal(await verdict('from_workload', v6(EP.ipv6, REMOTE6, 6, tcp(40000, 443, TCP.SYN))), 'PASS');
    assert.equal(await verdict('from_workload', v4(EP.ipv4, REMOTE4, 6, tcp(40001, 444, TCP.SYN))), DENIED);
    assert.equal(await verdict('from_workload', v4(EP.ipv4, OTHER4, 6, tcp(40002, 443, TCP.SYN))), DENIED);
    assert.equal(await verdict('from_workload', v4(EP.ipv4, REMOTE4, 17, udp(40003, 443))), DENIED);

    const r = await run('from_workload', v6(EP.ipv6, WORLD6, 6, tcp(40004, 443, TCP.SYN)));
    assert.equal(r.retval, TCX_DROP);
    assert.deepEqual(
      r.events.map((e) => [e.verdict, e.dropReason, e.direction, e.srcIdentity, e.dstIdentity, e.dstPort, e.endpointId, e.isReply]),
      [['DROPPED', DENIED, 'EGRESS', EP.identity, 10, 443, EP.endpointId, false]],
      'unknown IPv6 remotes are world-ipv6 (10)',
    );
    // ingress has no entry at all: default deny
    assert.equal(await verdict('to_workload', v4(REMOTE4, EP.ipv4, 6, tcp(5555, 443, TCP.SYN))), DENIED);
  });

  test('identity 0 matches any remote; protocol-any matches every protocol (v4 and v6)', async () => {
    setPolicy([
      { direction: 'ingress', identity: 0, protocol: 17, port: 53, portPrefixLen: 16 },
      { direction: 'egress', identity: CLIENT, ...ANY_PROTO },
    ]);
    for (const [src4, src6] of [[REMOTE4, REMOTE6], [OTHER4, OTHER6], [WORLD4, WORLD6]] as const) {
      assert.equal(await verdict('to_workload', v4(src4, EP.ipv4, 17, udp(1000, 53))), 'PASS', src4);
      assert.equal(await verdict('to_workload', v6(src6, EP.ipv6, 17, udp(1000, 53))), 'PASS', src6);
      assert.equal(await verdict('to_workload', v4(src4, EP.ipv4, 6, tcp(1000, 53, TCP.SYN))), DENIED, `${src4} tcp`);
    }
    let port = 2000;
    for (const [proto, l4] of [[6, () => tcp(port, 80, TCP.SYN)], [17, () => udp(port, 9999)], [132, () => sctp(port, 3868)]] as const) {
      port++;
      assert.equal(await verdict('from_workload', v4(EP.ipv4, REMOTE4, proto, l4())), 'PASS', `v4 proto ${proto}`);
      assert.equal(await verdict('from_workload', v6(EP.ipv6, REMOTE6, proto, l4())), 'PASS', `v6 proto ${proto}`);
      assert.equal(await verdict('from_workload', v4(EP.ipv4, OTHER4, proto, l4())), DENIED, `other remote proto ${proto}`);
    }
    assert.equal(await verdict('from_workload', v4(EP.ipv4, REMOTE4, 1, icmp(8, 0, 1))), 'PASS');
    assert.equal(await verdict('from_workload', v4(EP.ipv4, REMOTE4, 47, Buffer.alloc(8))), 'PASS', 'GRE: any protocol');
  });

  test('port prefixes: a range compiled to prefixes matches exactly its ports', async () => {
    // 8000-8063 is 8000/10.. : 8000-8031 (/11) + 8032-8063 (/11); plus protocol-wide UDP
    setPolicy([
      { direction: 'ingress', identity: CLIENT, protocol: 6, port: 8000, portPrefixLen: 11 },
      { direction: 'ingress', identity: CLIENT, protocol: 6, port: 8032, portPrefixLen: 11 },
      { direction: 'ingress', identity: CLIENT, protocol: 17, port: 0, portPrefixLen: 0 },
    ]);
    for (const [dport, want] of [[7999, DENIED], [8000, 'PASS'], [8031, 'PASS'], [8032, 'PASS'], [8063, 'PASS'], [8064, DENIED]] as const) {
      assert.equal(await verdict('to_workload', v4(REMOTE4, EP.ipv4, 6, tcp(30000 + dport, dport, TCP.SYN))), want, `tcp ${dport}`);
      assert.equal(await verdict('to_workload', v6(REMOTE6, EP.ipv6, 6, tcp(30000 + dport, dport, TCP.SYN))), want, `v6 tcp ${dport}`);
    }
    assert.equal(await verdict('to_workload', v4(REMOTE4, EP.ipv4, 17, udp(1, 65535))), 'PASS');
    assert.equal(await verdict('to_workload', v4(REMOTE4, EP.ipv4, 132, sctp(1, 8000))), DENIED);
  });

  test('ICMP type in the port slot (ICMPv4 echo, ICMPv6 echo); echo replies pass through conntrack', async () => {
    setPolicy([
      { direction: 'ingress', identity: 0, protocol: 1, port: 8, portPrefixLen: 16 },
      { direction: 'ingress', identity: 0, protocol: 58, port: 128, portPrefixLen: 16 },
      { direction: 'egress', identity: CLIENT, protocol: 1, port: 8, portPrefixLen: 16 },
      { direction: 'egress', identity: CLIENT, protocol: 58, port: 128, portPrefixLen: 16 },
    ]);
    assert.equal(await verdict('to_workload', v4(WORLD4, EP.ipv4, 1, icmp(8, 0, 0x11))), 'PASS');
    assert.equal(await verdict('to_workload', v4(WORLD4, EP.ipv4, 1, icmp(13, 0, 0x11))), DENIED, 'timestamp request');
    assert.equal(await verdict('from_workload', v4(EP.ipv4, WORLD4, 1, icmp(0, 0, 0x11))), 'PASS', 'echo reply via CT (egress has no such entry)');
    assert.equal(await verdict('to_workload', v6(WORLD6, EP.ipv6, 58, icmp(128, 0, 0x12))), 'PASS');
    assert.equal(await verdict('to_workload', v6(WORLD6, EP.ipv6, 58, icmp(139, 0, 0x12))), DENIED, 'node information query');
    let r = await run('from_workload', v6(EP.ipv6, WORLD6, 58, icmp(129, 0, 0x12)));
    assert.deepEqual([r.retval, r.events.map((e) => [e.isReply, e.verdict])], [TCX_PASS, [[true, 'FORWARDED']]]);
    // an unsolicited echo reply is not a reply of anything: policy (no entry) denies it
    assert.equal(await verdict('from_workload', v6(EP.ipv6, WORLD6, 58, icmp(129, 0, 0x99))), DENIED);
    // outgoing pings to the client, and their replies
    assert.equal(await verdict('from_workload', v4(EP.ipv4, REMOTE4, 1, icmp(8, 0, 0x21))), 'PASS');
    r = await run('to_workload', v4(REMOTE4, EP.ipv4, 1, icmp(0, 0, 0x21)));
    assert.deepEqual([r.retval, r.events.map((e) => e.isReply)], [TCX_PASS, [true]]);
    assert.equal(await verdict('from_workload', v6(EP.ipv6, OTHER6, 58, icmp(128, 0, 0x22))), DENIED, 'not to OTHER');
  });

  test('deny wins over allow (181), from the identity entry and from the wildcard', async () => {
    setPolicy([
      { direction: 'ingress', identity: CLIENT, ...ANY_PROTO },
      { direction: 'ingress', identity: 0, protocol: 6, port: 22, portPrefixLen: 16, deny: true },
      { direction: 'ingress', identity: OTHER, protocol: 6, port: 80, portPrefixLen: 16 },
      { direction: 'ingress', identity: OTHER, protocol: 6, port: 0, portPrefixLen: 0, deny: true },
      { direction: 'ingress', identity: 0, protocol: 6, port: 80, portPrefixLen: 16 },
    ]);
    assert.equal(await verdict('to_workload', v4(REMOTE4, EP.ipv4, 6, tcp(1, 80, TCP.SYN))), 'PASS');
    assert.equal(await verdict('to_workload', v4(REMOTE4, EP.ipv4, 6, tcp(1, 22, TCP.SYN))), DENY, 'wildcard deny beats identity allow');
    assert.equal(await verdict('to_workload', v6(REMOTE6, EP.ipv6, 6, tcp(1, 22, TCP.SYN))), DENY);
    // OTHER: tcp/80 is allowed by its longest match (tcp/80) and the wildcard -> pass; tcp/81 hits the deny
    assert.equal(await verdict('to_workload', v4(OTHER4, EP.ipv4, 6, tcp(2, 80, TCP.SYN))), 'PASS');
    assert.equal(await verdict('to_workload', v4(OTHER4, EP.ipv4, 6, tcp(2, 81, TCP.SYN))), DENY, 'identity deny');
    assert.equal(await verdict('to_workload', v4(WORLD4, EP.ipv4, 6, tcp(3, 80, TCP.SYN))), 'PASS', 'wildcard allow');
    assert.equal(await verdict('to_workload', v4(WORLD4, EP.ipv4, 6, tcp(3, 22, TCP.SYN))), DENY);
  });

  test('default deny: an endpoint without entries drops everything new, both directions', async () => {
    assert.equal(dp.policyList(EP.endpointId).length, 0);
    assert.equal(await verdict('from_workload', v4(EP.ipv4, REMOTE4, 17, udp(1, 2))), DENIED);
    assert.equal(await verdict('to_workload', v6(REMOTE6, EP.ipv6, 17, udp(1, 2))), DENIED);
    assert.equal(await verdict('to_workload', v4(REMOTE4, EP.ipv4, 1, icmp(8, 0, 5))), DENIED);
    assert.equal(dp.conntrackList().length, 0, 'denied packets leave no conntrack entry');
    const m = dp.metricsRead();
    assert.ok(m.POLICY_DENIED.packets >= 3n);
    assert.ok(m.INGRESS_DROPPED.packets >= 2n && m.EGRESS_DROPPED.packets >= 1n);
  });

  test('conntrack: replies of an allowed connection pass (TCP, UDP, SCTP; v4, v6); replies of a denied one do not', async () => {
    setPolicy([
      { direction: 'egress', identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16 },
      { direction: 'egress', identity: CLIENT, protocol: 17, port: 53, portPrefixLen: 16 },
      { direction: 'egress', identity: CLIENT, protocol: 132, port: 3868, portPrefixLen: 16 },
    ]);
    const cases = [
      ['v4', EP.ipv4, REMOTE4, v4],
      ['v6', EP.ipv6, REMOTE6, v6],
    ] as const;
    for (const [fam, me, peer, mk] of cases) {
      // TCP handshake and data
      assert.equal(await verdict('from_workload', mk(me, peer, 6, tcp(41000, 443, TCP.SYN))), 'PASS');
      const synack = await run('to_workload', mk(peer, me, 6, tcp(443, 41000, TCP.SYN | TCP.ACK)));
      assert.deepEqual([synack.retval, synack.events.map((e) => [e.isReply, e.verdict])], [TCX_PASS, [[true, 'FORWARDED']]], `${fam} SYN|ACK`);
      assert.equal(await verdict('from_workload', mk(me, peer, 6, tcp(41000, 443, TCP.ACK))), 'PASS');
      assert.equal(await verdict('to_workload', mk(peer, me, 6, tcp(443, 41000, TCP.ACK | TCP.PSH))), 'PASS');
      // UDP and SCTP replies
      assert.equal(await verdict('from_workload', mk(me, peer, 17, udp(41001, 53))), 'PASS');
      assert.equal(await verdict('to_workload', mk(peer, me, 17, udp(53, 41001))), 'PASS', `${fam} UDP reply`);
      assert.equal(await verdict('from_workload', mk(me, peer, 132, sctp(41002, 3868))), 'PASS');
      assert.equal(await verdict('to_workload', mk(peer, me, 132, sctp(3868, 41002))), 'PASS', `${fam} SCTP reply`);
      // a new connection from the peer to us is not a reply: denied (ingress has no entries)
      assert.equal(await verdict('to_workload', mk(peer, me, 6, tcp(443, 41099, TCP.SYN))), DENIED);
      // denied SYN: its SYN|ACK must not pass either
      assert.equal(await verdict('from_workload', mk(me, peer, 6, tcp(41003, 8443, TCP.SYN))), DENIED);
      assert.equal(await verdict('to_workload', mk(peer, me, 6, tcp(8443, 41003, TCP.SYN | TCP.ACK))), DENIED, `${fam} reply of a denied SYN`);
      assert.equal(await verdict('to_workload', mk(peer, me, 17, udp(54, 41001))), DENIED, `${fam} UDP from another port`);
    }
    const ct = dp.conntrackList();
    assert.equal(ct.length, 6, 'one entry per allowed connection, none for denied ones');
    assert.ok(ct.every((e) => e.direction === 'EGRESS'));
  });

  test('conntrack entries of the previous key layout (direction-keyed) keep their replies flowing', async () => {
    // What a datapath before the direction-normalised key left in the pinned map: the creating packet's
    // tuple and its direction in the key (v1_direction), nothing in the entry's direction.
    setPolicy([{ direction: 'egress', identity: CLIENT, protocol: 6, port: 443, portPrefixLen: 16 }]);
    const fd = native().objGet(`${pinRoot}/maps/conntrack`);
    try {
      const map = new BpfMap('conntrack', fd);
      const v1 = (src: Uint8Array, dst: Uint8Array, sport: number, dport: number, family: number) =>
        structEncode(CT_KEY, { laddr: src, raddr: dst, lport: sport, rport: dport, protocol: 6, family, v1_direction: DIR_EGRESS });
      const now = process.hrtime.bigint(); // CLOCK_MONOTONIC, the datapath's clock
      const entry = structEncode(CT_ENTRY, { last_seen_ns: now, last_report_ns: now, packets: 3n, bytes: 180n, tx_flags_seen: TCP.SYN | TCP.ACK, rx_flags_seen: TCP.SYN | TCP.ACK, flags: 8 });
      map.update(v1(ipv4Parse(EP.ipv4), ipv4Parse(REMOTE4), 43000, 443, 4), entry);
      map.update(v1(ipv6Parse(EP.ipv6), ipv6Parse(REMOTE6), 43000, 443, 6), entry);
    } finally {
      native().fdClose(fd);
    }
    assert.equal(await verdict('to_workload', v4(REMOTE4, EP.ipv4, 6, tcp(443, 43000, TCP.ACK))), 'PASS', 'v4 reply');
    assert.equal(await verdict('to_workload', v6(REMOTE6, EP.ipv6, 6, tcp(443, 43000, TCP.ACK))), 'PASS', 'v6 reply');
    // a bare SYN is never a reply (and does not look at the old layout): policy decides
    assert.equal(await verdict('to_workload', v4(REMOTE4, EP.ipv4, 6, tcp(443, 43000, TCP.SYN))), DENIED);
    const listed = dp.conntrackList().filter((e) => e.srcPort === 43000);
    assert.deepEqual(listed.map((e) => [e.direction, e.srcAddr, e.dstAddr, e.dstPort]).sort(), [
      ['EGRESS', EP.ipv4, REMOTE4, 443],
      ['EGRESS', EP.ipv6, REMOTE6, 443],
    ]);
  });

  test('ICMP errors about a tracked connection pass; unrelated errors go through policy', async () => {
    setPolicy([{ direction: 'egress', identity: 0, protocol: 17, port: 0, portPrefixLen: 0 }]);
    // workload -> world UDP; the router answers port unreachable / time exceeded / packet too big
    const out4 = ipv4(EP.ipv4, WORLD4, 17, udp(42000, 33434));
    const out6 = ipv6(EP.ipv6, WORLD6, 17, udp(42000, 33434));
    assert.equal(await verdict('from_workload', eth(ETH_P_IP, out4)), 'PASS');
    assert.equal(await verdict('from_workload', eth(ETH_P_IPV6, out6)), 'PASS');
    const err4 = (type: number, code: number, quoted: Buffer) => Buffer.concat([icmp(type, code).subarray(0, 8), quoted.subarray(0, 28)]);
    const err6 = (type: number, quoted: Buffer) => Buffer.concat([icmp(type, 0).subarray(0, 8), quoted.subarray(0, 48)]);
    let r = await run('to_workload', v4('198.51.100.1', EP.ipv4, 1, err4(3, 3, out4)));
    assert.deepEqual([r.retval, r.events.map((e) => [e.icmpType, e.isReply, e.verdict])], [TCX_PASS, [[3, true, 'FORWARDED']]]);
    assert.equal(await verdict('to_workload', v4('198.51.100.1', EP.ipv4, 1, err4(11, 0, out4))), 'PASS', 'time exceeded');
    assert.equal(await verdict('to_workload', v6('2001:db8:ff::1', EP.ipv6, 58, err6(2, out6))), 'PASS', 'packet too big');
    assert.equal(await verdict('to_workload', v6('2001:db8:ff::1', EP.ipv6, 58, err6(1, out6))), 'PASS', 'v6 unreachable');
    // quoting a packet of no tracked connection: policy decides (no ingress entries: denied)
    const stranger4 = ipv4(EP.ipv4, WORLD4, 17, udp(42001, 33434));
    assert.equal(await verdict('to_workload', v4('198.51.100.1', EP.ipv4, 1, err4(3, 3, stranger4))), DENIED);
    const stranger6 = ipv6(EP.ipv6, WORLD6, 6, tcp(42000, 33434, TCP.SYN));
    assert.equal(await verdict('to_workload', v6('2001:db8:ff::1', EP.ipv6, 58, err6(1, stranger6))), DENIED);

    // the workload answers an allowed incoming UDP packet with port unreachable (error in the reply direction)
    setPolicy([{ direction: 'ingress', identity: CLIENT, protocol: 17, port: 0, portPrefixLen: 0 }]);
    const in4 = ipv4(REMOTE4, EP.ipv4, 17, udp(5000, 6000));
    assert.equal(await verdict('to_workload', eth(ETH_P_IP, in4)), 'PASS');
    r = await run('from_workload', v4(EP.ipv4, REMOTE4, 1, err4(3, 3, in4)));
    assert.deepEqual([r.retval, r.events.map((e) => e.isReply)], [TCX_PASS, [true]]);
    assert.ok(dp.metricsRead().POLICY_BYPASS.packets >= 5n);
  });

  test('fragments: later fragments follow their first fragment (conntrack and policy see its ports)', async () => {
    setPolicy([{ direction: 'egress', identity: CLIENT, protocol: 17, port: 53, portPrefixLen: 16 }]);
    const body = Buffer.alloc(64);
    // IPv4: a fragmented query out, a fragmented answer back
    const q1 = eth(ETH_P_IP, ipv4(EP.ipv4, REMOTE4, 17, udp(43000, 53, Buffer.alloc(40)), { mf: true, id: 0x1234 }));
    const q2 = eth(ETH_P_IP, ipv4(EP.ipv4, REMOTE4, 17, body, { fragOff: 48, id: 0x1234 }));
    assert.equal(await verdict('from_workload', q1), 'PASS');
    let r = await run('from_workload', q2);
    assert.equal(r.retval, TCX_PASS, 'later fragment of an allowed query');
    const a1 = eth(ETH_P_IP, ipv4(REMOTE4, EP.ipv4, 17, udp(53, 43000, Buffer.alloc(40)), { mf: true, id: 0x99 }));
    const a2 = eth(ETH_P_IP, ipv4(REMOTE4, EP.ipv4, 17, body, { fragOff: 48, id: 0x99 }));
    assert.equal(await verdict('to_workload', a1), 'PASS', 'first fragment of the answer: a reply');
    r = await run('to_workload', a2);
    assert.equal(r.retval, TCX_PASS, 'later fragment of the answer');
    // a later fragment of a datagram never seen: no ports, and no UDP-wide entry -> denied
    assert.equal(await verdict('to_workload', eth(ETH_P_IP, ipv4(REMOTE4, EP.ipv4, 17, body, { fragOff: 48, id: 0x77 }))), DENIED);
    // the first fragment of a denied datagram is dropped, and so are its later fragments
    assert.equal(await verdict('from_workload', eth(ETH_P_IP, ipv4(EP.ipv4, REMOTE4, 17, udp(43001, 54, Buffer.alloc(40)), { mf: true, id: 0x55 }))), DENIED);
    assert.equal(await verdict('from_workload', eth(ETH_P_IP, ipv4(EP.ipv4, REMOTE4, 17, body, { fragOff: 48, id: 0x55 }))), DENIED);

    // IPv6 fragment headers
    const f6 = (src: string, dst: string, l4: Buffer, off: number, more: boolean, id: number) => eth(ETH_P_IPV6, ipv6(src, dst, 17, l4, [[44, fragHdr(off, more, id)]]));
    assert.equal(await verdict('from_workload', f6(EP.ipv6, REMOTE6, udp(43002, 53, Buffer.alloc(40)), 0, true, 0xabcdef01)), 'PASS');
    assert.equal((await run('from_workload', f6(EP.ipv6, REMOTE6, body, 48, false, 0xabcdef01))).retval, TCX_PASS);
    assert.equal(await verdict('to_workload', f6(REMOTE6, EP.ipv6, udp(53, 43002, Buffer.alloc(40)), 0, true, 7)), 'PASS');
    assert.equal((await run('to_workload', f6(REMOTE6, EP.ipv6, body, 48, false, 7))).retval, TCX_PASS);
    assert.equal(await verdict('to_workload', f6(REMOTE6, EP.ipv6, body, 48, false, 8)), DENIED);
    assert.ok(dp.metricsRead().FRAG_UNKNOWN.packets >= 2n);
  });

  test('neighbour discovery and ARP bypass policy (no entries at all): ND only on the link, hop limit 255, as the kernel sends it', async () => {
    assert.equal(dp.policyList(EP.endpointId).length, 0);
    const nd = (src: string, dst: string, type: number, hop = 255) => eth(ETH_P_IPV6, ipv6(src, dst, 58, icmp(type, 0), [], hop));
    const out: Array<[string, string, string, number]> = [
      ['RS to all-routers', 'fe80::2', 'ff02::2', 133],
      ['RS from ::', '::', 'ff02::2', 133],
      ['NS to a solicited-node group', 'fe80::2', 'ff02::1:ff00:1', 135],
      ['NS from the global address', EP.ipv6, 'ff02::1:ff00:1', 135],
      ['DAD NS from ::', '::', 'ff02::1:ff00:2', 135],
      ['NUD NS to the gateway', 'fe80::2', 'fe80::1', 135],
      ['NA to the host\'s link-local address', 'fe80::2', 'fe80::1234', 136],
      ['unsolicited NA to all-nodes', EP.ipv6, 'ff02::1', 136],
      // the host solicits from an address its side of the device carries, when it has one
      ['NA to an address of this host', EP.ipv6, HOST6, 136],
      ['NS to an address of this host', 'fe80::2', HOST6, 135],
    ];
    for (const [what, src, dst, type] of out) {
      const r = await run('from_workload', nd(src, dst, type));
      assert.deepEqual([r.retval, r.events.length], [TCX_PASS, 0], `out: ${what} (not reported when aggregating)`);
    }
    // what the host sends a workload: from a link-local address (never forwarded), hop limit 255
    const into: Array<[string, string, string, number]> = [
      ['RA from the gateway to all-nodes (agent/addressing/ra.ts)', 'fe80::1', 'ff02::1', 134],
      ['NS from the host to a solicited-node group', 'fe80::1234', 'ff02::1:ff00:2', 135],
      ['NUD NS from the host to the workload\'s address', 'fe80::1234', EP.ipv6, 135],
      ['DAD NS of the host', '::', 'ff02::1:ff00:1234', 135],
      ['NA from the gateway (the responder\'s answer)', 'fe80::1', 'fe80::2', 136],
      ['NA to the workload\'s address', 'fe80::1', EP.ipv6, 136],
      ['NS from an address of this host', HOST6, EP.ipv6, 135],
      ['NA from an address of this host', HOST6, 'fe80::2', 136],
    ];
    for (const [what, src, dst, type] of into) {
      const r = await run('to_workload', nd(src, dst, type));
      assert.deepEqual([r.retval, r.events.length], [TCX_PASS, 0], `in: ${what}`);
    }
    assert.equal((await run('from_workload', eth(ETH_P_ARP, Buffer.alloc(28)))).retval, TCX_PASS);
    assert.equal((await run('to_workload', eth(ETH_P_ARP, Buffer.alloc(28)))).retval, TCX_PASS);
    assert.equal(await verdict('from_workload', v6('fe80::2', 'ff02::1', 58, icmp(128, 0))), DENIED, 'other ICMPv6 is policed');
  });

  test('ND types off the link, or not as ND sends them, are ICMPv6 like any other: policy decides (and reports); RA and redirects from a workload are dropped (176)', async () => {
    const payload = Buffer.from('exfiltrated through an ND message '.repeat(8));
    const nd = (src: string, dst: string, type: number, o: { hop?: number; code?: number; frag?: boolean } = {}) =>
      eth(ETH_P_IPV6, ipv6(src, dst, 58, Buffer.concat([icmp(type, o.code ?? 0), payload]), o.frag ? [[44, fragHdr(0, true, 0x77)]] : [], o.hop ?? 255));
    const FORBIDDEN = DROP_REASON.FORBIDDEN_ICMPV6_MESSAGE;
    // from the workload (default deny egress): a world host, another workload, the link
    const out: Array<[string, Buffer, number]> = [
      ['RA to a world host', nd(EP.ipv6, WORLD6, 134), FORBIDDEN],
      ['redirect to a world host', nd(EP.ipv6, WORLD6, 137), FORBIDDEN],
      ['RA to all-nodes', nd('fe80::2', 'ff02::1', 134), FORBIDDEN],
      ['redirect to the gateway', nd('fe80::2', 'fe80::1', 137), FORBIDDEN],
      ['RS to another workload', nd(EP.ipv6, REMOTE6, 133), DENIED],
      ['NS to another workload', nd(EP.ipv6, REMOTE6, 135), DENIED],
      ['NA to another workload', nd(EP.ipv6, REMOTE6, 136), DENIED],
      ['RS to an address of this host', nd(EP.ipv6, HOST6, 133), DENIED],
      ['NA to a world host', nd(EP.ipv6, WORLD6, 136), DENIED],
      ['NA to a global multicast group', nd(EP.ipv6, 'ff0e::1', 136), DENIED],
      ['NA to a link-local multicast group that is not ND\'s', nd('fe80::2', 'ff02::16', 136), DENIED],
      ['NS with hop limit 64', nd('fe80::2', 'ff02::1:ff00:1', 135, { hop: 64 }), DENIED],
      ['NS with code 1', nd('fe80::2', 'ff02::1:ff00:1', 135, { code: 1 }), DENIED],
      ['a fragmented NS (RFC 6980)', nd('fe80::2', 'ff02::1:ff00:1', 135, { frag: true }), DENIED],
    ];
    const outGot: Array<[string, 'PASS' | number]> = [];
    for (const [what, frame] of out) outGot.push([what, await verdict('from_workload', frame)]);
    assert.deepEqual(outGot, out.map(([what, , reason]) => [what, reason]), 'from the workload');
    // towards the workload (default deny ingress): only the host's own ND (link-local source) skips policy
    const into: Array<[string, Buffer]> = [
      ['RS from another workload', nd(REMOTE6, EP.ipv6, 133)],
      ['NA from another workload', nd(REMOTE6, EP.ipv6, 136)],
      ['NS from a world host', nd(WORLD6, EP.ipv6, 135)],
      ['RA from a world host', nd(WORLD6, EP.ipv6, 134)],
      ['RS from a link-local address', nd('fe80::1234', EP.ipv6, 133)],
      ['redirect from a link-local address', nd('fe80::1', EP.ipv6, 137)],
      ['NA from a link-local address, hop limit 254', nd('fe80::1', EP.ipv6, 136, { hop: 254 })],
      ['NA from a link-local address to another address', nd('fe80::1', OTHER6, 136)],
      ['RA from ::', nd('::', 'ff02::1', 134)],
      ['RA from an address of this host (RAs come from link-local addresses)', nd(HOST6, 'ff02::1', 134)],
      ['NS from an address of this host, hop limit 254', nd(HOST6, EP.ipv6, 135, { hop: 254 })],
    ];
    const inGot: Array<[string, 'PASS' | number]> = [];
    for (const [what, frame] of into) inGot.push([what, await verdict('to_workload', frame)]);
    assert.deepEqual(inGot, into.map(([what]) => [what, DENIED]), 'towards the workload');
    // allowed by policy: forwarded, and reported like any ICMPv6 (aggregated mode); RA still dropped
    setPolicy([{ direction: 'egress', identity: 0, protocol: 58, port: 0, portPrefixLen: 0 }]);
    const r = await run('from_workload', nd(EP.ipv6, REMOTE6, 136));
    assert.deepEqual([r.retval, r.events.map((e) => [e.verdict, e.icmpType, e.dstAddr])], [TCX_PASS, [['FORWARDED', 136, REMOTE6]]]);
    assert.equal(await verdict('from_workload', nd(EP.ipv6, REMOTE6, 134)), FORBIDDEN, 'RA, whatever policy allows');
  });

  test('policyApply / policyList / policyClear: raw writes, deletes, per-endpoint clear', () => {
    const e = { direction: 'ingress' as const, identity: 7, protocol: 6, port: 80, portPrefixLen: 16, deny: false };
    const [enc] = policyEntriesEncode(99, [{ ...e, rules: [] }]);
    let r = dp.policyApply([{ op: 'upsert', key: enc!.key, value: enc!.value }]);
    assert.deepEqual(r, { upserted: 1, deleted: 0, missing: 0 });
    dp.policyApply(EP.endpointId, [{ op: 'upsert', entry: { ...e, deny: true, cookie: 77 } }]);
    const l = dp.policyList(99);
    assert.equal(l.length, 1);
    assert.deepEqual(
      [l[0]!.endpointId, l[0]!.direction, l[0]!.identity, l[0]!.protocol, l[0]!.port, l[0]!.portPrefixLen, l[0]!.prefixLen, l[0]!.deny],
      [99, 'ingress', 7, 6, 80, 16, 96, false],
    );
    assert.deepEqual(l[0]!.key, enc!.key);
    assert.deepEqual(dp.policyList(EP.endpointId).map((x) => [x.deny, x.cookie]), [[true, 77]]);
    r = dp.policyApply([
      { op: 'delete', key: enc!.key },
      { op: 'delete', key: enc!.key },
    ]);
    assert.deepEqual(r, { upserted: 0, deleted: 1, missing: 1 });
    assert.equal(dp.policyList(99).length, 0);
    assert.equal(dp.policyClear(EP.endpointId), 1);
    assert.equal(dp.policyList().length, 0);
    assert.throws(() => dp.policyApply([{ op: 'upsert', key: Buffer.alloc(8), value: Buffer.alloc(8) }]), RangeError);
  });

  test('a large batch in one call (100k entries), listed and cleared', (ctx) => {
    const n = 100_000;
    const ops = Array.from({ length: n }, (_, i) => ({
      op: 'upsert' as const,
      entry: { direction: 'ingress' as const, identity: 1000 + (i >> 4), protocol: 6, port: 1000 + (i & 15), portPrefixLen: 16, deny: false },
    }));
    let t = process.hrtime.bigint();
    assert.equal(dp.policyApply(5000, ops).upserted, n);
    const applyMs = Number(process.hrtime.bigint() - t) / 1e6;
    t = process.hrtime.bigint();
    assert.equal(dp.policyList(5000).length, n);
    const listMs = Number(process.hrtime.bigint() - t) / 1e6;
    assert.equal(dp.policyClear(5000), n);
    ctx.diagnostic(`100k policy entries: apply ${applyMs.toFixed(0)} ms, list ${listMs.toFixed(0)} ms`);
  });

  test('entries from the real compiler: the datapath agrees with the compiler oracle (policyDecide)', async () => {
    const ids = new Map<number, string[]>();
    for (let i = 1; i <= 10; i++) ids.set(i, reservedIdentityLabels(i));
    ids.set(EP.identity, identityLabels({ app: 'web' }, 'prod').map(labelFormat));
    ids.set(CLIENT, identityLabels({ app: 'client' }, 'prod').map(labelFormat));
    ids.set(OTHER, identityLabels({ app: 'other' }, 'dev').map(labelFormat));
    const policies = policiesParse(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}, {port: "53", protocol: ANY}]}]
  - fromEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  egress:
  - toEndpoints: [{matchLabels: {app: client}}]
  - toEntities: [world]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "25", protocol: TCP}]}]
`);
    const state = policyCompile({ policies, identities: ids, endpoints: [{ endpointId: EP.endpointId, identity: EP.identity }] });
    const ep = state.endpoints[0]!;
    const applied = dp.policyApply(EP.endpointId, ep.entries.map((entry) => ({ op: 'upsert' as const, entry })));
    assert.equal(applied.upserted, ep.entries.length);
    assert.equal(dp.policyList(EP.endpointId).length, ep.entries.length);

    const peers = [
      { identity: CLIENT, a4: REMOTE4, a6: REMOTE6 },
      { identity: OTHER, a4: OTHER4, a6: OTHER6 },
      { identity: 9, a4: WORLD4, a6: '' },
      { identity: 10, a4: '', a6: WORLD6 },
    ];
    const probes: Array<[number, number]> = [
      [6, 80], [6, 443], [6, 7999], [6, 8000], [6, 8080], [6, 8100], [6, 8101], [6, 25], [17, 53], [17, 54], [132, 53], [1, 8], [1, 13], [58, 128], [58, 139],
    ];
    let sport = 20000;
    let checked = 0;
    for (const peer of peers) {
      for (const [proto, port] of probes) {
        for (const fam of [4, 6] as const) {
          const remote = fam === 4 ? peer.a4 : peer.a6;
          if (!remote || (proto === 1 && fam === 6) || (proto === 58 && fam === 4)) continue;
          const me = fam === 4 ? EP.ipv4 : EP.ipv6;
          const mk = fam === 4 ? v4 : v6;
          const l4 = () => (proto === 6 ? tcp(++sport, port, TCP.SYN) : proto === 1 || proto === 58 ? icmp(port, 0, ++sport) : udp(++sport, port));
          for (const dir of ['ingress', 'egress'] as const) {
            const want = policyDecide(state, ep, dir, peer.identity, proto, port);
            const got = dir === 'ingress' ? await verdict('to_workload', mk(remote, me, proto, l4())) : await verdict('from_workload', mk(me, remote, proto, l4()));
            assert.equal(got, want.verdict === 'ALLOWED' ? 'PASS' : want.dropReason, `${dir} ${peer.identity} v${fam} ${proto}/${port}`);
            checked++;
          }
        }
      }
    }
    assert.ok(checked > 100, `${checked} probes`);
  });
});
