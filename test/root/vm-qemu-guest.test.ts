import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { apiCall, testAgentStart, type TestAgent } from '../helpers/agent.js';
import { testMode } from '../helpers/mode.js';
import { GUEST_INIT_PRELUDE, initramfsBuild, labKernel, qemuBoot, type LabKernel, type QemuGuest } from '../helpers/qemu-guest.js';
import { netnsAdd, netnsDel, ping, run, uniq, waitFor } from '../helpers/sys.js';

/**
 * Boot, both leases, the RA, pings and fetches must fit in this (TCG on a loaded 2-core machine; inside
 * the lab VM the guest is TCG within TCG).
 */
const GUEST_TIMEOUT_MS = process.env.KITNET_LAB ? 900_000 : 150_000;
const PORT = 8642;

/**
 * udhcpc's event script: the address with its prefix, option 121's routes ("dest/len router" pairs;
 * router 0.0.0.0 is on-link), and what the lease said, for the console.
 */
const UDHCPC_SCRIPT = `#!/bin/busybox sh
IP=/usr/sbin/ip
case "$1" in
  deconfig) $IP link set "$interface" up ;;
  bound|renew)
    $IP addr replace "$ip/$mask" dev "$interface"
    set -- $staticroutes
    while [ $# -ge 2 ]; do
      if [ "$2" = 0.0.0.0 ]; then $IP route replace "$1" dev "$interface" scope link
      else $IP route replace "$1" via "$2" dev "$interface"; fi
      shift 2
    done
    echo "KN-LEASE4 ip=$ip mask=$mask router=$router dns=$dns search=$search hostname=$hostname mtu=$mtu lease=$lease staticroutes=$staticroutes"
    ;;
esac
`;

/** dhclient -6's event script: the IA_NA address as a /128 (the prefix comes from the RA's absence: none). */
const DHCLIENT_SCRIPT = `#!/bin/busybox sh
IP=/usr/sbin/ip
case "$reason" in
  BOUND6|RENEW6|REBIND6|REBOOT6)
    $IP -6 addr replace "$new_ip6_address/128" dev "$interface" nodad
    echo "KN-LEASE6 ip=$new_ip6_address dns=$new_dhcp6_name_servers search=$new_dhcp6_domain_search life=$new_max_life"
    ;;
esac
`;

/**
 * The guest's /init: nothing about the network but its clients. udhcpc for IPv4; the kernel's own
 * router solicitation and accept_ra for the IPv6 default route; ISC dhclient -6 for the /128 (Debian's
 * busybox has no udhcpc6). Then what it got, pings and an HTTP fetch over both families, as lines
 * starting with KN- on the serial console.
 */
const GUEST_INIT = `${GUEST_INIT_PRELUDE}
peer4=$(arg peer4); peer6=$(arg peer6); port=$(arg port)
$IP link set eth0 up
udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /bin/udhcpc-script -O staticroutes -O mtu -O search -O hostname \\
  && echo KN-DHCP4 ok || echo KN-DHCP4 fail
i=0; while ! $IP -6 route show default | grep -q fe80::1 && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
printf 'timeout 30;\\n' > /tmp/dhclient6.conf
dhclient -6 -1 -v -cf /tmp/dhclient6.conf -sf /bin/dhclient-script -lf /var/lib/dhcp/d6.leases -pf /run/d6.pid eth0 2>/tmp/dhclient.log \\
  && echo KN-DHCP6 ok || { echo KN-DHCP6 fail; tail -n 20 /tmp/dhclient.log; }
echo "KN-ADDRS $($IP -j addr show dev eth0)"
echo "KN-ROUTES4 $($IP -4 -j route show)"
echo "KN-ROUTES6 $($IP -6 -j route show)"
if ping -c 2 -W 3 $peer4 >/dev/null; then echo "KN-PING4 ok"; else echo "KN-PING4 fail"; fi
if ping -6 -c 2 -W 3 $peer6 >/dev/null; then echo "KN-PING6 ok"; else echo "KN-PING6 fail"; fi
# (busybox 1.35 wget -T segfaults: the timeout comes from timeout(1))
fetch() { timeout 20 wget -O /tmp/token "$2" 2>/tmp/wget.log; echo "KN-TCP$1 $(cat /tmp/token 2>/dev/null)"; sed "s/^/KN-WGET$1 /" /tmp/wget.log; rm -f /tmp/token; }
fetch 4 "http://$peer4:$port/token"
fetch 6 "http://[$peer6]:$port/token"
# the netns workload pings back now: wait (at most 30 s) until echo requests of both families came in
in4() { awk '/^Icmp:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i } else print $c }' /proc/net/snmp; }
in6() { awk '$1 == "Icmp6InEchos" { print $2 }' /proc/net/snmp6; }
echo KN-WAIT
i=0; while { [ "$(in4)" -lt 2 ] || [ "$(in6)" -lt 2 ]; } && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo KN-DONE
poweroff -f
`;

type Addr = { ifname: string; addr_info: Array<{ family: string; local: string; prefixlen: number; scope: string }> };
type Route = { dst: string; gateway?: string; dev?: string; scope?: string; protocol?: string };
const json = <T>(line: string, marker: string): T => JSON.parse(line.slice(marker.length).trim()) as T;

/**
 * A real VM configured only by kitnet: a QEMU TCG guest (the lab's 6.12 kernel, a busybox initramfs
 * with ISC dhclient) on the tap of a `kind: vm` workload (veth here: this host has no netkit) whose
 * init runs DHCP clients and nothing else about the network. It ends with its /32, option 121's routes,
 * the RA's default route and its /128, and reaches a netns workload over IPv4 and IPv6 (ICMP and TCP);
 * the netns workload reaches it back.
 */
describe('a QEMU guest configured by DHCP and router advertisements alone (root)', { timeout: 1_500_000 }, () => {
  const id = uniq();
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-vmq-'));
  const peerNs = `kitnet-vmq-peer-${id}`;
  let t: TestAgent | undefined;
  let guest: QemuGuest | undefined;
  let server: ChildProcess | undefined;
  let initrd: string;
  let kernel: LabKernel;
  const token = `kitnet-peer-${id}`;

  before(async () => {
    const t0 = Date.now();
    kernel = await labKernel();
    initrd = await initramfsBuild(dir, kernel, {
      init: GUEST_INIT,
      binaries: ['/usr/sbin/ip', '/usr/sbin/dhclient'],
      files: { '/bin/udhcpc-script': UDHCPC_SCRIPT, '/bin/dhclient-script': DHCLIENT_SCRIPT },
    });
    const t1 = Date.now();
    t = await testAgentStart(`vmq-${id}`, {
      ipam: { ipv4Pool: '10.242.0.0/24', ipv6Pool: 'fd00:242::/64' },
      addressing: { dnsServers: ['10.242.9.9', 'fd00:242:9::53'], searchDomains: ['vmq.example'] },
    });
    await netnsAdd(peerNs);
    process.stderr.write(`[vm-qemu-guest] kernel + initramfs ${t1 - t0} ms, agent ${Date.now() - t1} ms\n`);
  });

  after(async () => {
    guest?.kill();
    if (server?.pid !== undefined && server.exitCode === null) {
      try {
        process.kill(-server.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await t?.stop().catch(() => undefined); // removes the workloads: pair, bridge, tap, the VM's namespace
    await netnsDel(peerNs);
    rmSync(dir, { recursive: true, force: true });
  });

  test('the guest gets its /32, routes, /128 and default routes from kitnet and exchanges v4 and v6 traffic with a netns workload', async () => {
    const call = <T>(method: string, path: string, body?: unknown) => apiCall<T>(t!.url, method, path, body);
    const peer = await call<Workload>('POST', '/v1/workloads', { name: 'peer', namespace: 'vmq', labels: { app: 'peer' }, netns: `/var/run/netns/${peerNs}` });
    const vm = await call<Workload>('POST', '/v1/workloads', { kind: 'vm', name: `guest-${id}`, namespace: 'vmq', labels: { app: 'guest' }, mode: testMode });
    assert.equal(vm.state, 'ready');

    // the peer serves a token over HTTP on both families (a real TCP exchange, not only ICMP)
    const www = join(dir, 'www');
    mkdirSync(www);
    writeFileSync(join(www, 'token'), token);
    server = spawn('ip', ['netns', 'exec', peerNs, 'python3', '-m', 'http.server', '--bind', '::', '--directory', www, String(PORT)],
      { detached: true, stdio: 'ignore' });
    await waitFor('the peer\'s HTTP server listening', async () => (await run('ip', ['netns', 'exec', peerNs, 'ss', '-Hltn', `sport = :${PORT}`])).trim() !== '', 20_000);

    const started = Date.now();
    guest = qemuBoot({
      netns: basename(vm.vm!.netnsPath), netdev: vm.vm!.qemuNetdev, kernel, initrd,
      append: [`kn.peer4=${peer.ipv4}`, `kn.peer6=${peer.ipv6}`, `kn.port=${PORT}`],
    });
    await guest.line('KN-WAIT', GUEST_TIMEOUT_MS);
    // while the guest waits, the netns workload reaches it at the addresses it learnt
    const back = { v4: await ping(peerNs, vm.ipv4!, 2), v6: await ping(peerNs, vm.ipv6!, 2) };
    await guest.line('KN-DONE', 60_000);
    await guest.exited;
    const out = guest.output();
    const console = out.split('\n').filter((l) => l.startsWith('KN-')).join('\n');
    process.stderr.write(`[vm-qemu-guest] guest ran ${((Date.now() - started) / 1000).toFixed(1)} s\n${console}\n`);

    assert.match(out, /KN-BOOTED 6\.12/);
    assert.match(out, /KN-DHCP4 ok/, console);
    assert.match(out, /KN-DHCP6 ok/, console);
    const lease4 = await guest.line('KN-LEASE4', 1);
    assert.match(lease4, new RegExp(`ip=${vm.ipv4!.replaceAll('.', '\\.')} mask=32 `));
    assert.match(lease4, / router=169\.254\.1\.1 /);
    assert.match(lease4, / dns=10\.242\.9\.9 /);
    assert.match(lease4, / search=vmq\.example /);
    assert.match(lease4, new RegExp(` hostname=${vm.name} `));
    assert.match(lease4, / staticroutes=169\.254\.1\.1\/32 0\.0\.0\.0 0\.0\.0\.0\/0 169\.254\.1\.1$/);
    const lease6 = await guest.line('KN-LEASE6', 1);
    assert.match(lease6, new RegExp(`ip=${vm.ipv6!} dns=fd00:242:9::53 search=vmq\\.example\\. `));

    const addrs = json<Addr[]>(await guest.line('KN-ADDRS', 1), 'KN-ADDRS')[0]!.addr_info.filter((a) => a.scope === 'global').map((a) => `${a.local}/${a.prefixlen}`);
    assert.deepEqual(addrs.sort(), [`${vm.ipv4}/32`, `${vm.ipv6}/128`].sort());
    const r4 = json<Route[]>(await guest.line('KN-ROUTES4', 1), 'KN-ROUTES4');
    assert.ok(r4.some((r) => r.dst === '169.254.1.1' && r.scope === 'link'), JSON.stringify(r4));
    assert.ok(r4.some((r) => r.dst === 'default' && r.gateway === '169.254.1.1'), JSON.stringify(r4));
    const r6 = json<Route[]>(await guest.line('KN-ROUTES6', 1), 'KN-ROUTES6');
    assert.ok(r6.some((r) => r.dst === 'default' && r.gateway === 'fe80::1' && r.protocol === 'ra'), JSON.stringify(r6));

    assert.match(out, /KN-PING4 ok/, `guest -> ${peer.ipv4}:\n${console}`);
    assert.match(out, /KN-PING6 ok/, `guest -> ${peer.ipv6}:\n${console}`);
    assert.equal(await guest.line('KN-TCP4', 1), `KN-TCP4 ${token}`);
    assert.equal(await guest.line('KN-TCP6', 1), `KN-TCP6 ${token}`);
    assert.deepEqual(back, { v4: true, v6: true }, 'the netns workload reaches the guest over IPv4 and IPv6');
    assert.match(out, /KN-DONE/, 'the guest powered off by itself');
  });
});
