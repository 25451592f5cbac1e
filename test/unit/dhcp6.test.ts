import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { test } from 'node:test';
import {
  DHCP6_MAX_OPTIONS, dhcp6FrameDecode, dhcp6FrameEncode, Msg6, Opt6, serverDuid, Status6,
} from '../../agent/addressing/dhcp6-codec.js';
import { dhcp6Answer, type Dhcp6Context } from '../../agent/addressing/dhcp6-server.js';
import { configLoad } from '../../agent/config.js';

const MAC = Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const MAC_S = '52:54:00:12:34:56';
const LL = Buffer.from('fe80000000000000505400fffe123456', 'hex');
const ALL_SERVERS = Buffer.from('ff020000000000000000000000010002', 'hex');
const ADDR = Buffer.from('fd000216000000000000000000000007', 'hex');
const DUID_LL = Buffer.concat([Buffer.from([0, 3, 0, 1]), MAC]);

const opt = (code: number, value: Buffer | number[]) => {
  const v = Buffer.from(value);
  const h = Buffer.alloc(4);
  h.writeUInt16BE(code, 0);
  h.writeUInt16BE(v.length, 2);
  return Buffer.concat([h, v]);
};
const iaNa = (iaid: number, addrs: Buffer[] = []) => {
  const head = Buffer.alloc(12);
  head.writeUInt32BE(iaid);
  return opt(Opt6.IA_NA, Buffer.concat([head, ...addrs.map((a) => opt(Opt6.IAADDR, Buffer.concat([a, Buffer.alloc(8)])))]));
};

/** Sum over the IPv6 pseudo-header and the UDP datagram (independent of the codec's). */
function sum16(src: Buffer, dst: Buffer, udp: Buffer): number {
  let s = udp.length + 17;
  const all = Buffer.concat([src, dst, udp, udp.length & 1 ? Buffer.alloc(1) : Buffer.alloc(0)]);
  for (let i = 0; i < all.length; i += 2) s += all.readUInt16BE(i);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/** A client frame: Ethernet/IPv6/UDP 546->547 around a DHCPv6 message; checksum right unless told. */
function frame(o: { type?: number; options?: Buffer[]; src?: Buffer; dst?: Buffer; nextHeader?: number; ports?: [number, number]; udpLen?: number; payloadLen?: number } = {}): Buffer {
  const msg = Buffer.concat([Buffer.from([o.type ?? Msg6.SOLICIT, 0xab, 0xcd, 0xef]), ...(o.options ?? [opt(Opt6.CLIENTID, DUID_LL), iaNa(7)])]);
  const udp = Buffer.alloc(8 + msg.length);
  udp.writeUInt16BE(o.ports?.[0] ?? 546, 0);
  udp.writeUInt16BE(o.ports?.[1] ?? 547, 2);
  udp.writeUInt16BE(o.udpLen ?? udp.length, 4);
  msg.copy(udp, 8);
  const src = o.src ?? LL;
  const dst = o.dst ?? ALL_SERVERS;
  udp.writeUInt16BE(~sum16(src, dst, udp) & 0xffff || 0xffff, 6);
  const ip = Buffer.alloc(40);
  ip[0] = 0x60;
  ip.writeUInt16BE(o.payloadLen ?? udp.length, 4);
  ip[6] = o.nextHeader ?? 17;
  ip[7] = 1;
  src.copy(ip, 8);
  dst.copy(ip, 24);
  return Buffer.concat([Buffer.from('333300010002', 'hex'), MAC, Buffer.from([0x86, 0xdd]), ip, udp]);
}

const ctx: Dhcp6Context = {
  guestMac: MAC_S, address: ADDR, serverDuid: serverDuid('node-a'), leaseSeconds: 3600,
  dnsServers: [Buffer.from('fd000000000000000000000000000053', 'hex')], searchDomains: ['lab.example'],
};

/** Options of a reply (top level) by code. */
function replyOptions(options: Buffer[]): Map<number, Buffer[]> {
  const m = new Map<number, Buffer[]>();
  for (const o of options) {
    const code = o.readUInt16BE(0);
    assert.equal(o.readUInt16BE(2), o.length - 4);
    m.set(code, [...(m.get(code) ?? []), o.subarray(4)]);
  }
  return m;
}

function answer(o: Parameters<typeof frame>[0]) {
  const d = dhcp6FrameDecode(frame(o));
  assert.ok(d.ok, JSON.stringify(d));
  return dhcp6Answer(d.request, ctx);
}

test('a Solicit decodes: MAC, link-local source, xid, client DUID, IA_NA, ORO, rapid commit', () => {
  const r = dhcp6FrameDecode(frame({ options: [opt(Opt6.CLIENTID, DUID_LL), opt(Opt6.ELAPSED_TIME, [0, 0]), opt(Opt6.ORO, [0, 23, 0, 24]), opt(Opt6.RAPID_COMMIT, []), iaNa(9, [ADDR])] }));
  assert.ok(r.ok, JSON.stringify(r));
  assert.equal(r.request.srcMac, MAC_S);
  assert.deepEqual(r.request.srcIp, LL);
  assert.equal(r.request.xid, 0xabcdef);
  assert.equal(r.request.messageType, Msg6.SOLICIT);
  assert.deepEqual(r.request.clientId, DUID_LL);
  assert.equal(r.request.iaNa[0]!.iaid, 9);
  assert.deepEqual(r.request.iaNa[0]!.addresses[0]!.address, ADDR);
  assert.ok(r.request.rapidCommit);
  assert.deepEqual([...r.request.requested], [23, 24]);
});

test('hostile and malformed DHCPv6 frames are reasons, never exceptions', () => {
  const cid = opt(Opt6.CLIENTID, DUID_LL);
  const cases: Array<[string, Buffer, RegExp, boolean?]> = [
    ['empty', Buffer.alloc(0), /too short/],
    ['IPv4', (() => { const b = frame(); b.writeUInt16BE(0x0800, 12); return b; })(), /not IPv6/],
    ['extension header', frame({ nextHeader: 0 }), /not UDP/],
    ['payload past the frame', frame({ payloadLen: 4000 }), /payload length/],
    ['UDP length past the payload', frame({ udpLen: 3000 }), /UDP length/],
    ['global source', frame({ src: ADDR }), /link-local/],
    ['to another address', frame({ dst: ADDR }), /ff02::1:2/],
    ['from the server port', frame({ ports: [547, 547] }), /client port/],
    ['option header cut short', frame({ options: [cid, Buffer.from([0, 8, 0])] }), /cut short/],
    ['option length past the message', frame({ options: [cid, Buffer.from([0, 8, 0xff, 0xff, 0, 0])] }), /runs past/],
    ['IAADDR past its IA_NA', frame({ options: [cid, (() => { const b = iaNa(1, [ADDR]); b.writeUInt16BE(200, 18); return b; })()] }), /runs past/],
    ['IA_NA too short', frame({ options: [cid, opt(Opt6.IA_NA, [0, 0, 0, 1])] }), /IA_NA of 4/],
    ['IAADDR too short', frame({ options: [cid, opt(Opt6.IA_NA, Buffer.concat([Buffer.alloc(12), opt(Opt6.IAADDR, Buffer.alloc(10))]))] }), /IAADDR of 10/],
    ['too many options', frame({ options: [cid, ...Array.from({ length: DHCP6_MAX_OPTIONS }, () => opt(999, []))] }), /more than/],
    ['too many nested options', frame({ options: [cid, opt(Opt6.IA_NA, Buffer.concat([Buffer.alloc(12), ...Array.from({ length: DHCP6_MAX_OPTIONS }, () => opt(13, [0, 0]))]))] }), /more than/],
    ['client id twice', frame({ options: [cid, cid] }), /twice/],
    ['IA_NA twice', frame({ options: [cid, iaNa(1), iaNa(1)] }), /twice/],
    ['client id of 1 byte', frame({ options: [opt(Opt6.CLIENTID, [1])] }), /not a DUID/],
    ['client id of 200 bytes', frame({ options: [opt(Opt6.CLIENTID, Buffer.alloc(200, 1))] }), /not a DUID/],
    ['odd option request', frame({ options: [cid, opt(Opt6.ORO, [0, 23, 0])] }), /odd/],
    ['elapsed time of 3 bytes', frame({ options: [cid, opt(Opt6.ELAPSED_TIME, [0, 0, 0])] }), /elapsed/],
    ['rapid commit with data', frame({ options: [cid, opt(Opt6.RAPID_COMMIT, [1])] }), /rapid commit/],
    ['relay-forward', frame({ type: Msg6.RELAY_FORW, options: [] }), /relay/, true],
    ['relay-reply', frame({ type: Msg6.RELAY_REPL, options: [] }), /relay/, true],
    ['relay message option in a Solicit', frame({ options: [cid, opt(Opt6.RELAY_MSG, [1, 0, 0, 0])] }), /relay option/, true],
  ];
  for (const [name, f, reason, relayed] of cases) {
    const r = dhcp6FrameDecode(f);
    assert.equal(r.ok, false, name);
    if (!r.ok) {
      assert.match(r.reason, reason, name);
      assert.equal(r.relayed ?? false, relayed ?? false, name);
    }
  }
  // random bytes behind a sound header: never an exception
  for (let i = 0; i < 2000; i++) {
    const f = frame({ options: [randomBytes(i % 300)] });
    dhcp6FrameDecode(f);
    dhcp6FrameDecode(randomBytes(i % 200));
  }
});

test('Solicit: Advertise with the address in the first IA_NA (lifetimes, T1/T2), DNS, search list, both DUIDs; other IAs get NoAddrsAvail', () => {
  const a = answer({ options: [opt(Opt6.CLIENTID, DUID_LL), iaNa(7), iaNa(8)] });
  assert.ok('reply' in a);
  assert.equal(a.reply.messageType, Msg6.ADVERTISE);
  const m = replyOptions(a.reply.options);
  assert.deepEqual(m.get(Opt6.CLIENTID)![0], DUID_LL);
  assert.deepEqual(m.get(Opt6.SERVERID)![0], ctx.serverDuid);
  assert.deepEqual(m.get(Opt6.DNS_SERVERS)![0], ctx.dnsServers[0]);
  assert.deepEqual(m.get(Opt6.DOMAIN_LIST)![0], Buffer.from('\x03lab\x07example\x00', 'latin1'));
  const [first, second] = m.get(Opt6.IA_NA)!;
  assert.equal(first!.readUInt32BE(0), 7);
  assert.equal(first!.readUInt32BE(4), 1800);
  assert.equal(first!.readUInt32BE(8), 2880);
  const iaaddr = first!.subarray(12);
  assert.equal(iaaddr.readUInt16BE(0), Opt6.IAADDR);
  assert.deepEqual(iaaddr.subarray(4, 20), ADDR);
  assert.equal(iaaddr.readUInt32BE(20), 3600);
  assert.equal(iaaddr.readUInt32BE(24), 3600);
  assert.equal(second!.readUInt32BE(0), 8);
  assert.equal(second!.readUInt16BE(12), Opt6.STATUS_CODE);
  assert.equal(second!.readUInt16BE(16), Status6.NO_ADDRS_AVAIL);
});

test('addressing.renewalSeconds sets T1 of the IA_NA (T2 and the lifetimes stay those of the lease); the config keeps it below T2', () => {
  const d = dhcp6FrameDecode(frame({ options: [opt(Opt6.CLIENTID, DUID_LL), iaNa(7)] }));
  assert.ok(d.ok);
  const a = dhcp6Answer(d.request, { ...ctx, renewalSeconds: 90 });
  assert.ok('reply' in a);
  const ia = replyOptions(a.reply.options).get(Opt6.IA_NA)![0]!;
  assert.deepEqual([ia.readUInt32BE(4), ia.readUInt32BE(8), ia.subarray(12).readUInt32BE(20)], [90, 2880, 3600]);
  assert.equal(configLoad(undefined, { addressing: { leaseSeconds: 60, renewalSeconds: 47 } }, {}).addressing.renewalSeconds, 47);
  assert.throws(() => configLoad(undefined, { addressing: { leaseSeconds: 60, renewalSeconds: 48 } }, {}), /renewalSeconds.*below 4\/5 of leaseSeconds/);
});

test('Solicit with rapid commit: a Reply carrying rapid commit', () => {
  const a = answer({ options: [opt(Opt6.CLIENTID, DUID_LL), opt(Opt6.RAPID_COMMIT, []), iaNa(7)] });
  assert.ok('reply' in a);
  assert.equal(a.reply.messageType, Msg6.REPLY);
  assert.ok(replyOptions(a.reply.options).has(Opt6.RAPID_COMMIT));
});

test('server identifiers: required, refused, or another server\'s', () => {
  const cid = opt(Opt6.CLIENTID, DUID_LL);
  const ours = opt(Opt6.SERVERID, ctx.serverDuid);
  const theirs = opt(Opt6.SERVERID, serverDuid('node-b'));
  assert.deepEqual(answer({ type: Msg6.REQUEST, options: [cid, iaNa(7)] }), { ignore: 'malformed', detail: { detail: 'no server identifier' } });
  assert.equal((answer({ type: Msg6.REQUEST, options: [cid, theirs, iaNa(7)] }) as { ignore: string }).ignore, 'other-server');
  assert.equal((answer({ type: Msg6.SOLICIT, options: [cid, ours, iaNa(7)] }) as { ignore: string }).ignore, 'malformed');
  assert.equal((answer({ type: Msg6.REBIND, options: [cid, ours, iaNa(7)] }) as { ignore: string }).ignore, 'malformed');
  const r = answer({ type: Msg6.REQUEST, options: [cid, ours, iaNa(7)] });
  assert.ok('reply' in r && r.reply.messageType === Msg6.REPLY);
  assert.notDeepEqual(serverDuid('node-a'), serverDuid('node-b'));
  assert.deepEqual(serverDuid('node-a'), ctx.serverDuid, 'the same node name gives the same DUID (after a restart)');
});

test('another client\'s DUID and another client\'s address', () => {
  const other = Buffer.concat([Buffer.from([0, 3, 0, 1]), Buffer.from([2, 0, 0, 0, 0, 9])]);
  assert.deepEqual(answer({ options: [opt(Opt6.CLIENTID, other), iaNa(7)] }), { ignore: 'foreign-duid', detail: { duidMac: '02:00:00:00:00:09' } });
  const llt = Buffer.concat([Buffer.from([0, 1, 0, 1, 0, 0, 0, 1]), Buffer.from([2, 0, 0, 0, 0, 9])]);
  assert.equal((answer({ options: [opt(Opt6.CLIENTID, llt), iaNa(7)] }) as { ignore: string }).ignore, 'foreign-duid');
  // a Rebind naming an address that is not the guest's: the guest's own comes back, the other with lifetimes 0
  const stranger = Buffer.from('fd000216000000000000000000000099', 'hex');
  const a = answer({ type: Msg6.REBIND, options: [opt(Opt6.CLIENTID, DUID_LL), iaNa(7, [stranger])] });
  assert.ok('reply' in a);
  const ia = replyOptions(a.reply.options).get(Opt6.IA_NA)![0]!;
  const addrs = replyOptions([ia.subarray(12, 40), ia.subarray(40, 68)]).get(Opt6.IAADDR)!;
  assert.deepEqual(addrs[0]!.subarray(0, 16), ADDR);
  assert.deepEqual(addrs[1]!.subarray(0, 16), stranger);
  assert.equal(addrs[1]!.readUInt32BE(16), 0);
  assert.equal(addrs[1]!.readUInt32BE(20), 0);
});

test('Confirm, Release, Decline, Information-request; server-only message types ignored', () => {
  const cid = opt(Opt6.CLIENTID, DUID_LL);
  const ours = opt(Opt6.SERVERID, ctx.serverDuid);
  const status = (a: ReturnType<typeof answer>) => ('reply' in a ? replyOptions(a.reply.options).get(Opt6.STATUS_CODE)![0]!.readUInt16BE(0) : -1);
  assert.equal(status(answer({ type: Msg6.CONFIRM, options: [cid, iaNa(7, [ADDR])] })), Status6.SUCCESS);
  assert.equal(status(answer({ type: Msg6.CONFIRM, options: [cid, iaNa(7, [Buffer.alloc(16, 1)])] })), Status6.NOT_ON_LINK);
  assert.deepEqual(answer({ type: Msg6.CONFIRM, options: [cid, iaNa(7)] }), { ignore: 'confirm-without-address' });
  assert.equal(status(answer({ type: Msg6.RELEASE, options: [cid, ours, iaNa(7, [ADDR])] })), Status6.SUCCESS);
  assert.equal(status(answer({ type: Msg6.DECLINE, options: [cid, ours, iaNa(7, [ADDR])] })), Status6.SUCCESS);
  const info = answer({ type: Msg6.INFORMATION_REQUEST, options: [opt(Opt6.ORO, [0, 23])] });
  assert.ok('reply' in info);
  assert.ok(replyOptions(info.reply.options).has(Opt6.DNS_SERVERS));
  assert.ok(!replyOptions(info.reply.options).has(Opt6.IA_NA));
  assert.equal((answer({ type: Msg6.INFORMATION_REQUEST, options: [cid, iaNa(7)] }) as { ignore: string }).ignore, 'malformed');
  for (const type of [Msg6.ADVERTISE, Msg6.REPLY, Msg6.RECONFIGURE, 0, 200]) {
    assert.equal((answer({ type, options: [cid] }) as { ignore: string }).ignore, 'message-type', String(type));
  }
  assert.equal((answer({ type: Msg6.SOLICIT, options: [iaNa(7)] }) as { ignore: string }).ignore, 'malformed', 'no client id');
});

test('the reply frame: fe80::1 -> the client, UDP 547 -> 546, valid checksum, the message intact', () => {
  const a = answer({});
  assert.ok('reply' in a);
  const gw = Buffer.from([2, 0, 0, 0, 0, 1]);
  const f = dhcp6FrameEncode({ srcMac: gw, dstMac: MAC, dstIp: LL, messageType: a.reply.messageType, xid: 0xabcdef, options: a.reply.options });
  assert.deepEqual(f.subarray(0, 6), MAC);
  assert.deepEqual(f.subarray(6, 12), gw);
  assert.equal(f.readUInt16BE(12), 0x86dd);
  assert.equal(f[20], 17);
  assert.deepEqual(f.subarray(22, 38), Buffer.from('fe800000000000000000000000000001', 'hex'));
  assert.deepEqual(f.subarray(38, 54), LL);
  const udp = f.subarray(54);
  assert.equal(f.readUInt16BE(18), udp.length);
  assert.equal(udp.readUInt16BE(0), 547);
  assert.equal(udp.readUInt16BE(2), 546);
  assert.equal(sum16(f.subarray(22, 38), LL, udp), 0xffff);
  assert.equal(udp[8], Msg6.ADVERTISE);
  assert.equal(udp.readUIntBE(9, 3), 0xabcdef);
});
