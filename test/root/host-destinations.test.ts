// Destinations the host delivers locally besides its own addresses, on real kernel objects: a workload
// whose egress allows world (2, 9, 10) but not host sends UDP to the host's subnet broadcast, the limited
// broadcast, the network address, multicast (224.0.0.1, ff02::1), the host side's link-local address and
// the subnet-router anycast address of the host's IPv6 prefix (forwarding on). The ipcache is written by
// the agent's own sync (agent/policy/ipcache-sync.ts) from the addresses and the local routing table the
// kernel reports: every one the kernel delivers locally must be dropped as identity host (1), with no
// datagram reaching the host's listeners; with host allowed too, every one arrives. The network address
// is host only where the kernel has a local route for it (not on current kernels: a LAN machine may own
// it), else world. Removing the host's address removes its entries.
//
// All of it runs in a network namespace of its own (the "host": nodeInOwnNetns), with the workload in a
// named namespace and its veth pair made there; the pin root and the named namespace are removed by the
// script however it ends, and again by this file (after()).
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { datapathUnpinAll } from '../../bpf/index.js';
import { netnsDel, nodeInOwnNetns, uniq } from '../helpers/sys.js';

const id = uniq();
const WL_NS = `kitnet-hd-w-${id}`;
const PIN_ROOT = `/sys/fs/bpf/kitnet-test-hd-${id}`;
const mod = (p: string) => JSON.stringify(fileURLToPath(new URL(p, import.meta.url)));

/** Destination of each case (HOST_LL: the host side's link-local address, read in the namespace). */
const CASES = {
  hostAddr4: '192.0.2.1',
  subnetBroadcast: '192.0.2.255',
  limitedBroadcast: '255.255.255.255',
  networkAddr: '192.0.2.0',
  allHosts: '224.0.0.1',
  hostAddr6: '2001:db8::fe',
  anycast: '2001:db8::',
  linkLocal: 'HOST_LL',
  allNodes: 'ff02::1',
} as const;
type Case = keyof typeof CASES;

const PORT = 5999;

const script = `
import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import { datapathLoad, datapathUnpinAll } from ${mod('../../bpf/index.js')};
import { ipcacheSyncSteps } from ${mod('../../agent/policy/ipcache-sync.js')};
import { stepsRun } from ${mod('../../agent/policy/slices.js')};
import { hostDestinationsListedSet } from ${mod('../../agent/policy/host-destinations.js')};
import { hostAddressesList, hostLocalDeliveryList } from ${mod('../../netkit/index.js')};

const NS = ${JSON.stringify(WL_NS)};
const PIN_ROOT = ${JSON.stringify(PIN_ROOT)};
const PORT = ${PORT};
const sh = (...args) => {
  const r = spawnSync(args[0], args.slice(1), { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(args.join(' ') + ': ' + r.stderr);
  return r.stdout;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const out = {};
let dp;
try {
  // the host's uplink: an IPv4 /24 and an IPv6 /64, forwarding on (so Linux adds the subnet-router anycast)
  sh('sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1');
  sh('ip', 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'up0p');
  sh('ip', 'addr', 'add', '192.0.2.1/24', 'dev', 'up0');
  sh('ip', '-6', 'addr', 'add', '2001:db8::fe/64', 'dev', 'up0', 'nodad');
  sh('ip', 'link', 'set', 'up0', 'up');
  sh('ip', 'link', 'set', 'up0p', 'up');
  // the workload: a veth pair, routes via the gateways the datapath answers for (as kitnet sets them)
  sh('ip', 'netns', 'add', NS);
  sh('ip', 'link', 'add', 'knhd0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', NS);
  sh('ip', 'link', 'set', 'knhd0', 'up');
  const inNs = (...a) => sh('ip', 'netns', 'exec', NS, ...a);
  inNs('ip', 'link', 'set', 'lo', 'up');
  inNs('ip', 'addr', 'add', '10.251.0.2/32', 'dev', 'eth0');
  inNs('ip', '-6', 'addr', 'add', 'fd00:251::2/128', 'dev', 'eth0', 'nodad');
  inNs('ip', 'link', 'set', 'eth0', 'up');
  inNs('ip', 'route', 'add', '169.254.1.1', 'dev', 'eth0', 'scope', 'link');
  inNs('ip', 'route', 'add', 'default', 'via', '169.254.1.1', 'dev', 'eth0');
  inNs('ip', '-6', 'route', 'add', 'default', 'via', 'fe80::1', 'dev', 'eth0');
  sh('ip', 'route', 'add', '10.251.0.2/32', 'dev', 'knhd0');
  sh('ip', '-6', 'route', 'add', 'fd00:251::2/128', 'dev', 'knhd0');
  // (not /sys/class/net: that sysfs is the initial namespace's)
  const [host] = JSON.parse(sh('ip', '-j', 'link', 'show', 'knhd0'));
  const [peer] = JSON.parse(sh('ip', '-n', NS, '-j', 'link', 'show', 'eth0'));
  const ifindex = host.ifindex;
  const hostMac = host.address;
  const mac = peer.address;
  // the host side's link-local address (DAD done: a tentative address does not receive)
  let hostLL;
  for (let i = 0; i < 100 && !hostLL; i++) {
    const a = JSON.parse(sh('ip', '-6', '-j', 'addr', 'show', 'dev', 'knhd0', 'scope', 'link'));
    hostLL = a[0]?.addr_info?.find((x) => !x.tentative)?.local;
    if (!hostLL) await sleep(50);
  }
  if (!hostLL) throw new Error('knhd0 has no link-local address');
  out.hostLL = hostLL;

  await datapathUnpinAll(PIN_ROOT);
  dp = await datapathLoad({ pinRoot: PIN_ROOT });
  const ep = { endpointId: 31, identity: 4300, ipv4: '10.251.0.2', ipv6: 'fd00:251::2', mac, hostMac, flags: 3 };
  dp.endpointUpsert(ifindex, ep);
  await dp.attach({ ifname: 'knhd0', ifindex, kind: 'tcx' });
  const kernel = { datapath: dp };
  const store = { workloadList: () => [{ ipv4: ep.ipv4, ipv6: ep.ipv6, identity: ep.identity }] };
  // the kernel's listing, as the agent reads it (agent/host-address-watch.ts)
  hostDestinationsListedSet({ addresses: await hostAddressesList(), localDelivery: await hostLocalDeliveryList() });
  stepsRun(ipcacheSyncSteps(kernel, store, undefined));
  out.ipcache = Object.fromEntries(dp.ipcacheList().map(([cidr, e]) => [cidr, e.identity]));
  // whether this kernel delivers the network address locally (older ones had a broadcast route for it)
  out.networkAddrLocal = JSON.parse(sh('ip', '-j', 'route', 'show', 'table', 'local', '192.0.2.0')).length > 0;

  const events = [];
  const reader = dp.flowsRead((evs) => events.push(...evs));
  const received = new Set();
  const listeners = [dgram.createSocket('udp4'), dgram.createSocket({ type: 'udp6', ipv6Only: true })];
  for (const s of listeners) s.on('message', (m) => received.add(m.toString()));
  await new Promise((r) => listeners[0].bind(PORT, '0.0.0.0', r));
  await new Promise((r) => listeners[1].bind(PORT, '::', r));

  const cases = ${JSON.stringify(CASES)};
  const send = (phase) => {
    const list = Object.entries(cases).map(([name, dst]) => [phase + ':' + name, dst === 'HOST_LL' ? hostLL : dst]);
    inNs('python3', '-c', \`
import json, socket, sys, time
for name, dst in json.loads(sys.argv[1]):
    six = ':' in dst
    s = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')
    scope = socket.if_nametoindex('eth0') if dst.startswith(('fe80', 'ff02')) else 0
    for _ in range(3):
        s.sendto(name.encode(), (dst, \${PORT}, 0, scope) if six else (dst, \${PORT}))
        time.sleep(0.02)
    s.close()
\`, JSON.stringify(list));
  };
  const egress = (identity) => ({ op: 'upsert', entry: { direction: 'egress', identity, protocol: 0, port: 0, portPrefixLen: 0, deny: false } });
  const ingressAny = { op: 'upsert', entry: { direction: 'ingress', identity: 0, protocol: 0, port: 0, portPrefixLen: 0, deny: false } };
  const phase = async (name) => {
    events.length = 0;
    send(name);
    await sleep(500);
    const res = {};
    for (const [c, dst] of Object.entries(cases)) {
      const addr = dst === 'HOST_LL' ? hostLL : dst;
      const evs = events.filter((e) => e.direction === 'EGRESS' && e.dstAddr === addr && e.dstPort === PORT);
      res[c] = {
        received: received.has(name + ':' + c),
        dropped: evs.filter((e) => e.verdict === 'DROPPED').map((e) => [e.dropReason, e.dstIdentity]),
        forwarded: evs.filter((e) => e.verdict === 'FORWARDED').map((e) => e.dstIdentity),
      };
    }
    return res;
  };
  // world (2, 9, 10) allowed, host not
  dp.policyApply(ep.endpointId, [egress(2), egress(9), egress(10), ingressAny]);
  out.worldOnly = await phase('world');
  // host allowed too
  dp.policyApply(ep.endpointId, [egress(1)]);
  dp.conntrackFlush();
  out.withHost = await phase('host');

  // the host's address goes: its entries go with the next sync
  sh('ip', 'addr', 'del', '192.0.2.1/24', 'dev', 'up0');
  sh('ip', '-6', 'addr', 'del', '2001:db8::fe/64', 'dev', 'up0');
  // the kernel's listing, as the agent reads it (agent/host-address-watch.ts)
  hostDestinationsListedSet({ addresses: await hostAddressesList(), localDelivery: await hostLocalDeliveryList() });
  stepsRun(ipcacheSyncSteps(kernel, store, undefined));
  out.ipcacheAfterRemoval = Object.fromEntries(dp.ipcacheList().map(([cidr, e]) => [cidr, e.identity]));
  reader.close();
  for (const s of listeners) s.close();
} finally {
  hostDestinationsListedSet(undefined);
  try { dp?.close(); } catch {}
  await datapathUnpinAll(PIN_ROOT).catch(() => {});
  spawnSync('ip', ['netns', 'del', NS]);
}
console.log(JSON.stringify(out));
`;

interface Result {
  received: boolean;
  dropped: Array<[number, number]>;
  forwarded: number[];
}
interface Out {
  hostLL: string;
  networkAddrLocal: boolean;
  ipcache: Record<string, number>;
  worldOnly: Record<Case, Result>;
  withHost: Record<Case, Result>;
  ipcacheAfterRemoval: Record<string, number>;
}

after(async () => {
  await netnsDel(WL_NS);
  await datapathUnpinAll(PIN_ROOT).catch(() => undefined);
});

test('a world-allowed workload reaches no host destination: subnet and limited broadcast, multicast, link-local, anycast are host (1); the network address only where the kernel delivers it; with host allowed they pass (root)', { timeout: 120_000 }, async () => {
  const out = await nodeInOwnNetns<Out>('', script);
  const HOST = 1;
  const WORLD4 = 9;
  // The network address is the LAN's (a machine there may own it) unless the kernel has a local route
  // for it: then it is host like the others.
  const hostCases = (Object.keys(CASES) as Case[]).filter((c) => c !== 'networkAddr' || out.networkAddrLocal);
  // Every case that got through or was judged as another identity, named at once (without the host
  // destinations in the ipcache: all but the host's own addresses, as world-ipv4/-ipv6).
  const leaks: string[] = [];
  for (const c of hostCases) {
    const r = out.worldOnly[c];
    if (r.received) leaks.push(`${c}: reached the host's listener`);
    if (r.forwarded.length) leaks.push(`${c}: forwarded as identity ${r.forwarded.join(',')}`);
    if (!r.dropped.length || !r.dropped.every(([reason, identity]) => reason === 133 && identity === HOST)) leaks.push(`${c}: drops ${JSON.stringify(r.dropped)}, not POLICY_DENIED to host`);
  }
  assert.deepEqual(leaks, [], 'with only world allowed, every host destination is dropped as host');
  for (const c of hostCases) {
    const r = out.withHost[c];
    assert.deepEqual(r.dropped, [], `${c}: no drop once host is allowed`);
    assert.ok(r.forwarded.length > 0 && r.forwarded.every((i) => i === HOST), `${c}: forwarded to host: ${JSON.stringify(r.forwarded)}`);
    assert.equal(r.received, true, `${c}: the host's listener received it`);
  }
  if (!out.networkAddrLocal) {
    for (const phase of [out.worldOnly, out.withHost]) {
      const r = phase.networkAddr;
      assert.deepEqual({ dropped: r.dropped, received: r.received }, { dropped: [], received: false }, 'the network address is not the host\'s');
      assert.ok(r.forwarded.length > 0 && r.forwarded.every((i) => i === WORLD4), `network address forwarded as world: ${JSON.stringify(r.forwarded)}`);
    }
    assert.equal(out.ipcache['192.0.2.0/32'], undefined, 'no host entry for the network address');
  }
  for (const cidr of ['192.0.2.1/32', '192.0.2.255/32', '255.255.255.255/32', '224.0.0.0/4', '2001:db8::fe/128', '2001:db8::/128', 'fe80::/10', 'ff00::/8']) {
    assert.equal(out.ipcache[cidr], HOST, `ipcache ${cidr} is host`);
  }
  assert.equal(out.ipcache['10.251.0.2/32'], 4300);

  for (const cidr of ['192.0.2.1/32', '192.0.2.255/32', '192.0.2.0/32', '2001:db8::fe/128', '2001:db8::/128']) {
    assert.equal(out.ipcacheAfterRemoval[cidr], undefined, `${cidr} removed with the address`);
  }
  for (const cidr of ['255.255.255.255/32', '224.0.0.0/4', 'fe80::/10', 'ff00::/8']) assert.equal(out.ipcacheAfterRemoval[cidr], HOST, cidr);
});
