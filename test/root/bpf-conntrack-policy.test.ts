// Conntrack and policy on crafted packets (BPF_PROG_TEST_RUN), IPv4 and IPv6, TCP and UDP: which
// tracked packets skip policy and which do not (bpf/include/conntrack.h). Replies pass; packets in the
// original direction pass on their entry only after it saw a reply and while the policy revision it was
// allowed at is current; a bare SYN never rides an unanswered entry; a policy drop leaves the entry as it
// was (replies keep passing, the original direction keeps being checked); unanswered entries live 60 s. The attacks of issue #12 item 2: a new connection reusing the 4-tuple of
// an unanswered attempt after the source's egress policy changed to deny, and an established connection
// after a policy (or the remote's identity) changed to deny it.
// Real kernel, temporary pin root; the skb appears on `lo` (ifindex 1) with this test's own maps.
import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import type { FlowEvent, KitnetDatapath, PolicyEntryFields } from '../../bpf/index.js';
import { DROP_REASON } from '../../bpf/index.js';
import { ipv4Parse, ipv6Parse } from '../../bpf/addr.js';
import { structDecode, structEncode } from '../../bpf/layout.js';
import { CT_ENTRY, CT_F_SEEN_REPLY, CT_KEY, DIR_EGRESS, DP_CONFIG, IDENTITY_HOST, TCX_DROP, TCX_PASS } from '../../bpf/layout.gen.js';
import { BpfMap } from '../../bpf/maps/map.js';
import { native } from '../../common/native.js';
import type { EventSink } from './bpf-helpers.js';
import { ETH_P_IP, ETH_P_IPV6, TCP, eth, icmp, ipv4, ipv6, tcp, udp, LO, testRunDatapathUse } from './bpf-helpers.js';

const EP = { endpointId: 23, identity: 310, ipv4: '10.254.0.2', ipv6: 'fd00:254::2', mac: '02:00:00:00:00:02', flags: 0 };
const PEER = 311; // identity of the remote addresses
const OTHER = 312;
const REMOTE = { 4: '10.254.1.9', 6: 'fd00:254:1::9' } as const;
// a second local workload (its own endpoint on the same maps: the conntrack table is shared)
const B = { endpointId: 24, identity: 314, ipv4: '10.254.0.3', ipv6: 'fd00:254::3', mac: '02:00:00:00:00:03', flags: 0 };
const WORLD = { 4: '192.0.2.1', 6: '2001:db8::1' } as const;
const ROUTER = { 4: '198.51.100.1', 6: '2001:db8:ff::1' } as const;
const HOST = { 4: '10.254.9.1', 6: 'fd00:254:9::1' } as const;

type Prog = 'from_workload' | 'to_workload';
type Family = 4 | 6;
type Entry = Omit<PolicyEntryFields, 'deny'> & { deny?: boolean };
const DENIED = DROP_REASON.POLICY_DENIED;
const DENY = DROP_REASON.POLICY_DENY;

describe('conntrack and policy (BPF_PROG_TEST_RUN)', { timeout: 120_000 }, () => {
  let dp: KitnetDatapath;
  let sink: EventSink;
  const pinRoot = testRunDatapathUse('ctpol', EP, (d, s) => {
    dp = d;
    sink = s;
  });
  beforeEach(() => {
    dp.policyClear();
    dp.conntrackFlush();
    dp.policyClear(B.endpointId);
    for (const f of [4, 6] as const) {
      const len = f === 4 ? 32 : 128;
      dp.ipcacheUpsert(`${REMOTE[f]}/${len}`, { identity: PEER, hostId: 0 });
      dp.ipcacheUpsert(`${f === 4 ? EP.ipv4 : EP.ipv6}/${len}`, { identity: EP.identity, hostId: 0 });
      dp.ipcacheUpsert(`${f === 4 ? B.ipv4 : B.ipv6}/${len}`, { identity: B.identity, hostId: 0 });
      dp.ipcacheUpsert(`${HOST[f]}/${len}`, { identity: IDENTITY_HOST, hostId: 0 });
    }
  });

  /** The endpoint's whole policy; an empty direction is default-deny there (no entry). */
  function setPolicy(entries: Entry[]): void {
    dp.policyClear(EP.endpointId);
    dp.policyApply(
      EP.endpointId,
      entries.map((e) => ({ op: 'upsert' as const, entry: { deny: false, ...e } })),
    );
  }
  const allow = (direction: 'egress' | 'ingress', protocol: number, port: number, identity = PEER): Entry => ({ direction, identity, protocol, port, portPrefixLen: 16 });

  /** Runs and returns 'PASS' or the drop reason; a drop must come with exactly one DROPPED event. */
  async function verdict(prog: Prog, frame: Buffer): Promise<'PASS' | number> {
    const { retval } = dp.testRun(prog, frame, { ifindex: LO });
    const events: FlowEvent[] = await sink.settle();
    if (retval === TCX_PASS) {
      assert.ok(events.every((e) => e.verdict === 'FORWARDED'), 'forwarded packets have no drop events');
      return 'PASS';
    }
    assert.equal(retval, TCX_DROP);
    assert.equal(events.length, 1, 'one drop event');
    assert.equal(events[0]!.verdict, 'DROPPED');
    assert.equal(events[0]!.reportReason, 'DROP');
    return events[0]!.dropReason;
  }

  const local = (f: Family) => (f === 4 ? EP.ipv4 : EP.ipv6);
  function pkt(f: Family, src: string, dst: string, l4: Buffer, proto: number): Buffer {
    return f === 4 ? eth(ETH_P_IP, ipv4(src, dst, proto, l4)) : eth(ETH_P_IPV6, ipv6(src, dst, proto, l4));
  }
  /** A packet of the connection workload:lport <-> remote:rport, `out` = from the workload. */
  const tcpOut = (f: Family, lport: number, rport: number, flags: number) => pkt(f, local(f), REMOTE[f], tcp(lport, rport, flags), 6);
  const tcpIn = (f: Family, lport: number, rport: number, flags: number) => pkt(f, REMOTE[f], local(f), tcp(rport, lport, flags), 6);
  const udpOut = (f: Family, lport: number, rport: number) => pkt(f, local(f), REMOTE[f], udp(lport, rport), 17);
  const udpIn = (f: Family, lport: number, rport: number) => pkt(f, REMOTE[f], local(f), udp(rport, lport), 17);

  function ctFind(f: Family, lport: number) {
    return dp.conntrackList().find((e) => e.family === f && (e.srcPort === lport || e.dstPort === lport));
  }

  /** The conntrack map itself, for entries aged or written the way an older datapath left them. */
  function withCtMap<T>(fn: (map: BpfMap) => T): T {
    const fd = native().objGet(`${pinRoot}/maps/conntrack`);
    try {
      return fn(new BpfMap('conntrack', fd));
    } finally {
      native().fdClose(fd);
    }
  }
  function ctKey(f: Family, lport: number, rport: number, protocol: number): Buffer {
    const parse = f === 4 ? ipv4Parse : ipv6Parse;
    return structEncode(CT_KEY, { laddr: parse(local(f)), raddr: parse(REMOTE[f]), lport, rport, protocol, family: f });
  }
  /** Marks an entry as allowed at `revision`, as if it had been checked at it. */
  function ctRevisionSet(f: Family, lport: number, rport: number, protocol: number, revision: number): void {
    withCtMap((map) => {
      const key = ctKey(f, lport, rport, protocol);
      const v = map.lookup(key);
      assert.ok(v, 'entry to patch');
      v.writeUInt32LE(revision, CT_ENTRY.fields.policy_revision!.offset);
      map.update(key, v);
    });
  }
  function policyRevision(): number {
    const fd = native().objGet(`${pinRoot}/maps/config`);
    try {
      return structDecode(DP_CONFIG, new BpfMap('config', fd).lookup(Buffer.alloc(4))!).policy_revision as number;
    } finally {
      native().fdClose(fd);
    }
  }

  for (const f of [4, 6] as const) {
    test(`IPv${f} TCP 4-tuple reuse: a SYN that egress allowed and the destination dropped does not let a new SYN past an egress deny`, async () => {
      setPolicy([allow('egress', 6, 443)]);
      assert.equal(await verdict('from_workload', tcpOut(f, 41000, 443, TCP.SYN)), 'PASS', 'first attempt, allowed');
      // the destination dropped it: no reply ever comes. The egress policy now denies the destination.
      setPolicy([allow('egress', 6, 80)]);
      assert.equal(await verdict('from_workload', tcpOut(f, 41000, 443, TCP.SYN)), DENIED, 'same 4-tuple, new SYN');
      assert.equal(await verdict('from_workload', tcpOut(f, 41000, 443, TCP.SYN)), DENIED, 'and again');
      // the destination answering the first attempt is a reply (passes, as in Cilium), but the workload's
      // side of that connection is checked: still denied
      assert.equal(ctFind(f, 41000)!.packets, 1n, 'denied packets do not refresh the entry');
      assert.equal(await verdict('to_workload', tcpIn(f, 41000, 443, TCP.SYN | TCP.ACK)), 'PASS', 'SYN|ACK: a reply');
      assert.equal(await verdict('from_workload', tcpOut(f, 41000, 443, TCP.ACK)), DENIED, 'the workload\'s ACK');
    });

    test(`IPv${f} TCP: a bare SYN never rides an unanswered entry, even at the same policy revision`, async () => {
      setPolicy([allow('egress', 6, 443)]);
      assert.equal(await verdict('from_workload', tcpOut(f, 41001, 443, TCP.SYN)), 'PASS');
      // the retry is a new connection decided by policy (reported as NEW), not an established packet
      const { retval } = dp.testRun('from_workload', tcpOut(f, 41001, 443, TCP.SYN), { ifindex: LO });
      assert.equal(retval, TCX_PASS);
      assert.deepEqual((await sink.settle()).map((e) => e.reportReason), ['NEW']);
      // a deny entry, and the entry marked as allowed at the new revision: the SYN still asks policy
      setPolicy([allow('egress', 6, 443), { ...allow('egress', 6, 443), deny: true }]);
      ctRevisionSet(f, 41001, 443, 6, policyRevision());
      assert.equal(await verdict('from_workload', tcpOut(f, 41001, 443, TCP.SYN)), DENY);
    });

    test(`IPv${f} UDP 4-tuple reuse: packets of an unanswered flow are checked by policy every time`, async () => {
      setPolicy([allow('egress', 17, 53)]);
      assert.equal(await verdict('from_workload', udpOut(f, 41002, 53)), 'PASS');
      assert.equal(await verdict('from_workload', udpOut(f, 41002, 53)), 'PASS', 'still allowed');
      setPolicy([allow('egress', 17, 5353)]);
      ctRevisionSet(f, 41002, 53, 17, policyRevision()); // not the revision: the missing reply is what counts
      assert.equal(await verdict('from_workload', udpOut(f, 41002, 53)), DENIED, 'same 4-tuple after the deny');
      assert.equal(await verdict('from_workload', udpOut(f, 41002, 53)), DENIED, 'every packet');
      assert.equal(await verdict('to_workload', udpIn(f, 41002, 53)), 'PASS', 'the remote\'s packet is a reply');
    });

    test(`IPv${f} TCP established, then a policy denies it: the original direction is dropped (133), replies pass`, async () => {
      setPolicy([allow('egress', 6, 443)]);
      assert.equal(await verdict('from_workload', tcpOut(f, 41003, 443, TCP.SYN)), 'PASS');
      assert.equal(await verdict('to_workload', tcpIn(f, 41003, 443, TCP.SYN | TCP.ACK)), 'PASS', 'reply');
      assert.equal(await verdict('from_workload', tcpOut(f, 41003, 443, TCP.ACK)), 'PASS');
      assert.equal(await verdict('from_workload', tcpOut(f, 41003, 443, TCP.ACK | 0x08)), 'PASS');
      const before = ctFind(f, 41003)!;
      assert.equal(before.flags & CT_F_SEEN_REPLY, CT_F_SEEN_REPLY);
      assert.equal(before.policyRevision, policyRevision(), 'allowed at the current revision');

      // a change that still allows it: re-validated, keeps flowing, entry now at the new revision
      setPolicy([allow('egress', 6, 443), allow('egress', 6, 8443)]);
      const rev = policyRevision();
      assert.notEqual(rev, before.policyRevision);
      assert.equal(await verdict('from_workload', tcpOut(f, 41003, 443, TCP.ACK)), 'PASS', 'still allowed');
      assert.equal(ctFind(f, 41003)!.policyRevision, rev);

      setPolicy([allow('egress', 6, 8443)]);
      const packets = ctFind(f, 41003)!.packets;
      assert.equal(await verdict('from_workload', tcpOut(f, 41003, 443, TCP.ACK)), DENIED, 'established, now denied');
      assert.equal(await verdict('from_workload', tcpOut(f, 41003, 443, TCP.ACK | 0x08)), DENIED, 'every packet');
      assert.equal(ctFind(f, 41003)!.packets, packets, 'denied packets do not count into the entry');
      assert.equal(await verdict('to_workload', tcpIn(f, 41003, 443, TCP.ACK)), 'PASS', 'replies pass');
      assert.equal(await verdict('from_workload', tcpOut(f, 41003, 443, TCP.ACK)), DENIED, 'still denied after a reply');
      // allowed again: the connection resumes
      setPolicy([allow('egress', 6, 443)]);
      assert.equal(await verdict('from_workload', tcpOut(f, 41003, 443, TCP.ACK)), 'PASS', 'allowed again');
      // a deny entry gives its own reason
      setPolicy([allow('egress', 6, 443)]);
      assert.equal(await verdict('from_workload', tcpOut(f, 41004, 443, TCP.SYN)), 'PASS');
      assert.equal(await verdict('to_workload', tcpIn(f, 41004, 443, TCP.SYN | TCP.ACK)), 'PASS');
      setPolicy([allow('egress', 6, 443), { ...allow('egress', 6, 443), deny: true }]);
      assert.equal(await verdict('from_workload', tcpOut(f, 41004, 443, TCP.ACK)), DENY);
    });

    test(`IPv${f} UDP answered, then a policy denies it; ingress-initiated TCP, then the ingress policy denies it`, async () => {
      setPolicy([allow('egress', 17, 53), allow('ingress', 6, 22)]);
      assert.equal(await verdict('from_workload', udpOut(f, 41005, 53)), 'PASS');
      assert.equal(await verdict('to_workload', udpIn(f, 41005, 53)), 'PASS', 'reply');
      assert.equal(await verdict('from_workload', udpOut(f, 41005, 53)), 'PASS', 'answered flow');
      // the remote connects to the workload's port 22; the workload answers
      assert.equal(await verdict('to_workload', tcpIn(f, 22, 50000, TCP.SYN)), 'PASS');
      assert.equal(await verdict('from_workload', tcpOut(f, 22, 50000, TCP.SYN | TCP.ACK)), 'PASS', 'reply');
      assert.equal(await verdict('to_workload', tcpIn(f, 22, 50000, TCP.ACK)), 'PASS');

      setPolicy([allow('ingress', 6, 23)]);
      assert.equal(await verdict('from_workload', udpOut(f, 41005, 53)), DENIED, 'UDP, original direction');
      assert.equal(await verdict('to_workload', tcpIn(f, 22, 50000, TCP.ACK)), DENIED, 'TCP from the remote, original direction');
      assert.equal(await verdict('from_workload', tcpOut(f, 22, 50000, TCP.ACK)), 'PASS', 'the workload\'s replies pass');
      assert.equal(await verdict('to_workload', tcpIn(f, 22, 50000, TCP.ACK)), DENIED, 'and the remote\'s side stays denied');
    });

    test(`IPv${f} established, then the remote's identity changes (ipcache): checked again and dropped`, async () => {
      setPolicy([allow('egress', 6, 443)]);
      assert.equal(await verdict('from_workload', tcpOut(f, 41006, 443, TCP.SYN)), 'PASS');
      assert.equal(await verdict('to_workload', tcpIn(f, 41006, 443, TCP.SYN | TCP.ACK)), 'PASS');
      assert.equal(await verdict('from_workload', tcpOut(f, 41006, 443, TCP.ACK)), 'PASS');
      dp.ipcacheUpsert(`${REMOTE[f]}/${f === 4 ? 32 : 128}`, { identity: OTHER, hostId: 0 });
      assert.equal(await verdict('from_workload', tcpOut(f, 41006, 443, TCP.ACK)), DENIED);
    });

    test(`IPv${f} lifetimes: an unanswered TCP entry lasts 60 s, an answered one longer; entries of an older datapath (revision 0) are checked again`, async () => {
      setPolicy([allow('egress', 6, 443)]);
      const aged = (lport: number, ageS: number, flags: number, revision: number) => {
        const now = process.hrtime.bigint(); // CLOCK_MONOTONIC, the datapath's clock
        const seen = now - BigInt(ageS) * 1_000_000_000n;
        withCtMap((map) =>
          map.update(
            ctKey(f, lport, 443, 6),
            structEncode(CT_ENTRY, { last_seen_ns: seen, last_report_ns: seen, packets: 1, policy_revision: revision, bytes: 60n, tx_flags_seen: TCP.SYN, rx_flags_seen: flags ? TCP.SYN | TCP.ACK : 0, flags, direction: DIR_EGRESS }),
          ),
        );
      };
      const rev = policyRevision();
      aged(41007, 50, 0, rev); // unanswered, 50 s: live (a reply passes)
      aged(41008, 70, 0, rev); // unanswered, 70 s: gone
      aged(41009, 70, CT_F_SEEN_REPLY, rev); // answered, 70 s: live (6 h; the machine may not be up that long)
      assert.equal(await verdict('to_workload', tcpIn(f, 41007, 443, TCP.SYN | TCP.ACK)), 'PASS', '50 s, unanswered');
      assert.equal(await verdict('to_workload', tcpIn(f, 41008, 443, TCP.SYN | TCP.ACK)), DENIED, '70 s, unanswered: expired');
      assert.equal(await verdict('to_workload', tcpIn(f, 41009, 443, TCP.ACK)), 'PASS', '70 s, answered');

      // an answered entry left by a datapath without a revision (0 there): checked once, then at the current one
      aged(41010, 1, CT_F_SEEN_REPLY, 0);
      assert.ok(rev !== 0, 'the agent never publishes revision 0');
      assert.equal(await verdict('from_workload', tcpOut(f, 41010, 443, TCP.ACK)), 'PASS');
      assert.equal(ctFind(f, 41010)!.policyRevision, rev);
      aged(41011, 1, CT_F_SEEN_REPLY, 0);
      setPolicy([allow('egress', 6, 80)]);
      assert.equal(await verdict('from_workload', tcpOut(f, 41011, 443, TCP.ACK)), DENIED);
    });
  }
  // ICMP errors are related to a connection only when the quoted packet is one the endpoint sent or
  // received on it, as seen from the error's direction (conntrack.h, ct_icmp_related).
  const ipOf = (ep: { ipv4: string; ipv6: string }, f: Family) => (f === 4 ? ep.ipv4 : ep.ipv6);
  const quote = (f: Family, src: string, dst: string, l4: Buffer, proto: number) => (f === 4 ? ipv4(src, dst, proto, l4) : ipv6(src, dst, proto, l4));
  /** An ICMP error src -> dst quoting `quoted` (its first 28 / 48 bytes), plus `extra` bytes. */
  function icmpErr(f: Family, src: string, dst: string, kind: 'unreach' | 'pmtu', quoted: Buffer, extra = Buffer.alloc(0)): Buffer {
    const [type, code] = f === 4 ? (kind === 'unreach' ? [3, 3] : [3, 4]) : kind === 'unreach' ? [1, 4] : [2, 0];
    const body = Buffer.concat([icmp(type, code).subarray(0, 8), quoted.subarray(0, f === 4 ? 28 : 48), extra]);
    return pkt(f, src, dst, body, f === 4 ? 1 : 58);
  }
  /** Runs `fn` with the test-run endpoint being B (same maps), then A again. */
  async function asB<T>(fn: () => Promise<T>): Promise<T> {
    dp.endpointUpsert(LO, B);
    try {
      return await fn();
    } finally {
      dp.endpointUpsert(LO, EP);
    }
  }
  function setPolicyOf(endpointId: number, entries: Entry[]): void {
    dp.policyClear(endpointId);
    dp.policyApply(endpointId, entries.map((e) => ({ op: 'upsert' as const, entry: { deny: false, ...e } })));
  }
  const secret = Buffer.from('exfiltrated inside an ICMP error '.repeat(16));

  for (const f of [4, 6] as const) {
    test(`IPv${f} ICMP errors: an error leaving the workload is related only when sent to the quoted packet's sender, from the endpoint's own address`, async () => {
      setPolicy([allow('egress', 6, 443)]);
      setPolicyOf(B.endpointId, [allow('egress', 6, 443)]);
      const a = local(f);
      assert.equal(await verdict('from_workload', tcpOut(f, 40000, 443, TCP.SYN)), 'PASS');
      // B has a connection from the same port
      await asB(async () => assert.equal(await verdict('from_workload', pkt(f, ipOf(B, f), REMOTE[f], tcp(40000, 443, TCP.SYN), 6)), 'PASS'));
      const fromRemote = quote(f, REMOTE[f], a, tcp(443, 40000, TCP.SYN | TCP.ACK), 6);
      const got: Array<[string, 'PASS' | number]> = [];
      for (const [what, frame] of [
        ['to a denied world host, quoting the remote\'s packet to A (exfiltration)', icmpErr(f, a, WORLD[f], 'unreach', fromRemote, secret)],
        ['to another workload, quoting the remote\'s packet to A', icmpErr(f, a, ipOf(B, f), 'unreach', fromRemote, secret)],
        ['to the remote, quoting its packet to B (B\'s connection, not A\'s)', icmpErr(f, a, REMOTE[f], 'unreach', quote(f, REMOTE[f], ipOf(B, f), tcp(443, 40000, TCP.ACK), 6))],
      ] as Array<[string, Buffer]>) got.push([what, await verdict('from_workload', frame)]);
      assert.deepEqual(got, got.map(([what]) => [what, DENIED]));
      // to the quoted packet's sender, about a packet A received: related (a reply of the connection)
      const { retval } = dp.testRun('from_workload', icmpErr(f, a, REMOTE[f], 'unreach', fromRemote), { ifindex: LO });
      assert.equal(retval, TCX_PASS);
      assert.deepEqual((await sink.settle()).map((e) => [e.verdict, e.isReply, e.dstAddr]), [['FORWARDED', false, REMOTE[f]]]);
    });

    test(`IPv${f} ICMP errors: an error towards the workload is related only when it quotes a packet the endpoint itself sent, from its peer or a router (not another workload)`, async () => {
      // A: egress allows all; B: egress UDP 5353 and TCP 443 to the remote, ingress default deny
      setPolicy([{ direction: 'egress', identity: 0, ...{ protocol: 0, port: 0, portPrefixLen: 0 } }]);
      setPolicyOf(B.endpointId, [allow('egress', 17, 5353), allow('egress', 6, 443)]);
      const a = local(f);
      const b = ipOf(B, f);
      assert.equal(await verdict('from_workload', tcpOut(f, 40001, 443, TCP.SYN)), 'PASS', 'A connects to the remote');
      const aOut = quote(f, a, REMOTE[f], tcp(40001, 443, TCP.SYN), 6);
      const bUdp = quote(f, b, REMOTE[f], udp(45000, 5353), 17);
      const bTcp = quote(f, b, REMOTE[f], tcp(45001, 443, TCP.ACK | 0x08), 6);
      await asB(async () => {
        assert.equal(await verdict('from_workload', pkt(f, b, REMOTE[f], udp(45000, 5353), 17)), 'PASS', 'B\'s connected UDP socket');
        assert.equal(await verdict('from_workload', pkt(f, b, REMOTE[f], tcp(45001, 443, TCP.SYN), 6)), 'PASS');
        assert.equal(await verdict('to_workload', pkt(f, REMOTE[f], b, tcp(443, 45001, TCP.SYN | TCP.ACK), 6)), 'PASS');
        assert.equal(await verdict('from_workload', pkt(f, b, REMOTE[f], tcp(45001, 443, TCP.ACK | 0x08), 6)), 'PASS', 'established');
        const got: Array<[string, 'PASS' | number]> = [];
        for (const [what, frame] of [
          ['A -> B quoting A\'s own connection', icmpErr(f, a, b, 'pmtu', aOut, secret)],
          ['A -> B quoting B\'s UDP flow (would kill B\'s connected socket)', icmpErr(f, a, b, 'unreach', bUdp)],
          ['A -> B quoting B\'s TCP connection', icmpErr(f, a, b, 'unreach', bTcp)],
          ['the remote -> B quoting a packet from A', icmpErr(f, REMOTE[f], b, 'unreach', aOut)],
        ] as Array<[string, Buffer]>) got.push([what, await verdict('to_workload', frame)]);
        assert.deepEqual(got, got.map(([what]) => [what, DENIED]));
        // legitimate: the remote's port unreachable for B's UDP flow; PMTU errors from a router on the
        // path (world) and from this host for B's established connection
        const ok: Array<[string, Buffer]> = [
          ['the remote\'s port unreachable for B\'s UDP flow', icmpErr(f, REMOTE[f], b, 'unreach', bUdp)],
          ['a router\'s PMTU error for B\'s TCP connection', icmpErr(f, ROUTER[f], b, 'pmtu', bTcp)],
          ['this host\'s PMTU error for B\'s TCP connection', icmpErr(f, HOST[f], b, 'pmtu', bTcp)],
          ['the remote\'s PMTU error for B\'s TCP connection', icmpErr(f, REMOTE[f], b, 'pmtu', bTcp)],
        ];
        for (const [what, frame] of ok) {
          const { retval } = dp.testRun('to_workload', frame, { ifindex: LO });
          assert.equal(retval, TCX_PASS, what);
          assert.deepEqual((await sink.settle()).map((e) => [e.verdict, e.isReply, e.dstAddr]), [['FORWARDED', true, b]], what);
        }
      });
    });
  }
});
