// The systemd unit's sandbox must leave the agent every socket family and capability it uses: the guest
// addressing server (DHCPv4, DHCPv6, RA) reads and answers on packet sockets (common/native.ts
// packetOpen). Without AF_PACKET the service got EAFNOSUPPORT, without CAP_NET_RAW EPERM, and VM guests
// got no address (found in the Vagrant lab, where kitnet runs as the installed service).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const read = (path: string) => readFileSync(fileURLToPath(new URL(`../../../${path}`, import.meta.url)), 'utf8');

test('the sandbox allows the packet sockets of the guest DHCP/RA server: AF_PACKET and CAP_NET_RAW', () => {
  const families = /^RestrictAddressFamilies=(.*)$/m.exec(read('packaging/kitnet.service'))?.[1]?.split(/\s+/) ?? [];
  assert.ok(families.length > 0, 'the unit restricts address families');
  for (const f of ['AF_UNIX', 'AF_NETLINK', 'AF_INET', 'AF_INET6', 'AF_PACKET']) assert.ok(families.includes(f), `${f} missing from ${families.join(' ')}`);
  const caps = /^CapabilityBoundingSet=(.*)$/m.exec(read('packaging/kitnet.service'))?.[1]?.split(/\s+/) ?? [];
  assert.ok(caps.includes('CAP_NET_RAW'), `CAP_NET_RAW (packet sockets) missing from ${caps.join(' ')}`);
  // the reason both are there
  assert.match(read('agent/addressing/dhcp4-server.ts'), /packetOpen\(/);
});
