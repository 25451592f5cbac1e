// The addressing server's wiring, with frames in and out of a recording PacketIo instead of packet
// sockets (the real sockets and clients are in test/root/vm-dhcp*.test.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { Dhcp4Server, type PacketIo } from '../../agent/addressing/dhcp4-server.js';
import { configParse } from '../../agent/config.js';
import type { Store } from '../../agent/store/store.js';
import type { WorkloadRecord } from '../../agent/store/types.js';

const GUEST_MAC = '52:54:00:12:34:56';
const rec: WorkloadRecord = {
  spec: { name: 'vm1', namespace: 'shop', kind: 'vm', labels: {}, netns: '/x', requestedMode: 'auto', interface: 'eth0', vm: { tap: 'tap0', bridge: 'br0', mac: GUEST_MAC } },
  mode: 'veth', endpointId: 2, identity: 300, ipv4: '10.1.0.2', ipv6: 'fd00:1::2', hostIfname: 'kn2', state: 'ready',
  observed: { hostIfindex: 9, hostMac: '02:00:00:00:00:01', peerIfindex: 10, peerMac: '02:00:00:00:00:02' }, error: null, createdAt: '', updatedAt: '',
} as WorkloadRecord;

function serverWithIo() {
  const sockets: Array<{ port: number; onFrame: (f: Buffer) => void }> = [];
  const sent: Array<{ port: number; frame: Buffer }> = [];
  const io: PacketIo = {
    open: (_at, port, onFrame) => (sockets.push({ port, onFrame }), sockets.length - 1) as unknown as ReturnType<PacketIo['open']>,
    send: (h, frame) => sent.push({ port: sockets[h as unknown as number]!.port, frame }),
    close: () => undefined,
  };
  const store = { workloadList: () => [rec], workloadGet: () => rec } as unknown as Store;
  const config = configParse({ nodeName: 'node-a', addressing: { dnsServers: ['fd00::53'] } });
  const server = new Dhcp4Server(store, config, pino({ level: 'silent' }), io);
  server.sync();
  return { server, sockets, sent };
}

function solicit(srcMac: string): Buffer {
  const mac = Buffer.from(srcMac.split(':').map((x) => parseInt(x, 16)));
  const msg = Buffer.concat([Buffer.from([1, 0, 0, 1]), Buffer.from([0, 1, 0, 10, 0, 3, 0, 1]), mac, Buffer.from([0, 3, 0, 12]), Buffer.alloc(12)]);
  const udp = Buffer.concat([Buffer.from([2, 0x22, 2, 0x23, 0, 8 + msg.length, 0xff, 0xff]), msg]);
  const ip = Buffer.alloc(40);
  ip[0] = 0x60;
  ip.writeUInt16BE(udp.length, 4);
  ip[6] = 17;
  Buffer.from('fe80000000000000505400fffe123456', 'hex').copy(ip, 8);
  Buffer.from('ff020000000000000000000000010002', 'hex').copy(ip, 24);
  return Buffer.concat([Buffer.from('333300010002', 'hex'), mac, Buffer.from([0x86, 0xdd]), ip, udp]);
}

test('a served guest gets three sockets (DHCP 67, router solicitations, DHCPv6 547) and at once an RA with the managed and other-config flags', () => {
  const { sockets, sent } = serverWithIo();
  assert.deepEqual(sockets.map((s) => s.port), [67, 0, 547]);
  assert.equal(sent.length, 1);
  const icmp = sent[0]!.frame.subarray(14 + 40);
  assert.equal(icmp[0], 134);
  assert.equal(icmp[5], 0xc0, 'M and O set');
});

test('a Solicit from the guest\'s MAC is answered on the DHCPv6 socket; from another MAC it is ignored and counted', () => {
  const { server, sockets, sent } = serverWithIo();
  const v6 = sockets.find((s) => s.port === 547)!;
  v6.onFrame(solicit(GUEST_MAC));
  assert.equal(sent.length, 2);
  assert.equal(sent[1]!.port, 547);
  const udp = sent[1]!.frame.subarray(14 + 40);
  assert.equal(udp.readUInt16BE(2), 546);
  assert.equal(udp[8], 2, 'Advertise');
  assert.deepEqual(server.stats.dhcp6, { advertise: 1 });
  v6.onFrame(solicit('52:54:00:66:66:66'));
  assert.equal(sent.length, 2);
  assert.deepEqual(server.stats.ignoredByProtocol.dhcpv6, { 'foreign-mac': 1 });
  v6.onFrame(Buffer.alloc(20));
  assert.deepEqual(server.stats.ignoredByProtocol.dhcpv6, { 'foreign-mac': 1, malformed: 1 });
  server.close();
});
