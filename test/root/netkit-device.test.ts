// endpointDevice* against the real kernel: veth endpoints in fresh namespaces, checked with
// iproute2, traffic between them, observe/repair, delete, and the failure paths (nothing half-made
// may remain). Needs root.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { KernelError } from '../../common/kernel-error.js';
import type { EndpointDeviceSpec } from '../../netkit/index.js';
import {
  EndpointSpecError, GATEWAY_V4, GATEWAY_V6, endpointDeviceCreate, endpointDeviceDelete, endpointDeviceObserve,
  endpointDeviceOpen, endpointDeviceRepair, hostForwardingEnsure, kitnetLinksList, netnsCreate, netnsDelete, netnsPathValidate,
} from '../../netkit/index.js';
import {
  ipj, isRoot, linkDelQuiet, linkExists, linkNames, netnsDelQuiet, ok, pingEventually, rand, sh,
} from './netkit-helpers.js';
import { timeLimit } from '../helpers/timeouts.js';

/**
 * A random hex group as the kernel prints it (no leading zeros), so addresses compare as text; the
 * addresses put a fixed non-zero group after the random ones, so a random group of 0 is never folded
 * into `::` by the kernel (fd00:fff8:0::10 would print as fd00:fff8::10).
 */
const hex = (group: string): string => parseInt(group, 16).toString(16);

const skip = !isRoot && 'needs root';

interface Fixture {
  id: string;
  ns: string[];
  links: string[];
}

/** Registers cleanup first, then makes `count` namespaces. */
async function fixture(t: { after: (fn: () => Promise<void>) => void }, count: number): Promise<Fixture> {
  const id = rand();
  const f: Fixture = { id, ns: [], links: [] };
  t.after(async () => {
    for (const l of f.links) await linkDelQuiet(l);
    for (const n of f.ns) await netnsDelQuiet(n);
  });
  for (let i = 0; i < count; i++) {
    const name = `kitnet-t${id}${String.fromCharCode(97 + i)}`;
    f.ns.push(name);
    await netnsCreate(name);
  }
  return f;
}

function spec(f: Fixture, i: number, patch: Partial<EndpointDeviceSpec> = {}): EndpointDeviceSpec {
  const host = `knt${f.id}${String.fromCharCode(97 + i)}`;
  if (!f.links.includes(patch.hostIfname ?? host)) f.links.push(patch.hostIfname ?? host);
  const octet = (parseInt(f.id.slice(0, 2), 16) % 200) + 20;
  return {
    hostIfname: host, alias: `kitnet:test/${f.id}-${i}`, netnsPath: `/var/run/netns/${f.ns[i] ?? f.ns[0]}`,
    peerIfname: 'eth0', mode: 'veth', ipv4: `10.${octet}.${i}.${i + 10}`, ipv6: `fd00:${hex(f.id.slice(0, 4))}:${hex(f.id.slice(4))}:1::${i + 10}`, ...patch,
  };
}

type Addr = { family: string; local: string; prefixlen: number; nodad?: boolean };
type Route = { dst: string; gateway?: string; dev: string; scope?: string };

test('two veth endpoints: state as specified, traffic both ways (v4, v6), clean delete', { skip, timeout: timeLimit(60_000) }, async (t) => {
  const f = await fixture(t, 2);
  await hostForwardingEnsure();
  assert.equal((await sh('cat', ['/proc/sys/net/ipv4/ip_forward'])).trim(), '1');
  assert.equal((await sh('cat', ['/proc/sys/net/ipv6/conf/all/forwarding'])).trim(), '1');

  const sa = spec(f, 0, { mtu: 1400 });
  const sb = spec(f, 1);
  const a = await endpointDeviceCreate(sa);
  const b = await endpointDeviceCreate(sb);
  // made closed: the host side down, no routes to the workload, its peer without carrier
  for (const [s, d, ns] of [[sa, a, f.ns[0]!], [sb, b, f.ns[1]!]] as const) {
    assert.equal(d.closed, true);
    const [hl] = await ipj<{ flags: string[] }[]>(['link', 'show', 'dev', s.hostIfname]);
    assert.ok(!hl!.flags.includes('UP'), `${s.hostIfname} down until opened: ${hl!.flags.join(',')}`);
    assert.deepEqual(await ipj(['route', 'show', `${s.ipv4}/32`]), []);
    assert.deepEqual(await ipj(['-6', 'route', 'show', `${s.ipv6}/128`]), []);
    const [peer] = await ipj<{ flags: string[] }[]>(['link', 'show', 'dev', 'eth0'], ns);
    assert.ok(peer!.flags.includes('NO-CARRIER'), `peer without carrier: ${peer!.flags.join(',')}`);
    const seen = await endpointDeviceObserve(s);
    assert.deepEqual([seen?.problems, seen?.closed], [[], true], 'closed is no problem to repair');
    await endpointDeviceOpen(s);
    await endpointDeviceOpen(s); // idempotent
    assert.equal((await endpointDeviceObserve(s))?.closed, false);
  }
  assert.equal(a.mode, 'veth');
  assert.equal(a.hostIfname, sa.hostIfname);
  assert.equal(a.peerIfname, 'eth0');

  for (const [s, d, ns] of [[sa, a, f.ns[0]!], [sb, b, f.ns[1]!]] as const) {
    // host side
    const [hl] = await ipj<{ ifname: string; ifindex: number; address: string; ifalias: string; flags: string[]; mtu: number; linkinfo: { info_kind: string } }[]>(['-d', 'link', 'show', 'dev', s.hostIfname]);
    assert.ok(hl);
    assert.equal(hl.linkinfo.info_kind, 'veth');
    assert.equal(hl.ifalias, s.alias);
    assert.equal(hl.ifindex, d.hostIfindex);
    assert.equal(hl.address, d.hostMac);
    assert.ok(hl.flags.includes('UP'));
    assert.equal(hl.mtu, s.mtu ?? 1500);
    assert.equal((await sh('cat', [`/proc/sys/net/ipv4/conf/${s.hostIfname}/rp_filter`])).trim(), '0');
    const r4 = await ipj<Route[]>(['route', 'show', `${s.ipv4}/32`]);
    assert.deepEqual(r4.map((r) => [r.dst, r.dev, r.scope]), [[s.ipv4, s.hostIfname, 'link']]);
    const r6 = await ipj<Route[]>(['-6', 'route', 'show', `${s.ipv6}/128`]);
    assert.deepEqual(r6.map((r) => [r.dst, r.dev]), [[s.ipv6, s.hostIfname]]);

    // inside the namespace
    const links = await ipj<{ ifname: string; address: string; flags: string[]; mtu: number; operstate: string }[]>(['link', 'show'], ns);
    assert.deepEqual(links.map((l) => l.ifname).sort(), ['eth0', 'lo']);
    for (const l of links) assert.ok(l.flags.includes('UP'), `${l.ifname} up`);
    const eth0 = links.find((l) => l.ifname === 'eth0')!;
    assert.equal(eth0.address, d.peerMac);
    assert.equal(eth0.mtu, s.mtu ?? 1500);
    const addrs = (await ipj<{ addr_info: Addr[] }[]>(['addr', 'show', 'dev', 'eth0'], ns))[0]!.addr_info;
    assert.ok(addrs.some((x) => x.family === 'inet' && x.local === s.ipv4 && x.prefixlen === 32), JSON.stringify(addrs));
    const v6 = addrs.find((x) => x.family === 'inet6' && x.local === s.ipv6);
    assert.ok(v6 && v6.prefixlen === 128 && v6.nodad === true, JSON.stringify(addrs));
    const routes = await ipj<Route[]>(['route', 'show'], ns);
    assert.ok(routes.some((r) => r.dst === GATEWAY_V4 && r.dev === 'eth0' && r.scope === 'link'), JSON.stringify(routes));
    assert.ok(routes.some((r) => r.dst === 'default' && r.gateway === GATEWAY_V4 && r.dev === 'eth0'), JSON.stringify(routes));
    const routes6 = await ipj<Route[]>(['-6', 'route', 'show', 'default'], ns);
    assert.ok(routes6.some((r) => r.gateway === GATEWAY_V6 && r.dev === 'eth0'), JSON.stringify(routes6));
    const neigh = await ipj<{ dst: string; lladdr: string; state: string[] }[]>(['neigh', 'show', 'dev', 'eth0', 'nud', 'permanent'], ns);
    for (const gw of [GATEWAY_V4, GATEWAY_V6]) {
      const n = neigh.find((x) => x.dst === gw);
      assert.ok(n && n.lladdr === d.hostMac && n.state.includes('PERMANENT'), `${gw}: ${JSON.stringify(neigh)}`);
    }
  }

  assert.ok(await pingEventually(f.ns[0]!, sb.ipv4), 'A -> B IPv4');
  assert.ok(await pingEventually(f.ns[1]!, sa.ipv4), 'B -> A IPv4');
  assert.ok(await pingEventually(f.ns[0]!, sb.ipv6), 'A -> B IPv6');
  assert.ok(await pingEventually(f.ns[1]!, sa.ipv6), 'B -> A IPv6');

  const listed = await kitnetLinksList();
  for (const s of [sa, sb]) assert.ok(listed.some((l) => l.ifname === s.hostIfname && l.alias === s.alias));

  assert.equal(await endpointDeviceDelete(sa.hostIfname), true);
  assert.equal(await endpointDeviceDelete(sb.hostIfname), true);
  assert.equal(await endpointDeviceDelete(sa.hostIfname), false, 'delete is idempotent');
  for (const s of [sa, sb]) {
    assert.equal(await linkExists(s.hostIfname), false);
    assert.deepEqual(await ipj(['route', 'show', `${s.ipv4}/32`]), []);
    assert.deepEqual(await ipj(['-6', 'route', 'show', `${s.ipv6}/128`]), []);
  }
  for (const ns of f.ns) assert.deepEqual(await linkNames(ns), ['lo']);
  const after = await kitnetLinksList();
  assert.ok(!after.some((l) => l.ifname === sa.hostIfname || l.ifname === sb.hostIfname));
});

test('observe tells present-and-correct from broken; repair converges', { skip, timeout: timeLimit(60_000) }, async (t) => {
  const f = await fixture(t, 1);
  const s = spec(f, 0);
  assert.equal(await endpointDeviceObserve(s), undefined, 'missing host link -> undefined');
  const made = await endpointDeviceCreate(s);
  await endpointDeviceOpen(s);
  const seen = await endpointDeviceObserve(s);
  assert.deepEqual(seen?.problems, []);
  assert.equal(seen?.peerIfindex, made.peerIfindex);
  assert.equal(seen?.peerMac, made.peerMac);

  await sh('ip', ['-n', f.ns[0]!, 'route', 'del', 'default']);
  await sh('ip', ['-n', f.ns[0]!, 'neigh', 'del', GATEWAY_V4, 'dev', 'eth0']);
  await sh('ip', ['route', 'del', `${s.ipv4}/32`]);
  const broken = await endpointDeviceObserve(s);
  assert.ok(broken);
  assert.ok(broken.problems!.some((p) => p.includes(`default via ${GATEWAY_V4}`)), broken.problems!.join('; '));
  assert.ok(broken.problems!.some((p) => p.includes(`neighbour ${GATEWAY_V4}`)), broken.problems!.join('; '));
  assert.ok(broken.problems!.some((p) => p.includes(`host route ${s.ipv4}/32`)), broken.problems!.join('; '));

  const repaired = await endpointDeviceRepair(s);
  assert.equal(repaired.hostIfindex, made.hostIfindex, 'repaired in place, not re-created');
  assert.equal(repaired.closed, false, 'an open pair stays open');
  assert.deepEqual((await endpointDeviceObserve(s))?.problems, []);

  // the peer gone (namespace emptied) -> repair re-creates the pair
  await sh('ip', ['-n', f.ns[0]!, 'link', 'del', 'eth0']);
  assert.equal(await linkExists(s.hostIfname), false, 'deleting the peer takes the host side too');
  const recreated = await endpointDeviceRepair(s);
  assert.deepEqual((await endpointDeviceObserve(s))?.problems, []);
  assert.equal(recreated.hostIfname, s.hostIfname);
  assert.equal(recreated.closed, true, 're-made closed: opened only once its programs are attached');

  // wrong spec vs kernel: alias differs
  const other = await endpointDeviceObserve({ ...s, alias: 'kitnet:test/other' });
  assert.ok(other?.problems?.some((p) => p.includes('alias')));
  assert.equal(await endpointDeviceDelete(s.hostIfname), true);
});

test('netns path missing or not a network namespace: clear error, nothing made', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const f = await fixture(t, 0);
  const missing = spec({ ...f, ns: ['kitnet-tdoesnotexist'] }, 0);
  f.links.push(missing.hostIfname);
  await assert.rejects(endpointDeviceCreate(missing), (e: unknown) =>
    e instanceof EndpointSpecError && e.field === 'netnsPath' && /does not exist/.test(e.message));
  assert.equal(await linkExists(missing.hostIfname), false);

  await assert.rejects(endpointDeviceCreate({ ...missing, netnsPath: '/etc/hostname' }), /not a namespace file/);
  await assert.rejects(netnsPathValidate('/proc/self/ns/mnt'), /mnt namespace, not a network namespace/);
  await assert.rejects(netnsPathValidate('relative/path'), /absolute/);
  assert.ok((await netnsPathValidate('/proc/self/ns/net')) > 0);
  assert.equal(await linkExists(missing.hostIfname), false);
});

test('netns paths: a bind-mounted namespace of another type and a FIFO are refused by what they are', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-nstype-'));
  const uts = join(dir, 'uts');
  t.after(async () => {
    await sh('umount', [uts]).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });
  // Like `ip netns add`, but of a UTS namespace: a bind mount is no magic link, only the kernel knows its type.
  writeFileSync(uts, '');
  await sh('mount', ['--bind', '/proc/self/ns/uts', uts]);
  await assert.rejects(netnsPathValidate(uts), (e: unknown) => e instanceof EndpointSpecError && e.field === 'netnsPath' && /is a uts namespace, not a network namespace/.test(e.message));
  // A FIFO is never opened (an open would block until a writer comes).
  const fifo = join(dir, 'fifo');
  await sh('mkfifo', [fifo]);
  await assert.rejects(netnsPathValidate(fifo), /is not a namespace file/);
  // A named network namespace: its inode, the one `ip netns exec` sees.
  const name = `kitnet-t${rand()}t`;
  t.after(() => netnsDelQuiet(name));
  const inode = await netnsPathValidate(await netnsCreate(name));
  assert.equal((await sh('ip', ['netns', 'exec', name, 'readlink', '/proc/self/ns/net'])).trim(), `net:[${inode}]`);
});

test('netns helpers create, validate and delete named namespaces', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const name = `kitnet-t${rand()}n`;
  t.after(() => netnsDelQuiet(name));
  const path = await netnsCreate(name);
  assert.equal(path, `/var/run/netns/${name}`);
  const inode = await netnsPathValidate(path);
  const viaIp = (await sh('ip', ['netns', 'exec', name, 'readlink', '/proc/self/ns/net'])).trim();
  assert.equal(viaIp, `net:[${inode}]`);
  assert.equal(await netnsDelete(name), true);
  assert.equal(await netnsDelete(name), false);
  await assert.rejects(netnsPathValidate(path), /does not exist/);
  await assert.rejects(netnsCreate('bad/name'), /invalid netns name/);
});

/**
 * Runs `script` as PID 1 of a new PID and mount namespace (the "host" there: everything it mounts dies
 * with it, nothing reaches this machine's /run/netns). `$KITNET` in the script starts a node process in
 * a mount namespace of its own, as systemd's sandbox gives the service, and runs `fn` of netkit/netns.ts.
 */
async function asSandboxedService(script: string): Promise<string> {
  const netnsModule = new URL('../../netkit/netns.js', import.meta.url).href;
  const call = `const m = await import(${JSON.stringify(netnsModule)}); ` +
    'try { console.log(JSON.stringify({ prefix: await m.hostMountNsPrefix(), result: await m[process.argv[1]](process.argv[2]) })); } ' +
    'catch (e) { console.log(JSON.stringify({ error: e.message })); }';
  const sandboxed = `unshare --mount --propagation slave -- ${JSON.stringify(process.execPath)} --input-type=module -e '${call}'`;
  return sh('unshare', ['--pid', '--fork', '--mount', '--mount-proc', '--', 'sh', '-euc', script.replaceAll('$KITNET', sandboxed)]);
}

test('a service in a mount namespace of its own makes namespaces in the host\'s (PID 1), where they outlive it', { skip, timeout: timeLimit(30_000) }, async () => {
  const name = `kitnet-t${rand()}m`;
  const out = await asSandboxedService(`
    mount -t tmpfs kitnet-test /run/netns && mount --make-shared /run/netns
    $KITNET netnsCreate ${name}
    echo "host sees: $(ip netns exec ${name} readlink /proc/self/ns/net)"
    $KITNET netnsDelete ${name}
    test -e /run/netns/${name} && echo "host still has it" || echo "host: gone"
    mount --make-private /run/netns
    $KITNET netnsCreate ${name}
    test -e /run/netns/${name} && echo "host still has it" || echo "host: gone"
  `);
  const lines = out.trim().split('\n');
  const created = JSON.parse(lines[0]!) as { prefix: string[]; result: string };
  assert.deepEqual(created.prefix, ['nsenter', '--target', '1', '--mount', '--'], 'the service saw it is not in PID 1\'s mount namespace');
  assert.equal(created.result, `/var/run/netns/${name}`);
  assert.match(lines[1]!, /^host sees: net:\[\d+\]$/, 'the namespace is on the host after the service process exited');
  assert.deepEqual(JSON.parse(lines[2]!), { prefix: created.prefix, result: true });
  assert.equal(lines[3], 'host: gone');
  // No propagation from the host into the service: a clear error, and no namespace left behind.
  const failed = JSON.parse(lines[4]!) as { error?: string };
  assert.match(failed.error ?? '', new RegExp(`namespace ${name} was made in the host's mount namespace but does not show in kitnet's .*shared mount`));
  assert.equal(lines[5], 'host: gone');
});

test('host name taken (EEXIST): the existing link is untouched, nothing else made', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const f = await fixture(t, 1);
  const s = spec(f, 0);
  await sh('ip', ['link', 'add', s.hostIfname, 'type', 'veth', 'peer', 'name', `${s.hostIfname}p`]);
  const before = await ipj<{ ifindex: number }[]>(['link', 'show', 'dev', s.hostIfname]);
  await assert.rejects(endpointDeviceCreate(s), (e: unknown) => {
    assert.ok(e instanceof KernelError, String(e));
    assert.equal(e.errnoName, 'EEXIST');
    assert.equal(e.op, 'RTM_NEWLINK');
    assert.match(e.message, new RegExp(`^RTM_NEWLINK ${s.hostIfname}: EEXIST.*— hint: a link named ${s.hostIfname} already exists`));
    return true;
  });
  const after = await ipj<{ ifindex: number }[]>(['link', 'show', 'dev', s.hostIfname]);
  assert.equal(after[0]?.ifindex, before[0]?.ifindex, 'not deleted by the rollback');
  assert.deepEqual(await linkNames(f.ns[0]), ['lo']);
});

test('peer name taken in the netns (EEXIST): message names the netns, nothing made', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const f = await fixture(t, 1);
  const s = spec(f, 0);
  await sh('ip', ['-n', f.ns[0]!, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0p']);
  await assert.rejects(endpointDeviceCreate(s), (e: unknown) =>
    e instanceof KernelError && e.errnoName === 'EEXIST' && e.device?.netns === s.netnsPath && /eth0 already exists in/.test(e.message));
  assert.equal(await linkExists(s.hostIfname), false);
  assert.deepEqual((await linkNames(f.ns[0])).sort(), ['eth0', 'eth0p', 'lo']);
});

for (const family of ['-4', '-6'] as const) {
  test(`a default route kitnet did not make (${family}) is never replaced: EEXIST naming the namespace, nothing made`, { skip, timeout: timeLimit(30_000) }, async (t) => {
    const f = await fixture(t, 1);
    const s = spec(f, 0);
    const ns = f.ns[0]!;
    await sh('ip', ['-n', ns, 'link', 'add', 'x0', 'type', 'veth', 'peer', 'name', 'x1']);
    for (const dev of ['x0', 'x1']) await sh('ip', ['-n', ns, 'link', 'set', dev, 'up']);
    if (family === '-4') {
      await sh('ip', ['-n', ns, 'addr', 'add', '192.0.2.10/24', 'dev', 'x0']);
      await sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', '192.0.2.1']);
    } else {
      await sh('ip', ['-n', ns, '-6', 'route', 'add', 'default', 'via', 'fe80::99', 'dev', 'x0']);
    }
    const before = await ipj<Route[]>([family, 'route', 'show', 'default'], ns);
    await assert.rejects(endpointDeviceCreate(s), (e: unknown) =>
      e instanceof KernelError && e.op === 'RTM_NEWROUTE' && e.errnoName === 'EEXIST' && e.device?.netns === s.netnsPath &&
      /already has a route for default via .* kitnet never replaces routes/.test(e.message));
    assert.equal(await linkExists(s.hostIfname), false, 'host side removed');
    assert.deepEqual((await linkNames(ns)).sort(), ['lo', 'x0', 'x1'], 'peer removed with it');
    assert.deepEqual(await ipj<Route[]>([family, 'route', 'show', 'default'], ns), before, 'the namespace keeps its default route');
  });
}

test('opening a pair whose address is routed elsewhere fails, taking nothing over (EEXIST)', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const f = await fixture(t, 2);
  const sa = spec(f, 0);
  const sb = spec(f, 1, { ipv4: sa.ipv4 });
  await endpointDeviceCreate(sa);
  await endpointDeviceOpen(sa);
  await endpointDeviceCreate(sb); // closed: it routes nothing yet
  await assert.rejects(endpointDeviceOpen(sb), (e: unknown) =>
    e instanceof KernelError && e.op === 'RTM_NEWROUTE' && e.errnoName === 'EEXIST' && /another workload/.test(e.message));
  assert.equal(await endpointDeviceDelete(sb.hostIfname), true);
  assert.deepEqual(await linkNames(f.ns[1]), ['lo'], 'peer removed with it');
  const r = await ipj<Route[]>(['route', 'show', `${sa.ipv4}/32`]);
  assert.deepEqual(r.map((x) => x.dev), [sa.hostIfname], 'the first endpoint keeps its route');
  assert.deepEqual((await endpointDeviceObserve(sa))?.problems, []);
});

test('names too long or invalid are rejected before the kernel', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const f = await fixture(t, 1);
  const s = spec(f, 0);
  await assert.rejects(endpointDeviceCreate({ ...s, hostIfname: 'kitnet-much-too-long' }), /at most 15/);
  await assert.rejects(endpointDeviceCreate({ ...s, peerIfname: 'eth 0' }), /invalid/);
  await assert.rejects(endpointDeviceDelete('kitnet-much-too-long'), /at most 15/);
  assert.equal(await linkExists(s.hostIfname), false);
  assert.deepEqual(await linkNames(f.ns[0]), ['lo']);
});

test('delete refuses devices that are not kitnet pairs', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const name = `knt${rand()}x`;
  t.after(() => linkDelQuiet(name));
  await sh('ip', ['link', 'add', name, 'type', 'bridge']);
  await assert.rejects(endpointDeviceDelete(name), /not a kitnet pair/);
  assert.ok(await ok('ip', ['link', 'show', 'dev', name]));
});
