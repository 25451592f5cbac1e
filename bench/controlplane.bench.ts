// Workloads carry app=bench, svc=s0..s19 and role=client|server: 40 identities, as services of a
// real cluster share labels (a unique identity per workload would make the policy O(N^2) entries).
//
// Control plane: registration latency (POST /v1/workloads -> response with state "ready": pair made,
// addresses and routes set in the namespace, identity allocated, maps written, programs attached) for
// N workloads, each in its own network namespace; total time; agent RSS after; then one policy that
// selects every workload: PUT /v1/policies -> entries in the kernel policy map for all N endpoints.
// Baseline in the same run: the same registration through the old per-namespace `nsenter` helper
// process (KITNET_NETNS_TRANSPORT=helper) for a few workloads.
//
//   node dist/bench/controlplane.bench.js [N=1000] [--helper=N2 (default 20, 0 = skip)] [--profile]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { daemonRun } from '../agent/daemon.js';
import { ApiClient } from '../api/cli/client.js';
import type { Workload } from '../api/schemas/workload.js';
import { datapathUnpinAll } from '../bpf/index.js';
import { netnsHelpersClose } from '../netkit/socket.js';
import {
  MACHINE_LINE, RUN_ID, argsParse, benchMain, fmt, netnsAddMany, netnsDelMany, onCleanup, profiled, resultWrite, sh, stats, table, type Stats,
} from './lib.js';

interface Phase {
  transport: 'setns' | 'helper';
  n: number;
  latencyMs: Stats;
  totalS: number;
  perSecond: number;
}

async function main(): Promise<void> {
  const args = argsParse();
  const n = args.sizes[0] ?? 1000;
  const nHelper = Number(args.opts.helper ?? 20);
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-bench-cp-'));
  const pinRoot = `/sys/fs/bpf/kitnet-bench-cp-${RUN_ID}`;
  const socket = join(dir, 'kitnet.sock');
  const ns = 'benchcp';
  const names = Array.from({ length: n + nHelper }, (_, i) => `kb-cp-${RUN_ID}-${i}`);
  console.log(`control plane: ${n} workloads (setns) + ${nHelper} (nsenter helper baseline); ${MACHINE_LINE()}`);

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

  async function registerRange(from: number, to: number, transport: 'setns' | 'helper'): Promise<Phase> {
    if (transport === 'helper') process.env.KITNET_NETNS_TRANSPORT = 'helper';
    else delete process.env.KITNET_NETNS_TRANSPORT;
    const lat: number[] = [];
    const started = performance.now();
    for (let i = from; i < to; i++) {
      const t = performance.now();
      const w = await api.call<Workload>('POST', '/v1/workloads', {
        name: `w${i}`,
        namespace: ns,
        labels: { app: 'bench', svc: `s${i % 20}`, role: i % 2 ? 'server' : 'client' },
        netns: `/var/run/netns/${names[i]}`,
      });
      lat.push(performance.now() - t);
      if (w.state !== 'ready') throw new Error(`w${i} is ${w.state}: ${w.error ?? ''}`);
      if ((i - from + 1) % 250 === 0) process.stdout.write(`  ${transport}: ${i - from + 1}/${to - from} registered, p50 so far ${fmt(stats(lat).p50)} ms\n`);
    }
    const totalS = (performance.now() - started) / 1000;
    netnsHelpersClose();
    return { transport, n: to - from, latencyMs: stats(lat), totalS, perSecond: (to - from) / totalS };
  }

  const phases: Phase[] = [];
  phases.push(await profiled(args.opts.profile !== undefined, 'controlplane-register', () => registerRange(0, n, 'setns')));
  if (global.gc) global.gc();
  const rssAfter = process.memoryUsage().rss;

  // One policy selecting all N workloads (ingress from role=client on 80/TCP, and 443 from anywhere in
  // the namespace): time until the PUT returns, then until every endpoint has entries in the map.
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
  const tp = performance.now();
  await api.call('PUT', '/v1/policies', policy);
  const putMs = performance.now() - tp;
  let enforcedMs = NaN;
  let entries = 0;
  for (;;) {
    const list = dp.policyList();
    const seen = new Set(list.map((e) => e.endpointId));
    entries = list.length;
    if ([...endpointIds].every((id) => seen.has(id))) {
      enforcedMs = performance.now() - tp;
      break;
    }
    if (performance.now() - tp > 30_000) break;
  }

  if (nHelper > 0) phases.push(await registerRange(n, n + nHelper, 'helper'));
  delete process.env.KITNET_NETNS_TRANSPORT;

  table(
    `Control plane: registration POST -> ready, sequential (${MACHINE_LINE()})`,
    ['netns transport', 'workloads', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'total s', 'per s'],
    phases.map((p) => [p.transport === 'setns' ? 'in-process setns' : 'nsenter helper', p.n, p.latencyMs.p50, p.latencyMs.p90, p.latencyMs.p99, p.latencyMs.max, p.totalS, p.perSecond]),
  );
  const mb = (b: number) => (b / 2 ** 20).toFixed(0);
  table('Control plane: memory and policy propagation', ['metric', 'value', 'target'], [
    ['RSS before agent start (MB)', mb(rssBefore), ''],
    ['RSS agent started, idle (MB)', mb(rssAgentIdle), ''],
    [`RSS after ${n} workloads (MB)`, mb(rssAfter), '<= 150'],
    ['policy PUT returned (ms)', putMs.toFixed(1), ''],
    [`policy in map for all ${endpointIds.size} endpoints (ms)`, enforcedMs.toFixed(1), '<= 1000'],
    ['policy map entries', String(entries), ''],
  ]);
  const main = phases[0]!;
  resultWrite('controlplane', {
    n,
    phases,
    rssMB: { beforeAgent: rssBefore / 2 ** 20, agentIdle: rssAgentIdle / 2 ** 20, after: rssAfter / 2 ** 20 },
    policy: { putMs, enforcedMs, endpoints: endpointIds.size, entries },
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
