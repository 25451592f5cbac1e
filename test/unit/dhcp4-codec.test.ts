import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  classlessRoutesEncode, dhcpFrameDecode, dhcpMessageEncode, domainListEncode, Opt, udpFrameEncode,
} from '../../agent/addressing/dhcp4-codec.js';

const MAC = '52:54:00:12:34:56';

/** A client frame: Ethernet/IPv4/UDP 68->67 around a BOOTREQUEST with the given options. */
function frame(opts: { options?: number[]; op?: number; giaddr?: number[]; ports?: [number, number]; udpLen?: number } = {}): Buffer {
  const bootp = Buffer.alloc(240);
  bootp[0] = opts.op ?? 1;
  bootp[1] = 1;
  bootp[2] = 6;
  bootp.writeUInt32BE(0xdeadbeef, 4);
  if (opts.giaddr) Buffer.from(opts.giaddr).copy(bootp, 24);
  Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]).copy(bootp, 28);
  bootp.writeUInt32BE(0x63825363, 236);
  const dhcp = Buffer.concat([bootp, Buffer.from(opts.options ?? [53, 1, 1, 255])]);
  const b = Buffer.alloc(42 + dhcp.length);
  b.fill(0xff, 0, 6);
  Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x56]).copy(b, 6);
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x45;
  b.writeUInt16BE(20 + 8 + dhcp.length, 16);
  b[23] = 17;
  b.writeUInt16BE(opts.ports?.[0] ?? 68, 34);
  b.writeUInt16BE(opts.ports?.[1] ?? 67, 36);
  b.writeUInt16BE(opts.udpLen ?? 8 + dhcp.length, 38);
  dhcp.copy(b, 42);
  return b;
}

test('a DISCOVER decodes: MAC, xid, type, options (repeated codes concatenated, RFC 3396)', () => {
  const r = dhcpFrameDecode(frame({ options: [53, 1, 1, 0, 0, 12, 2, 0x61, 0x62, 12, 1, 0x63, 55, 2, 1, 121, 255] }));
  assert.ok(r.ok);
  assert.equal(r.request.srcMac, MAC);
  assert.equal(r.request.chaddr, MAC);
  assert.equal(r.request.xid, 0xdeadbeef);
  assert.equal(r.request.messageType, 1);
  assert.equal(r.request.giaddr, '0.0.0.0');
  assert.equal(r.request.options.get(Opt.HOSTNAME)!.toString(), 'abc');
});

test('hostile and malformed frames are reasons, never exceptions', () => {
  const good = frame();
  const cases: Array<[string, Buffer, RegExp]> = [
    ['empty', Buffer.alloc(0), /too short/],
    ['ARP', Buffer.concat([good.subarray(0, 12), Buffer.from([0x08, 0x06]), good.subarray(14)]), /not IPv4/],
    ['IP header length 0', (() => { const b = Buffer.from(good); b[14] = 0x40; return b; })(), /header length/],
    ['IP total past the frame', (() => { const b = Buffer.from(good); b.writeUInt16BE(9000, 16); return b; })(), /total length/],
    ['fragment', (() => { const b = Buffer.from(good); b.writeUInt16BE(0x2000, 20); return b; })(), /fragmented/],
    ['UDP length past IP', frame({ udpLen: 5000 }), /UDP length/],
    ['UDP length below 8', frame({ udpLen: 3 }), /UDP length/],
    ['other port', frame({ ports: [68, 68] }), /server port/],
    ['truncated BOOTP', (() => { const b = good.subarray(0, 42 + 100); const c = Buffer.from(b); c.writeUInt16BE(128, 16); c.writeUInt16BE(108, 38); return c; })(), /too short/],
    ['no cookie', (() => { const b = Buffer.from(good); b.writeUInt32BE(0, 42 + 236); return b; })(), /cookie/],
    ['option past the end', frame({ options: [53, 1, 1, 12, 200, 0x41] }), /runs past/],
    ['length byte missing', frame({ options: [53, 1, 1, 12] }), /no length byte/],
    ['no END', frame({ options: [53, 1, 1] }), /END/],
    ['no message type', frame({ options: [255] }), /message type/],
    ['message type of 2 bytes', frame({ options: [53, 2, 1, 1, 255] }), /message type/],
    ['overload', frame({ options: [53, 1, 1, 52, 1, 3, 255] }), /overload/],
  ];
  for (const [name, f, reason] of cases) {
    const r = dhcpFrameDecode(f);
    assert.equal(r.ok, false, name);
    if (!r.ok) assert.match(r.reason, reason, name);
  }
  // a relayed request decodes (the server refuses it by giaddr)
  const relayed = dhcpFrameDecode(frame({ giaddr: [10, 0, 0, 1] }));
  assert.ok(relayed.ok && relayed.request.giaddr === '10.0.0.1');
  // random bytes of every length never throw
  for (let len = 0; len < 600; len += 7) {
    const b = Buffer.concat([good.subarray(0, Math.min(len, 42)), Buffer.from(Array.from({ length: Math.max(0, len - 42) }, (_, i) => (i * 131 + len) & 0xff))]);
    assert.doesNotThrow(() => dhcpFrameDecode(b));
  }
});

test('option 121: host route to the gateway, then the default route via it (RFC 3442)', () => {
  const v = classlessRoutesEncode([{ dst: '169.254.1.1', prefix: 32, router: '0.0.0.0' }, { dst: '0.0.0.0', prefix: 0, router: '169.254.1.1' }]);
  assert.deepEqual([...v], [32, 169, 254, 1, 1, 0, 0, 0, 0, 0, 169, 254, 1, 1]);
  assert.deepEqual([...classlessRoutesEncode([{ dst: '10.1.0.0', prefix: 16, router: '10.0.0.1' }])], [16, 10, 1, 10, 0, 0, 1]);
});

test('search domains in RFC 1035 form; bad labels refused', () => {
  assert.deepEqual([...domainListEncode(['a.bc', 'd.'])], [1, 0x61, 2, 0x62, 0x63, 0, 1, 0x64, 0]);
  assert.throws(() => domainListEncode(['a..b']), /labels/);
});

test('replies: options split past 255 bytes, optional ones dropped when they do not fit, required ones refused', () => {
  const base = { messageType: 2, xid: 7, flags: 0x8000, ciaddr: '0.0.0.0', yiaddr: '10.0.0.5', chaddr: MAC, maxMessage: 548 };
  const m = dhcpMessageEncode({ ...base, options: [{ code: 224, value: Buffer.alloc(300, 1) }] });
  assert.equal(m[0], 2);
  assert.deepEqual([...m.subarray(16, 20)], [10, 0, 0, 5]);
  assert.deepEqual([...m.subarray(240, 243)], [53, 1, 2]);
  assert.deepEqual([m[243], m[244]], [224, 255]);
  assert.deepEqual([m[243 + 257], m[244 + 257]], [224, 45]);
  assert.equal(m.at(-1), 255);
  const dropped = dhcpMessageEncode({ ...base, options: [{ code: 15, value: Buffer.alloc(400), optional: true }] });
  assert.equal(dropped.length, 240 + 3 + 1);
  assert.throws(() => dhcpMessageEncode({ ...base, options: [{ code: 6, value: Buffer.alloc(400) }] }), /does not fit/);
});

test('the reply frame decodes as IPv4/UDP 67->68 with valid checksums', () => {
  const payload = dhcpMessageEncode({ messageType: 5, xid: 1, flags: 0, ciaddr: '0.0.0.0', yiaddr: '10.0.0.5', chaddr: MAC, maxMessage: 548, options: [] });
  const f = udpFrameEncode({ srcMac: '02:00:00:00:00:01', dstMac: MAC, srcIp: '169.254.1.1', dstIp: '255.255.255.255', payload });
  const sum = (b: Buffer, s: number, e: number, init = 0) => {
    let x = init;
    for (let i = s; i < e; i += 2) x += i + 1 < e ? b.readUInt16BE(i) : b[i]! << 8;
    while (x > 0xffff) x = (x & 0xffff) + (x >>> 16);
    return x;
  };
  assert.equal(sum(f, 14, 34), 0xffff, 'IP header checksum');
  const udpLen = f.readUInt16BE(38);
  assert.equal(sum(f, 34, 34 + udpLen, sum(f, 26, 34) + 17 + udpLen), 0xffff, 'UDP checksum');
  assert.deepEqual([f.readUInt16BE(34), f.readUInt16BE(36)], [67, 68]);
});

test('router advertisement: from fe80::1 to ff02::1, hop limit 255, no prefix, valid checksum; solicitations checked', async () => {
  const { routerAdvertFrame, isRouterSolicitation, RA_ROUTER_LIFETIME_S } = await import('../../agent/addressing/ra.js');
  const f = routerAdvertFrame({ gatewayMac: '02:00:00:00:00:01', guestMac: MAC, mtu: 1400, managed: true, other: false });
  assert.equal(f.readUInt16BE(12), 0x86dd);
  assert.equal(f[21], 255);
  assert.equal(f.subarray(22, 38).toString('hex'), 'fe800000000000000000000000000001');
  const icmp = f.subarray(54);
  assert.equal(icmp[0], 134);
  assert.equal(icmp[5], 0x80, 'M set, O clear');
  assert.equal(icmp.readUInt16BE(6), RA_ROUTER_LIFETIME_S);
  assert.equal(icmp.readUInt32BE(28), 1400, 'MTU option');
  assert.ok(![...Array(icmp.length >> 3).keys()].some((i) => icmp[16 + i * 8] === 3), 'no prefix information option');
  let sum = 58 + icmp.length;
  for (let i = 22; i < 54; i += 2) sum += f.readUInt16BE(i);
  for (let i = 0; i < icmp.length; i += 2) sum += icmp.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  assert.equal(sum, 0xffff, 'ICMPv6 checksum');

  const rs = Buffer.alloc(14 + 40 + 8);
  Buffer.from(MAC.split(':').map((x) => parseInt(x, 16))).copy(rs, 6);
  rs.writeUInt16BE(0x86dd, 12);
  rs.writeUInt16BE(8, 18);
  rs[20] = 58;
  rs[21] = 255;
  rs[54] = 133;
  assert.equal(isRouterSolicitation(rs, MAC), true);
  assert.equal(isRouterSolicitation(rs, '52:54:00:00:00:99'), false, 'another MAC');
  const routed = Buffer.from(rs);
  routed[21] = 64;
  assert.equal(isRouterSolicitation(routed, MAC), false, 'hop limit below 255: not from the link');
  assert.equal(isRouterSolicitation(rs.subarray(0, 60), MAC), false, 'truncated');
  const lying = Buffer.from(rs);
  lying.writeUInt16BE(500, 18);
  assert.equal(isRouterSolicitation(lying, MAC), false, 'payload length past the frame');
});
