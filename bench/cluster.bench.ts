// Cluster mode (#14) against one real etcd (Debian's etcd-server) on loopback, with three kitnet hosts
// (agent processes, each in a network namespace of its own: test/helpers/cluster-hosts.ts):
//  (a) identity allocation: 3 allocators in 3 processes (the agent's ClusterIdentityAllocator, each
//      with its own session and node key) allocating new label sets at once, one at a time each;
//      distinct sets per host, and the same sets on all three (lock contention), interleaved per round;
//  (b) propagation: a workload registered on host A -> its entry in host B's pinned BPF ipcache (the
//      bench looks the key up in B's map every millisecond), p50/p99 (target p99 <= 250 ms);
//  (c) ipcache entries of a fake remote node written straight into etcd in Cilium's format: N new ones
//      through B's watch, then rounds of an etcd outage for B (etcd killed, B's way to it blocked by a
//      prohibit route) during which every entry changes identity (or nothing changes), and the time
//      from B's way back to all N in B's map (target <= 5 s for 10,000), with B's own figure (list +
//      judge + apply, from its "followed again" log line);
//  (d) B's RSS with 0 and with N remote entries.
//   node dist/bench/cluster.bench.js [workloads=1000] [--entries=10000] [--alloc=200] [--rounds=3] [--parts=abcd] [--quick]
import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { pino } from 'pino';
import { ipcacheKeyEncode } from '../bpf/maps/ipcache.js';
import { IPCACHE_VALUE } from '../bpf/layout.gen.js';
import { structDecode } from '../bpf/layout.js';
import { native } from '../common/native.js';
import type { Workload } from '../common/schemas/workload.js';
import { etcdClientCreate } from '../agent/cluster/etcd-client.js';
import { ClusterIdentityAllocator } from '../agent/cluster/identity-allocator.js';
import { clusterIdentityRange } from '../agent/cluster/identity-range.js';
import { IPCACHE_PREFIX, ipIdentityPairJson } from '../agent/cluster/ipcache-publisher.js';
import { ClusterSession } from '../agent/cluster/session.js';
import { ClusterHosts, type ClusterHost } from '../test/helpers/cluster-hosts.js';
import { MACHINE_LINE, RUN_ID, argsParse, benchMain, fmt, machine, median, netnsAddMany, netnsDelMany, onCleanup, resultWrite, sh, sleep, stats, table, type Stats } from './lib.js';

const CLUSTER = { name: 'kbench', id: 77 };
const RANGE = clusterIdentityRange(CLUSTER.id);
const POOLS = { ipv4Pool: '10.226.0.0/16', ipv6Pool: 'fd00:226::/64' };
const PROPAGATION_TARGET_P99_MS = 250;
const RESYNC_TARGET_MS = 5000;
/** etcd's default --max-txn-ops. */
const TXN_OPS = 128;
/** The fake remote node the entries of (c) name, and their identities (a few hundred entries each). */
const FAKE_NODE = '198.51.100.77';
const IDENTITIES_PER_SET = 40;

const labelsKey = (app: string) => `k8s:app=${app};k8s:${'io.cilium.k8s.policy.cluster'}=${CLUSTER.name};k8s:io.kubernetes.pod.namespace=kbench;`;
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const range = (s: Stats) => `${fmt(s.p50)} / ${fmt(s.p99)} / ${fmt(s.max)}`;
const mdn = (all: number[]) => {
  const xs = all.filter((x) => !Number.isNaN(x));
  return xs.length ? `${fmt(median(xs))} (${fmt(Math.min(...xs))}-${fmt(Math.max(...xs))})` : '-';
};

// ---- (a) allocator child: one "host" allocating label sets it is told, one at a time ----

interface AllocJob { keys: string[] }
interface AllocDone { ms: number[]; ids: number[]; wallMs: number }

async function allocChild(endpoint: string, nodeSuffix: string): Promise<void> {
  const log = pino({ level: 'silent' });
  const session = await ClusterSession.open(etcdClientCreate({ endpoints: [endpoint] } as never, undefined), log, 60);
  const alloc = new ClusterIdentityAllocator(session, { range: RANGE, nodeSuffix, log });
  process.on('message', (m: AllocJob | 'stop') => {
    if (m === 'stop') {
      void session.close({ revoke: true }).finally(() => process.exit(0));
      return;
    }
    void (async () => {
      const ms: number[] = [];
      const ids: number[] = [];
      const t0 = performance.now();
      for (const key of m.keys) {
        const t = performance.now();
        ids.push((await alloc.acquire(key)).id);
        ms.push(performance.now() - t);
      }
      process.send!({ ms, ids, wallMs: performance.now() - t0 } satisfies AllocDone);
    })();
  });
  process.send!('ready');
}

async function allocationBench(endpoint: string, perHost: number, rounds: number) {
  const self = fileURLToPath(import.meta.url);
  const children = [1, 2, 3].map((i) => fork(self, [`--child=alloc`, `--endpoint=${endpoint}`, `--node=192.0.2.${i}`], { stdio: 'inherit' }));
  const stop = () => Promise.all(children.map((c) => new Promise<void>((done) => {
    if (c.exitCode !== null || c.signalCode !== null) return done();
    c.once('exit', () => done());
    c.send('stop');
    setTimeout(() => c.kill('SIGKILL'), 10_000).unref();
  })));
  onCleanup('allocator processes', stop);
  await Promise.all(children.map((c) => new Promise<void>((resolve, reject) => {
    c.once('message', () => resolve());
    c.once('exit', (code) => reject(new Error(`allocator process exited with ${code}`)));
  })));
  const run = (c: (typeof children)[number], keys: string[]) => new Promise<AllocDone>((resolve) => {
    c.once('message', (m) => resolve(m as AllocDone));
    c.send({ keys } satisfies AllocJob);
  });
  const results: Record<'distinct' | 'shared', { rate: number[]; p50: number[]; p99: number[]; all: number[] }> = {
    distinct: { rate: [], p50: [], p99: [], all: [] },
    shared: { rate: [], p50: [], p99: [], all: [] },
  };
  for (let r = 0; r < rounds; r++) {
    // Alternating order, so neither variant always runs on a warmer etcd.
    const order = r % 2 ? (['shared', 'distinct'] as const) : (['distinct', 'shared'] as const);
    for (const variant of order) {
      const keysOf = (h: number) => Array.from({ length: perHost }, (_, i) => labelsKey(`${RUN_ID}-r${r}-${variant}-${variant === 'shared' ? 's' : h}-${i}`));
      const t = performance.now();
      const done = await Promise.all(children.map((c, h) => run(c, keysOf(h))));
      const wall = performance.now() - t;
      const distinctSets = variant === 'shared' ? perHost : perHost * 3;
      // Same labels -> the same number on every host; different labels -> different numbers.
      const ids = done.flatMap((d) => d.ids);
      const unique = new Set(ids).size;
      if (unique !== distinctSets) throw new Error(`${variant}: ${unique} identities for ${distinctSets} label sets`);
      const ms = done.flatMap((d) => d.ms);
      const s = stats(ms);
      results[variant].rate.push(distinctSets / (wall / 1000));
      results[variant].p50.push(s.p50);
      results[variant].p99.push(s.p99);
      results[variant].all.push(...ms);
    }
  }
  await stop();
  return results;
}

// ---- B's pinned ipcache, looked up from outside ----

class PinnedIpcache {
  private readonly fd: number;
  private readonly value = Buffer.alloc(IPCACHE_VALUE.size);

  constructor(pinRoot: string) {
    const n = native();
    // The hash holds every host entry and is written after the trie: an entry found there is complete.
    this.fd = n.objGet(`${pinRoot}/maps/ipcache_exact`);
  }

  identity(ip: string): number | undefined {
    const key = ipcacheKeyEncode(ip.includes(':') ? `${ip}/128` : `${ip}/32`);
    if (!native().mapLookup(this.fd, key, this.value)) return undefined;
    return structDecode(IPCACHE_VALUE, this.value).identity as number;
  }

  close(): void {
    native().fdClose(this.fd);
  }
}

/** Resolves when `check` holds, looked at every `everyMs`; the time it first held (performance.now()). */
async function until(what: string, check: () => boolean, timeoutMs: number, everyMs = 1): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (check()) return performance.now();
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

function rssMb(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

/** RSS once it stopped moving (the agent's heap settles a few seconds after a burst): min of 5 samples over 5 s. */
async function rssSettled(pid: number): Promise<{ rss: number; hwm: number }> {
  const samples: Array<{ rss: number; hwm: number }> = [];
  for (let i = 0; i < 5; i++) {
    await sleep(1000);
    samples.push(rssMb(pid));
  }
  return { rss: Math.min(...samples.map((s) => s.rss)), hwm: samples.at(-1)!.hwm };
}

// ---- (c) remote entries in Cilium's format ----

const fakeIp = (i: number) => `10.227.${(i >> 8) & 0xff}.${i & 0xff}`;
/** The fake node's identities, two sets (an outage round moves every entry to the other set). */
const fakeIds: number[][] = [[], []];
const idOf = (set: number, i: number) => fakeIds[set]![i % IDENTITIES_PER_SET]!;

/** The fake node allocates its identities as a Cilium agent would (master, value and lock keys). */
async function fakeIdentitiesAllocate(endpoint: string): Promise<() => Promise<void>> {
  const session = await ClusterSession.open(etcdClientCreate({ endpoints: [endpoint] } as never, undefined), pino({ level: 'silent' }), 60);
  const alloc = new ClusterIdentityAllocator(session, { range: RANGE, nodeSuffix: FAKE_NODE, log: pino({ level: 'silent' }) });
  for (const set of [0, 1]) {
    for (let i = 0; i < IDENTITIES_PER_SET; i++) fakeIds[set]!.push((await alloc.acquire(labelsKey(`remote-${RUN_ID}-${set}-${i}`))).id);
  }
  return () => session.close({ revoke: true });
}

async function txnPuts(client: Etcd3, kvs: Array<[string, string]>): Promise<void> {
  for (let i = 0; i < kvs.length; i += TXN_OPS) {
    await client.kv.txn({ success: kvs.slice(i, i + TXN_OPS).map(([k, v]) => ({ request_put: { key: Buffer.from(k), value: Buffer.from(v) } })) });
  }
}

/** N entries of the fake node, identity set `set`. */
async function entriesWrite(client: Etcd3, n: number, set: number): Promise<void> {
  await txnPuts(client, Array.from({ length: n }, (_, i) => [`${IPCACHE_PREFIX}/${fakeIp(i)}`, ipIdentityPairJson({ ip: fakeIp(i), hostIP: FAKE_NODE, id: idOf(set, i), namespace: 'kbench', podName: `remote-${i}` })]));
}

/** B's internal figure for its last relist of the ipcache (ms, keys), from its "followed again" log line. */
function relistLogged(b: ClusterHost, after: number): { ms: number; keys: number } | undefined {
  const lines = b.logged(/cluster prefix followed again/).filter((o) => typeof o.prefix === 'string' && o.prefix.startsWith(IPCACHE_PREFIX) && Number(o.time) >= after);
  const o = lines.at(-1);
  return o && typeof o.ms === 'number' ? { ms: o.ms, keys: Number(o.keys) } : undefined;
}

async function main(): Promise<void> {
  const args = argsParse();
  if (args.opts.child === 'alloc') return allocChild(args.opts.endpoint!, args.opts.node!);
  const quick = args.quick;
  const workloads = args.sizes[0] ?? (quick ? 40 : 1000);
  const entries = Number(args.opts.entries ?? (quick ? 1000 : 10_000));
  const perHost = Number(args.opts.alloc ?? (quick ? 30 : 200));
  const rounds = Number(args.opts.rounds ?? (quick ? 1 : 3));
  /** --parts=abcd: which of (a)-(d) run ((c) and (d) go together). */
  const parts = args.opts.parts ?? 'abcd';
  const out: Record<string, unknown> = {};
  const loads: string[] = [loadavg()];
  console.log(`cluster bench: ${workloads} workloads, ${entries} remote entries, ${perHost} label sets per host, ${rounds} rounds; ${MACHINE_LINE()}`);

  const hosts = new ClusterHosts({ tag: 'kbcl', hosts: 3, cluster: { ...CLUSTER, leaseTTLSeconds: 30 }, ...POOLS });
  onCleanup('cluster hosts', () => hosts.cleanup());
  await hosts.setup();
  // Node CIDRs of /21 (Cilium's default /24 holds 254 workloads; (b) registers up to a few thousand on A).
  for (const h of hosts.hosts) {
    const base = h.config.bind(h);
    h.config = () => {
      const c = base();
      return { ...c, cluster: { ...c.cluster!, ipam: { ipv4MaskSize: 21, ipv6MaskSize: 112 } } };
    };
  }
  const etcd = hosts.etcd!;
  // The agents log at info: the bench reads B's relist figure from there (cluster-hosts keeps the lines).
  await Promise.all(hosts.hosts.map((h) => h.start()));
  const [a, b] = hosts.hosts as [ClusterHost, ClusterHost, ClusterHost];
  const client = new Etcd3({ hosts: etcd.endpoint });
  onCleanup('bench etcd client', () => client.close());

  if (parts.includes('a')) {
    // (a)
    console.log(`\n(a) identity allocation: 3 processes x ${perHost} new label sets, ${rounds} round(s)`);
    const alloc = await allocationBench(etcd.endpoint, perHost, rounds);
    loads.push(loadavg());
    table('(a) identity allocation, 3 hosts at once, one at a time each — median (min-max) over rounds', ['label sets', 'new sets/s', 'p50 ms', 'p99 ms', 'all rounds p50 / p99 / max ms'], (['distinct', 'shared'] as const).map((v) => [
      v === 'distinct' ? 'distinct per host' : 'same on all 3',
      mdn(alloc[v].rate), mdn(alloc[v].p50), mdn(alloc[v].p99), range(stats(alloc[v].all)),
    ]));
    out.allocation = Object.fromEntries((['distinct', 'shared'] as const).map((v) => [v, { ratePerS: alloc[v].rate, p50Ms: alloc[v].p50, p99Ms: alloc[v].p99, all: stats(alloc[v].all) }]));
  }

  const bMap = new PinnedIpcache(b.pinRoot);
  onCleanup('B ipcache fd', () => bMap.close());

  if (/[cd]/.test(parts)) {
    // (d) baseline, then (c) entries through the watch
    onCleanup('fake node session', await fakeIdentitiesAllocate(etcd.endpoint));
    const rss0 = await rssSettled(b.proc!.pid!);
    console.log(`\n(c) ${entries} entries of a remote node written into etcd (${TXN_OPS} per transaction)`);
    const tw = performance.now();
    await entriesWrite(client, entries, 0);
    const written = performance.now();
    const last = fakeIp(entries - 1);
    const inMap = await until(`the last entry in B's ipcache`, () => bMap.identity(last) === idOf(0, entries - 1), 120_000, 5);
    for (let i = 0; i < entries; i++) if (bMap.identity(fakeIp(i)) !== idOf(0, i)) throw new Error(`entry ${fakeIp(i)} missing in B's ipcache`);
    const watchMs = { write: written - tw, toMap: inMap - tw, afterWrite: inMap - written };
    const rssN = await rssSettled(b.proc!.pid!);
    loads.push(loadavg());

    // (c) outage rounds: changed (every entry gets another identity) and unchanged, interleaved
    const etcdHost = new URL(etcd.endpointAlso!).hostname;
    const resync: Record<'changed' | 'unchanged', { outside: number[]; inside: number[] }> = { changed: { outside: [], inside: [] }, unchanged: { outside: [], inside: [] } };
    let set = 0;
    const blocked = async (on: boolean) => sh('ip', ['-n', b.netns, 'route', on ? 'add' : 'del', 'prohibit', `${etcdHost}/32`]);
    onCleanup('B unblocked', () => blocked(false).catch(() => undefined));
    for (let r = 0; r < rounds; r++) {
      for (const variant of r % 2 ? (['unchanged', 'changed'] as const) : (['changed', 'unchanged'] as const)) {
        await blocked(true);
        const outageAt = Date.now();
        await etcd.restart(); // B's connection drops; its relists fail on the route until unblocked
        if (variant === 'changed') {
          set = set === 0 ? 1 : 0;
          await entriesWrite(client, entries, set);
        }
        const t0 = performance.now();
        await blocked(false);
        const want = set;
        // Complete = every entry has its new identity (B applies a list in one batch; a failed batch is listed again).
        const stale = () => Array.from({ length: entries }, (_, i) => i).filter((i) => bMap.identity(fakeIp(i)) !== idOf(want, i));
        const done = variant === 'changed'
          ? await until('every entry with its new identity in B\'s ipcache', () => bMap.identity(last) === idOf(want, entries - 1) && stale().length === 0, 120_000, 5)
          : await until('B\'s relist after the outage', () => relistLogged(b, outageAt) !== undefined, 120_000, 5);
        // Warnings other than the outage itself (a batch not applied, entries ignored).
        const complaints = b.logLines.filter((l) => /"level":(4|5)0/.test(l) && /ipcache/.test(l) && !/watch broken|cannot list/.test(l) && Number(/"time":(\d+)/.exec(l)?.[1]) >= outageAt);
        if (complaints.length) console.log(`  B logged while resyncing:\n    ${complaints.slice(0, 5).map((l) => l.slice(0, 400)).join('\n    ')}`);
        resync[variant].outside.push(done - t0);
        const logged = await until('B\'s relist log line', () => relistLogged(b, outageAt) !== undefined, 30_000, 20).then(() => relistLogged(b, outageAt)!);
        resync[variant].inside.push(logged.ms);
        console.log(`  round ${r + 1} ${variant}: ${fmt(done - t0)} ms from B's way back to its ipcache complete; B's list + apply ${fmt(logged.ms)} ms (${logged.keys} keys)`);
      }
    }
    loads.push(loadavg());
    table(`(c) ${entries} remote ipcache entries in B (target after a reconnect <= ${RESYNC_TARGET_MS} ms)`, ['what', 'ms'], [
      [`${entries} new entries written (${Math.ceil(entries / TXN_OPS)} transactions)`, fmt(watchMs.write)],
      ['  from the first write to all in B\'s map (through the watch)', fmt(watchMs.toMap)],
      ['  of which after the last write', fmt(watchMs.afterWrite)],
      ...(['changed', 'unchanged'] as const).flatMap((v) => [
        [v === 'changed' ? 'reconnect, every entry\'s identity changed: way back -> all in B\'s map' : 'reconnect, nothing changed: way back -> B relisted', mdn(resync[v].outside)],
        ['  B\'s own list + judge + apply', mdn(resync[v].inside)],
      ]),
    ]);
    table('(d) B\'s agent RSS (settled: min of 5 samples over 5 s)', ['remote entries', 'VmRSS MB', 'VmHWM MB'], [
      [0, fmt(rss0.rss), fmt(rss0.hwm)],
      [entries, fmt(rssN.rss), fmt(rssN.hwm)],
      ['difference per entry', `${fmt(((rssN.rss - rss0.rss) * 1024 * 1024) / entries)} B`, ''],
    ]);
    // The entries go: B's map is back to its own for (b).
    await client.delete().prefix(`${IPCACHE_PREFIX}/10.227.`).exec();
    await until('the remote entries out of B\'s ipcache', () => bMap.identity(last) === undefined, 120_000, 10);
    out.remoteEntries = { watchMs, resyncMs: resync, targetMs: RESYNC_TARGET_MS };
    out.rss = { zero: rss0, withEntries: rssN, bytesPerEntry: ((rssN.rss - rss0.rss) * 1024 * 1024) / entries };
  }

  if (parts.includes('b')) {
    // (b) propagation
    console.log(`\n(b) propagation: ${workloads} workloads registered on A, one after the other, each in its own namespace`);
    const names = Array.from({ length: workloads }, (_, i) => `kb-cl-${RUN_ID}-${i}`);
    onCleanup('workload namespaces', () => netnsDelMany(names));
    onCleanup('A\'s workloads', async () => {
      for (const w of await a.api.call<Workload[]>('GET', '/v1/workloads').catch(() => [] as Workload[])) await a.api.call('DELETE', `/v1/workloads/${w.namespace}/${w.name}`).catch(() => undefined);
    });
    await netnsAddMany(names);
    // The bench's own watch on loopback: when A's entry reached etcd. B's map is looked at from then on
    // (not from A's answer: B often has the entry before A's POST returns).
    const pending = new Map<string, { inEtcd: number; posted: number; identity: number; round: number }>();
    const seen: Array<{ round: number; etcdToB: number; registerToB: number }> = [];
    let posting = { at: NaN, round: 0 };
    const watcher = await client.watch().prefix(`${IPCACHE_PREFIX}/`).create();
    watcher.on('put', (kv) => {
      const ip = kv.key.toString().slice(IPCACHE_PREFIX.length + 1);
      const v = JSON.parse(kv.value.toString()) as { HostIP: string; ID: number };
      if (v.HostIP === a.nodeIPv4 && !ip.includes(':')) pending.set(ip, { inEtcd: performance.now(), posted: posting.at, identity: v.ID, round: posting.round });
    });
    onCleanup('bench watch', () => watcher.cancel().catch(() => undefined));
    let polling = true;
    onCleanup('B\'s ipcache poller', () => {
      polling = false;
      pending.clear();
    });
    const poller = (async () => {
      while (polling || pending.size) {
        for (const [ip, p] of pending) {
          if (bMap.identity(ip) !== p.identity) continue;
          const now = performance.now();
          pending.delete(ip);
          seen.push({ round: p.round, etcdToB: now - p.inEtcd, registerToB: now - p.posted });
        }
        await sleep(1);
      }
    })();
    const postMs: number[] = [];
    const perRound = Math.ceil(workloads / rounds); // the last round may be short (or empty: '-')
    for (const [i, ns] of names.entries()) {
      posting = { at: performance.now(), round: Math.floor(i / perRound) };
      await a.api.call<Workload>('POST', '/v1/workloads', { name: `w${i}`, namespace: 'kbench', netns: `/var/run/netns/${ns}`, labels: { app: `p${i % 10}` } });
      postMs.push(performance.now() - posting.at);
    }
    await until(`all ${workloads} workloads in B's ipcache`, () => seen.length >= workloads, 60_000, 10).catch((err: unknown) => {
      throw new Error(`${(err as Error).message}: ${seen.length} seen, ${pending.size} pending`);
    });
    polling = false;
    await poller;
    loads.push(loadavg());
    const regToB = stats(seen.map((s) => s.registerToB));
    const etcdToB = stats(seen.map((s) => s.etcdToB));
    const roundsP99 = Array.from({ length: rounds }, (_, r) => stats(seen.filter((s) => s.round === r).map((s) => s.etcdToB)).p99);
    table(`(b) A -> B's BPF ipcache, ${seen.length} workloads (target p99 <= ${PROPAGATION_TARGET_P99_MS} ms)`, ['ms', 'p50', 'p99', 'max', 'p99 per ' + `${perRound} (median, min-max)`], [
      ['POST on A (registration)', fmt(stats(postMs).p50), fmt(stats(postMs).p99), fmt(stats(postMs).max), ''],
      ['POST sent -> in B\'s map', fmt(regToB.p50), fmt(regToB.p99), fmt(regToB.max), mdn(Array.from({ length: rounds }, (_, r) => stats(seen.filter((s) => s.round === r).map((s) => s.registerToB)).p99))],
      ['seen by a loopback watch -> in B\'s map', fmt(etcdToB.p50), fmt(etcdToB.p99), fmt(etcdToB.max), mdn(roundsP99)],
    ]);
    out.propagation = { postMs: stats(postMs), registerToBMs: regToB, etcdToBMs: etcdToB, roundsEtcdToBP99Ms: roundsP99, targetP99Ms: PROPAGATION_TARGET_P99_MS };
  }

  console.log(`\nload average during the run (1/5/15 min): ${loads.join(' -> ')}`);

  resultWrite(quick ? 'cluster-quick' : 'cluster', {
    sizes: { workloads, entries, allocPerHost: perHost, rounds, parts },
    loadavg: loads,
    ...out,
    machineAtEnd: machine(),
  });
}

await benchMain(main);
