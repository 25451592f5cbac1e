import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { testMode } from '../helpers/mode.js';
import { ping, run, waitFor } from '../helpers/sys.js';

const NETWORKD = '/lib/systemd/systemd-networkd';

/** The guest's only configuration: DHCP and router advertisements on eth0 (no hostnamed or resolved here). */
const NETWORK_FILE = `[Match]
Name=eth0

[Network]
DHCP=yes
IPv6AcceptRA=yes
LinkLocalAddressing=ipv6

[DHCPv4]
UseHostname=no
UseDomains=yes

[DHCPv6]
UseDomains=yes
`;

/**
 * Runs networkd in the guest's network namespace and a mount namespace of its own: `/run` is a
 * directory of the test (its .network file, and its state files for the test to read), `/sys` read-only
 * so that networkd does not wait for a udev that does not run here (a container's setup), no D-Bus
 * (networkd works without one and says so).
 */
const LAUNCH = `set -e
mount --bind "$1" /run
mount -o remount,bind,ro /sys
exec ${NETWORKD}
`;

type Addr = { addr_info: Array<{ local?: string; prefixlen?: number }> };
type Route = { dst: string; gateway?: string; scope?: string; protocol?: string };

/**
 * systemd-networkd (the host's, 252) as a `kind: vm` guest's network stack: a namespace whose eth0 (the
 * VM's MAC) is joined to the VM namespace's bridge where QEMU's tap would be, networkd configured with
 * `DHCP=yes` and nothing else. It ends with kitnet's /32 and option 121 routes, the RA's default route,
 * the DHCPv6 /128, the DNS servers and search domain, and reaches a netns workload over v4 and v6.
 */
describe('systemd-networkd as a VM guest\'s DHCP and RA client (root)', { timeout: 300_000 }, () => {
  const fx = new AgentFixture({
    tag: 'nwd', ipv4Pool: '10.245.0.0/24', ipv6Pool: 'fd00:245::/64', namespaces: ['nwd'],
    overrides: { addressing: { dnsServers: ['10.245.9.9', 'fd00:245:9::53'], searchDomains: ['nwd.example'] } },
  });
  const runDir = join(fx.dir, 'run');
  let networkd: ChildProcess | undefined;
  let guestNs: string;
  let peerNs: string;
  let vm: Workload;
  let peer: Workload;

  before(async () => {
    mkdirSync(join(runDir, 'systemd/network'), { recursive: true });
    mkdirSync(join(runDir, 'systemd/netif'), { recursive: true });
    await run('chown', ['systemd-network:systemd-network', join(runDir, 'systemd/netif')]);
    writeFileSync(join(runDir, 'systemd/network/10-kitnet-guest.network'), NETWORK_FILE);
    writeFileSync(join(fx.dir, 'launch.sh'), LAUNCH);
    await fx.start();
    guestNs = await fx.netns('guest');
    peerNs = await fx.netns('peer');
    peer = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'peer', namespace: 'nwd', netns: `/var/run/netns/${peerNs}` });
    vm = await fx.api.call<Workload>('POST', '/v1/workloads', { kind: 'vm', name: `guest-${fx.id}`, namespace: 'nwd', mode: testMode });
    const vmNs = basename(vm.vm!.netnsPath);
    await run('ip', ['-n', vmNs, 'link', 'add', 'gport0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', guestNs]);
    await run('ip', ['-n', vmNs, 'link', 'set', 'gport0', 'master', vm.vm!.bridge, 'up']);
    await run('ip', ['-n', guestNs, 'link', 'set', 'eth0', 'address', vm.vm!.mac]);
    await run('ip', ['netns', 'exec', guestNs, 'sysctl', '-qw', 'net.ipv6.conf.eth0.accept_dad=0']);
    await run('ip', ['-n', guestNs, 'link', 'set', 'lo', 'up']);
  });

  after(async () => {
    if (networkd?.pid !== undefined && networkd.exitCode === null) {
      try {
        process.kill(-networkd.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    // the VM's namespace is kitnet's: removing the workload removes it (stopping the agent keeps it)
    if (vm) await fx.api.call('DELETE', `/v1/workloads/nwd/${vm.name}`).catch(() => undefined);
    await fx.cleanup();
  });

  test('networkd ends with the /32, option 121 routes, the RA default route, the /128, DNS and search domain; v4 and v6 traffic both ways', async () => {
    let log = '';
    networkd = spawn('ip', ['netns', 'exec', guestNs, 'unshare', '-m', '--propagation', 'private', 'sh', join(fx.dir, 'launch.sh'), runDir],
      { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SYSTEMD_LOG_LEVEL: 'debug' } });
    networkd.stdout!.on('data', (d: Buffer) => (log += d.toString()));
    networkd.stderr!.on('data', (d: Buffer) => (log += d.toString()));
    const failing = (err: Error) => assert.fail(`${err.message}\nnetworkd (exit ${networkd?.exitCode}):\n${log.split('\n').filter((l) => /eth0|DHCP|NDISC|fail|error/i.test(l)).slice(-60).join('\n')}`);

    const addrs = async (family: 4 | 6) => (JSON.parse(await run('ip', ['-n', guestNs, `-${family}`, '-j', 'addr', 'show', 'dev', 'eth0', 'scope', 'global'])) as Addr[])[0]
      ?.addr_info.filter((a) => a.local).map((a) => `${a.local}/${a.prefixlen}`) ?? [];
    const routes = async (family: 4 | 6) => JSON.parse(await run('ip', ['-n', guestNs, `-${family}`, '-j', 'route', 'show'])) as Route[];
    await waitFor('networkd configuring eth0 from DHCP, the RA and DHCPv6', async () =>
      networkd?.exitCode === null && (await addrs(4)).length > 0 && (await addrs(6)).length > 0 &&
      (await routes(6)).some((r) => r.dst === 'default'), 90_000).catch(failing);

    assert.deepEqual(await addrs(4), [`${vm.ipv4}/32`]);
    assert.deepEqual(await addrs(6), [`${vm.ipv6}/128`]);
    const r4 = await routes(4);
    assert.ok(r4.some((r) => r.dst === '169.254.1.1' && r.scope === 'link' && r.protocol === 'dhcp'), JSON.stringify(r4));
    assert.ok(r4.some((r) => r.dst === 'default' && r.gateway === '169.254.1.1' && r.protocol === 'dhcp'), JSON.stringify(r4));
    const r6 = await routes(6);
    assert.ok(r6.some((r) => r.dst === 'default' && r.gateway === 'fe80::1' && r.protocol === 'ra'), JSON.stringify(r6));

    // what networkd learnt, from its state file for the link
    const ifindex = (JSON.parse(await run('ip', ['-n', guestNs, '-j', 'link', 'show', 'eth0'])) as Array<{ ifindex: number }>)[0]!.ifindex;
    const state = join(runDir, 'systemd/netif/links', String(ifindex));
    const linkState = await waitFor('networkd\'s link state with both DNS servers', async () => {
      const text = existsSync(state) ? readFileSync(state, 'utf8') : '';
      return /^DNS=.*10\.245\.9\.9/m.test(text) && /^DNS=.*fd00:245:9::53/m.test(text) && text;
    }, 20_000).catch(failing);
    assert.match(linkState, /^DOMAINS=.*nwd\.example/m);
    assert.match(linkState, /^ADMIN_STATE=configured/m);

    assert.ok(await ping(guestNs, peer.ipv4, 2), `guest -> ${peer.ipv4}`);
    assert.ok(await ping(peerNs, vm.ipv4, 2), `${peer.ipv4} -> guest`);
    assert.ok(await ping(guestNs, peer.ipv6, 2), `guest -> ${peer.ipv6}`);
    assert.ok(await ping(peerNs, vm.ipv6, 2), `${peer.ipv6} -> guest`);
  });
});
