// The host's destinations in the ipcache follow its addresses while the agent runs: a real agent in a
// network namespace of its own (so the addresses it sees are the test's alone) gets an IPv4 /24 and an
// IPv6 /64 on a device after it started; its ipcache gains the addresses, the subnet broadcast and
// the subnet-router anycast address as host (1) (what the kernel's local table delivers; not the network
// address, which it does not), and loses them when the addresses are removed; so do an address's on a
// device that is up without carrier (left out by node:os). The anycast address goes when forwarding is
// switched off, and a prefix delivered locally by hand (AnyIP: `ip route add local ... dev lo`) is host
// as a whole while its route is there. The agent's pin root and state go with the fixture's cleanup, and
// again by this file.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { datapathUnpinAll } from '../../bpf/index.js';
import { nodeInOwnNetns, uniq } from '../helpers/sys.js';

const tag = `haf${uniq()}`;
const mod = (p: string) => JSON.stringify(fileURLToPath(new URL(p, import.meta.url)));

const script = `
import { spawnSync } from 'node:child_process';
import { AgentFixture } from ${mod('../helpers/fixture.js')};
const sh = (...args) => {
  const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(args.join(' ') + ': ' + r.stderr);
};
const fx = new AgentFixture({ tag: ${JSON.stringify(tag)}, ipv4Pool: '10.254.0.0/24', ipv6Pool: 'fd00:254::/64', namespaces: [] });
const out = {};
try {
  await fx.start();
  const ipcache = () => Object.fromEntries(fx.agent.kernel.datapath.ipcacheList().filter(([, e]) => e.identity === 1).map(([c]) => [c, 1]));
  const waitFor = async (pred) => {
    const end = Date.now() + 10_000;
    while (!pred(ipcache()) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    return ipcache();
  };
  const want = ['198.51.100.1/32', '198.51.100.255/32', '2001:db8:5::1/128', '2001:db8:5::/128'];
  out.before = ipcache();
  // a device that is up without carrier (its peer down): node:os lists none of its addresses, the host
  // receives on them all the same
  sh('ip', 'link', 'add', 'nc0', 'type', 'veth', 'peer', 'name', 'nc0p');
  sh('ip', 'link', 'set', 'nc0', 'up');
  sh('ip', 'addr', 'add', '203.0.113.1/24', 'dev', 'nc0');
  out.noCarrier = await waitFor((c) => c['203.0.113.1/32'] && c['203.0.113.255/32']);
  sh('ip', 'route', 'add', 'local', '192.0.2.128/25', 'dev', 'lo');
  out.anyIp = await waitFor((c) => c['192.0.2.128/25']);
  sh('ip', 'route', 'del', 'local', '192.0.2.128/25', 'dev', 'lo');
  out.anyIpGone = await waitFor((c) => !c['192.0.2.128/25']);
  sh('sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1');
  sh('ip', 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up0p');
  sh('ip', 'link', 'set', 'up0', 'up');
  sh('ip', 'link', 'set', 'up0p', 'up'); // node:os lists addresses of running devices only (carrier)
  sh('ip', 'addr', 'add', '198.51.100.1/24', 'dev', 'up0');
  sh('ip', '-6', 'addr', 'add', '2001:db8:5::1/64', 'dev', 'up0', 'nodad');
  out.added = await waitFor((c) => want.every((k) => c[k]));
  sh('sysctl', '-qw', 'net.ipv6.conf.all.forwarding=0'); // the kernel takes its anycast route away
  out.notForwarding = await waitFor((c) => !c['2001:db8:5::/128']);
  sh('ip', 'addr', 'del', '198.51.100.1/24', 'dev', 'up0');
  sh('ip', '-6', 'addr', 'del', '2001:db8:5::1/64', 'dev', 'up0');
  out.removed = await waitFor((c) => want.every((k) => !c[k]));
} finally {
  await fx.cleanup();
}
console.log(JSON.stringify(out));
`;

after(async () => {
  for (const name of readdirSync('/sys/fs/bpf')) if (name.startsWith(`kitnet-${tag}-`)) await datapathUnpinAll(`/sys/fs/bpf/${name}`).catch(() => undefined);
});

test('host addresses that come and go while the agent runs: their host prefixes follow into the ipcache (root)', { timeout: 120_000 }, async () => {
  const out = await nodeInOwnNetns<Record<'before' | 'noCarrier' | 'anyIp' | 'anyIpGone' | 'added' | 'notForwarding' | 'removed', Record<string, number>>>('', script);
  const want = ['198.51.100.1/32', '198.51.100.255/32', '2001:db8:5::1/128', '2001:db8:5::/128'];
  for (const c of ['fe80::/10', 'ff00::/8', '224.0.0.0/4', '255.255.255.255/32', '127.0.0.0/8']) assert.equal(out.before[c], 1, `${c} from the start`);
  for (const c of want) assert.equal(out.before[c], undefined, `${c} not before the address`);
  for (const c of ['203.0.113.1/32', '203.0.113.255/32']) assert.equal(out.noCarrier[c], 1, `${c}: an address on a device without carrier is host too`);
  assert.equal(out.anyIp['192.0.2.128/25'], 1, 'a prefix the local table delivers is host as a whole');
  assert.equal(out.anyIp['192.0.2.129/32'], undefined, 'written as one prefix, not per address');
  assert.equal(out.anyIpGone['192.0.2.128/25'], undefined, 'and goes with its route');
  for (const c of want) assert.equal(out.added[c], 1, `${c} is host once the address is there`);
  for (const c of ['198.51.100.0/32', '203.0.113.0/32']) assert.equal(out.added[c], undefined, `${c}: a network address, which the kernel does not deliver locally, is not host`);
  assert.equal(out.notForwarding['2001:db8:5::/128'], undefined, 'the anycast address goes when the host stops forwarding');
  assert.equal(out.notForwarding['2001:db8:5::1/128'], 1);
  for (const c of want) assert.equal(out.removed[c], undefined, `${c} gone with the address`);
});
