import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import type { DatapathLoadLog } from '../../bpf/index.js';
import { datapathLoad, datapathUnpinAll, KernelError } from '../../bpf/index.js';
import { CONNTRACK_MAP_FLAGS, CONNTRACK_MAP_MAX, CT_ENTRY, CT_KEY } from '../../bpf/layout.gen.js';
import { native } from '../../common/native.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { status, uniq, waitFor } from '../helpers/sys.js';

const execFileP = promisify(execFile);
const checkout = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const BPF_F_NO_COMMON_LRU = 2;
/** The layout an "old agent" pinned: another flags and size than this version's. */
const OLD_FLAGS = CONNTRACK_MAP_FLAGS ^ BPF_F_NO_COMMON_LRU;
const OLD_MAX = 65536;

/** The pinned conntrack map's kernel view, read through its pin. */
function pinnedConntrack(pinRoot: string): { flags: number; maxEntries: number; keySize: number; valueSize: number; count: number } {
  const n = native();
  const fd = n.objGet(join(pinRoot, 'maps', 'conntrack'));
  try {
    const info = n.mapInfo(fd);
    return { ...info, count: n.mapDump(fd, info.keySize, info.valueSize, info.maxEntries).count };
  } finally {
    n.fdClose(fd);
  }
}

/** A map pinned with bpftool, as another program (or an old agent) would leave it. */
async function mapPin(path: string, spec: { type: string; key: number; value: number; entries: number; flags?: number }): Promise<void> {
  mkdirSync(dirname(path), { recursive: true });
  await execFileP('bpftool', ['map', 'create', path, 'type', spec.type, 'key', String(spec.key), 'value', String(spec.value), 'entries', String(spec.entries), 'name', 'conntrack', 'flags', String(spec.flags ?? 0)]);
}

function logCapture(): DatapathLoadLog & { lines: Array<{ level: string; obj: object; msg: string }> } {
  const lines: Array<{ level: string; obj: object; msg: string }> = [];
  return { lines, info: (obj, msg) => lines.push({ level: 'info', obj, msg }), warn: (obj, msg) => lines.push({ level: 'warn', obj, msg }) };
}

/** Loading the datapath over a conntrack pin it cannot reuse as it is (bpf/maps/conntrack-migrate.ts). */
describe('conntrack map pinned by another version (root)', { timeout: 120_000 }, () => {
  const roots: string[] = [];
  const pinRoot = () => {
    const r = `/sys/fs/bpf/kitnet-test-ctmig-${process.pid}-${uniq()}`;
    roots.push(r);
    return r;
  };
  after(async () => {
    for (const r of roots) await datapathUnpinAll(r).catch(() => rmSync(r, { recursive: true, force: true }));
  });

  test('another flags and size: every entry copied into a map with this version\'s, logged', async () => {
    const root = pinRoot();
    const pin = join(root, 'maps', 'conntrack');
    await mapPin(pin, { type: 'lru_hash', key: CT_KEY.size, value: CT_ENTRY.size, entries: OLD_MAX, flags: OLD_FLAGS });
    const n = native();
    const fd = n.objGet(pin);
    const count = 3000;
    const keys = Buffer.alloc(count * CT_KEY.size);
    const values = Buffer.alloc(count * CT_ENTRY.size);
    for (let i = 0; i < count; i++) {
      keys.writeUInt32BE(i, i * CT_KEY.size); // distinct keys; the content is not interpreted by the copy
      values.writeBigUInt64LE(BigInt(i + 1), i * CT_ENTRY.size);
    }
    try {
      // one CPU's list holds at least OLD_MAX / CPUs entries: enough for `count` on any machine up to 21 CPUs
      for (let i = 0; i < count; i++) n.mapUpdate(fd, keys.subarray(i * CT_KEY.size, (i + 1) * CT_KEY.size), values.subarray(i * CT_ENTRY.size, (i + 1) * CT_ENTRY.size), 0);
    } finally {
      n.fdClose(fd);
    }
    const held = pinnedConntrack(root).count;
    assert.ok(held > 0, 'the old map holds entries');
    const log = logCapture();
    const dp = await datapathLoad({ pinRoot: root, log });
    try {
      const now = pinnedConntrack(root);
      assert.equal(now.flags, CONNTRACK_MAP_FLAGS);
      assert.equal(now.maxEntries, CONNTRACK_MAP_MAX);
      assert.equal(now.count, held, 'every entry copied');
      const sample = dp.conntrackList().length;
      assert.equal(sample, held);
      const line = log.lines.find((l) => l.msg.startsWith('conntrack map migrated'));
      assert.ok(line, JSON.stringify(log.lines));
      assert.equal((line.obj as { copied: number }).copied, held);
    } finally {
      dp.close();
    }
    // the next load reuses the migrated map as it is
    const log2 = logCapture();
    const dp2 = await datapathLoad({ pinRoot: root, log: log2 });
    dp2.close();
    assert.deepEqual(log2.lines, []);
    assert.equal(pinnedConntrack(root).count, held);
  });

  test('a map of another key and value size: replaced, with a warning naming both layouts', async () => {
    const root = pinRoot();
    await mapPin(join(root, 'maps', 'conntrack'), { type: 'lru_hash', key: 16, value: 8, entries: 64 });
    const log = logCapture();
    const dp = await datapathLoad({ pinRoot: root, log });
    dp.close();
    const now = pinnedConntrack(root);
    assert.deepEqual([now.keySize, now.valueSize, now.flags, now.maxEntries], [CT_KEY.size, CT_ENTRY.size, CONNTRACK_MAP_FLAGS, CONNTRACK_MAP_MAX]);
    assert.equal(log.lines.length, 1);
    assert.equal(log.lines[0]!.level, 'warn');
    assert.match(log.lines[0]!.msg, new RegExp(`conntrack map replaced: .*key 16 B, value 8 B.*key ${CT_KEY.size} B, value ${CT_ENTRY.size} B`));
  });

  test('another map type (an array) at the path: replaced, with a warning', async () => {
    const root = pinRoot();
    await mapPin(join(root, 'maps', 'conntrack'), { type: 'array', key: 4, value: CT_ENTRY.size, entries: 4 });
    const log = logCapture();
    const dp = await datapathLoad({ pinRoot: root, log });
    dp.close();
    assert.equal(pinnedConntrack(root).keySize, CT_KEY.size);
    assert.match(log.lines[0]!.msg, /conntrack map replaced/);
  });

  test('a directory at the path: a clear error, nothing removed', async () => {
    const root = pinRoot();
    mkdirSync(join(root, 'maps', 'conntrack'), { recursive: true });
    await assert.rejects(datapathLoad({ pinRoot: root }), (err: unknown) => err instanceof KernelError && /is a directory, where kitnet pins its conntrack map/.test(err.message));
    assert.equal((await status('test', ['-d', join(root, 'maps', 'conntrack')])), 0);
  });
});

/**
 * The datapath of an agent whose conntrack map had other flags and another size (this checkout's
 * sources with CONNTRACK_MAP_FLAGS and CONNTRACK_MAP_MAX changed), then this agent. a allows no
 * ingress at all: the packets b sends on a's connections pass only as replies of a's conntrack entries.
 * After the upgrade b speaks first on every connection, so a connection whose entry the upgrade lost
 * would be dropped at a.
 */
describe('agent upgrade over a conntrack map of other flags and size (root)', { timeout: 240_000 }, () => {
  const fx = new AgentFixture({ tag: 'ctm', ipv4Pool: '10.219.0.0/16', ipv6Pool: 'fd00:219::/64', namespaces: ['ctm'] });
  const children: ChildProcess[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-ctm-'));
  const oldObject = join(dir, 'kitnet.bpf.o');

  before(async () => {
    await execFileP('sh', ['-c', 'mkdir -p "$2/bpf" && cp -r "$1/bpf/src" "$1/bpf/include" "$2/bpf/"', 'sh', checkout, dir]);
    const gen = join(dir, 'bpf/include/shared.gen.h');
    const h = readFileSync(gen, 'utf8')
      .replace(/#define CONNTRACK_MAP_FLAGS \d+/, `#define CONNTRACK_MAP_FLAGS ${OLD_FLAGS}`)
      .replace(/#define CONNTRACK_MAP_MAX \d+/, `#define CONNTRACK_MAP_MAX ${OLD_MAX}`);
    writeFileSync(gen, h);
    await execFileP('bash', [join(checkout, 'bpf/compile.sh'), dir, oldObject], { timeout: 120_000 });
  });
  after(async () => {
    for (const c of children) c.kill('SIGKILL');
    await fx.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  test('established TCP connections (v4 and v6) pass both ways after the upgrade; the map has the new flags', async () => {
    await fx.start({ bpfObject: oldObject });
    assert.deepEqual([pinnedConntrack(fx.pinRoot).flags, pinnedConntrack(fx.pinRoot).maxEntries], [OLD_FLAGS, OLD_MAX], 'the old agent pinned its layout');
    const api = fx.api;
    const [nsA, nsB] = [await fx.netns('a'), await fx.netns('b')];
    const a = await api.call<Workload>('POST', '/v1/workloads', { name: 'a', namespace: 'ctm', labels: { app: 'a' }, netns: `/var/run/netns/${nsA}` });
    const b = await api.call<Workload>('POST', '/v1/workloads', { name: 'b', namespace: 'ctm', labels: { app: 'b' }, netns: `/var/run/netns/${nsB}` });
    await api.call('PUT', '/v1/policies', `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a-from-nobody, namespace: ctm}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEndpoints: [{matchLabels: {app: nobody}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b-from-a, namespace: ctm}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]
`, 'application/yaml');

    // b: every line on its stdin is sent to every connection; it prints the number of answers it got.
    const server = spawn('ip', ['netns', 'exec', nsB, process.execPath, '-e',
      "const cs=[];let n=0;require('net').createServer(c=>{cs.push(c);c.on('error',()=>{});c.on('data',d=>{n+=d.length;process.stdout.write(n+'\\n')})}).listen(9000,'::');" +
      "process.stdin.on('data',()=>{for(const c of cs)c.write('x')})"], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(server);
    let answers = 0;
    server.stdout!.on('data', (d: Buffer) => (answers = Number(d.toString().trim().split('\n').pop())));
    await waitFor('the server', async () => (await status('ip', ['netns', 'exec', nsB, 'sh', '-c', 'ss -ltn | grep -q :9000'])) === 0);
    // a: connections to b over both families; each answers every byte it gets with one byte, and exits
    // when a connection breaks.
    const targets = [b.ipv4, b.ipv4, b.ipv6, b.ipv6];
    const client = spawn('ip', ['netns', 'exec', nsA, process.execPath, '-e',
      `let up=0;for(const h of ${JSON.stringify(targets)}){const s=require('net').connect(9000,h,()=>{if(++up===${targets.length})console.log('up')});` +
      "s.on('data',d=>s.write(Buffer.alloc(d.length,'y')));s.on('error',e=>{console.error('conn error',e.message);process.exit(3)});s.on('close',()=>process.exit(4))}"], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(client);
    let clientUp = false;
    let clientExit: number | null = null;
    client.stdout!.on('data', (d: Buffer) => (clientUp ||= d.toString().includes('up')));
    client.on('exit', (code) => (clientExit = code));
    await waitFor('the connections', async () => clientUp);
    const push = async (want: number, what: string) => {
      server.stdin!.write('go\n');
      await waitFor(what, async () => answers >= want, 15_000);
    };
    await push(targets.length, 'every connection answered before the upgrade');
    const before = pinnedConntrack(fx.pinRoot).count;

    await fx.stop();
    await fx.start();
    const now = pinnedConntrack(fx.pinRoot);
    assert.deepEqual([now.flags, now.maxEntries], [CONNTRACK_MAP_FLAGS, CONNTRACK_MAP_MAX], 'the map has this version\'s layout');
    assert.ok(now.count >= before, `entries carried over (${now.count} now, ${before} before)`);

    // b speaks first on every connection; a answers on each
    await push(2 * targets.length, 'every connection passed both ways after the upgrade');
    await push(3 * targets.length, 'and again');
    assert.equal(clientExit, null, 'no connection broke');
    assert.equal(a.interfaces.host.ifindex, (await api.call<Workload>('GET', '/v1/workloads/ctm/a')).interfaces.host.ifindex);
  });
});
