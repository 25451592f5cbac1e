import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { ANSWER_BURST, ANSWER_PER_SECOND, READ_BURST, READ_PER_SECOND } from '../../agent/addressing/dhcp4-server.js';
import type { Workload } from '../../common/schemas/workload.js';
import { apiCall, testAgentStart, type TestAgent } from '../helpers/agent.js';
import { testMode } from '../helpers/mode.js';
import { timeLimit } from '../helpers/timeouts.js';
import { netnsAdd, netnsDel, ping, run, uniq, waitFor } from '../helpers/sys.js';

const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const PROBE = join(REPO, 'test/helpers/dhcp-probe.py');

/** udhcpc's event script: applies the lease (address, option 121 routes) and records what it got. */
const SCRIPT = `#!/bin/sh
env | grep -E '^(ip|mask|subnet|router|dns|domain|search|hostname|mtu|lease|staticroutes|serverid)=' > "$DUMP.$1"
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    set -- $staticroutes
    while [ $# -ge 2 ]; do
      if [ "$2" = 0.0.0.0 ]; then ip route replace "$1" dev "$interface" scope link
      else ip route replace "$1" via "$2" dev "$interface"; fi
      shift 2
    done ;;
esac
exit 0
`;

const macBytes = (m: string) => Buffer.from(m.split(':').map((x) => parseInt(x, 16)));

/** A client's DHCP frame (Ethernet/IPv4/UDP 68 -> 67, broadcast), built here independently of the agent's codec. */
function requestFrame(o: {
  srcMac: string; chaddr?: string; ciaddr?: string; giaddr?: string; type: number; options?: Buffer; xid?: number;
  /** Unicast (a renewal): IPv4 source and destination, Ethernet destination. */
  unicast?: { srcIp: string; dstIp: string; dstMac: string };
}): Buffer {
  const bootp = Buffer.alloc(240);
  bootp[0] = 1;
  bootp[1] = 1;
  bootp[2] = 6;
  bootp.writeUInt32BE(o.xid ?? 0x1234abcd, 4);
  if (o.ciaddr) Buffer.from(o.ciaddr.split('.').map(Number)).copy(bootp, 12);
  if (o.giaddr) Buffer.from(o.giaddr.split('.').map(Number)).copy(bootp, 24);
  macBytes(o.chaddr ?? o.srcMac).copy(bootp, 28);
  bootp.writeUInt32BE(0x63825363, 236);
  const dhcp = Buffer.concat([bootp, Buffer.from([53, 1, o.type]), o.options ?? Buffer.alloc(0), Buffer.from([255])]);
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(68, 0);
  udp.writeUInt16BE(67, 2);
  udp.writeUInt16BE(8 + dhcp.length, 4);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 8 + dhcp.length, 2);
  ip[8] = 64;
  ip[9] = 17;
  ip.fill(255, 16, 20);
  if (o.unicast) {
    Buffer.from(o.unicast.srcIp.split('.').map(Number)).copy(ip, 12);
    Buffer.from(o.unicast.dstIp.split('.').map(Number)).copy(ip, 16);
  }
  const eth = Buffer.concat([o.unicast ? macBytes(o.unicast.dstMac) : Buffer.alloc(6, 0xff), macBytes(o.srcMac), Buffer.from([0x08, 0x00])]);
  return lengthsSet(Buffer.concat([eth, ip, udp, dhcp]));
}

/** A router solicitation from the unspecified address (as a guest sends before it has one), checksum filled in. */
function routerSolicitation(srcMac: string): Buffer {
  const ip6 = Buffer.alloc(40);
  ip6[0] = 0x60;
  ip6.writeUInt16BE(8, 4);
  ip6[6] = 58;
  ip6[7] = 255;
  Buffer.from('ff020000000000000000000000000002', 'hex').copy(ip6, 24);
  const icmp = Buffer.from([133, 0, 0, 0, 0, 0, 0, 0]);
  let sum = 0;
  for (let i = 8; i < 40; i += 2) sum += ip6.readUInt16BE(i);
  sum += 8 + 58 + (133 << 8);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  icmp.writeUInt16BE(~sum & 0xffff, 2);
  return Buffer.concat([Buffer.from('333300000002', 'hex'), macBytes(srcMac), Buffer.from([0x86, 0xdd]), ip6, icmp]);
}

/**
 * IP total length and header checksum for the frame as it is, UDP length as given (else the true one):
 * the VM namespace's bridge (br_netfilter) drops frames whose IP header is wrong before kitnet sees
 * them, so hostile frames keep a sound IP header and lie above it. The codec's unit tests cover the rest.
 */
function lengthsSet(frame: Buffer, udpLength?: number): Buffer {
  const f = Buffer.from(frame);
  f.writeUInt16BE(f.length - 14, 16);
  f.writeUInt16BE(udpLength ?? f.length - 34, 38);
  f.writeUInt16BE(0, 24);
  let sum = 0;
  for (let i = 14; i < 34; i += 2) sum += f.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  f.writeUInt16BE(~sum & 0xffff, 24);
  return f;
}

/**
 * DHCPv4 for a `kind: vm` guest: the guest is simulated by a namespace whose eth0 (with the VM's MAC)
 * is joined to the VM namespace's bridge, where QEMU's tap would be. busybox udhcpc configures it
 * from kitnet's answers alone, then it reaches a netns workload through the datapath. Hostile frames
 * from the same guest get no answer and leave the server working.
 */
describe('DHCPv4 for VM guests (root)', { timeout: 180_000 }, () => {
  const id = uniq();
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-dhcp-'));
  const guestNs = `kitnet-dhcpg-${id}`;
  const peerNs = `kitnet-dhcpp-${id}`;
  const script = join(dir, 'udhcpc.sh');
  let t: TestAgent;
  let vm: Workload;
  let peer: Workload;
  const call = <T>(method: string, path: string, body?: unknown) => apiCall<T>(t.url, method, path, body);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- free-form Hubble JSON, asserted field by field
  type Line = { flow: Record<string, any> };
  /** The agent's flows (GET /v1/flows), oldest first. */
  const flowLines = async (): Promise<Line[]> => (await (await fetch(`${t.url}/v1/flows?last=4095`)).text()).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Line);
  const udhcpc = (args: string[] = [], tries = 5) =>
    run('ip', ['netns', 'exec', guestNs, 'env', `DUMP=${join(dir, 'lease')}`, 'busybox', 'udhcpc', '-i', 'eth0', '-f', '-q', '-n', '-t', String(tries), '-T', '1',
      '-s', script, '-O', 'staticroutes', '-O', 'search', '-O', 'mtu', '-O', 'hostname', ...args], { timeoutMs: (tries + 25) * 1000 });

  before(async () => {
    writeFileSync(script, SCRIPT, { mode: 0o755 });
    t = await testAgentStart(`dhcp-${id}`, {
      ipam: { ipv4Pool: '10.216.0.0/24', ipv6Pool: 'fd00:216::/64' },
      addressing: { dnsServers: ['10.216.9.9', '10.216.9.10'], searchDomains: ['lab.example', 'example.org'], leaseSeconds: 3600 },
    });
    await netnsAdd(guestNs);
    await netnsAdd(peerNs);
    peer = await call<Workload>('POST', '/v1/workloads', { name: 'peer', namespace: 'dhcp', labels: { app: 'peer' }, netns: `/var/run/netns/${peerNs}` });
    // veth here; a netkit L2 pair in the lab VM (KITNET_TEST_MODE=netkit), where the datapath hands
    // the guest's first broadcasts to the host side
    vm = await call<Workload>('POST', '/v1/workloads', { kind: 'vm', name: `guest-${id}`, namespace: 'dhcp', labels: { app: 'guest' }, mode: testMode });
    assert.equal(vm.addressing, 'dhcp');
    assert.equal(vm.mode, testMode === 'netkit' ? 'netkit-l2' : 'veth');
    const vmNs = basename(vm.vm!.netnsPath);
    // the guest's NIC: a veth end in the guest namespace with the VM's MAC, the other end on br0
    await run('ip', ['-n', vmNs, 'link', 'add', 'gport0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', guestNs]);
    await run('ip', ['-n', vmNs, 'link', 'set', 'gport0', 'master', vm.vm!.bridge, 'up']);
    await run('ip', ['-n', guestNs, 'link', 'set', 'eth0', 'address', vm.vm!.mac]);
    await run('ip', ['-n', guestNs, 'link', 'set', 'eth0', 'up']);
    await run('ip', ['-n', guestNs, 'link', 'set', 'lo', 'up']);
  });

  after(async () => {
    await t?.stop().catch(() => undefined);
    await netnsDel(guestNs);
    await netnsDel(peerNs);
    rmSync(dir, { recursive: true, force: true });
  });

  test('udhcpc gets the /32, option 121 routes, DNS, search, MTU, hostname and lease; traffic flows both ways', async () => {
    await udhcpc();
    const lease = Object.fromEntries(readFileSync(join(dir, 'lease.bound'), 'utf8').trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    assert.equal(lease.ip, vm.ipv4);
    assert.equal(lease.mask, '32');
    assert.equal(lease.subnet, '255.255.255.255');
    assert.equal(lease.router, '169.254.1.1');
    assert.equal(lease.serverid, '169.254.1.1');
    assert.equal(lease.staticroutes, '169.254.1.1/32 0.0.0.0 0.0.0.0/0 169.254.1.1');
    assert.equal(lease.dns?.trim(), '10.216.9.9 10.216.9.10');
    assert.equal(lease.search?.trim(), 'lab.example example.org');
    assert.equal(lease.domain, 'lab.example');
    assert.equal(lease.mtu, '1500');
    assert.equal(lease.hostname, vm.name);
    assert.equal(lease.lease, '3600');

    const addrs = JSON.parse(await run('ip', ['-n', guestNs, '-4', '-j', 'addr', 'show', 'dev', 'eth0'])) as Array<{ addr_info: Array<{ local: string; prefixlen: number }> }>;
    assert.deepEqual(addrs[0]!.addr_info.map((a) => `${a.local}/${a.prefixlen}`), [`${vm.ipv4}/32`]);
    const rts = JSON.parse(await run('ip', ['-n', guestNs, '-4', '-j', 'route', 'show'])) as Array<{ dst: string; gateway?: string; scope?: string }>;
    assert.ok(rts.some((r) => r.dst === '169.254.1.1' && r.scope === 'link'), JSON.stringify(rts));
    assert.ok(rts.some((r) => r.dst === 'default' && r.gateway === '169.254.1.1'), JSON.stringify(rts));

    assert.ok(await ping(guestNs, peer.ipv4, 2), `guest -> ${peer.ipv4}`);
    assert.ok(await ping(peerNs, vm.ipv4, 2), `${peer.ipv4} -> guest`);
    assert.ok(t.agent.dhcp.stats.offers >= 1 && t.agent.dhcp.stats.acks >= 1);

    // the guest's DHCP shows as flows (UDP 68 -> 67): on veth the agent answers before tcx ingress, which
    // then drops the 0.0.0.0 source; on netkit the datapath hands it to the host side (forwarded)
    const dhcpFlow = await waitFor('a DHCP flow from the guest', async () =>
      (await flowLines()).find((l) => l.flow.l4?.UDP?.source_port === 68 && l.flow.l4?.UDP?.destination_port === 67 && l.flow.source?.pod_name === vm.name), 20_000);
    assert.equal(dhcpFlow.flow.IP.source, '0.0.0.0');
    assert.equal(dhcpFlow.flow.IP.destination, '255.255.255.255');
    assert.equal(dhcpFlow.flow.verdict, testMode === 'netkit' ? 'FORWARDED' : 'DROPPED');
  });

  test('a request for another address is refused with a NAK; a renewal from the guest\'s address is acknowledged', async () => {
    const request = (addr: string) => Buffer.concat([Buffer.from([50, 4, ...addr.split('.').map(Number)]), Buffer.from([54, 4, 169, 254, 1, 1])]);
    const naks = t.agent.dhcp.stats.naks;
    const nak = (await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'exchange', 'eth0',
      requestFrame({ srcMac: vm.vm!.mac, type: 3, options: request('10.216.0.250') }).toString('hex'), '10'])).trim();
    assert.ok(nak.length > 0, `a reply came ${JSON.stringify(t.agent.dhcp.stats)}`);
    const frame = Buffer.from(nak, 'hex');
    const dhcp = frame.subarray(14 + 20 + 8);
    assert.equal(dhcp[0], 2, 'a BOOTREPLY');
    assert.equal(dhcp.readUInt32BE(4), 0x1234abcd, 'the request\'s xid');
    assert.deepEqual([...dhcp.subarray(240, 243)], [53, 1, 6], 'DHCPNAK');
    assert.equal(t.agent.dhcp.stats.naks, naks + 1);

    // the guest's own address in option 50 but another workload's in ciaddr: acknowledged, but not
    // sent as if to that workload (broadcast, to the guest's MAC, as every reply)
    const ack = Buffer.from((await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'exchange', 'eth0',
      requestFrame({ srcMac: vm.vm!.mac, ciaddr: peer.ipv4, type: 3, xid: 0x77, options: request(vm.ipv4) }).toString('hex'), '10'])).trim(), 'hex');
    assert.ok(ack.length > 0, 'a reply came');
    assert.deepEqual([...ack.subarray(14 + 20 + 8 + 240, 14 + 20 + 8 + 243)], [53, 1, 5], 'DHCPACK');
    assert.equal([...ack.subarray(30, 34)].join('.'), '255.255.255.255', 'not addressed to the other workload');
    assert.equal(ack.subarray(0, 6).toString('hex'), vm.vm!.mac.replace(/:/g, ''));
    // a renewal (RENEWING: unicast from the guest's address to the server, ciaddr its own) is acknowledged to that address
    const renewed = Buffer.from((await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'exchange', 'eth0',
      requestFrame({ srcMac: vm.vm!.mac, ciaddr: vm.ipv4, type: 3, xid: 0x78, unicast: { srcIp: vm.ipv4, dstIp: '169.254.1.1', dstMac: vm.vm!.gatewayMac! } }).toString('hex'), '10'])).trim(), 'hex');
    assert.ok(renewed.length > 0, 'a reply to the renewal came');
    assert.deepEqual([...renewed.subarray(14 + 20 + 8 + 240, 14 + 20 + 8 + 243)], [53, 1, 5], 'DHCPACK');
    assert.equal([...renewed.subarray(30, 34)].join('.'), vm.ipv4, 'to the guest\'s own address');

    // busybox udhcpc asking for its own address again (INIT-REBOOT) is acknowledged
    await udhcpc(['-r', vm.ipv4]);
    assert.match(readFileSync(join(dir, 'lease.bound'), 'utf8'), new RegExp(`^ip=${vm.ipv4.replace(/\./g, '\\.')}$`, 'm'));
  });

  test('hostile frames get no answer and the server keeps working; requests from another MAC and relayed ones show as DHCP flows', async () => {
    const mac = vm.vm!.mac;
    const before = { ...t.agent.dhcp.stats, ignored: { ...t.agent.dhcp.stats.ignored } };
    const discover = requestFrame({ srcMac: mac, type: 1 });
    const truncated = lengthsSet(discover.subarray(0, 14 + 20 + 8 + 100));
    const lyingUdpLength = lengthsSet(discover, 1400);
    const shortUdpLength = lengthsSet(discover, 7);
    const optionPastEnd = requestFrame({ srcMac: mac, type: 1, options: Buffer.from([12, 200, 0x41, 0x41]) });
    const noEnd = lengthsSet(optionPastEnd.subarray(0, optionPastEnd.length - 1));
    const oversized = requestFrame({ srcMac: mac, type: 1, options: Buffer.concat(Array.from({ length: 4 }, () => Buffer.concat([Buffer.from([224, 255]), Buffer.alloc(255, 0x58)]))) });
    const garbage = lengthsSet(Buffer.concat([discover.subarray(0, 42), Buffer.alloc(300, 0xee)]));
    const sent = {
      // on netkit the datapath runs first and drops another source MAC itself (INVALID_SOURCE_MAC)
      'foreign-mac': [...testMode === 'netkit' ? [] : [requestFrame({ srcMac: '52:54:00:66:66:66', type: 1 })], requestFrame({ srcMac: mac, chaddr: '52:54:00:66:66:66', type: 1 })],
      relayed: [requestFrame({ srcMac: mac, giaddr: '10.9.9.9', type: 1 })],
      malformed: [truncated, lyingUdpLength, shortUdpLength, optionPastEnd, noEnd, garbage, requestFrame({ srcMac: mac, type: 1, options: Buffer.from([52, 1, 3]) })],
    };
    const judged = (reasons: Array<keyof typeof sent>) => waitFor(`every ${reasons.join(' / ')} frame judged`, async () =>
      reasons.every((reason) => (t.agent.dhcp.stats.ignored[reason] ?? 0) - (before.ignored[reason] ?? 0) >= sent[reason].length), timeLimit(10_000));
    // Requests from another MAC and relayed ones first, on their own: each shows as a DHCP flow from the
    // guest's device (UDP 68 -> 67, 0.0.0.0 -> 255.255.255.255). On veth the agent saw the frame before
    // tcx ingress, which drops it (another source MAC; the source 0.0.0.0); on netkit the datapath hands
    // the guest's own broadcasts to the host side (forwarded) and drops another source MAC before the agent.
    const known = new Set((await flowLines()).map((l) => l.flow.uuid as string));
    const ignoredRequests = [...sent['foreign-mac'], ...sent.relayed];
    await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'send', 'eth0', ...ignoredRequests.map((f) => f.toString('hex'))]);
    await judged(['foreign-mac', 'relayed']);
    let dhcpFlows: Line[] = [];
    await waitFor('a DHCP flow for each ignored request', async () => {
      dhcpFlows = (await flowLines()).filter((l) => !known.has(l.flow.uuid as string) && l.flow.Summary === 'DHCP');
      return dhcpFlows.length >= ignoredRequests.length || undefined;
    }, timeLimit(10_000)).catch((err: Error) => assert.fail(`${err.message}: ${JSON.stringify(dhcpFlows.map((l) => l.flow))}`));
    for (const { flow } of dhcpFlows) {
      assert.equal(flow.interface?.index, vm.interfaces.host.ifindex, 'seen on the guest\'s device');
      assert.equal(flow.source?.pod_name, vm.name);
      assert.equal(flow.source?.identity, vm.identity);
      assert.equal(flow.traffic_direction, 'EGRESS');
      assert.deepEqual([flow.IP?.source, flow.IP?.destination, flow.l4?.UDP?.source_port, flow.l4?.UDP?.destination_port], ['0.0.0.0', '255.255.255.255', 68, 67]);
    }
    assert.deepEqual(dhcpFlows.map((l) => `${l.flow.verdict} ${l.flow.drop_reason_desc ?? ''}`.trim()).sort(), testMode === 'netkit'
      ? ['FORWARDED', 'FORWARDED']
      : ['DROPPED INVALID_SOURCE_IP', 'DROPPED INVALID_SOURCE_IP', 'DROPPED INVALID_SOURCE_MAC']);

    await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'send', 'eth0', ...sent.malformed.map((f) => f.toString('hex'))]);
    await judged(['malformed']);
    assert.equal(t.agent.dhcp.stats.offers, before.offers, 'no offer to a hostile frame');
    assert.equal(t.agent.dhcp.stats.acks, before.acks);
    assert.equal(t.agent.dhcp.stats.naks, before.naks);

    // a large but well-formed DISCOVER (1,000 bytes of unknown options) is legal: answered
    await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'send', 'eth0', oversized.toString('hex')]);
    await waitFor('the large but valid DISCOVER answered', async () => t.agent.dhcp.stats.offers === before.offers + 1, 10_000);
    // and a real client still gets its lease
    await udhcpc();
    assert.ok(t.agent.dhcp.stats.acks > before.acks);
    const status = await call<{ counts: { workloads: number } }>('GET', '/v1/status');
    assert.equal(status.counts.workloads, 2, 'the agent answers');
  });

  test('a flood of DISCOVERs and router solicitations is answered only within the guest\'s budget; its next lease is not affected', async () => {
    const { offers, routerAdverts } = t.agent.dhcp.stats;
    const limited = t.agent.dhcp.stats.ignored['rate-limited'] ?? 0;
    const n = 100;
    const flood = Array.from({ length: n }, (_, i) =>
      (i % 2 ? routerSolicitation(vm.vm!.mac) : requestFrame({ srcMac: vm.vm!.mac, type: 1, xid: 0x5000 + i })).toString('hex'));
    const t0 = performance.now();
    await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'send', 'eth0', ...flood]);
    const answered = () => t.agent.dhcp.stats.offers - offers + t.agent.dhcp.stats.routerAdverts - routerAdverts;
    const refused = () => (t.agent.dhcp.stats.ignored['rate-limited'] ?? 0) - limited;
    await waitFor('every DISCOVER of the flood judged', async () => answered() + refused() >= n, 15_000);
    const seconds = (performance.now() - t0) / 1000;
    assert.ok(answered() <= ANSWER_BURST + ANSWER_PER_SECOND * seconds + 1, `${answered()} of ${n} answered in ${seconds.toFixed(1)} s`);
    assert.ok(refused() > 0);
    // the budget refills: a real client gets its lease
    await udhcpc();
    assert.match(readFileSync(join(dir, 'lease.bound'), 'utf8'), new RegExp(`^ip=${vm.ipv4.replace(/\./g, '\\.')}$`, 'm'));
  });

  test('a flood of frames the agent answers with nothing reaches it only at the socket\'s pace; the guest\'s next lease still comes', async () => {
    const frames = t.agent.dhcp.stats.frames;
    const n = 300;
    const flood = Array.from({ length: n }, (_, i) => requestFrame({ srcMac: '52:54:00:66:66:67', type: 1, xid: 0x6000 + i }).toString('hex'));
    const t0 = performance.now();
    await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'send', 'eth0', ...flood]);
    // the client's DISCOVERs wait behind what the socket queued of the flood
    await udhcpc([], 60);
    const seconds = (performance.now() - t0) / 1000;
    const read = t.agent.dhcp.stats.frames - frames;
    assert.ok(read <= READ_BURST + READ_PER_SECOND * seconds + 1, `${read} frames read in ${seconds.toFixed(1)} s`);
    assert.match(readFileSync(join(dir, 'lease.bound'), 'utf8'), new RegExp(`^ip=${vm.ipv4.replace(/\./g, '\\.')}$`, 'm'));
  });

  test('router advertisements: the guest\'s solicitation gets a default route via fe80::1; IPv6 traffic flows', async () => {
    const sysctl = (k: string, v: string) => run('ip', ['netns', 'exec', guestNs, 'sysctl', '-qw', `${k}=${v}`]);
    const ras = t.agent.dhcp.stats.routerAdverts;
    await sysctl('net.ipv6.conf.eth0.accept_ra', '2');
    await sysctl('net.ipv6.conf.eth0.accept_dad', '0');
    // link down and up: the guest's kernel solicits routers again, as at boot
    await run('ip', ['-n', guestNs, 'link', 'set', 'eth0', 'down']);
    await run('ip', ['-n', guestNs, 'link', 'set', 'eth0', 'up']);
    await run('ip', ['-n', guestNs, '-6', 'addr', 'add', `${vm.ipv6}/128`, 'dev', 'eth0', 'nodad']);
    const route = await waitFor('a default route from a router advertisement', async () => {
      const rts = JSON.parse(await run('ip', ['-n', guestNs, '-6', '-j', 'route', 'show', 'default'])) as Array<{ gateway?: string; protocol?: string }>;
      return rts.find((r) => r.gateway === 'fe80::1');
    }, 20_000);
    assert.equal(route.protocol, 'ra');
    assert.ok(t.agent.dhcp.stats.routerAdverts > ras, 'answered a solicitation');
    assert.ok(await ping(guestNs, peer.ipv6, 2), `guest -> ${peer.ipv6}`);
    assert.ok(await ping(peerNs, vm.ipv6, 2), `${peer.ipv6} -> guest`);
  });

  test('kind tap: served on the adopted tap (the VM behind its fd); answers come from the store after the server is rebuilt', async () => {
    const tap = `kndh${id}`.slice(0, 15);
    const mac = '52:54:00:21:6d:01';
    await run('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap']);
    try {
      await run('ip', ['link', 'set', tap, 'up']);
      const w = await call<Workload>('POST', '/v1/workloads', { kind: 'tap', name: `tap-${id}`, namespace: 'dhcp', device: tap, mac });
      assert.equal(w.addressing, 'dhcp');
      const exchange = async (frame: Buffer) => {
        const hex = (await run('python3', [PROBE, 'tap-exchange', tap, frame.toString('hex'), '10'])).trim();
        assert.ok(hex.length > 0, 'a reply on the tap');
        const f = Buffer.from(hex, 'hex');
        assert.equal(f.subarray(0, 6).toString('hex'), mac.replace(/:/g, ''), 'to the guest MAC');
        assert.equal(f.subarray(6, 12).toString('hex'), w.interfaces.host.mac!.replace(/:/g, ''), 'from the tap (the gateway MAC)');
        const d = f.subarray(42);
        return { type: d[242], yiaddr: [...d.subarray(16, 20)].join('.') };
      };
      assert.deepEqual(await exchange(requestFrame({ srcMac: mac, type: 1, xid: 77 })), { type: 2, yiaddr: w.ipv4 });
      // the server keeps nothing but sockets: rebuilt from the store (as at an agent start), it ACKs the lease
      t.agent.dhcp.close();
      assert.equal(t.agent.dhcp.servedList().size, 0);
      t.agent.dhcp.sync();
      const opt50 = Buffer.from([50, 4, ...w.ipv4.split('.').map(Number), 54, 4, 169, 254, 1, 1]);
      assert.deepEqual(await exchange(requestFrame({ srcMac: mac, type: 3, xid: 78, options: opt50 })), { type: 5, yiaddr: w.ipv4 });
      await call('DELETE', `/v1/workloads/dhcp/tap-${id}`);
    } finally {
      await run('ip', ['link', 'del', tap]).catch(() => undefined);
    }
  });

  test('addressing static: not served; the server follows workloads as they come and go', async () => {
    const key = `dhcp/${vm.name}`;
    assert.ok(t.agent.dhcp.servedList().has(key));
    await assert.rejects(call('POST', '/v1/workloads', { name: 'n2', namespace: 'dhcp', netns: `/var/run/netns/${peerNs}`, addressing: 'static' }), /400.*addressing/);
    const st = await call<Workload>('POST', '/v1/workloads', { kind: 'vm', name: `static-${id}`, namespace: 'dhcp', addressing: 'static' });
    assert.equal(st.addressing, 'static');
    assert.equal(t.agent.dhcp.servedList().has(`dhcp/${st.name}`), false);
    await call('DELETE', `/v1/workloads/dhcp/${st.name}`);
    await call('DELETE', `/v1/workloads/dhcp/${vm.name}`);
    assert.equal(t.agent.dhcp.servedList().has(key), false);
  });
});
