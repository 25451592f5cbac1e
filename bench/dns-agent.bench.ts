// DNS proxy inside a real agent (issue #17: p99 added <= 2 ms at 5,000 lookups/s on one core): the
// latency a lookup gains when the datapath steers it through the agent's proxy, with everything the
// agent does per lookup (query verdict from the compiled policy, learning into FQDN identities, policy
// and ipcache maps, the answer released only after that), against the same lookups sent directly.
//
// Two veth workloads of one in-process agent; a DNS server in its own process on a host address
// (on the host's loopback). Workload A has a DNS rule (steered, *.bench.test allowed, toFQDNs *.bench.test);
// workload B has no policy (not steered: direct). Each phase is an open-loop load generator in the
// workload's namespace (its own process) sending RATE lookups/s for S seconds; each phase asks for
// names of its own (N distinct, cycled), so the first N lookups of a proxy phase teach new addresses
// (map writes) and the rest refresh known ones. Per round: a direct phase and a proxy phase; with
// --ab the variants (built trees) take turns round by round, each round a fresh agent.
//
//   node dist/bench/dns-agent.bench.js [rate=5000] [--secs=3] [--rounds=5] [--names=1000] [--warmup=2]
//        [--ab=/path/to/before/dist,/path/to/after/dist] [--profile] [--heap] [--survivors] [--timeline] [--floor]
//        [--upstream=node|c] [--fast=on|off|on,off]
//
// --upstream: the DNS server both paths ask, a Node process (default, the figures of bench/README §8 up
// to 2026-12-07) or bench/dns-upstream.c (compiled with cc; the same answers), as light as a real
// resolver: on two cores the server's own CPU and collections are latency both paths share.
// --floor: each round also sends the direct workload's lookups through a bare UDP relay in a process of
// its own (after the proxy phase): what any userspace hop adds on this machine, the floor of the
// proxy's added latency; and through dnsmasq as a plain forwarder (no cache, one upstream socket),
// the same hop written in C: what of the floor is Node's. node's own flags (e.g. V8's) are passed on
// to the rounds' processes.
//
// --warmup=S: before measuring, both paths run S seconds at RATE with names of their own (0: the fresh
// agent's code is measured while V8 still compiles it: its first ~1,000 lookups run interpreted, a
// start-up cost, not the proxy's steady one; both are in bench/README.md). The measured phase still
// starts with N names new to the agent. --timeline prints the proxy phase's latency per 100 ms, with the
// agent's young collections that began in each window. --heap
// samples what the agent allocates during the proxy phase (bytes a lookup; its latencies are then not
// comparable with runs without it); --profile takes a CPU profile of it. --survivors (with node
// --expose-gc) samples what outlives a young collection from 1.5 s into the proxy phase to its end:
// what each collection copies, most of its pause (bench/results/*.survivors.heapprofile).
//
// The agent's CPU per lookup is its process's CPU time during a phase (one thread: the proxy, the
// policy engine, the flow pipeline, everything of the agent) over the lookups answered: CPU time, so
// it holds on a loaded machine where latencies do not; 5,000 lookups/s on one core needs <= 200 µs.
// "added p99, names asked before": the same over the lookups after the first pass over the names (no new
// address to write into the maps before the answer is released).
// "agent thread waiting for a CPU": the time the agent's thread spent woken but not yet running during
// a phase (/proc/thread-self/schedstat); a lookup that arrives then waits as long. On this VM the long
// waits often come with both vCPUs idle (bench/README.md §8, `perf sched`).
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { constants as perfConstants, PerformanceObserver } from 'node:perf_hooks';
import type { NodeGCPerformanceDetail, PerformanceObserverEntryList } from 'node:perf_hooks';
import { MACHINE_LINE, REPO_ROOT, RUN_ID, argsParse, benchMain, heapSampled, heapSurvivors, median, netnsAddMany, netnsDelMany, onCleanup, profiled, resultWrite, sh, stats, table, threadSched, threadSchedSince } from './lib.js';
import type { Stats, ThreadSched } from './lib.js';
import { launcherStart, type Launcher } from './launcher.js';
import type * as BpfModule from '../bpf/index.js';
import type * as ApiClientModule from '../common/api-client.js';
import type * as DaemonModule from '../main/daemon.js';

const HERE = fileURLToPath(import.meta.url);
const OWN_DIST = resolve(dirname(HERE), '..');
const SERVER = '10.247.255.53';
/** The bare relay's address (--floor), also on the host's loopback. */
const RELAY = '10.247.255.54';
/** dnsmasq's, forwarding (--floor). */
const RELAY_C = '10.247.255.55';
const ZONE = 'bench.test';
/** A thread's wait for a CPU over a phase, ms; and per time it was switched in, µs. */
const waitMs = (t: ThreadSched) => t.waitNs / 1e6;
const waitUs = (t: ThreadSched) => t.waitNs / 1e3 / Math.max(1, t.slices);

// ---- the DNS server (child process): every name gets an address of its own, TTL 60 ----------------

function upstreamServe(address: string): void {
  const byName = new Map<string, number>();
  // A large receive buffer: this server must not be where lookups are lost.
  const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  s.on('message', (m, r) => {
    // Question name from offset 12 (no compression in queries); the reply echoes the question.
    let o = 12;
    const labels: string[] = [];
    while (m[o]! > 0 && o < m.length) {
      labels.push(m.subarray(o + 1, o + 1 + m[o]!).toString('latin1'));
      o += 1 + m[o]!;
    }
    const qend = o + 5;
    const name = labels.join('.').toLowerCase();
    let n = byName.get(name);
    if (n === undefined) byName.set(name, (n = byName.size + 1));
    const head = Buffer.from(m.subarray(0, 12));
    head.writeUInt16BE(0x8180, 2);
    head.writeUInt16BE(1, 4);
    head.writeUInt16BE(1, 6);
    head.writeUInt32BE(0, 8);
    const rr = Buffer.from([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18 + (n >> 16), (n >> 8) & 255, n & 255]);
    s.send(Buffer.concat([head, m.subarray(12, qend), rr]), r.port, r.address);
  });
  s.bind(53, address, () => console.log('ready'));
}

// ---- the floor (child process): the least a userspace hop can add ---------------------------------

/**
 * A bare UDP relay (--floor): one socket for the workloads, one connected to the server, the query id
 * as the only state; no policy, no steering, no learning. What it adds to a direct lookup is what any
 * proxy written in Node pays on this machine for its extra process wake-ups and its two sends.
 */
function relayServe(listen: string, upstream: string): void {
  const clients = new Map<number, dgram.RemoteInfo>();
  const down = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  const up = dgram.createSocket({ type: 'udp4', recvBufferSize: 4 << 20 });
  down.on('message', (m, r) => {
    clients.set(m.readUInt16BE(0), r);
    up.send(m);
  });
  up.on('message', (m) => {
    const id = m.readUInt16BE(0);
    const r = clients.get(id);
    if (r === undefined) return;
    clients.delete(id);
    down.send(m, r.port, r.address);
  });
  up.connect(53, upstream, () => down.bind(53, listen, () => console.log('ready')));
}

/**
 * The same hop in C (--floor): dnsmasq forwarding every query (no cache, no hosts, no config file) from
 * one fixed upstream socket (--query-port=0: one OS-chosen port, as the Node relay's one connected
 * socket). Resolves once it answers a query.
 */
async function relayCStart(listen: string, upstream: string): Promise<() => void> {
  const d = spawn('dnsmasq', ['--keep-in-foreground', '--conf-file=/dev/null', '--no-resolv', '--no-hosts', '--cache-size=0', `--server=${upstream}`, `--listen-address=${listen}`, '--bind-interfaces', '--port=53', '--query-port=0', '--dns-forward-max=10000', '--user=root', '--pid-file'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const exited = new Promise<never>((_, reject) => {
    d.once('error', (e) => reject(new Error(`dnsmasq (the C relay of --floor) did not start: ${e.message}; scripts/setup.sh installs dnsmasq-base`)));
    d.once('exit', (code, signal) => reject(new Error(`dnsmasq (the C relay of --floor) exited (${code ?? signal}) before answering`)));
  });
  exited.catch(() => undefined);
  const stop = () => void d.kill('SIGKILL');
  const probe = dgram.createSocket('udp4');
  try {
    const answered = new Promise<void>((r) => probe.once('message', () => r()));
    for (let i = 0; ; i++) {
      if (i === 100) throw new Error(`dnsmasq (the C relay of --floor) did not answer on ${listen}:53 within 5 s`);
      probe.send(query(i, `probe.${ZONE}`), 53, listen);
      const waited = await Promise.race([answered.then(() => true), exited, new Promise<false>((r) => setTimeout(() => r(false), 50))]);
      if (waited) return stop;
    }
  } catch (e) {
    stop();
    throw e;
  } finally {
    probe.close();
  }
}

// ---- the load generator (child process in a workload's namespace) --------------------------------

/** How long the generator waits between building its queries and sending the first. */
const GENERATOR_SETTLE_MS = 300;

function query(id: number, name: string): Buffer {
  const parts = [Buffer.from([id >> 8, id & 255, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0])];
  for (const l of name.split('.')) parts.push(Buffer.from([l.length]), Buffer.from(l, 'latin1'));
  parts.push(Buffer.from([0, 0, 1, 0, 1]));
  return Buffer.concat(parts);
}

/**
 * Open loop: lookup k is sent at start + k/rate whatever the answers do; prints the phase's PhaseResult
 * (repeated: the lookups k >= names, of names asked before in the phase).
 */
function loadgen(server: string, rate: number, secs: number, prefix: string, names: number): void {
  const s = dgram.createSocket('udp4');
  const sent = new Map<number, number>();
  const sentK = new Map<number, number>();
  const lat: number[] = [];
  const repeated: number[] = [];
  const at: number[] = [];
  let lost = 0;
  s.on('message', (m) => {
    const id = m.readUInt16BE(0);
    const t0 = sent.get(id);
    if (t0 === undefined) return;
    sent.delete(id);
    const ms = performance.now() - t0;
    lat.push(ms);
    if (sentK.get(id)! >= names) repeated.push(ms);
    at.push(t0 - start);
  });
  const total = Math.round(rate * secs);
  // Every query is built before the clock starts, and the first is sent once this process has settled:
  // the generator's own start (node starting, its code compiling, building the queries) must not
  // compete with the agent for the two cores during the phase's first lookups. Both phases, direct and
  // proxied, use the same generator.
  const queries = Array.from({ length: total }, (_, i) => query(i & 0xffff, `${prefix}-n${i % names}.${ZONE}`));
  let k = 0;
  let start = 0;
  const tick = () => {
    const due = Math.min(total, Math.floor(((performance.now() - start) * rate) / 1000) + 1);
    for (; k < due; k++) {
      const id = k & 0xffff;
      if (sent.has(id)) lost++; // 65,536 lookups ago and still unanswered
      sent.set(id, performance.now());
      sentK.set(id, k);
      s.send(queries[k]!, 53, server);
    }
    // A 1 ms timer, not setImmediate: a spinning loader would take the core the agent needs.
    if (k < total) setTimeout(tick, 1);
    else setTimeout(() => {
      lost += sent.size;
      const unanswered = [...sent.values()].map((t) => Math.round(t - start)).sort((a, b) => a - b);
      const worst = lat.map((l, i) => [Math.round(at[i]!), Math.round(l * 10) / 10]).sort((a, b) => b[1]! - a[1]!).slice(0, 8);
      // Per 100 ms of sending: [ms, lookups, p50, p99, max] (where in the phase the tail comes from).
      const byWindow = new Map<number, number[]>();
      for (const [i, l] of lat.entries()) {
        const w = Math.floor(at[i]! / 100);
        (byWindow.get(w) ?? byWindow.set(w, []).get(w)!).push(l);
      }
      const r1 = (x: number) => Math.round(x * 10) / 10;
      const timeline = [...byWindow].sort((a, b) => a[0] - b[0]).map(([w, ls]) => {
        ls.sort((a, b) => a - b);
        return [w * 100, ls.length, r1(ls[ls.length >> 1]!), r1(ls[Math.min(ls.length - 1, Math.ceil(ls.length * 0.99) - 1)]!), r1(ls[ls.length - 1]!)];
      });
      // Only the figures go back: the latencies themselves stay in this process, out of the agent's heap.
      const result: PhaseResult = { stats: stats(lat), repeated: stats(repeated), lost, n: lat.length, worst, timeline, unanswered: [unanswered[0]!, unanswered[unanswered.length >> 1]!, unanswered[unanswered.length - 1]!], startWallMs: performance.timeOrigin + start };
      process.stdout.write(JSON.stringify(result));
      s.close();
    }, 2000);
  };
  s.bind(0, () =>
    setTimeout(() => {
      start = performance.now();
      tick();
    }, GENERATOR_SETTLE_MS),
  );
}

// ---- one round of one variant (child process: a fresh agent from the variant's tree) --------------

/** worst: the slowest lookups as [ms after the phase started, latency ms]. */
interface PhaseResult { stats: Stats; repeated: Stats; lost: number; n: number; worst: number[][]; timeline: number[][]; unanswered: number[]; startWallMs: number }
/**
 * The agent's young-generation collections during the proxy phase: how many, median and longest pause
 * (ms); youngAt: each one's start (wall clock, ms) and pause, to set against the phase's timeline.
 */
interface GcStats { young: number; youngP50: number; youngMax: number; youngMs: number; other: number; youngAt: Array<[number, number]> }
/** allocatedPerLookup (--heap): bytes the agent's process allocated during the proxy phase over the lookups answered. */
/**
 * agentSched: the agent's thread on the scheduler during the direct and the proxy phase (threadSched):
 * the time it waited for a CPU once woken is latency the lookups it serves gain whatever the code does.
 */
interface RoundResult { direct: PhaseResult; relay?: PhaseResult; relayC?: PhaseResult; proxy: PhaseResult; agentSched: { direct: ThreadSched; proxy: ThreadSched }; proxyAgentCpu: number; proxyFaults: number; agentUsPerLookup: { proxy: number; direct: number }; rcodes: Record<string, number>; gc: GcStats; allocatedPerLookup?: number; survivedPerLookup?: number }

/** Runs fn, recording the garbage collections of this process meanwhile (the agent's thread pauses for each). */
async function gcDuring<T>(fn: () => Promise<T>): Promise<[T, GcStats]> {
  const young: number[] = [];
  const youngAt: Array<[number, number]> = [];
  let other = 0;
  const take = (entries: ReturnType<PerformanceObserverEntryList['getEntries']>) => {
    for (const e of entries) {
      if ((e.detail as NodeGCPerformanceDetail | undefined)?.kind === perfConstants.NODE_PERFORMANCE_GC_MINOR) {
        young.push(e.duration);
        youngAt.push([performance.timeOrigin + e.startTime, e.duration]);
      } else other++;
    }
  };
  const obs = new PerformanceObserver((list) => take(list.getEntries()));
  obs.observe({ entryTypes: ['gc'] });
  try {
    const r = await fn();
    // Entries are delivered later than they happen: the last ones of the phase are still queued.
    take(obs.takeRecords());
    young.sort((a, b) => a - b);
    return [r, { young: young.length, youngP50: young[young.length >> 1] ?? 0, youngMax: young.at(-1) ?? 0, youngMs: young.reduce((a, b) => a + b, 0), other, youngAt }];
  } finally {
    obs.disconnect();
  }
}

async function runLoad(launcher: Launcher, ns: string, rate: number, secs: number, prefix: string, names: number, server = SERVER): Promise<PhaseResult> {
  const out = await launcher.run('ip', ['netns', 'exec', ns, process.execPath, HERE, '--loadgen', server, String(rate), String(secs), prefix, String(names)], { timeoutMs: (secs + 30) * 1000 });
  return JSON.parse(out) as PhaseResult;
}

async function round(tree: string, tag: string, rate: number, secs: number, names: number, warmupSecs: number, profile: boolean, heap: boolean, floor: boolean, survivors = false, fastPath = true): Promise<RoundResult> {
  // The generators start from a helper started now, not from this process once the agent is in it (launcher.ts).
  const launcher = launcherStart();
  onCleanup('launcher', () => launcher.stop());
  const { daemonRun } = (await import(pathToFileURL(join(tree, 'main', 'daemon.js')).href)) as typeof DaemonModule;
  const { ApiClient } = (await import(pathToFileURL(join(tree, 'common', 'api-client.js')).href)) as typeof ApiClientModule;
  const { datapathUnpinAll } = (await import(pathToFileURL(join(tree, 'bpf', 'index.js')).href)) as typeof BpfModule;
  const dir = mkdtempSync(join(tmpdir(), `kitnet-bench-${tag}-`));
  const pinRoot = `/sys/fs/bpf/kitnet-bench-${tag}-${RUN_ID}`;
  const socket = join(dir, 'kitnet.sock');
  const nss = [0, 1].map((i) => `kb-${tag}-${RUN_ID}-${i}`);
  onCleanup('state dir', () => rmSync(dir, { recursive: true, force: true }));
  onCleanup('pins', () => datapathUnpinAll(pinRoot));
  onCleanup('namespaces', () => netnsDelMany(nss));
  await netnsAddMany(nss);
  const daemon = await daemonRun({
    overrides: {
      stateDir: join(dir, 'state'), bpfPinRoot: pinRoot, logLevel: 'error', nodeName: 'bench', api: { socket },
      ipam: { ipv4Pool: '10.247.0.0/24', ipv6Pool: 'fd00:247::/64' }, datapath: { mode: 'veth' },
      // Only when off: a tree from before the fast path has no such key (its config is strict).
      ...(fastPath ? {} : { dns: { proxy: { fastPath: false } } }),
    },
  });
  onCleanup('agent', () => daemon.stop());
  const api = new ApiClient({ socket });
  const ns = 'benchdns';
  for (const [i, n] of nss.entries()) {
    await api.call('POST', '/v1/workloads', { name: `w${i}`, namespace: ns, labels: { app: `w${i}` }, netns: `/var/run/netns/${n}` });
  }
  onCleanup('workloads', async () => {
    for (const i of [0, 1]) await api.call('DELETE', `/v1/workloads/${ns}/w${i}`).catch(() => undefined);
  });
  await api.call('PUT', '/v1/policies', `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: ${ns}}
spec:
  endpointSelector: {matchLabels: {app: w0}}
  egress:
    - toFQDNs: [{matchPattern: "*.${ZONE}"}]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
    - toEntities: [host]
      toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*.${ZONE}"}]}}]
`, 'application/yaml');
  // Warm-up: both paths answer (the proxy's first lookups compile nothing new); with --warmup, both run
  // at the measured rate first, on names of their own, so V8 has compiled the hot paths.
  await runLoad(launcher, nss[1]!, 200, 0.5, `${tag}-warm`, 50);
  await runLoad(launcher, nss[0]!, 200, 0.5, `${tag}-warm`, 50);
  if (warmupSecs > 0) {
    await runLoad(launcher, nss[1]!, rate, warmupSecs, `${tag}-warm2`, names);
    await runLoad(launcher, nss[0]!, rate, warmupSecs, `${tag}-warm2`, names);
  }
  const cpuD0 = process.cpuUsage();
  const schedD0 = threadSched();
  const direct = await runLoad(launcher, nss[1]!, rate, secs, `${tag}-d`, names);
  const schedDirect = threadSchedSince(schedD0);
  const cpuD = process.cpuUsage(cpuD0);
  const cpu0 = process.cpuUsage();
  const sched0 = threadSched();
  const faults0 = process.resourceUsage().minorPageFault;
  const t0 = performance.now();
  // --survivors: from 1.5 s into the phase (past the generator's start and the first pass over the names).
  const [[[proxy, allocated], survived], gc] = await gcDuring(() => heapSurvivors(survivors, `dns-agent-${tag}`, 1500, () => heapSampled(heap, `dns-agent-${tag}`, () => profiled(profile, `dns-agent-${tag}`, () => runLoad(launcher, nss[0]!, rate, secs, `${tag}-p`, names)))));
  const cpu = process.cpuUsage(cpu0);
  const schedProxy = threadSchedSince(sched0);
  const proxyFaults = process.resourceUsage().minorPageFault - faults0;
  const proxyAgentCpu = (cpu.user + cpu.system) / 1000 / (performance.now() - t0);
  // The same workload as the direct phase (not steered), through the bare relay and dnsmasq, each after
  // a warm-up of its own; after the proxy phase: the agent idles through them, and an idle agent's V8
  // may shrink its young generation (a proxy phase after them would take ~6x the collections).
  const relayPhase = async (address: string, name: string) => {
    if (warmupSecs > 0) await runLoad(launcher, nss[1]!, rate, warmupSecs, `${tag}-warm2${name}`, names, address);
    return runLoad(launcher, nss[1]!, rate, secs, `${tag}-${name}`, names, address);
  };
  const relay = floor ? await relayPhase(RELAY, 'r') : undefined;
  const relayC = floor ? await relayPhase(RELAY_C, 'c') : undefined;
  // CPU time, not wall time: what one lookup costs the agent's process whatever else the machine runs
  // (in the direct phase the agent only sees the packets' flow events).
  const agentUsPerLookup = { proxy: (cpu.user + cpu.system) / Math.max(1, proxy.n), direct: (cpuD.user + cpuD.system) / Math.max(1, direct.n) };
  // What the proxy answered (Hubble's DNS response counter, by rcode): a refused lookup is fast and proves nothing.
  const text = await daemon.agent.metrics.registry.metrics();
  const rcodes: Record<string, number> = {};
  for (const m of text.matchAll(/^hubble_dns_responses_total\{rcode="([^"]*)"[^}]*\} (\d+)/gm)) rcodes[m[1]!] = (rcodes[m[1]!] ?? 0) + Number(m[2]);
  for (const m of text.matchAll(/^hubble_dns_queries_total\{rcode="Policy denied"[^}]*\} (\d+)/gm)) rcodes['Policy denied'] = (rcodes['Policy denied'] ?? 0) + Number(m[1]);
  // Turned away by the proxy's limits (warm-up included: the phases' own losses are `lost`).
  for (const m of text.matchAll(/^kitnet_dns_proxy_dropped_total\{reason="([^"]*)"\} ([1-9]\d*)/gm)) rcodes[`dropped (${m[1]!})`] = Number(m[2]);
  // Of the answers (warm-up included): released by the fast path's thread, and its verdicts found stale.
  for (const m of text.matchAll(/^kitnet_dns_proxy_fast_(answered|stale)_total (\d+)/gm)) rcodes[`fast path ${m[1]!}`] = Number(m[2]);
  return { direct, ...(relay ? { relay } : {}), ...(relayC ? { relayC } : {}), proxy, agentSched: { direct: schedDirect, proxy: schedProxy }, proxyAgentCpu, proxyFaults, agentUsPerLookup, rcodes, gc, ...(allocated !== undefined ? { allocatedPerLookup: allocated / Math.max(1, proxy.n) } : {}), ...(survived ? { survivedPerLookup: survived.bytes / (rate * survived.ms / 1000) } : {}) };
}

// ---- the driver ---------------------------------------------------------------------------------

async function main(): Promise<void> {
  const args = argsParse();
  const rate = args.sizes[0] ?? 5000;
  const secs = Number(args.opts.secs ?? (args.quick ? 2 : 3));
  const rounds = Number(args.opts.rounds ?? (args.quick ? 2 : 5));
  const names = Number(args.opts.names ?? 1000);
  const warmup = Number(args.opts.warmup ?? 2);
  const floor = Boolean(args.opts.floor);
  if (!(warmup >= 0)) throw new Error(`--warmup=${args.opts.warmup}: seconds (0 or more)`);
  // --fast=on,off: each tree with the DNS proxy's fast path on and off (dns.proxy.fastPath), taking turns.
  const fastModes = (args.opts.fast ?? 'on').split(',');
  if (!fastModes.every((m) => m === 'on' || m === 'off')) throw new Error(`--fast=${args.opts.fast}: on, off or on,off`);
  const variants = (args.opts.ab ?? OWN_DIST).split(',').flatMap((t) => fastModes.map((m) => ({ tree: resolve(t), fast: m === 'on' })));
  const trees = variants.map((v) => (fastModes.length > 1 ? `${v.tree} (fast path ${v.fast ? 'on' : 'off'})` : v.tree));
  // On the host's loopback, as the proxy's own addresses are: delivered locally from any workload.
  await sh('ip', ['addr', 'add', `${SERVER}/32`, 'dev', 'lo']);
  onCleanup('server address', () => sh('ip', ['addr', 'del', `${SERVER}/32`, 'dev', 'lo']).catch(() => undefined));
  const upstream = args.opts.upstream ?? 'node';
  if (upstream !== 'node' && upstream !== 'c') throw new Error(`--upstream=${upstream}: node or c`);
  let server: ReturnType<typeof spawn>;
  if (upstream === 'c') {
    const bin = join(tmpdir(), `kb-dns-upstream-${RUN_ID}`);
    await sh('cc', ['-O2', '-o', bin, join(REPO_ROOT, 'bench', 'dns-upstream.c')]);
    onCleanup('upstream binary', () => rmSync(bin, { force: true }));
    server = spawn(bin, [SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  } else {
    server = spawn(process.execPath, [HERE, '--upstream', SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  }
  onCleanup('upstream', () => void server.kill('SIGKILL'));
  await new Promise<void>((r) => server.stdout!.once('data', () => r()));
  if (floor) {
    await sh('ip', ['addr', 'add', `${RELAY}/32`, 'dev', 'lo']);
    onCleanup('relay address', () => sh('ip', ['addr', 'del', `${RELAY}/32`, 'dev', 'lo']).catch(() => undefined));
    const relay = spawn(process.execPath, [HERE, '--relay', RELAY, SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
    onCleanup('relay', () => void relay.kill('SIGKILL'));
    await new Promise<void>((r) => relay.stdout.once('data', () => r()));
    await sh('ip', ['addr', 'add', `${RELAY_C}/32`, 'dev', 'lo']);
    onCleanup('C relay address', () => sh('ip', ['addr', 'del', `${RELAY_C}/32`, 'dev', 'lo']).catch(() => undefined));
    onCleanup('C relay', await relayCStart(RELAY_C, SERVER));
  }
  const results: Array<Array<RoundResult & { load: string }>> = trees.map(() => []);
  for (let r = 0; r < rounds; r++) {
    const order = trees.map((_, i) => i);
    if (r % 2) order.reverse();
    for (const v of order) {
      const load = (await sh('cat', ['/proc/loadavg'])).split(' ').slice(0, 3).join(' ');
      const extra = [...(args.opts.profile ? ['--profile'] : []), ...(args.opts.heap ? ['--heap'] : []), ...(args.opts.survivors ? ['--survivors'] : []), ...(floor ? ['--floor'] : []), ...(variants[v]!.fast ? [] : ['--no-fast'])];
      // node's own flags (e.g. V8's heap sizes) reach the agent's process too
      const out = await sh(process.execPath, [...process.execArgv, HERE, '--round', variants[v]!.tree, `d${v}r${r}`, String(rate), String(secs), String(names), String(warmup), ...extra], { timeoutMs: 300_000 });
      const res = JSON.parse(out.slice(out.lastIndexOf('\n{') + 1)) as RoundResult;
      results[v]!.push({ ...res, load });
      if (args.opts.timeline) {
        // Each window with the agent's young collections that began in it (pause ms), on one wall clock.
        const gcIn = (ms: number) => res.gc.youngAt.filter(([at]) => at - res.proxy.startWallMs >= ms && at - res.proxy.startWallMs < ms + 100).map(([, d]) => Math.round(d * 10) / 10);
        console.log(`  proxy phase per 100 ms [ms, lookups, p50, p99, max, young GC pauses]: ${JSON.stringify(res.proxy.timeline.map((w) => [...w, gcIn(w[0]!)]))}`);
      }
      if (args.opts.worst) console.log(`  slowest proxy lookups [ms into the phase, ms]: ${JSON.stringify(res.proxy.worst)}; unanswered sent at ms (first, median, last): ${JSON.stringify(res.proxy.unanswered)}`);
      console.log(`round ${r + 1}/${rounds} ${trees[v]}: direct p50/p99 ${res.direct.stats.p50.toFixed(2)}/${res.direct.stats.p99.toFixed(2)} ms, ${res.relay ? `bare relay ${res.relay.stats.p50.toFixed(2)}/${res.relay.stats.p99.toFixed(2)} ms, ` : ''}${res.relayC ? `dnsmasq relay ${res.relayC.stats.p50.toFixed(2)}/${res.relayC.stats.p99.toFixed(2)} ms, ` : ''}proxy ${res.proxy.stats.p50.toFixed(2)}/${res.proxy.stats.p99.toFixed(2)} ms, lost ${res.direct.lost}/${res.proxy.lost}, agent CPU ${res.proxyAgentCpu.toFixed(2)} s/s, ${res.agentUsPerLookup.proxy.toFixed(0)} µs per proxied lookup (${res.agentUsPerLookup.direct.toFixed(0)} per direct one), page faults ${res.proxyFaults}, agent thread waited for a CPU ${waitMs(res.agentSched.proxy).toFixed(0)} ms in the proxy phase (${waitUs(res.agentSched.proxy).toFixed(0)} µs a wake-up; ${waitMs(res.agentSched.direct).toFixed(0)} ms in the direct one), young GCs ${res.gc.young} (median ${res.gc.youngP50.toFixed(1)} ms, longest ${res.gc.youngMax.toFixed(1)}), ${res.allocatedPerLookup !== undefined ? `allocated ${(res.allocatedPerLookup / 1024).toFixed(1)} KiB a lookup, ` : ''}${res.survivedPerLookup !== undefined ? `${res.survivedPerLookup.toFixed(0)} B a lookup outlived a young collection, ` : ''}answers ${JSON.stringify(res.rcodes)} (load ${load})`);
    }
  }
  const cell = (xs: number[], d = 2) => `${median(xs).toFixed(d)} (${Math.min(...xs).toFixed(d)}-${Math.max(...xs).toFixed(d)})`;
  table(`DNS lookups at ${rate}/s for ${secs} s per phase, ${names} names per phase, ${warmup ? `after a ${warmup} s warm-up at that rate` : 'a fresh agent (no warm-up)'}, upstream in ${upstream === 'c' ? 'C' : 'Node'}, ${rounds} rounds: median (min-max) over rounds, ms`, ['tree', 'direct p50', 'direct p99', 'proxy p50', 'proxy p99', 'added p99', 'added p99, names asked before', 'proxy/direct p99', 'lost (proxy)', 'agent CPU µs per lookup (proxied / direct)', 'young GCs in the proxy phase: count, median / longest ms', 'agent thread waiting for a CPU, ms a phase (proxy / direct)', ...(args.opts.heap ? ['allocated KiB a proxied lookup'] : []), ...(floor ? ['bare relay p99', 'added p99 by the bare relay (floor)', 'dnsmasq relay p99', 'added p99 by dnsmasq (C floor)'] : [])], trees.map((t, v) => {
    const rs = results[v]!;
    return [
      t,
      cell(rs.map((x) => x.direct.stats.p50)),
      cell(rs.map((x) => x.direct.stats.p99)),
      cell(rs.map((x) => x.proxy.stats.p50)),
      cell(rs.map((x) => x.proxy.stats.p99)),
      cell(rs.map((x) => x.proxy.stats.p99 - x.direct.stats.p99)),
      // The lookups after the first pass over the names: no new address to write before the answer.
      cell(rs.map((x) => x.proxy.repeated.p99 - x.direct.repeated.p99)),
      cell(rs.map((x) => x.proxy.stats.p99 / x.direct.stats.p99), 1),
      rs.map((x) => x.proxy.lost).join('/'),
      `${cell(rs.map((x) => x.agentUsPerLookup.proxy), 0)} / ${cell(rs.map((x) => x.agentUsPerLookup.direct), 0)}`,
      `${cell(rs.map((x) => x.gc.young), 0)}, ${cell(rs.map((x) => x.gc.youngP50), 1)} / ${cell(rs.map((x) => x.gc.youngMax), 1)}`,
      `${cell(rs.map((x) => waitMs(x.agentSched.proxy)), 0)} / ${cell(rs.map((x) => waitMs(x.agentSched.direct)), 0)}`,
      ...(args.opts.heap ? [cell(rs.map((x) => (x.allocatedPerLookup ?? NaN) / 1024), 1)] : []),
      ...(floor ? [cell(rs.map((x) => x.relay!.stats.p99)), cell(rs.map((x) => x.relay!.stats.p99 - x.direct.stats.p99)), cell(rs.map((x) => x.relayC!.stats.p99)), cell(rs.map((x) => x.relayC!.stats.p99 - x.direct.stats.p99))] : []),
    ];
  }));
  console.log(MACHINE_LINE());
  resultWrite('dns-agent', { rate, secs, rounds, names, warmup, floor, upstream, trees, results });
}

const argv = process.argv;
if (argv[2] === '--upstream') upstreamServe(argv[3]!);
else if (argv[2] === '--relay') relayServe(argv[3]!, argv[4]!);
else if (argv[2] === '--loadgen') loadgen(argv[3]!, Number(argv[4]), Number(argv[5]), argv[6]!, Number(argv[7]));
else if (argv[2] === '--round') {
  void benchMain(async () => {
    const r = await round(argv[3]!, argv[4]!, Number(argv[5]), Number(argv[6]), Number(argv[7]), Number(argv[8]), argv.includes('--profile'), argv.includes('--heap'), argv.includes('--floor'), argv.includes('--survivors'), !argv.includes('--no-fast'));
    process.stdout.write(`\n${JSON.stringify(r)}\n`);
  });
} else void benchMain(main);
