// What the reconcile loop's periodic resync costs: N workloads, each in its own namespace, then
// rounds of a full resync (every workload observed against the kernel and planned; nothing to do)
// and one round after a host route of every tenth workload was deleted (observe, plan and repair).
// Per workload: the observe of a pair enters its namespace and looks its two host routes up (one
// FIB lookup each; until 2026-12-04 a dump of every workload's routes, so a round grew as N^2); the
// figure says what `reconcile.resyncSeconds` costs at which N.
//   node dist/bench/reconcile-resync.bench.js [N=300] [--rounds=R (default 3)]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { daemonRun } from '../main/daemon.js';
import { ApiClient } from '../common/api-client.js';
import type { Workload } from '../common/schemas/workload.js';
import { datapathUnpinAll } from '../bpf/index.js';
import { MACHINE_LINE, RUN_ID, argsParse, benchMain, fmt, netnsAddMany, netnsDelMany, onCleanup, resultWrite, sh, table } from './lib.js';

async function main(): Promise<void> {
  const args = argsParse();
  const n = args.sizes[0] ?? 300;
  const rounds = Number(args.opts.rounds ?? 3);
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-bench-resync-'));
  const pinRoot = `/sys/fs/bpf/kitnet-bench-resync-${RUN_ID}`;
  const socket = join(dir, 'kitnet.sock');
  const names = Array.from({ length: n }, (_, i) => `kb-rs-${RUN_ID}-${i}`);
  console.log(`reconcile resync: ${n} workloads; ${MACHINE_LINE()}`);
  onCleanup('state dir', () => rmSync(dir, { recursive: true, force: true }));
  onCleanup('pins', () => datapathUnpinAll(pinRoot));
  onCleanup('namespaces', () => netnsDelMany(names));
  await netnsAddMany(names);
  const daemon = await daemonRun({
    overrides: {
      stateDir: join(dir, 'state'), bpfPinRoot: pinRoot, logLevel: 'error', nodeName: 'bench-resync', api: { socket },
      ipam: { ipv4Pool: '10.222.0.0/16', ipv6Pool: 'fd00:222::/64' }, datapath: { mode: 'veth' },
      // the bench starts every round itself
      reconcile: { resyncSeconds: 86_400 },
    },
  });
  onCleanup('agent', async () => {
    for (const w of daemon.agent.workloadList()) await daemon.agent.workloadRemove(w.namespace, w.name).catch(() => undefined);
    await daemon.stop();
  });
  const api = new ApiClient({ socket });
  const made: Workload[] = [];
  for (const [i, ns] of names.entries()) {
    made.push(await api.call<Workload>('POST', '/v1/workloads', { name: `w${i}`, namespace: 'benchrs', netns: `/var/run/netns/${ns}`, labels: { app: `a${i % 20}` } }));
  }
  const agent = daemon.agent;
  // Where a round's time goes: the kernel reads of an observe, timed where the agent makes them.
  const parts = new Map<string, number>();
  const timed = <T extends object>(obj: T, method: keyof T & string) => {
    const fn = (obj[method] as (...a: unknown[]) => unknown).bind(obj);
    (obj as Record<string, unknown>)[method] = (...a: unknown[]) => {
      const t = performance.now();
      const done = () => parts.set(method, (parts.get(method) ?? 0) + performance.now() - t);
      const r = fn(...a);
      if (r instanceof Promise) return r.finally(done);
      done();
      return r;
    };
  };
  timed(agent.kernel, 'netnsValidate');
  timed(agent.kernel, 'deviceObserve');
  timed(agent.kernel.datapath, 'linkInfo');
  timed(agent.kernel.datapath, 'endpointGet');
  /** One resync round: every key through the worker; resolves once the queue is empty and the worker idle. */
  const round = async (): Promise<number> => {
    const t = performance.now();
    agent.controller.enqueueAll();
    while (agent.controller.depth > 0) await agent.workloads.exclusive(async () => undefined);
    await agent.workloads.exclusive(async () => undefined);
    return performance.now() - t;
  };
  const clean: number[] = [];
  for (let r = 0; r < rounds; r++) clean.push(await round());
  const perRound = [...parts].map(([k, ms]) => [k, fmt(ms / rounds, 4), fmt(ms / rounds / n, 3)]);
  const damaged = made.filter((_, i) => i % 10 === 0);
  await sh('ip', ['-batch', '-'], { input: damaged.map((w) => `route del ${w.ipv4}/32 dev ${w.interfaces.host.name}\n`).join('') });
  const repair = await round();
  const cpu = process.cpuUsage();
  console.log(table('resync rounds', ['round', 'total ms', 'ms per workload'], [
    ...clean.map((ms, i) => [`nothing to do #${i + 1}`, fmt(ms, 4), fmt(ms / n, 3)]),
    [`${damaged.length} host routes deleted`, fmt(repair, 4), fmt(repair / n, 3)],
  ]));
  console.log(table('in a round with nothing to do (mean of the rounds)', ['kernel read', 'total ms', 'ms per workload'], perRound));
  resultWrite('reconcile-resync', { n, roundsMs: clean, parts: Object.fromEntries(perRound.map(([k, total]) => [k, Number(total)])), repairRoundMs: repair, repaired: damaged.length, cpuUserMs: cpu.user / 1000 });
}

await benchMain(main);
