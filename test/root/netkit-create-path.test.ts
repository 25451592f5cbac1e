// endpointDeviceCreate's fast path against the real kernel: the namespace fd is opened without the
// separate validation (the kernel checks it; netnsPathValidate names what is wrong only on failure),
// the host side comes back from the creation itself (NLM_F_ECHO), and each side's settings go out
// pipelined (a failure in the middle still rolls everything back and reports the first failure).
// Needs root.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { KernelError } from '../../common/kernel-error.js';
import type { EndpointDeviceSpec } from '../../netkit/index.js';
import { EndpointSpecError, endpointDeviceCreate, endpointDeviceObserve } from '../../netkit/index.js';
import { ipj, isRoot, linkDelQuiet, linkExists, linkNames, netnsDelQuiet, rand, sh } from './netkit-helpers.js';
import { timeLimit } from '../helpers/timeouts.js';

const skip = !isRoot && 'needs root';

interface Fixture {
  id: string;
  ns: string;
  host: string;
}

async function fixture(t: { after: (fn: () => Promise<void>) => void }): Promise<Fixture> {
  const id = rand();
  const f = { id, ns: `kitnet-tc${id}`, host: `kntc${id}` };
  t.after(async () => {
    await linkDelQuiet(f.host);
    await netnsDelQuiet(f.ns);
  });
  await sh('ip', ['netns', 'add', f.ns]);
  return f;
}

function spec(f: Fixture, patch: Partial<EndpointDeviceSpec> = {}): EndpointDeviceSpec {
  const octet = (parseInt(f.id.slice(0, 2), 16) % 200) + 20;
  return {
    hostIfname: f.host, alias: `kitnet:test/${f.id}`, netnsPath: `/var/run/netns/${f.ns}`, peerIfname: 'eth0', mode: 'veth',
    ipv4: `10.${octet}.7.9`, ipv6: `fd00:${parseInt(f.id.slice(0, 4), 16).toString(16)}:7::79`, ...patch,
  };
}

test('a path that is no network namespace: the same precise error as before, nothing made, no hang on a FIFO', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const f = await fixture(t);
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-tc-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, 'fifo');
  await sh('mkfifo', [fifo]);
  const cases: [string, RegExp][] = [
    ['/proc/self/ns/mnt', /mnt namespace, not a network namespace/], // nsfs: opened, refused by the kernel
    ['/etc/hostname', /not a namespace file/], // a regular file: opened, refused by the kernel
    [fifo, /not a namespace file/], // never opened (it would block)
    [dir, /not a namespace file/],
    [`/var/run/netns/${f.ns}-missing`, /does not exist/],
    ['relative/path', /absolute/],
  ];
  for (const [netnsPath, why] of cases) {
    await assert.rejects(endpointDeviceCreate(spec(f, { netnsPath })), (e: unknown) => {
      assert.ok(e instanceof EndpointSpecError, `${netnsPath}: ${String(e)}`);
      assert.equal(e.field, 'netnsPath');
      assert.match(e.message, why);
      return true;
    });
    assert.equal(await linkExists(f.host), false, `${netnsPath}: nothing left on the host`);
  }
  assert.deepEqual(await linkNames(f.ns), ['lo']);
});

test('/proc/PID/ns/net works like a bind mount; the host side as echoed is what the kernel has', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const f = await fixture(t);
  const sleeper = spawn('ip', ['netns', 'exec', f.ns, 'sleep', '60'], { stdio: 'ignore' });
  t.after(() => { sleeper.kill(); });
  // the pid of `sleep` once ip has exec'd it in the namespace
  let pid = 0;
  for (let i = 0; i < 100 && !pid; i++) {
    const ids = (await sh('ip', ['netns', 'pids', f.ns])).trim().split('\n').filter(Boolean).map(Number);
    pid = ids[0] ?? 0;
    if (!pid) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(pid > 0, 'a process in the namespace');
  const s = spec(f, { netnsPath: `/proc/${pid}/ns/net` });
  const dev = await endpointDeviceCreate(s);
  const [host] = await ipj<{ ifindex: number; address: string; ifalias?: string; operstate: string }[]>(['link', 'show', 'dev', f.host]);
  assert.equal(dev.hostIfindex, host?.ifindex);
  assert.equal(dev.hostMac, host?.address);
  assert.equal(host?.ifalias, s.alias);
  const [peer] = await ipj<{ ifindex: number; address: string }[]>(['link', 'show', 'dev', 'eth0'], f.ns);
  assert.equal(dev.peerIfindex, peer?.ifindex);
  assert.equal(dev.peerMac, peer?.address);
  assert.deepEqual((await endpointDeviceObserve(s))?.problems, []);
  // host-side settings, read before written (only what differs is written)
  const sysctl = (path: string): string => readFileSync(`/proc/sys/net/${path}`, 'utf8').trim();
  assert.deepEqual(
    ['ipv4/conf/%/rp_filter', 'ipv4/conf/%/forwarding', 'ipv6/conf/%/accept_dad', 'ipv6/conf/%/forwarding'].map((p) => sysctl(p.replace('%', f.host))),
    ['0', '1', '0', '1'],
  );
  // the gateway neighbours point at the host side's MAC as the creation reported it
  const neigh = await ipj<{ dst: string; lladdr: string; state: string[] }[]>(['neigh', 'show', 'dev', 'eth0'], f.ns);
  assert.deepEqual(neigh.map((n) => [n.dst, n.lladdr]).sort(), [['169.254.1.1', host?.address], ['fe80::1', host?.address]].sort());
});

test('a request failing in the middle of the namespace batch: first failure reported, everything rolled back', { skip, timeout: timeLimit(30_000) }, async (t) => {
  const f = await fixture(t);
  // IPv6 off for new devices in the namespace: the peer's IPv4 address goes in, its IPv6 address is refused
  await sh('ip', ['netns', 'exec', f.ns, 'sysctl', '-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
  await assert.rejects(endpointDeviceCreate(spec(f)), (e: unknown) => {
    assert.ok(e instanceof KernelError, String(e));
    assert.equal(e.op, 'RTM_NEWADDR');
    assert.equal(e.device?.netns, `/var/run/netns/${f.ns}`);
    return true;
  });
  assert.equal(await linkExists(f.host), false, 'host side removed');
  assert.deepEqual(await linkNames(f.ns), ['lo'], 'peer removed with it');
  const routes = await ipj<{ dst: string }[]>(['route', 'show'], f.ns);
  assert.deepEqual(routes, [], 'no route left in the namespace');
});
