// Flow decoding of synthetic ring-buffer batches (round trip through the layout encoder), address
// helpers, and the decoder's throughput (printed, not asserted: timings are noisy here).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { FlowEvent } from '../../bpf/index.js';
import { cidrParse, cidrFormat, ipv4Parse, ipv6Format, ipv6Parse, macFormat, macParse } from '../../bpf/addr.js';
import { flowBatchFrame, flowDecodeBatch, flowEventEncode, flowEventPlain, monotonicToWallOffsetNs } from '../../bpf/flow-decode.js';
import { endpointInfoDecode, endpointInfoEncode } from '../../bpf/maps/endpoints.js';
import { ipcacheKeyDecode, ipcacheKeyEncode } from '../../bpf/maps/ipcache.js';
import { FLOW_EVENT } from '../../bpf/layout.gen.js';

const base: FlowEvent = {
  timeNs: 1_700_000_000_123_456_789n,
  ifindex: 42,
  endpointId: 7,
  direction: 'EGRESS',
  family: 4,
  protocol: 6,
  srcAddr: '10.200.0.5',
  dstAddr: '192.168.1.1',
  srcPort: 40000,
  dstPort: 443,
  icmpType: 0,
  icmpCode: 0,
  tcpFlags: 0x12,
  srcIdentity: 4242,
  dstIdentity: 9,
  verdict: 'FORWARDED',
  dropReason: 0,
  isReply: false,
  length: 1514,
  reportReason: 'NEW',
  etherType: 0x0800,
};

test('flow events round-trip through encode -> frame -> decode', () => {
  const offset = 123_456_789_000n;
  const events: FlowEvent[] = [
    base,
    { ...base, direction: 'INGRESS', family: 6, etherType: 0x86dd, protocol: 58, srcAddr: 'fd00:200::5', dstAddr: 'fe80::1', srcPort: 0, dstPort: 0, icmpType: 128, tcpFlags: 0, isReply: true, reportReason: 'FIRST_REPLY' },
    { ...base, verdict: 'DROPPED', dropReason: 133, reportReason: 'DROP', srcIdentity: 0xffffffff, length: 0x80000001 },
    { ...base, family: 6, etherType: 0x86dd, srcAddr: '2001:db8::1:0:0:1', dstAddr: '::', protocol: 17 },
    // an ARP drop: sender -> target protocol address, no L4
    { ...base, etherType: 0x0806, protocol: 0, srcPort: 0, dstPort: 0, tcpFlags: 0, srcAddr: '10.200.0.66', dstAddr: '169.254.1.1', verdict: 'DROPPED', dropReason: 132, reportReason: 'DROP' },
    // a frame that is not IP: no addresses
    { ...base, family: 0, etherType: 0x88cc, protocol: 0, srcPort: 0, dstPort: 0, tcpFlags: 0, srcAddr: '', dstAddr: '', verdict: 'DROPPED', dropReason: 139, reportReason: 'DROP' },
  ];
  const batch = flowBatchFrame(events.map((e) => flowEventEncode(e, offset)));
  assert.equal(batch.length, events.length * (8 + FLOW_EVENT.size));
  // decoded events read their addresses and time on first access: every field, read in any order
  const decoded = flowDecodeBatch(batch, offset);
  assert.deepEqual(decoded.map(flowEventPlain), events);
  assert.deepEqual(decoded.map((e) => [e.dstAddr, e.timeNs, e.srcAddr]), events.map((e) => [e.dstAddr, e.timeNs, e.srcAddr]));
  assert.deepEqual(JSON.parse(JSON.stringify(decoded[0], (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))), {
    ...events[0],
    timeNs: events[0]!.timeNs.toString(),
  });
});

test('records shorter than a flow_event are skipped, longer ones decoded', () => {
  const rec = flowEventEncode(base, 0n);
  const short = Buffer.alloc(12);
  const long = Buffer.concat([rec, Buffer.alloc(5)]);
  const got = flowDecodeBatch(flowBatchFrame([short, long, rec]), 0n);
  assert.deepEqual(got.map(flowEventPlain), [base, base]);
});

test('monotonic -> wall offset lands near Date.now()', () => {
  const wall = process.hrtime.bigint() + monotonicToWallOffsetNs();
  assert.ok(Math.abs(Number(wall / 1_000_000n) - Date.now()) < 50);
});

test('address helpers', () => {
  for (const s of ['::', '::1', 'fe80::1', 'fd00:200::5', '2001:db8:0:1:1:1:1:1', '2001:db8::1:0:0:1', '1::', '1:0:0:2::3'])
    assert.equal(ipv6Format(ipv6Parse(s)), s);
  assert.equal(ipv6Format(ipv6Parse('::ffff:10.1.2.3')), '::ffff:a01:203');
  assert.deepEqual([...ipv4Parse('10.200.0.5')], [10, 200, 0, 5]);
  assert.equal(macFormat(macParse('AA:bb:0c:0:1:ff')), 'aa:bb:0c:00:01:ff');
  assert.equal(cidrFormat(cidrParse('10.1.2.3/8')), '10.0.0.0/8');
  assert.equal(cidrFormat(cidrParse('fd00::5')), 'fd00::5/128');
  assert.throws(() => cidrParse('10.0.0.0/33'), TypeError);
  assert.throws(() => cidrParse('nope'), TypeError);
});

test('map encoders round-trip', () => {
  const ep = { endpointId: 9, identity: 300, ipv4: '10.0.0.9', ipv6: 'fd00::9', mac: '02:00:00:00:00:09', flags: 3 };
  assert.deepEqual(endpointInfoDecode(endpointInfoEncode(ep)), ep);
  assert.deepEqual(endpointInfoDecode(endpointInfoEncode({ ...ep, ipv6: '', mac: '' })), { ...ep, ipv6: '', mac: '' });
  const withHost = { ...ep, hostMac: '02:00:00:00:00:01' };
  assert.deepEqual(endpointInfoDecode(endpointInfoEncode(withHost)), withHost);
  assert.deepEqual(endpointInfoEncode(withHost).subarray(40, 46), Buffer.from([2, 0, 0, 0, 0, 1]), 'host_mac @40');
  assert.deepEqual(endpointInfoDecode(endpointInfoEncode({ ...ep, hostMac: '' })), ep, 'empty hostMac: no responder, not read back');
  for (const c of ['10.0.0.0/8', '0.0.0.0/0', 'fd00:200::/64', 'fd00::5/128']) assert.equal(ipcacheKeyDecode(ipcacheKeyEncode(c)), c);
  // prefixlen covers the family byte + padding
  assert.equal(ipcacheKeyEncode('10.0.0.0/8').readUInt32LE(0), 40);
});

test('decoder throughput (figure only)', (t) => {
  const offset = monotonicToWallOffsetNs();
  const recs: Buffer[] = [];
  for (let i = 0; i < 4096; i++) {
    const v6 = i % 2 === 1;
    recs.push(flowEventEncode({ ...base, timeNs: offset + BigInt(i), srcPort: i, family: v6 ? 6 : 4, srcAddr: v6 ? 'fd00:200::5' : base.srcAddr, dstAddr: v6 ? '2001:db8::1' : base.dstAddr }, offset));
  }
  const batch = flowBatchFrame(recs);
  for (let i = 0; i < 20; i++) flowDecodeBatch(batch, offset); // warm up
  const rounds = 100;
  const t0 = process.hrtime.bigint();
  let n = 0;
  for (let i = 0; i < rounds; i++) n += flowDecodeBatch(batch, offset).length;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  t.diagnostic(`flow decode: ${Math.round(n / secs).toLocaleString('en')} events/s (half IPv6)`);
  assert.equal(n, rounds * 4096);
});
