// Who may be `host` on ingress. The policy compiler always allows the host identity towards a workload
// (allow-localhost), so a packet that only claims a host source must not get it: a LAN machine that
// owns the host subnet's network address (192.0.2.0: unicast on current kernels), sends from the
// host's subnet-router anycast address (2001:db8::) or spoofs the host's global IPv6 address (Linux
// forwards that, unlike a spoofed IPv4 one) is forwarded by the host, and judged as world there. The
// host's own packets, from a socket or a packet socket (the agent's DHCP and router advertisements),
// stay host. Real kernel objects: the workload's ingress allows host only, the sender is a LAN
// neighbour in a namespace of its own; plus BPF_PROG_TEST_RUN for the program's reading of skb_iif.
//
// All of it runs in a network namespace of its own (the "host": nodeInOwnNetns), with the workload and
// the LAN neighbour in named namespaces; those and the pin roots are removed by the script however it
// ends, and again by this file (after()).
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import type { FlowEvent, KitnetDatapath } from '../../bpf/index.js';
import { datapathUnpinAll } from '../../bpf/index.js';
import { TCX_PASS } from '../../bpf/layout.gen.js';
import { netnsDel, nodeInOwnNetns, uniq } from '../helpers/sys.js';
import type { EventSink } from './bpf-helpers.js';
import { ETH_P_IP, ETH_P_IPV6, LO, TCP, eth, ipv4, ipv6, tcp, testRunDatapathUse } from './bpf-helpers.js';

const id = uniq();
const WL_NS = `hs-w-${id}`;
const LAN_NS = `hs-l-${id}`;
const PIN_ROOT = `/sys/fs/bpf/kitnet-test-hs-${id}`;
const mod = (p: string) => JSON.stringify(fileURLToPath(new URL(p, import.meta.url)));
const PORT = 7779;

const script = `
import { spawnSync, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { datapathLoad, datapathUnpinAll } from ${mod('../../bpf/index.js')};
import { ipcacheSyncSteps } from ${mod('../../agent/policy/ipcache-sync.js')};
import { stepsRun } from ${mod('../../agent/policy/slices.js')};
import { hostDestinationsListedSet } from ${mod('../../agent/policy/host-destinations.js')};
import { hostAddressesList, hostLocalDeliveryList } from ${mod('../../netkit/index.js')};
const NS = ${JSON.stringify(WL_NS)}, LAN = ${JSON.stringify(LAN_NS)}, PIN_ROOT = ${JSON.stringify(PIN_ROOT)}, PORT = ${PORT};
const sh = (...args) => { const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8' }); if (r.status !== 0) throw new Error(args.join(' ') + ': ' + r.stderr); return r.stdout; };
const until = async (what, fn) => {
  for (const end = Date.now() + 10_000; Date.now() < end; await new Promise((r) => setTimeout(r, 20))) {
    const v = fn();
    if (v) return v;
  }
  throw new Error('timed out waiting for ' + what);
};
const out = { judged: {}, received: [] };
let dp, srv;
try {
  sh('sysctl', '-qw', 'net.ipv4.ip_forward=1');
  sh('sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1');
  // the uplink: the host has 192.0.2.1/24, 2001:db8::fe/64 and 2001:db8::1/64; the LAN neighbour
  // owns the network address, sends from the anycast address and from the host's 2001:db8::1
  sh('ip', 'netns', 'add', LAN);
  sh('ip', 'link', 'add', 'hsup0', 'type', 'veth', 'peer', 'name', 'hsup0p', 'netns', LAN);
  sh('ip', 'addr', 'add', '192.0.2.1/24', 'dev', 'hsup0');
  sh('ip', '-6', 'addr', 'add', '2001:db8::fe/64', 'dev', 'hsup0', 'nodad');
  sh('ip', '-6', 'addr', 'add', '2001:db8::1/64', 'dev', 'hsup0', 'nodad');
  sh('ip', 'link', 'set', 'hsup0', 'up');
  const [up] = JSON.parse(sh('ip', '-j', 'link', 'show', 'hsup0'));
  const inLan = (...a) => sh('ip', 'netns', 'exec', LAN, ...a);
  inLan('ip', 'link', 'set', 'lo', 'up');
  inLan('ip', 'addr', 'add', '192.0.2.0/24', 'dev', 'hsup0p');
  inLan('ip', 'addr', 'add', '192.0.2.7/24', 'dev', 'hsup0p');
  inLan('ip', '-6', 'addr', 'add', '2001:db8::/64', 'dev', 'hsup0p', 'nodad');
  inLan('ip', '-6', 'addr', 'add', '2001:db8::7/64', 'dev', 'hsup0p', 'nodad');
  inLan('ip', '-6', 'addr', 'add', '2001:db8::1/128', 'dev', 'lo', 'nodad');
  inLan('ip', 'link', 'set', 'hsup0p', 'up');
  // static neighbours: nothing waits for ARP, neighbour discovery or DAD of link-local addresses
  inLan('ip', 'neigh', 'replace', '192.0.2.1', 'lladdr', up.address, 'dev', 'hsup0p', 'nud', 'permanent');
  inLan('ip', '-6', 'neigh', 'replace', '2001:db8::fe', 'lladdr', up.address, 'dev', 'hsup0p', 'nud', 'permanent');
  inLan('ip', 'route', 'add', '10.251.0.0/16', 'via', '192.0.2.1');
  inLan('ip', '-6', 'route', 'add', 'fd00:251::/64', 'via', '2001:db8::fe');
  // the workload
  sh('ip', 'netns', 'add', NS);
  sh('ip', 'link', 'add', 'hswl0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', NS);
  sh('ip', 'link', 'set', 'hswl0', 'up');
  const inNs = (...a) => sh('ip', 'netns', 'exec', NS, ...a);
  inNs('ip', 'link', 'set', 'lo', 'up');
  inNs('ip', 'addr', 'add', '10.251.0.2/32', 'dev', 'eth0');
  inNs('ip', '-6', 'addr', 'add', 'fd00:251::2/128', 'dev', 'eth0', 'nodad');
  inNs('ip', 'link', 'set', 'eth0', 'up');
  sh('ip', 'route', 'add', '10.251.0.2/32', 'dev', 'hswl0');
  sh('ip', '-6', 'route', 'add', 'fd00:251::2/128', 'dev', 'hswl0');
  const [host] = JSON.parse(sh('ip', '-j', 'link', 'show', 'hswl0'));
  const [peer] = JSON.parse(sh('ip', '-n', NS, '-j', 'link', 'show', 'eth0'));
  sh('ip', 'neigh', 'replace', '10.251.0.2', 'lladdr', peer.address, 'dev', 'hswl0', 'nud', 'permanent');
  sh('ip', '-6', 'neigh', 'replace', 'fd00:251::2', 'lladdr', peer.address, 'dev', 'hswl0', 'nud', 'permanent');

  await datapathUnpinAll(PIN_ROOT);
  dp = await datapathLoad({ pinRoot: PIN_ROOT });
  const ep = { endpointId: 31, identity: 4300, ipv4: '10.251.0.2', ipv6: 'fd00:251::2', mac: peer.address, hostMac: host.address, flags: 3 };
  dp.endpointUpsert(host.ifindex, ep);
  await dp.attach({ ifname: 'hswl0', ifindex: host.ifindex, kind: 'tcx' });
  // the ipcache as the agent writes it: from the kernel's listing (agent/host-address-watch.ts)
  hostDestinationsListedSet({ addresses: await hostAddressesList(), localDelivery: await hostLocalDeliveryList() });
  stepsRun(ipcacheSyncSteps({ datapath: dp }, { workloadList: () => [{ ipv4: ep.ipv4, ipv6: ep.ipv6, identity: ep.identity }] }, undefined));
  out.ipcache = Object.fromEntries(dp.ipcacheList().filter(([c]) => c.startsWith('192.0.2') || c.startsWith('2001:db8')).map(([c, e]) => [c, e.identity]));
  // ingress: only what the compiler always adds (allow-localhost: identity 1)
  const rule = (direction, identity) => ({ op: 'upsert', entry: { direction, identity, protocol: 0, port: 0, portPrefixLen: 0, deny: false } });
  dp.policyApply(ep.endpointId, [rule('ingress', 1), rule('egress', 0)]);
  const events = [];
  const reader = dp.flowsRead((evs) => events.push(...evs));

  // the workload's listener prints what it receives, one line a datagram: the payload names the case
  srv = spawn('ip', ['netns', 'exec', NS, 'python3', '-u', '-c', \`
import select, socket
socks = []
for fam, addr in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, ${PORT})); socks.append(s)
print('ready')
while True:
    for s in select.select(socks, [], [])[0]:
        print(s.recv(100).decode())
\`], { stdio: ['ignore', 'pipe', 'inherit'] });
  let lines = '';
  srv.stdout.setEncoding('utf8').on('data', (d) => { lines += d; });
  await until('the listener', () => lines.includes('ready'));
  const received = (name) => lines.split('\\n').includes(name);

  // the first event of a case's datagram (cases share addresses: each looks past the events before it)
  let from = 0;
  const judged = (name, src, dst) => events.slice(from).find((e) => e.direction === 'INGRESS' && e.srcAddr === src && e.dstAddr === dst && e.dstPort === PORT);
  // from the LAN: forwarded by the host
  const fromLan = async (name, src, dst) => {
    from = events.length;
    inLan('python3', '-c', \`
import socket, sys
src, dst, name = sys.argv[1:4]
s = socket.socket(socket.AF_INET6 if ':' in dst else socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0))
s.sendto(name.encode(), (dst, ${PORT}))
\`, src, dst, name);
    const e = await until(name, () => judged(name, src, dst));
    out.judged[name] = { verdict: e.verdict, srcIdentity: e.srcIdentity, dropReason: e.dropReason };
  };
  // from the host's own sockets
  const fromHost = async (name, src, dst) => {
    from = events.length;
    const s = dgram.createSocket(dst.includes(':') ? 'udp6' : 'udp4');
    s.bind(0, src);
    await once(s, 'listening');
    s.send(name, PORT, dst);
    await until(name, () => received(name) && judged(name, src, dst));
    s.close();
    const e = judged(name, src, dst);
    out.judged[name] = { verdict: e.verdict, srcIdentity: e.srcIdentity, dropReason: e.dropReason };
  };
  await fromLan('lan-network-address', '192.0.2.0', '10.251.0.2');
  await fromLan('lan-control4', '192.0.2.7', '10.251.0.2');
  await fromLan('lan-anycast', '2001:db8::', 'fd00:251::2');
  await fromLan('lan-spoofed-host6', '2001:db8::1', 'fd00:251::2');
  await fromLan('lan-control6', '2001:db8::7', 'fd00:251::2');
  await fromHost('host-socket4', '192.0.2.1', '10.251.0.2');
  await fromHost('host-socket6', '2001:db8::1', 'fd00:251::2');
  // the host's packet socket on the device (as the agent's DHCP server and router advertisements send)
  from = events.length;
  sh('python3', '-c', \`
import socket, struct, sys
dmac, smac = (bytes.fromhex(m.replace(':', '')) for m in sys.argv[1:3])
payload = b'host-packet-socket'
udp = struct.pack('!HHHH', 40000, ${PORT}, 8 + len(payload), 0) + payload
hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton('192.0.2.1'), socket.inet_aton('10.251.0.2'))
s = 0
for i in range(0, 20, 2): s += (hdr[i] << 8) | hdr[i + 1]
while s >> 16: s = (s & 0xffff) + (s >> 16)
hdr = hdr[:10] + struct.pack('!H', ~s & 0xffff) + hdr[12:]
p = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
p.bind(('hswl0', 0))
p.send(dmac + smac + b'\\\\x08\\\\x00' + hdr + udp)
\`, peer.address, host.address);
  await until('host-packet-socket', () => received('host-packet-socket') && judged('host-packet-socket', '192.0.2.1', '10.251.0.2'));
  const e = judged('host-packet-socket', '192.0.2.1', '10.251.0.2');
  out.judged['host-packet-socket'] = { verdict: e.verdict, srcIdentity: e.srcIdentity, dropReason: e.dropReason };
  out.received = ['lan-network-address', 'lan-anycast', 'lan-spoofed-host6', 'lan-control4', 'lan-control6'].filter(received);
  reader.close();
} finally {
  hostDestinationsListedSet(undefined);
  try { srv?.kill(); } catch {}
  try { dp?.close(); } catch {}
  await datapathUnpinAll(PIN_ROOT).catch(() => {});
  spawnSync('ip', ['netns', 'del', NS]);
  spawnSync('ip', ['netns', 'del', LAN]);
}
console.log(JSON.stringify(out));
`;

interface Judged {
  verdict: string;
  srcIdentity: number;
  dropReason: number;
}

after(async () => {
  await netnsDel(WL_NS);
  await netnsDel(LAN_NS);
  await datapathUnpinAll(PIN_ROOT).catch(() => undefined);
});

const HOST = 1;
const WORLD4 = 9;
const WORLD6 = 10;
const POLICY_DENIED = 133;

test('a LAN sender claiming a host source (network address, anycast, the host\'s own IPv6 address) is world on ingress; the host\'s own socket and packet socket are host (root)', { timeout: 120_000 }, async () => {
  const out = await nodeInOwnNetns<{ ipcache: Record<string, number>; judged: Record<string, Judged>; received: string[] }>('', script);
  const world = (family: 4 | 6): Judged => ({ verdict: 'DROPPED', srcIdentity: family === 4 ? WORLD4 : WORLD6, dropReason: POLICY_DENIED });
  const host: Judged = { verdict: 'FORWARDED', srcIdentity: HOST, dropReason: 0 };
  assert.equal(out.ipcache['2001:db8::1/128'], HOST, 'the spoofed source is one of the host\'s addresses');
  assert.equal(out.ipcache['2001:db8::/128'], HOST, 'the kernel delivers the subnet-router anycast address locally');
  assert.equal(out.ipcache['192.0.2.0/32'], undefined, 'the network address is the LAN machine\'s (no local route for it)');
  assert.deepEqual(out.judged, {
    'lan-network-address': world(4),
    'lan-control4': world(4),
    'lan-anycast': world(6),
    'lan-spoofed-host6': world(6),
    'lan-control6': world(6),
    'host-socket4': host,
    'host-socket6': host,
    'host-packet-socket': host,
  });
  assert.deepEqual(out.received, [], 'nothing from the LAN reached the workload');
});

// BPF_PROG_TEST_RUN hands the program an skb owned by a dummy socket: a forwarded packet (no socket)
// cannot be made there, so the tests above send real ones; here, the socket counts whatever skb_iif says.
describe('a packet with a socket is the host\'s own (BPF_PROG_TEST_RUN)', { timeout: 60_000 }, () => {
  const EP = { endpointId: 12, identity: 4101, ipv4: '10.250.0.2', ipv6: 'fd00:250::2', mac: '02:00:00:00:00:02', flags: 0 };
  let dp: KitnetDatapath;
  let sink: EventSink;
  testRunDatapathUse('hs', EP, (d, s) => {
    dp = d;
    sink = s;
    dp.ipcacheUpsert('192.0.2.1/32', { identity: HOST, hostId: 0 });
    dp.ipcacheUpsert('2001:db8::1/128', { identity: HOST, hostId: 0 });
    dp.ipcacheUpsert('198.51.100.0/24', { identity: 5000, hostId: 0 });
    const ingress = (identity: number) => ({ op: 'upsert' as const, entry: { direction: 'ingress' as const, identity, protocol: 0, port: 0, portPrefixLen: 0, deny: false } });
    dp.policyApply(EP.endpointId, [ingress(HOST), ingress(5000)]);
  });

  const syn4 = (src: string, sport: number) => eth(ETH_P_IP, ipv4(src, EP.ipv4, 6, tcp(sport, 22, TCP.SYN)));
  const syn6 = (src: string, sport: number) => eth(ETH_P_IPV6, ipv6(src, EP.ipv6, 6, tcp(sport, 22, TCP.SYN)));
  async function run(frame: Buffer, ingressIfindex: number): Promise<{ retval: number; events: FlowEvent[] }> {
    const { retval } = dp.testRun('to_workload', frame, { ifindex: LO, ingressIfindex });
    return { retval, events: await sink.settle() };
  }
  const seen = (r: { retval: number; events: FlowEvent[] }) => ({ retval: r.retval, ids: r.events.map((e) => [e.verdict, e.srcIdentity]) });

  test('a host source with a socket is host, whatever skb_iif says', async () => {
    assert.deepEqual(seen(await run(syn4('192.0.2.1', 41000), 0)), { retval: TCX_PASS, ids: [['FORWARDED', HOST]] });
    assert.deepEqual(seen(await run(syn4('192.0.2.1', 41001), 7)), { retval: TCX_PASS, ids: [['FORWARDED', HOST]] });
    assert.deepEqual(seen(await run(syn6('2001:db8::1', 41000), 0)), { retval: TCX_PASS, ids: [['FORWARDED', HOST]] });
    assert.deepEqual(seen(await run(syn6('2001:db8::1', 41001), 7)), { retval: TCX_PASS, ids: [['FORWARDED', HOST]] });
  });

  test('other identities are what the ipcache says, forwarded or not', async () => {
    assert.deepEqual(seen(await run(syn4('198.51.100.9', 41002), 7)), { retval: TCX_PASS, ids: [['FORWARDED', 5000]] });
  });
});
