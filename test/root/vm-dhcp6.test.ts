import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { ANSWER_BURST, ANSWER_PER_SECOND } from '../../agent/addressing/dhcp4-server.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { labBusyboxWithUdhcpc6 } from '../helpers/qemu-guest.js';
import { testMode } from '../helpers/mode.js';
import { promValue } from '../helpers/prom.js';
import { ping, run, status, waitFor } from '../helpers/sys.js';
import { timeLimit } from '../helpers/timeouts.js';

const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const PROBE = join(REPO, 'test/helpers/dhcp-probe.py');
// Clients renew at T1 (addressing.renewalSeconds) and rebind at T2 (4/5 of the lease for DHCPv6, 7/8 for
// DHCPv4). The restart test waits for the first renewal after the restart, and needs it to come before T2:
// on the host a restart takes a second or two; in the lab VM (emulated) an agent start alone takes ~3 s,
// several times that on a loaded machine, and a Renew sent while the agent is down is sent again only
// after ~10 s and ~20 s more (dhclient -6). So T1 is a few seconds (the clients renew all along; the lab's
// is longer, each renewal runs the Python event script under TCG) and T2 is 144 s. With T1 at half the
// lease (60 s here, 180 s in the lab) the test waited up to 30 s (90 s in the lab) for T1.
const LEASE_SECONDS = 180;
const RENEWAL_SECONDS = process.env.KITNET_LAB ? 10 : 4;

/**
 * dhclient's event script: records every event (reason and the new_ variables; dhclient hands the
 * script only its own variables) and applies the lease: the IPv4 address with its mask, option 121's
 * routes (RFC 3442 bytes: width, significant octets, router), the IPv6 address as a /128.
 */
const script = (dir: string) => `#!/usr/bin/env python3
import json, os, subprocess
e = os.environ
with open(${JSON.stringify(join(dir, 'events'))}, 'a') as f:
    f.write(json.dumps({k: v for k, v in e.items() if k in ('reason', 'interface') or k.startswith('new_')}) + '\\n')
ip = lambda *a: subprocess.run(['ip', *a], check=True)
reason, ifc = e.get('reason', ''), e.get('interface', '')
if reason in ('BOUND', 'RENEW', 'REBIND', 'REBOOT'):
    prefix = sum(bin(int(x)).count('1') for x in e['new_subnet_mask'].split('.'))
    ip('-4', 'addr', 'replace', e['new_ip_address'] + '/' + str(prefix), 'dev', ifc)
    b = [int(x) for x in e.get('new_rfc3442_classless_static_routes', '').split()]
    i = 0
    while i < len(b):
        width = b[i]
        n = (width + 7) // 8
        dst = '.'.join(str(x) for x in b[i + 1:i + 1 + n] + [0] * (4 - n)) + '/' + str(width)
        router = '.'.join(str(x) for x in b[i + 1 + n:i + 5 + n])
        i += 5 + n
        if router == '0.0.0.0':
            ip('-4', 'route', 'replace', dst, 'dev', ifc, 'scope', 'link')
        else:
            ip('-4', 'route', 'replace', dst, 'via', router, 'dev', ifc)
if reason in ('BOUND6', 'RENEW6', 'REBIND6', 'REBOOT6'):
    ip('-6', 'addr', 'replace', e['new_ip6_address'] + '/128', 'dev', ifc, 'nodad')
`;

// initial-interval: a DHCPv4 Renew that found the agent down (the restart test) is sent again after a
// second or two instead of up to 10 s.
const CONF = `option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, routers, domain-name, domain-name-servers, domain-search, host-name, interface-mtu,
  rfc3442-classless-static-routes, dhcp6.name-servers, dhcp6.domain-search;
timeout 30;
initial-interval 1;
`;

type DhclientEvent = Record<string, string>;

const macBytes = (m: string) => Buffer.from(m.split(':').map((x) => parseInt(x, 16)));
const ALL_SERVERS = Buffer.from('ff020000000000000000000000010002', 'hex');

/** A DHCPv6 client frame built here independently of the agent's codec (sound IPv6 header, the lies above it: the bridge checks the header). */
function frame6(o: { srcMac: string; type?: number; options: Buffer[]; udpLen?: number }): Buffer {
  const msg = Buffer.concat([Buffer.from([o.type ?? 1, 0x12, 0x34, 0x56]), ...o.options]);
  const udp = Buffer.alloc(8 + msg.length);
  udp.writeUInt16BE(546, 0);
  udp.writeUInt16BE(547, 2);
  udp.writeUInt16BE(o.udpLen ?? udp.length, 4);
  msg.copy(udp, 8);
  const src = Buffer.concat([Buffer.from('fe800000000000000000', 'hex'), macBytes(o.srcMac)]);
  let sum = udp.length + 17;
  const all = Buffer.concat([src, ALL_SERVERS, udp, udp.length & 1 ? Buffer.alloc(1) : Buffer.alloc(0)]);
  for (let i = 0; i < all.length; i += 2) sum += all.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  udp.writeUInt16BE(~sum & 0xffff || 0xffff, 6);
  const ip = Buffer.alloc(40);
  ip[0] = 0x60;
  ip.writeUInt16BE(udp.length, 4);
  ip[6] = 17;
  ip[7] = 1;
  src.copy(ip, 8);
  ALL_SERVERS.copy(ip, 24);
  return Buffer.concat([Buffer.from('333300010002', 'hex'), macBytes(o.srcMac), Buffer.from([0x86, 0xdd]), ip, udp]);
}

const opt = (code: number, value: Buffer | number[]) => {
  const v = Buffer.from(value);
  const h = Buffer.alloc(4);
  h.writeUInt16BE(code, 0);
  h.writeUInt16BE(v.length, 2);
  return Buffer.concat([h, v]);
};
/** The link-local address frame6 sends from (fe80:: and the MAC's six bytes), in the canonical text the flows use. */
const frameSource = (mac: string) => {
  const b = macBytes(mac);
  return new URL(`http://[fe80:0:0:0:0:${[0, 2, 4].map((i) => b.readUInt16BE(i).toString(16)).join(':')}]`).hostname.slice(1, -1);
};
const duidLl = (mac: string) => Buffer.concat([Buffer.from([0, 3, 0, 1]), macBytes(mac)]);
const iaNa = (iaid: number) => opt(3, Buffer.concat([Buffer.from([0, 0, 0, iaid]), Buffer.alloc(8)]));

/**
 * DHCPv4 and DHCPv6 for a `kind: vm` guest with ISC dhclient (-4 and -6) as the guest's clients: a
 * namespace whose eth0 (the VM's MAC) is joined to the VM namespace's bridge, where QEMU's tap would
 * be. The guest configures itself from kitnet's answers and router advertisements alone and reaches a
 * netns workload over v4 and v6; its leases are renewed by an agent that was restarted meanwhile; hostile
 * DHCPv6 frames are ignored and counted; busybox udhcpc6 (Debian unstable's busybox-static: Debian
 * 12's busybox builds lack it) gets the same /128.
 */
describe('DHCPv6 and dhclient for VM guests (root)', { timeout: 300_000 }, () => {
  const fx = new AgentFixture({
    tag: 'dh6', ipv4Pool: '10.219.0.0/24', ipv6Pool: 'fd00:219::/64', namespaces: ['dh6'],
    overrides: { addressing: { dnsServers: ['10.219.9.9', 'fd00:219:9::53'], searchDomains: ['lab.example'], leaseSeconds: LEASE_SECONDS, renewalSeconds: RENEWAL_SECONDS } },
  });
  const dir = fx.dir;
  const pidFiles = [join(dir, 'd4.pid'), join(dir, 'd6.pid')];
  let guestNs: string;
  let peerNs: string;
  let vm: Workload;
  let peer: Workload;
  const events = (): DhclientEvent[] =>
    existsSync(join(dir, 'events')) ? readFileSync(join(dir, 'events'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as DhclientEvent) : [];
  const dhclient = (family: 4 | 6) =>
    run('ip', ['netns', 'exec', guestNs, 'dhclient', `-${family}`, '-1', '-v', '-cf', join(dir, 'dhclient.conf'), '-sf', join(dir, 'dhclient-script'),
      '-pf', pidFiles[family === 4 ? 0 : 1]!, '-lf', join(dir, `d${family}.leases`), 'eth0'], { timeoutMs: 45_000 });
  const stats = () => fx.agent.dhcp.stats;
  const pidOf = (family: 4 | 6) => readFileSync(pidFiles[family === 4 ? 0 : 1]!, 'utf8').trim();
  /** Stops dhclient -6 (it renews every RENEWAL_SECONDS) and waits until it is gone: nothing of it is answered after. */
  const dhclient6Stop = async () => {
    const pid = pidOf(6);
    await status('kill', [pid]);
    await waitFor('dhclient -6 to exit', async () => (await status('kill', ['-0', pid])) !== 0, 10_000);
  };
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- free-form Hubble JSON, asserted field by field
  type Line = { flow: Record<string, any> };
  /** The agent's flows (GET /v1/flows), oldest first. */
  const flowLines = async (): Promise<Line[]> => {
    const out: Line[] = [];
    await fx.api.stream('/v1/flows?last=4095', (l) => out.push(JSON.parse(l) as Line));
    return out;
  };

  before(async () => {
    writeFileSync(join(dir, 'dhclient-script'), script(dir), { mode: 0o755 });
    writeFileSync(join(dir, 'dhclient.conf'), CONF);
    await fx.start();
    guestNs = await fx.netns('guest');
    peerNs = await fx.netns('peer');
    peer = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'peer', namespace: 'dh6', netns: `/var/run/netns/${peerNs}` });
    vm = await fx.api.call<Workload>('POST', '/v1/workloads', { kind: 'vm', name: `guest-${fx.id}`, namespace: 'dh6', mode: testMode });
    const vmNs = basename(vm.vm!.netnsPath);
    await run('ip', ['-n', vmNs, 'link', 'add', 'gport0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', guestNs]);
    await run('ip', ['-n', vmNs, 'link', 'set', 'gport0', 'master', vm.vm!.bridge, 'up']);
    await run('ip', ['-n', guestNs, 'link', 'set', 'eth0', 'address', vm.vm!.mac]);
    // no duplicate address detection: dhclient -6 needs the link-local address usable at once
    await run('ip', ['netns', 'exec', guestNs, 'sysctl', '-qw', 'net.ipv6.conf.eth0.accept_dad=0']);
    await run('ip', ['-n', guestNs, 'link', 'set', 'lo', 'up']);
    await run('ip', ['-n', guestNs, 'link', 'set', 'eth0', 'up']);
  });

  after(async () => {
    for (const f of pidFiles) {
      const pid = existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) : 0;
      if (pid > 0) await status('kill', [String(pid)]);
    }
    await fx.api.call('DELETE', `/v1/workloads/dh6/${vm?.name}`).catch(() => undefined);
    await fx.cleanup();
  });

  test('dhclient -4 and -6: /32 with option 121 routes, /128 by DHCPv6 with DNS and search, default route from the RA; v4 and v6 traffic to another workload', async () => {
    await dhclient(4);
    await dhclient(6).catch((err: Error) => assert.fail(`${err.message.slice(0, 2000)}\nagent: ${JSON.stringify(stats())}`));
    const bound4 = events().find((e) => e.reason === 'BOUND');
    const bound6 = events().find((e) => e.reason === 'BOUND6');
    assert.ok(bound4 && bound6, JSON.stringify(events()));
    assert.equal(bound4.new_ip_address, vm.ipv4);
    assert.equal(bound4.new_subnet_mask, '255.255.255.255');
    assert.equal(bound4.new_rfc3442_classless_static_routes, '32 169 254 1 1 0 0 0 0 0 169 254 1 1');
    assert.equal(bound4.new_domain_name_servers, '10.219.9.9');
    assert.equal(bound4.new_host_name, vm.name);
    assert.equal(bound4.new_dhcp_lease_time, String(LEASE_SECONDS));
    assert.equal(bound4.new_dhcp_renewal_time, String(RENEWAL_SECONDS));
    assert.equal(bound6.new_ip6_address, vm.ipv6);
    assert.equal(bound6.new_dhcp6_name_servers, 'fd00:219:9::53');
    assert.equal(bound6.new_dhcp6_domain_search, 'lab.example.');
    assert.equal(bound6.new_max_life, String(LEASE_SECONDS));
    assert.equal(bound6.new_preferred_life, String(LEASE_SECONDS));
    assert.equal(bound6.new_renew, String(RENEWAL_SECONDS));

    const addrs = (family: 4 | 6) => run('ip', ['-n', guestNs, `-${family}`, '-j', 'addr', 'show', 'dev', 'eth0', 'scope', 'global'])
      .then((t) => (JSON.parse(t) as Array<{ addr_info: Array<{ local: string; prefixlen: number }> }>)[0]!.addr_info.filter((a) => a.local).map((a) => `${a.local}/${a.prefixlen}`));
    assert.deepEqual(await addrs(4), [`${vm.ipv4}/32`]);
    assert.deepEqual(await addrs(6), [`${vm.ipv6}/128`]);
    const rts4 = JSON.parse(await run('ip', ['-n', guestNs, '-4', '-j', 'route', 'show'])) as Array<{ dst: string; gateway?: string; scope?: string }>;
    assert.ok(rts4.some((r) => r.dst === '169.254.1.1' && r.scope === 'link'), JSON.stringify(rts4));
    assert.ok(rts4.some((r) => r.dst === 'default' && r.gateway === '169.254.1.1'), JSON.stringify(rts4));
    const ra = await waitFor('a default route from a router advertisement', async () => {
      const rts = JSON.parse(await run('ip', ['-n', guestNs, '-6', '-j', 'route', 'show', 'default'])) as Array<{ gateway?: string; protocol?: string }>;
      return rts.find((r) => r.gateway === 'fe80::1');
    }, 20_000);
    assert.equal(ra.protocol, 'ra');

    assert.ok(await ping(guestNs, peer.ipv4, 2), `guest -> ${peer.ipv4}`);
    assert.ok(await ping(peerNs, vm.ipv4, 2), `${peer.ipv4} -> guest`);
    assert.ok(await ping(guestNs, peer.ipv6, 2), `guest -> ${peer.ipv6}`);
    assert.ok(await ping(peerNs, vm.ipv6, 2), `${peer.ipv6} -> guest`);
    assert.ok((stats().dhcp6.advertise ?? 0) >= 1 && (stats().dhcp6.reply ?? 0) >= 1, JSON.stringify(stats()));

    // the guest's DHCP and DHCPv6 show as such in its flows (router solicitations pass the datapath without an event)
    let seen = new Set<string>();
    await waitFor('DHCP and DHCPv6 flows from the guest', async () => {
      seen = new Set(fx.agent.flows.ring.last().map((l) => `${l.flow.source?.pod_name ?? '?'}:${l.flow.Summary}:${l.flow.verdict}`));
      return ['DHCP', 'DHCPv6'].every((s) => [...seen].some((x) => x.startsWith(`${vm.name}:${s}:`)));
    }, 20_000).catch((err: Error) => assert.fail(`${err.message}: ${[...seen].join(', ')}`));
  });

  test('both leases are renewed (not rebound) by an agent restarted meanwhile: same addresses, traffic still flows', async () => {
    // dhclient -6 sends a Renew that found the agent down again only ~10 s later: the restart follows one
    // of its renewals, so that the next one (T1 later) finds the agent back, as a rule. (This test comes
    // second: after the flood below, a new dhclient -6's first Renew meets the exhausted budget and is
    // sent again ~10 s later.)
    const renewals = events().length;
    await waitFor('a DHCPv6 renewal before the restart', async () => events().slice(renewals).some((e) => e.reason === 'RENEW6'), timeLimit(30_000));
    await fx.stop();
    // A renewal the old agent answered just before it stopped may still be in its event script: the
    // events are counted once neither client runs one, so that every later one answers the new agent.
    await waitFor('no event script running', async () =>
      (await Promise.all([pidOf(4), pidOf(6)].map((pid) => status('pgrep', ['-P', pid])))).every((s) => s === 1), timeLimit(20_000));
    const seen = events().length;
    await fx.start();
    // Both clients renew within T1 of the restart, against the same server identity (a Renew sent while
    // the agent was down is sent again until T2, and answered once it is back)
    const renewed = await waitFor('a DHCPv4 and a DHCPv6 renewal after the restart', async () => {
      const later = events().slice(seen);
      const r4 = later.find((e) => e.reason === 'RENEW' || e.reason === 'REBIND');
      const r6 = later.find((e) => e.reason === 'RENEW6' || e.reason === 'REBIND6');
      return r4 && r6 && { r4, r6 };
    }, timeLimit(90_000)).catch((err: Error) =>
      assert.fail(`${err.message}: ${events().slice(seen).map((e) => e.reason).join(', ')}; ignored ${JSON.stringify(stats().ignoredByProtocol.dhcpv6)}`));
    assert.equal(renewed.r4.reason, 'RENEW', 'renewed with the server that granted the lease');
    assert.equal(renewed.r6.reason, 'RENEW6', 'the restarted agent kept its DHCPv6 server identity');
    assert.equal(renewed.r4.new_ip_address, vm.ipv4);
    assert.equal(renewed.r6.new_ip6_address, vm.ipv6);
    assert.equal(stats().ignoredByProtocol.dhcpv6['other-server'] ?? 0, 0);
    assert.ok(await ping(guestNs, peer.ipv4, 2), `guest -> ${peer.ipv4}`);
    assert.ok(await ping(guestNs, peer.ipv6, 2), `guest -> ${peer.ipv6}`);
  });

  test('hostile DHCPv6 frames from the guest: wrong MAC, another client\'s DUID, relay messages, malformed options, another server: ignored and counted, and shown as DHCPv6 flows; the server keeps working', async () => {
    const mac = vm.vm!.mac;
    // dhclient -6 (bound in the first test) renews every few seconds: stopped first, so that nothing is
    // answered below but to it (it binds again at the end)
    await dhclient6Stop();
    const known = new Set((await flowLines()).map((l) => l.flow.uuid as string));
    const cid = opt(1, duidLl(mac));
    const before = structuredClone(stats().ignoredByProtocol.dhcpv6);
    const answersBefore = { ...stats().dhcp6 };
    const otherServer = opt(2, Buffer.concat([Buffer.from([0, 4]), Buffer.alloc(16, 7)]));
    const sent: Record<string, Buffer[]> = {
      // on netkit the datapath drops another source MAC itself (INVALID_SOURCE_MAC)
      'foreign-mac': testMode === 'netkit' ? [] : [frame6({ srcMac: '52:54:00:66:66:66', options: [opt(1, duidLl('52:54:00:66:66:66')), iaNa(1)] })],
      'foreign-duid': [frame6({ srcMac: mac, options: [opt(1, duidLl('52:54:00:66:66:66')), iaNa(1)] })],
      relayed: [
        frame6({ srcMac: mac, type: 12, options: [opt(9, Buffer.from([1, 0, 0, 1]))] }),
        frame6({ srcMac: mac, options: [cid, iaNa(1), opt(18, [1, 2, 3])] }),
      ],
      malformed: [
        frame6({ srcMac: mac, options: [cid, Buffer.from([0, 3, 0])] }), // option header cut short
        frame6({ srcMac: mac, options: [cid, Buffer.from([0, 3, 0xff, 0xf0, 0, 0, 0, 1])] }), // length past the message
        frame6({ srcMac: mac, options: [cid, ...Array.from({ length: 80 }, () => opt(999, []))] }), // too many options
        frame6({ srcMac: mac, options: [cid, iaNa(1)], udpLen: 9 }),
        frame6({ srcMac: mac, options: [cid, opt(3, [0, 0, 0, 1])] }), // IA_NA too short
        frame6({ srcMac: mac, options: [cid, cid, iaNa(1)] }),
        frame6({ srcMac: mac, type: 3, options: [cid, iaNa(1)] }), // Request without a server id
      ],
      'other-server': [frame6({ srcMac: mac, type: 3, options: [cid, otherServer, iaNa(1)] })],
      'message-type': [frame6({ srcMac: mac, type: 7, options: [cid] })],
    };
    await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'send', 'eth0', ...Object.values(sent).flat().map((f) => f.toString('hex'))]);
    await waitFor('every hostile frame judged', async () =>
      Object.entries(sent).every(([reason, frames]) => (stats().ignoredByProtocol.dhcpv6[reason] ?? 0) - (before[reason] ?? 0) >= frames.length), 10_000)
      .catch((err: Error) => assert.fail(`${err.message}: ${JSON.stringify(stats().ignoredByProtocol.dhcpv6)}`));
    assert.deepEqual(stats().dhcp6, answersBefore, 'nothing answered');
    // They show as DHCPv6 flows from the guest's device: another MAC's as an INVALID_SOURCE_MAC drop (veth;
    // on netkit none was sent), the guest MAC's as forwarded (a link-local source passes; the agent ignores
    // them). These all share one 5-tuple (frame6's source, 546 -> ff02::1:2, 547): one connection, which
    // flows.aggregation `connection` reports at its first packet, so one flow for them all.
    const expected = [`${frameSource(mac)} FORWARDED`, ...testMode === 'netkit' ? [] : [`${frameSource('52:54:00:66:66:66')} DROPPED INVALID_SOURCE_MAC`]].sort();
    // (by source: dhclient -6 sent from the guest's EUI-64 address)
    const sources = new Set([frameSource(mac), frameSource('52:54:00:66:66:66')]);
    let dhcp6Flows: Line[] = [];
    const shown = () => [...new Set(dhcp6Flows.map((l) => `${l.flow.IP?.source} ${l.flow.verdict} ${l.flow.drop_reason_desc ?? ''}`.trim()))].sort();
    await waitFor('DHCPv6 flows for the hostile frames', async () => {
      dhcp6Flows = (await flowLines()).filter((l) => !known.has(l.flow.uuid as string) && l.flow.Summary === 'DHCPv6' && sources.has(l.flow.IP?.source as string));
      return shown().join() === expected.join() || undefined;
    }, timeLimit(10_000)).catch((err: Error) => assert.fail(`${err.message}: ${shown().join(', ')} (expected ${expected.join(', ')})`));
    for (const { flow } of dhcp6Flows) {
      assert.equal(flow.interface?.index, vm.interfaces.host.ifindex, 'seen on the guest\'s device');
      assert.equal(flow.source?.pod_name, vm.name);
      assert.equal(flow.traffic_direction, 'EGRESS');
      assert.deepEqual([flow.IP?.destination, flow.l4?.UDP?.source_port, flow.l4?.UDP?.destination_port], ['ff02::1:2', 546, 547]);
    }
    // and /metrics shows them by protocol and reason
    const scraped = await fx.agent.metrics.text();
    for (const reason of Object.keys(sent).filter((r) => sent[r]!.length)) {
      assert.ok(promValue(scraped, 'kitnet_addressing_ignored_total', { protocol: 'dhcpv6', reason }) >= sent[reason]!.length, reason);
    }
    // a real client still gets its address
    await run('ip', ['-n', guestNs, '-6', 'addr', 'flush', 'dev', 'eth0', 'scope', 'global']);
    await dhclient(6);
    assert.equal(events().filter((e) => e.reason === 'BOUND6').at(-1)?.new_ip6_address, vm.ipv6);
  });

  test('a flood of Solicits is answered only within the guest\'s budget; dhclient -6 binds afterwards', async () => {
    await dhclient6Stop(); // its renewals are not part of the flood
    const answered0 = Object.values(stats().dhcp6).reduce((a, b) => a + b, 0);
    const limited0 = stats().ignoredByProtocol.dhcpv6['rate-limited'] ?? 0;
    const n = 60;
    const flood = Array.from({ length: n }, () => frame6({ srcMac: vm.vm!.mac, options: [opt(1, duidLl(vm.vm!.mac)), iaNa(1)] }).toString('hex'));
    const t0 = performance.now();
    await run('ip', ['netns', 'exec', guestNs, 'python3', PROBE, 'send', 'eth0', ...flood]);
    const answered = () => Object.values(stats().dhcp6).reduce((a, b) => a + b, 0) - answered0;
    const refused = () => (stats().ignoredByProtocol.dhcpv6['rate-limited'] ?? 0) - limited0;
    await waitFor('every Solicit of the flood judged', async () => answered() + refused() >= n, 20_000);
    const seconds = (performance.now() - t0) / 1000;
    assert.ok(answered() <= ANSWER_BURST + ANSWER_PER_SECOND * seconds + 1, `${answered()} of ${n} answered in ${seconds.toFixed(1)} s`);
    assert.ok(refused() > 0);
    await dhclient(6);
    assert.equal(events().filter((e) => e.reason === 'BOUND6').at(-1)?.new_ip6_address, vm.ipv6);
  });

  test('busybox udhcpc6 (Debian unstable\'s busybox-static): the /128 with DNS and search domains; v6 traffic both ways', async () => {
    const busybox = await labBusyboxWithUdhcpc6();
    const record = join(dir, 'udhcpc6-events');
    // udhcpc6's event script: records the event and its variables, applies the address as a /128
    writeFileSync(join(dir, 'udhcpc6-script'), `#!/usr/bin/env python3
import json, os, subprocess, sys
e = dict(os.environ, event=sys.argv[1])
with open(${JSON.stringify(record)}, 'a') as f:
    f.write(json.dumps({k: e[k] for k in e if k in ('event', 'interface', 'ipv6', 'dns', 'search', 'lease', 'ipv6prefix')}) + '\\n')
if e['event'] in ('bound', 'renew') and e.get('ipv6'):
    subprocess.run(['ip', '-6', 'addr', 'replace', e['ipv6'] + '/128', 'dev', e['interface'], 'nodad'], check=True)
`, { mode: 0o755 });
    await dhclient6Stop();
    await run('ip', ['-n', guestNs, '-6', 'addr', 'flush', 'dev', 'eth0', 'scope', 'global']);
    await run('ip', ['netns', 'exec', guestNs, busybox, 'udhcpc6', '-i', 'eth0', '-f', '-q', '-n', '-t', '5', '-T', '2',
      '-s', join(dir, 'udhcpc6-script'), '-O', 'dns', '-O', 'search'], { timeoutMs: 45_000 });
    const seen = readFileSync(record, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, string>);
    const bound = seen.find((e) => e.event === 'bound');
    assert.ok(bound, JSON.stringify(seen));
    // udhcpc6 writes addresses out in full
    const canonical = (a: string | undefined) => a && new URL(`http://[${a}]/`).hostname.slice(1, -1);
    assert.equal(canonical(bound.ipv6), vm.ipv6);
    assert.equal(canonical(bound.dns), 'fd00:219:9::53');
    assert.equal(bound.search, 'lab.example');
    const addrs = JSON.parse(await run('ip', ['-n', guestNs, '-6', '-j', 'addr', 'show', 'dev', 'eth0', 'scope', 'global'])) as Array<{ addr_info: Array<{ local: string; prefixlen: number }> }>;
    assert.deepEqual(addrs[0]!.addr_info.filter((a) => a.local).map((a) => `${a.local}/${a.prefixlen}`), [`${vm.ipv6}/128`]);
    assert.ok(await ping(guestNs, peer.ipv6, 2), `guest -> ${peer.ipv6}`);
    assert.ok(await ping(peerNs, vm.ipv6, 2), `${peer.ipv6} -> guest`);
  });
});
