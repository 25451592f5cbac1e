// Workloads carry app=bench, svc=s0..s19 and role=client|server: 40 identities, as services of a
// real cluster share labels (a unique identity per workload would make the policy O(N^2) entries).
//
// Control plane: registration latency (POST /v1/workloads -> response with state "ready": pair made,
// addresses and routes set in the namespace, identity allocated, maps written, programs attached) for
// N workloads, each in its own network namespace; total time; agent RSS after; then one policy that
// selects every workload: PUT /v1/policies -> entries in the kernel policy map for all N endpoints.
// Baselines in the same run, after the N: a few more registrations with the old policy path (a full
// recompile of every endpoint's entries and a directory rebuild per registration, what the agent did
// before the incremental engine), and through the old per-namespace `nsenter` helper process
// (KITNET_NETNS_TRANSPORT=helper). On request (--expedite-rcu=N, default 0: it changes a HOST-WIDE
// kernel setting for the few seconds it runs) N more with /sys/kernel/rcu_expedited=1, which turns the
// RCU grace period each tcx link creation waits for into an expedited one; the old value is put back
// after them, on failure and on Ctrl-C. Each registration is also split into phases: the kernel calls
// (namespace check, device pair with addresses and routes, tcx/netkit attach of both programs) and
// the agent's own steps (IPAM, SQLite transactions, policy and flow directory updates) are timed
// where the agent makes them; "agent (rest)" is what remains (HTTP client and server, validation,
// identity, endpoint and ipcache map writes, logging).
//
//   node dist/bench/controlplane.bench.js [N=1000] [--helper=N2 (default 20, 0 = skip)] [--full-recompile=N3 (default 20, 0 = skip)]
//     [--expedite-rcu=N4 (default 0)] [--profile]
import { mkdtempSync, rmSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { daemonRun } from '../main/daemon.js';
import { ApiClient } from '../common/api-client.js';
import type { Workload } from '../common/schemas/workload.js';
import { datapathUnpinAll } from '../bpf/index.js';
import { rcuExpeditedGet, rcuExpeditedSet } from '../netkit/rcu.js';
import { netnsHelpersClose } from '../netkit/netns-pool.js';
import {
  MACHINE_LINE, RUN_ID, argsParse, benchMain, fmt, netnsAddMany, netnsDelMany, onCleanup, profiled, resultWrite, sh, stats, table, type Stats,
} from './lib.js';

type Variant = 'setns' | 'helper' | 'full-recompile' | 'expedite-rcu';

interface Phase {
  transport: Variant;
  n: number;
  latencyMs: Stats;
  totalS: number;
  perSecond: number;
  /** CPU time of this process (agent + bench client, user + system) per registration, mean ms. */
  cpuMsPerRegistration: number;
  /** Per registration, ms spent in each timed part (p50 / p99 over the phase's registrations). */
  parts: Record<string, Stats>;
}

const VARIANT_NAME: Record<Variant, string> = {
  setns: 'in-process setns (new)',
  helper: 'nsenter helper (old transport)',
  'full-recompile': 'full policy recompile per registration (old policy path)',
  'expedite-rcu': 'as new, /sys/kernel/rcu_expedited=1 (host-wide opt-in)',
};

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

async function main(): Promise<void> {
  const args = argsParse();
  const n = args.sizes[0] ?? 1000;
  const nHelper = Number(args.opts.helper ?? 20);
  const nFull = Number(args.opts['full-recompile'] ?? 20);
  const nRcu = Number(args.opts['expedite-rcu'] ?? 0);
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-bench-cp-'));
  const pinRoot = `/sys/fs/bpf/kitnet-bench-cp-${RUN_ID}`;
  const socket = join(dir, 'kitnet.sock');
  const ns = 'benchcp';
  const names = Array.from({ length: n + nFull + nHelper + nRcu }, (_, i) => `kb-cp-${RUN_ID}-${i}`);
  // A host that already runs with expedited grace periods measures tcx attach at a fraction of the default.
  const rcuExpedited = rcuExpeditedGet();
  console.log(`control plane: ${n} workloads (setns) + ${nFull} (full recompile baseline) + ${nHelper} (nsenter helper baseline)` +
    `${nRcu ? ` + ${nRcu} (rcu_expedited=1)` : ''}; rcu_expedited=${rcuExpedited ? 1 : 0}; ${MACHINE_LINE()}`);

  onCleanup('state dir', () => rmSync(dir, { recursive: true, force: true }));
  onCleanup('pins', () => datapathUnpinAll(pinRoot));
  onCleanup('namespaces', () => netnsDelMany(names));
  const t0 = performance.now();
  await netnsAddMany(names);
  console.log(`made ${names.length} namespaces in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  const rssBefore = process.memoryUsage().rss;
  const agent = await daemonRun({
    overrides: {
      stateDir: join(dir, 'state'),
      bpfPinRoot: pinRoot,
      logLevel: 'error',
      nodeName: 'bench',
      api: { socket },
      ipam: { ipv4Pool: '10.220.0.0/16', ipv6Pool: 'fd00:220::/64' },
      datapath: { mode: 'veth' },
    },
  });
  // Links go with their namespaces; this catches host sides of a failed run (alias kitnet:benchcp/...).
  onCleanup('links', async () => {
    const links = JSON.parse(await sh('ip', ['-j', 'link', 'show'])) as { ifname: string; ifalias?: string }[];
    const mine = links.filter((l) => l.ifalias?.startsWith(`kitnet:${ns}/`)).map((l) => `link del ${l.ifname}\n`);
    if (mine.length) await sh('ip', ['-force', '-batch', '-'], { input: mine.join('') }).catch(() => undefined);
  });
  onCleanup('agent', () => agent.stop());
  const rssAgentIdle = process.memoryUsage().rss;
  const api = new ApiClient({ socket });

  // Time the kernel calls where the agent makes them (the agent runs in this process).
  const timed = new Map<string, number>();
  const wrap = <T extends object>(obj: T, method: keyof T & string, part: string) => {
    const orig = (obj[method] as (...a: unknown[]) => unknown).bind(obj);
    (obj as Record<string, unknown>)[method] = async (...a: unknown[]) => {
      const t = performance.now();
      try {
        return await orig(...a);
      } finally {
        timed.set(part, (timed.get(part) ?? 0) + performance.now() - t);
      }
    };
  };
  // Synchronous agent steps; time spent in a nested timed step counts for the inner one only.
  let inner = 0;
  const timeSync = <A extends unknown[], R>(part: string, fn: (...a: A) => R) => (...a: A): R => {
    const outer = inner;
    inner = 0;
    const t = performance.now();
    try {
      return fn(...a);
    } finally {
      const took = performance.now() - t;
      timed.set(part, (timed.get(part) ?? 0) + took - inner);
      inner = outer + took;
    }
  };
  const wrapSync = <T extends object>(obj: T, method: keyof T & string, part: string) => {
    (obj as Record<string, unknown>)[method] = timeSync(part, (obj[method] as (...a: unknown[]) => unknown).bind(obj));
  };
  const store = agent.agent.store;
  wrapSync(store, 'transaction', 'store (SQLite, fsync)');
  wrapSync(store, 'workloadStatusSet', 'store (SQLite, fsync)');
  const pools = agent.agent.workloads as unknown as Record<'pool4' | 'pool6', { allocate: (...a: unknown[]) => string }>;
  wrapSync(pools.pool4, 'allocate', 'IPAM');
  wrapSync(pools.pool6, 'allocate', 'IPAM');
  const kernel = agent.agent.kernel;
  wrap(kernel, 'netnsValidate', 'netns check');
  wrap(kernel, 'features', 'netns check');
  wrap(kernel, 'deviceRepair', 'device pair + addresses + routes');
  wrap(kernel, 'deviceOpen', 'device pair + addresses + routes');
  wrap(kernel.datapath, 'attach', 'attach (2 links)');
  const engine = agent.agent.policyEngine;
  const incremental = engine.endpointsUpdate.bind(engine);
  const directory = agent.agent.directory;
  const directorySet = directory.workloadSet.bind(directory);

  async function registerRange(from: number, to: number, transport: Variant): Promise<Phase> {
    if (transport !== 'expedite-rcu') return registerRangeIn(from, to, transport);
    const before = rcuExpeditedSet(true);
    let restored = false;
    // once: a later change by someone else is theirs to keep
    const restore = () => { if (!restored) { restored = true; rcuExpeditedSet(before); } };
    onCleanup('rcu_expedited', restore);
    try {
      return await registerRangeIn(from, to, transport);
    } finally {
      restore();
    }
  }

  async function registerRangeIn(from: number, to: number, transport: Variant): Promise<Phase> {
    if (transport === 'helper') process.env.KITNET_NETNS_TRANSPORT = 'helper';
    else delete process.env.KITNET_NETNS_TRANSPORT;
    // The old policy path: every registration recompiled and diffed every endpoint, and rebuilt the
    // flow directory from the store.
    engine.endpointsUpdate = timeSync('policy + flow directory', transport === 'full-recompile' ? () => engine.apply() : incremental);
    directory.workloadSet = timeSync('policy + flow directory', transport === 'full-recompile' ? () => directory.refresh() : directorySet);
    const lat: number[] = [];
    const parts = new Map<string, number[]>();
    const cpu = process.cpuUsage();
    const started = performance.now();
    for (let i = from; i < to; i++) {
      timed.clear();
      const t = performance.now();
      const w = await api.call<Workload>('POST', '/v1/workloads', {
        name: `w${i}`,
        namespace: ns,
        labels: { app: 'bench', svc: `s${i % 20}`, role: i % 2 ? 'server' : 'client' },
        netns: `/var/run/netns/${names[i]}`,
      });
      const ms = performance.now() - t;
      lat.push(ms);
      let kernelMs = 0;
      for (const [part, v] of timed) {
        parts.set(part, [...(parts.get(part) ?? []), v]);
        kernelMs += v;
      }
      parts.set('agent (rest)', [...(parts.get('agent (rest)') ?? []), ms - kernelMs]);
      if (w.state !== 'ready') throw new Error(`w${i} is ${w.state}: ${w.error ?? ''}`);
      if ((i - from + 1) % 250 === 0) process.stdout.write(`  ${transport}: ${i - from + 1}/${to - from} registered, p50 so far ${fmt(stats(lat).p50)} ms\n`);
    }
    const totalS = (performance.now() - started) / 1000;
    const used = process.cpuUsage(cpu);
    netnsHelpersClose();
    engine.endpointsUpdate = incremental;
    directory.workloadSet = directorySet;
    return {
      transport, n: to - from, latencyMs: stats(lat), totalS, perSecond: (to - from) / totalS,
      cpuMsPerRegistration: (used.user + used.system) / 1000 / (to - from),
      parts: Object.fromEntries([...parts].map(([k, v]) => [k, stats(v)])),
    };
  }

  const phases: Phase[] = [];
  phases.push(await profiled(args.opts.profile !== undefined, 'controlplane-register', () => registerRange(0, n, 'setns')));
  // RSS as left by the burst, then after a full garbage collection (what the agent settles to once
  // idle; V8 would collect the registrations' garbage on its own, later).
  const rssBeforeGc = process.memoryUsage().rss;
  gc();
  const { rss: rssAfter, heapUsed: heapAfter, heapTotal: heapTotalAfter, external: externalAfter } = process.memoryUsage();

  // Baselines right after the N, so they see the same number of endpoints (the old policy path is
  // O(N)) and, like the N, no policy yet.
  if (nFull > 0) phases.push(await registerRange(n, n + nFull, 'full-recompile'));
  if (nHelper > 0) phases.push(await registerRange(n + nFull, n + nFull + nHelper, 'helper'));
  delete process.env.KITNET_NETNS_TRANSPORT;
  if (nRcu > 0) phases.push(await registerRange(n + nFull + nHelper, n + nFull + nHelper + nRcu, 'expedite-rcu'));

  // One policy selecting all workloads (ingress from role=client on 80/TCP, and 443 from anywhere in
  // the namespace): time until the PUT returns and every endpoint has entries in the map.
  const dp = agent.agent.kernel.datapath;
  const endpointIds = new Set(agent.agent.workloadList(ns).map((w) => w.endpointId));
  const policy = {
    apiVersion: 'cilium.io/v2',
    kind: 'CiliumNetworkPolicy',
    metadata: { name: 'bench-all', namespace: ns },
    spec: {
      endpointSelector: { matchLabels: { app: 'bench' } },
      ingress: [
        { fromEndpoints: [{ matchLabels: { role: 'client' } }], toPorts: [{ ports: [{ port: '80', protocol: 'TCP' }] }] },
        { fromEndpoints: [{}], toPorts: [{ ports: [{ port: '443', protocol: 'TCP' }] }] },
      ],
    },
  };
  const cpuPolicy = process.cpuUsage();
  const tp = performance.now();
  await profiled(args.opts.profile !== undefined, 'controlplane-policy', () => api.call('PUT', '/v1/policies', policy));
  const putMs = performance.now() - tp;
  const putCpu = process.cpuUsage(cpuPolicy);
  const putCpuMs = (putCpu.user + putCpu.system) / 1000;
  // The agent writes the map before it answers, so every endpoint should have its entries when the
  // PUT returns: check with dumps of the map (each dump of ~32k entries takes a few hundred ms, so the
  // check's own time is reported apart; the earlier figure of this bench included one dump).
  let enforcedMs = NaN;
  let entries = 0;
  let dumps = 0;
  let dumpMs = 0;
  for (;;) {
    const td = performance.now();
    const list = dp.policyList();
    dumps++;
    dumpMs = performance.now() - td;
    const seen = new Set(list.map((e) => e.endpointId));
    entries = list.length;
    if ([...endpointIds].every((id) => seen.has(id))) {
      enforcedMs = dumps === 1 ? putMs : td - tp;
      break;
    }
    if (performance.now() - tp > 30_000) break;
  }


  table(
    `Control plane: registration POST -> ready, sequential (${MACHINE_LINE()})`,
    ['variant', 'workloads', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'total s', 'per s', 'CPU ms/reg'],
    phases.map((p) => [VARIANT_NAME[p.transport], p.n, p.latencyMs.p50, p.latencyMs.p90, p.latencyMs.p99, p.latencyMs.max, p.totalS, p.perSecond, p.cpuMsPerRegistration]),
  );
  const partNames = [...new Set(phases.flatMap((p) => Object.keys(p.parts)))];
  table(
    'Control plane: where a registration spends its time, ms p50 / p99 per registration',
    ['variant', ...partNames],
    phases.map((p) => [VARIANT_NAME[p.transport], ...partNames.map((k) => (p.parts[k] ? `${fmt(p.parts[k].p50)} / ${fmt(p.parts[k].p99)}` : ''))]),
  );
  const mb = (b: number) => (b / 2 ** 20).toFixed(0);
  table('Control plane: memory and policy propagation', ['metric', 'value', 'target'], [
    ['RSS before agent start (MB)', mb(rssBefore), ''],
    ['RSS agent started, idle (MB)', mb(rssAgentIdle), ''],
    [`RSS after ${n} workloads, before a GC (MB)`, mb(rssBeforeGc), ''],
    [`RSS after ${n} workloads and a full GC (MB)`, mb(rssAfter), '<= 150'],
    ['  of it JS heap used / heap total / external (MB)', `${mb(heapAfter)} / ${mb(heapTotalAfter)} / ${mb(externalAfter)}`, ''],
    ['policy PUT returned (ms)', putMs.toFixed(1), ''],
    ['policy PUT, CPU time of the process (ms)', putCpuMs.toFixed(1), ''],
    [`policy in map for all ${endpointIds.size} endpoints (ms)`, enforcedMs.toFixed(1), '<= 1000'],
    [`map dumps to check it (${dumps}), the last (ms)`, dumpMs.toFixed(1), ''],
    ['policy map entries', String(entries), ''],
  ]);
  const main = phases[0]!;
  resultWrite('controlplane', {
    n,
    rcuExpedited,
    phases,
    rssMB: {
      beforeAgent: rssBefore / 2 ** 20, agentIdle: rssAgentIdle / 2 ** 20, afterBeforeGc: rssBeforeGc / 2 ** 20, after: rssAfter / 2 ** 20,
      heapUsedAfter: heapAfter / 2 ** 20, heapTotalAfter: heapTotalAfter / 2 ** 20, externalAfter: externalAfter / 2 ** 20,
    },
    policy: { putMs, putCpuMs, enforcedMs, checkDumps: dumps, checkDumpMs: dumpMs, endpoints: endpointIds.size, entries },
    targets: {
      p50: { target: 25, value: main.latencyMs.p50, met: main.latencyMs.p50 <= 25 },
      p99: { target: 100, value: main.latencyMs.p99, met: main.latencyMs.p99 <= 100 },
      totalS: { target: 60 * (n / 1000), value: main.totalS, met: main.totalS <= 60 * (n / 1000) },
      rssMB: { target: 150, value: rssAfter / 2 ** 20, met: rssAfter / 2 ** 20 <= 150 },
      policyMs: { target: 1000, value: enforcedMs, met: enforcedMs <= 1000 },
    },
  });
}

await benchMain(main);
