import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { apiCall, testAgentStart, type TestAgent } from '../helpers/agent.js';
import { GUEST_INIT_PRELUDE, initramfsBuild, labKernel, type LabKernel } from '../helpers/qemu-guest.js';
import { netnsAdd, netnsDel, ping, uniq, waitFor } from '../helpers/sys.js';

/** The guest part (boot, pings, power-off) must stay well below this. */
const GUEST_TIMEOUT_MS = 80_000;

/** /init of the guest: static addressing from the kernel command line, pings, results on the serial console. */
const GUEST_INIT = `${GUEST_INIT_PRELUDE}
ip4=$(arg ip4); ip6=$(arg ip6); gwmac=$(arg gwmac); peer4=$(arg peer4); peer6=$(arg peer6)
$IP link set eth0 up
$IP addr add $ip4/32 dev eth0
$IP addr add $ip6/128 dev eth0 nodad
$IP route add 169.254.1.1 dev eth0 scope link
$IP route add default via 169.254.1.1 dev eth0
$IP -6 route add default via fe80::1 dev eth0
$IP neigh replace 169.254.1.1 lladdr $gwmac dev eth0 nud permanent
$IP -6 neigh replace fe80::1 lladdr $gwmac dev eth0 nud permanent
$IP addr show dev eth0
if ping -c 3 -W 3 $peer4; then echo "KN-PING4 ok"; else echo "KN-PING4 fail"; fi
if ping -6 -c 3 -W 3 $peer6; then echo "KN-PING6 ok"; else echo "KN-PING6 fail"; fi
# the netns workload pings back now: wait (at most 30 s) until an echo request of each family came in
in4() { awk '/^Icmp:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == "InEchos") c = i } else print $c }' /proc/net/snmp; }
in6() { awk '$1 == "Icmp6InEchos" { print $2 }' /proc/net/snmp6; }
echo KN-WAIT
i=0; while { [ "$(in4)" -lt 1 ] || [ "$(in6)" -lt 1 ]; } && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo KN-DONE
poweroff -f
`;

/**
 * A real VM as a `kind: vm` workload on this host (veth here; no netkit in this kernel): a tiny QEMU
 * TCG guest (the lab's 6.12 kernel, a busybox initramfs) started in the namespace kitnet made, on the
 * tap kitnet made, pings a netns workload over IPv4 and IPv6 through kitnet's datapath; the netns
 * workload pings it back; the guest's flows show up with its identity.
 */
describe('a QEMU guest as a kind vm workload (root)', { timeout: 900_000 }, () => {
  const id = uniq();
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-vmguest-'));
  const peerNs = `kitnet-vmg-peer-${id}`;
  let t: TestAgent | undefined;
  let qemu: ChildProcess | undefined;
  let initrd: string;
  let kernel: LabKernel;

  before(async () => {
    const t0 = Date.now();
    kernel = await labKernel();
    const t1 = Date.now();
    initrd = await initramfsBuild(dir, kernel, { init: GUEST_INIT, binaries: ['/usr/sbin/ip'] });
    const t2 = Date.now();
    t = await testAgentStart(`vmg-${id}`, { ipam: { ipv4Pool: '10.214.0.0/24', ipv6Pool: 'fd00:214::/64' } });
    await netnsAdd(peerNs);
    process.stderr.write(`[vm-guest] kernel ${t1 - t0} ms, initramfs ${t2 - t1} ms, agent ${Date.now() - t2} ms\n`);
  });

  after(async () => {
    if (qemu?.pid !== undefined && qemu.exitCode === null) {
      try {
        process.kill(-qemu.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    const t0 = Date.now();
    await t?.stop().catch(() => undefined); // removes the workloads: pair, bridge, tap, the VM's namespace
    await netnsDel(peerNs);
    rmSync(dir, { recursive: true, force: true });
    process.stderr.write(`[vm-guest] cleanup ${Date.now() - t0} ms\n`);
  });

  test('the guest exchanges IPv4 and IPv6 traffic with a netns workload; flows carry its identity', async () => {
    const call = <T>(method: string, path: string, body?: unknown) => apiCall<T>(t!.url, method, path, body);
    const peer = await call<Workload>('POST', '/v1/workloads', { name: 'peer', namespace: 'vmg', labels: { app: 'peer' }, netns: `/var/run/netns/${peerNs}` });
    const vm = await call<Workload>('POST', '/v1/workloads', { kind: 'vm', name: `guest-${id}`, namespace: 'vmg', labels: { app: 'guest' } });
    assert.equal(vm.state, 'ready');
    const info = vm.vm!;
    const nsName = basename(info.netnsPath);

    const netdev = info.qemuNetdev.split(' ').map((a) => (a.startsWith('virtio-net-pci,') ? `${a},romfile=` : a));
    const append = [
      'console=ttyS0', 'quiet', 'panic=-1', 'rdinit=/init',
      `kn.ip4=${vm.ipv4}`, `kn.ip6=${vm.ipv6}`, `kn.gwmac=${info.gatewayMac}`, `kn.peer4=${peer.ipv4}`, `kn.peer6=${peer.ipv6}`,
    ].join(' ');
    const args = ['netns', 'exec', nsName, 'qemu-system-x86_64', '-accel', 'tcg', '-M', 'pc', '-cpu', 'max', '-m', '256', '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-serial', 'stdio',
      '-kernel', kernel.vmlinuz, '-initrd', initrd, '-append', append, ...netdev];
    const started = Date.now();
    let out = '';
    let peerPings: { v4: boolean; v6: boolean } | undefined;
    const exited = new Promise<number | null>((resolve, reject) => {
      qemu = spawn('ip', args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
      qemu.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      qemu.stderr!.on('data', (d: Buffer) => (out += d.toString()));
      qemu.on('error', reject);
      qemu.on('exit', (code) => resolve(code));
    });
    const killer = setTimeout(() => qemu?.pid !== undefined && process.kill(-qemu.pid, 'SIGKILL'), GUEST_TIMEOUT_MS);
    try {
      // while the guest waits, the netns workload reaches it too
      await waitFor('the guest finishing its pings', async () => out.includes('KN-WAIT') || qemu?.exitCode !== null, GUEST_TIMEOUT_MS);
      if (out.includes('KN-WAIT')) peerPings = { v4: await ping(peerNs, vm.ipv4), v6: await ping(peerNs, vm.ipv6) };
      await exited;
    } finally {
      clearTimeout(killer);
    }
    const secs = (Date.now() - started) / 1000;
    const console = out.split('\n').filter((l) => /KN-|ping|packets|error|Kernel panic/i.test(l)).join('\n');
    process.stderr.write(`[vm-guest] guest ran ${secs.toFixed(1)} s\n${console}\n`);
    assert.match(out, /KN-BOOTED 6\.12/, `the guest booted:\n${out.slice(-3000)}`);
    assert.match(out, /KN-PING4 ok/, `guest -> ${peer.ipv4} over IPv4:\n${console}`);
    assert.match(out, /KN-PING6 ok/, `guest -> ${peer.ipv6} over IPv6:\n${console}`);
    assert.match(out, /KN-DONE/, 'the guest powered off by itself');
    assert.deepEqual(peerPings, { v4: true, v6: true }, 'the netns workload reaches the guest over IPv4 and IPv6');

    // Flows: the guest's ICMP with its identity, both families, both directions.
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- free-form Hubble JSON, asserted field by field
    type Line = { flow: Record<string, any> };
    await waitFor('the guest\'s flows', async () => {
      const text = await (await fetch(`${t!.url}/v1/flows?last=4095`)).text();
      const lines = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Line).filter((l) => l.flow?.l4?.ICMPv4 || l.flow?.l4?.ICMPv6);
      const has = (v: 'IPv4' | 'IPv6', src: Workload, dst: Workload) => lines.some((l) =>
        l.flow.IP?.ipVersion === v && l.flow.source?.identity === src.identity && l.flow.destination?.identity === dst.identity &&
        l.flow.source?.pod_name === src.name && l.flow.verdict === 'FORWARDED');
      return has('IPv4', vm, peer) && has('IPv6', vm, peer) && has('IPv4', peer, vm) && has('IPv6', peer, vm);
    }, 10_000);
  });
});
