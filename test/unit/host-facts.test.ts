import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import type { NetworkInterfaceInfo } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { hostFactsFallback, hostFactsGather, uplinksOf } from '../../agent/host-facts.js';
import { Status } from '../../common/schemas/status.js';

const hostSchema = Status.shape.host;

test('host facts: what systeminformation gathers, and the node:os fallback status shows when that fails, both fit the status schema', async () => {
  const gathered = await hostFactsGather();
  assert.deepEqual(hostSchema.parse(gathered), gathered);
  assert.equal(gathered.hostname, hostname());
  const fallback = hostFactsFallback();
  assert.deepEqual(hostSchema.parse(fallback), fallback);
  assert.equal(fallback.hostname, hostname());
  assert.ok(fallback.cpu.cores > 0 && fallback.memoryBytes > 0);
  assert.equal(fallback.os.kernel, gathered.os.kernel, 'the same kernel release either way');
});

test('uplinks: the default interface and non-virtual ones with addresses, never loopback nor a workload device; speed from sysfs', () => {
  const root = mkdtempSync(join(tmpdir(), 'kitnet-sysfs-'));
  try {
    const dev = (name: string, where: string, speed?: string) => {
      const dir = join(root, 'devices', where, 'net', name);
      mkdirSync(dir, { recursive: true });
      if (speed !== undefined) writeFileSync(join(dir, 'speed'), `${speed}\n`);
      mkdirSync(join(root, 'class', 'net'), { recursive: true });
      symlinkSync(dir, join(root, 'class', 'net', name));
    };
    dev('eth1', 'pci0000:00/0000:00:03.0', '10000');
    dev('eth2', 'pci0000:00/0000:00:04.0'); // no speed: down, or the driver says nothing
    dev('br0', 'virtual', '-1');
    dev('veth9', 'virtual');
    dev('kn1234', 'virtual');
    dev('lo', 'virtual');
    const a = (address: string, family: 'IPv4' | 'IPv6', internal = false): NetworkInterfaceInfo =>
      ({ address, family, internal, mac: internal ? '00:00:00:00:00:00' : '02:00:00:00:00:01', netmask: '', cidr: null, ...(family === 'IPv6' ? { scopeid: 0 } : {}) }) as NetworkInterfaceInfo;
    const ifaces = {
      lo: [a('127.0.0.1', 'IPv4', true), a('::1', 'IPv6', true)],
      eth1: [a('fe80::1', 'IPv6'), a('2001:db8::5', 'IPv6'), a('198.51.100.5', 'IPv4')],
      eth2: [a('fe80::2', 'IPv6')],
      br0: [a('192.0.2.10', 'IPv4')],
      veth9: [a('10.9.0.1', 'IPv4')],
      kn1234: [a('10.9.0.2', 'IPv4')],
      gone0: [a('10.9.0.3', 'IPv4')], // not in sysfs (removed meanwhile)
    };
    const up = uplinksOf(ifaces, 'br0', join(root, 'class', 'net'));
    assert.deepEqual(up, [
      { name: 'eth1', ipv4: '198.51.100.5', ipv6: '2001:db8::5', mac: '02:00:00:00:00:01', speedMbps: 10000, default: false },
      { name: 'eth2', ipv4: '', ipv6: 'fe80::2', mac: '02:00:00:00:00:01', speedMbps: null, default: false },
      { name: 'br0', ipv4: '192.0.2.10', ipv6: '', mac: '02:00:00:00:00:01', speedMbps: -1, default: true },
    ]);
    assert.deepEqual(uplinksOf(ifaces, 'kn1234', join(root, 'class', 'net')).map((u) => u.name), ['eth1', 'eth2'], 'a workload device even as the default');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
