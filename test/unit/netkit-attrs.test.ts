// netkit/ encoding against golden bytes, decoding, error replies and name checks. No root needed.
import assert from 'node:assert/strict';
import { endianness } from 'node:os';
import { test } from 'node:test';
import { KernelError } from '../../common/kernel-error.js';
import {
  attr, attrsDecode, attrsEncode, ipBytes, ipString, macString, messageAttrs, nest, str, u16, u32,
} from '../../netkit/attrs.js';
import { endpointSpecValidate, macDerive } from '../../netkit/endpoint-spec.js';
import {
  EndpointSpecError, errnoHint, errnoIs, ifnameValidate, kernelErrorFromReply, netlinkErrorParse,
} from '../../netkit/errors.js';
import { netkitCreateMessage, netkitLinkinfo, netkitStateDecode } from '../../netkit/netkit.js';
import { routeMessage } from '../../netkit/route.js';
import {
  IFLA_INFO_DATA, IFLA_LINKINFO, IFLA_NETKIT_HEADROOM, IFLA_NETKIT_PEER_SCRUB, IFLA_NETKIT_SCRUB,
  IFLA_NETKIT_TAILROOM, NLM_F_ACK_TLVS, NLM_F_CAPPED,
} from '../../netkit/uapi.js';
import { vethCreateMessage } from '../../netkit/veth.js';
import type { EndpointDeviceSpec } from '../../netkit/index.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const LE = endianness() === 'LE';

test('attributes are padded to 4 bytes and nest', () => {
  const b = attrsEncode([attr(3, str('kn0')), nest(18, [attr(1, str('veth'))])]);
  assert.deepEqual(b, hex(`
    08000300 6b6e3000
    10001200 09000100 76657468 00000000`));
  const back = attrsDecode(b);
  assert.equal(back.get(3)?.toString(), 'kn0\0');
  assert.deepEqual(attrsDecode(back.get(18)!).get(1), Buffer.from('veth\0'));
});

test('veth pair request: peer info is an ifinfomsg + IFLA_IFNAME + IFLA_NET_NS_FD', { skip: !LE && 'golden bytes are little-endian' }, () => {
  const got = vethCreateMessage({ ifname: 'kn0', peer: { ifname: 'eth0', netnsFd: 7 } });
  const want = hex(`
    00000000 00000000 00000000 00000000
    08000300 6b6e3000
    3c001200
      09000100 76657468 00000000
      2c000200
        28000100
          00000000 00000000 00000000 00000000
          09000300 65746830 00000000
          08001c00 07000000`);
  assert.deepEqual(got, want);
});

test('netkit L2 request with fixed MACs, peer blackholed, peer in a netns', { skip: !LE && 'golden bytes are little-endian' }, () => {
  const got = netkitCreateMessage({
    ifname: 'kn0', mode: 'l2', policy: 'forward', peerPolicy: 'drop', mac: '02:00:00:00:00:01',
    peer: { ifname: 'eth0', netnsFd: 7, mac: '02:00:00:00:00:02' },
  });
  const want = hex(`
    00000000 00000000 00000000 00000000
    08000300 6b6e3000
    0a000100 02000000 00010000
    60001200
      0b000100 6e65746b 69740000
      50000200
        08000500 00000000
        08000300 00000000
        08000400 02000000
        34000100
          00000000 00000000 00000000 00000000
          09000300 65746830 00000000
          0a000100 02000000 00020000
          08001c00 07000000`);
  assert.deepEqual(got, want);
});

test('netkit scrub/headroom/tailroom are only encoded when asked', () => {
  const data = (li: ReturnType<typeof netkitLinkinfo>): Map<number, Buffer> => {
    const outer = attrsDecode(attrsEncode([li])).get(IFLA_LINKINFO)!;
    return attrsDecode(attrsDecode(outer).get(IFLA_INFO_DATA)!);
  };
  const plain = data(netkitLinkinfo({ ifname: 'kn0', mode: 'l3', peer: { ifname: 'eth0' } }));
  for (const t of [IFLA_NETKIT_SCRUB, IFLA_NETKIT_PEER_SCRUB, IFLA_NETKIT_HEADROOM, IFLA_NETKIT_TAILROOM]) assert.equal(plain.has(t), false);
  const full = data(netkitLinkinfo({
    ifname: 'kn0', mode: 'l3', scrub: 'none', peerScrub: 'default', headroom: 64, tailroom: 32, peer: { ifname: 'eth0' },
  }));
  assert.deepEqual(full.get(IFLA_NETKIT_SCRUB), u32(0));
  assert.deepEqual(full.get(IFLA_NETKIT_PEER_SCRUB), u32(1));
  assert.deepEqual(full.get(IFLA_NETKIT_HEADROOM), u16(64));
  assert.deepEqual(full.get(IFLA_NETKIT_TAILROOM), u16(32));
  assert.deepEqual(netkitStateDecode(full), { mode: 'l3', policy: 'forward', peerPolicy: 'forward' });
  assert.throws(() => netkitCreateMessage({ ifname: 'kn0', mode: 'l3', mac: '02:00:00:00:00:01', peer: { ifname: 'eth0' } }), /L3/);
});

test('default route request', { skip: !LE && 'golden bytes are little-endian' }, () => {
  const got = routeMessage({ dst: 'default', family: 'inet', gateway: '169.254.1.1', oif: 3 });
  assert.deepEqual(got, hex(`
    02000000 fe040001 00000000
    08000f00 fe000000
    08000500 a9fe0101
    08000400 03000000`));
  const onlink = messageAttrs(routeMessage({ dst: '10.0.0.5/32', oif: 3, scope: 'link' }), 12);
  assert.deepEqual(onlink.get(1), Buffer.from([10, 0, 0, 5]));
  assert.equal(routeMessage({ dst: '10.0.0.5/32', oif: 3, scope: 'link' })[6], 253);
});

test('IP addresses parse and print like iproute2', () => {
  const cases: [string, string][] = [
    ['::', '::'], ['::1', '::1'], ['fe80::1', 'fe80::1'], ['fd00:200::5', 'fd00:200::5'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], ['::ffff:10.0.0.1', '::ffff:a00:1'],
    ['FD00:0:0:0:0:0:0:A', 'fd00::a'], ['10.1.2.3', '10.1.2.3'], ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
  ];
  for (const [input, printed] of cases) assert.equal(ipString(ipBytes(input)!), printed, input);
  for (const bad of ['1::2::3', '10.0.0.256', 'gggg::', '1:2:3:4:5:6:7:8:9', '', '10.0.0', '::1/128', '1:2:3:4:5:6:7::8']) {
    assert.equal(ipBytes(bad), undefined, bad);
  }
  assert.equal(macString(Buffer.from([2, 0, 0xab, 0, 0, 1])), '02:00:ab:00:00:01');
});

test('NLMSG_ERROR replies: errno and extended ack (capped and uncapped)', { skip: !LE && 'little-endian fixture' }, () => {
  const origHdr = hex('24000000 10000506 01000000 00000000'); // len 36: header + 20 payload bytes
  const extack = attrsEncode([attr(1, str('Unknown device type'))]);
  const capped = Buffer.concat([hex('a1ffffff'), origHdr, extack]);
  assert.deepEqual(netlinkErrorParse(capped, NLM_F_CAPPED | NLM_F_ACK_TLVS), { errno: 95, extack: 'Unknown device type' });
  const uncapped = Buffer.concat([hex('efffffff'), origHdr, Buffer.alloc(20), extack]);
  assert.deepEqual(netlinkErrorParse(uncapped, NLM_F_ACK_TLVS), { errno: 17, extack: 'Unknown device type' });
  assert.deepEqual(netlinkErrorParse(Buffer.concat([hex('edffffff'), origHdr, Buffer.alloc(20)]), 0), { errno: 19 });
  assert.deepEqual(netlinkErrorParse(Buffer.concat([hex('00000000'), origHdr]), NLM_F_CAPPED), { errno: 0 });
});

test('kernel errors read as op, device, errno name, extack and hint', () => {
  const e = kernelErrorFromReply('RTM_NEWLINK', { errno: 17, extack: 'File exists' }, { name: 'kn1a2b3c' });
  assert.ok(e instanceof KernelError);
  assert.equal(e.errnoName, 'EEXIST');
  assert.match(e.message, /^RTM_NEWLINK kn1a2b3c: EEXIST \(File exists\) — hint: a link with this name already exists/);
  const eperm = kernelErrorFromReply('RTM_NEWADDR', { errno: 1 }, { name: 'eth0', netns: '/var/run/netns/x' });
  assert.match(eperm.message, /^RTM_NEWADDR eth0 in \/var\/run\/netns\/x: EPERM — hint: .*root.*CAP_NET_ADMIN/);
  const notsup = kernelErrorFromReply('RTM_NEWLINK', { errno: 95 }, { name: 'kn0' });
  assert.ok(errnoIs(notsup, 'EOPNOTSUPP'), notsup.errnoName);
  assert.match(notsup.message, /hint: this kernel lacks the link kind/);
  for (const name of ['EEXIST', 'ENODEV', 'ENOENT', 'EPERM', 'EACCES', 'EOPNOTSUPP', 'ERANGE', 'EINVAL', 'ENETUNREACH']) {
    assert.ok(errnoHint('RTM_NEWLINK', name) || errnoHint('RTM_NEWROUTE', name), name);
  }
  assert.match(errnoHint('RTM_NEWROUTE', 'EEXIST')!, /route/);
  assert.match(errnoHint('RTM_NEWLINK', 'ERANGE')!, /15 bytes/);
});

test('interface names are checked before the kernel', () => {
  assert.equal(ifnameValidate('x', 'kn0123456789abc'), 'kn0123456789abc');
  for (const bad of ['', 'kn0123456789abcd', 'a/b', 'a b', 'a:b', '.', '..', 'äääääääää']) {
    assert.throws(() => ifnameValidate('hostIfname', bad), (e: unknown) => e instanceof EndpointSpecError && e.field === 'hostIfname', bad);
  }
  assert.throws(() => ifnameValidate('hostIfname', 'kn0123456789abcd'), /16 bytes; Linux allows at most 15/);
});

test('endpoint specs: defaults, derived MACs, rejections', () => {
  const base: EndpointDeviceSpec = {
    hostIfname: 'kn1', alias: 'kitnet:default/web', netnsPath: '/var/run/netns/x', peerIfname: '', mode: 'netkit-l2',
    ipv4: '10.0.0.5', ipv6: 'fd00::5',
  };
  const s = endpointSpecValidate(base);
  assert.equal(s.peerIfname, 'eth0');
  assert.equal(s.hostMac, macDerive('kn1/host'));
  assert.equal(s.peerMac, macDerive('kn1/peer'));
  assert.notEqual(s.hostMac, s.peerMac);
  for (const mac of [s.hostMac!, s.peerMac!]) {
    const first = parseInt(mac.slice(0, 2), 16);
    assert.equal(first & 0x03, 0x02, `${mac} is locally administered unicast`);
  }
  assert.equal(endpointSpecValidate({ ...base, peerMac: '02:AA:00:00:00:01' }).peerMac, '02:aa:00:00:00:01');
  assert.equal(endpointSpecValidate({ ...base, mode: 'veth' }).hostMac, undefined);
  const bad: [Partial<EndpointDeviceSpec>, RegExp][] = [
    [{ mode: 'bridge' as never }, /mode/],
    [{ hostIfname: 'kn-this-is-too-long' }, /at most 15/],
    [{ alias: 'web' }, /kitnet:/],
    [{ ipv4: '10.0.0.5/32' }, /IPv4/],
    [{ ipv6: '10.0.0.5' }, /IPv6/],
    [{ mtu: 20 }, /mtu/],
    [{ mode: 'netkit', peerMac: '02:00:00:00:00:01' }, /L3/],
    [{ peerMac: '01:00:00:00:00:01' }, /unicast/],
    [{ headroom: 70000 }, /headroom/],
  ];
  for (const [patch, re] of bad) assert.throws(() => endpointSpecValidate({ ...base, ...patch }), re, JSON.stringify(patch));
});
