// Agent memory as operators see it: the agent in a process of its own (`kitnet agent -c FILE`, as
// the systemd unit runs it), N workloads registered through its socket, each in its own namespace;
// VmRSS of that process before, right after and once idle, and its peak (VmHWM). The control-plane
// bench runs the agent inside the bench process for its step timings, so its RSS includes the bench.
//   node dist/bench/agent-rss.bench.js [N=1000] [--idle-secs=S]
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiClient } from '../common/api-client.js';
import { datapathUnpinAll } from '../bpf/index.js';
import {
  argsParse, benchMain, MACHINE_LINE, netnsAddMany, netnsDelMany, onCleanup, REPO_ROOT, resultWrite, RUN_ID, sh, sleep, table,
} from './lib.js';

const TARGET_MB = 150;

/** VmRSS and VmHWM of a process, in MB. */
function memoryOf(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: kb('VmRSS') / 1024, hwm: kb('VmHWM') / 1024 };
}

async function main(): Promise<void> {
  const args = argsParse();
  const n = args.sizes[0] ?? 1000;
  const idleSecs = Number(args.opts['idle-secs'] ?? 10);
  const dir = mkdtempSync(join(tmpdir(), 'kitnet-bench-rss-'));
  const pinRoot = `/sys/fs/bpf/kitnet-bench-rss-${RUN_ID}`;
  const socket = join(dir, 'kitnet.sock');
  const ns = 'benchrss';
  const names = Array.from({ length: n }, (_, i) => `kb-rss-${RUN_ID}-${i}`);
  console.log(`agent RSS: ${n} workloads, agent in its own process; ${MACHINE_LINE()}`);
  onCleanup('state dir', () => rmSync(dir, { recursive: true, force: true }));
  onCleanup('pins', () => datapathUnpinAll(pinRoot));
  onCleanup('namespaces', () => netnsDelMany(names));
  await netnsAddMany(names);

  const config = join(dir, 'config.yaml');
  writeFileSync(config, [
    `stateDir: ${join(dir, 'state')}`, `bpfPinRoot: ${pinRoot}`, 'logLevel: error', 'nodeName: bench-rss',
    `api: { socket: ${socket} }`, 'ipam: { ipv4Pool: 10.221.0.0/16, ipv6Pool: "fd00:221::/64" }', 'datapath: { mode: veth }', '',
  ].join('\n'));
  const agent = spawn(process.execPath, [join(REPO_ROOT, 'bin/kitnet.js'), 'agent', '-c', config], { stdio: ['ignore', 'ignore', 'inherit'] });
  onCleanup('links', async () => {
    const links = JSON.parse(await sh('ip', ['-j', 'link', 'show'])) as { ifname: string; ifalias?: string }[];
    const mine = links.filter((l) => l.ifalias?.startsWith(`kitnet:${ns}/`)).map((l) => `link del ${l.ifname}\n`);
    if (mine.length) await sh('ip', ['-force', '-batch', '-'], { input: mine.join('') }).catch(() => undefined);
  });
  onCleanup('agent', () => new Promise<void>((done) => {
    if (agent.exitCode !== null) return done();
    agent.once('exit', () => done());
    agent.kill('SIGTERM');
  }));
  const api = new ApiClient({ socket });
  for (let i = 0; ; i++) {
    if (agent.exitCode !== null) throw new Error(`the agent exited with ${agent.exitCode} before it answered`);
    if (await api.call('GET', '/healthz').then(() => true, () => false)) break;
    if (i > 600) throw new Error('the agent did not answer within 60 s');
    await sleep(100);
  }
  await sleep(2000);
  const idle = memoryOf(agent.pid!);
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    await api.call('POST', '/v1/workloads', { name: `w${i}`, namespace: ns, labels: { app: `a${i % 50}` }, netns: `/var/run/netns/${names[i]}` });
    if ((i + 1) % 250 === 0) console.log(`  ${i + 1}/${n} registered, agent RSS ${memoryOf(agent.pid!).rss.toFixed(1)} MB`);
  }
  const seconds = (performance.now() - t0) / 1000;
  const after = memoryOf(agent.pid!);
  await sleep(idleSecs * 1000);
  const settled = memoryOf(agent.pid!);

  const mb = (x: number) => x.toFixed(1);
  table(`agent process memory, ${n} workloads (registered in ${seconds.toFixed(1)} s)`, ['', 'MB', 'target'], [
    ['VmRSS, started, no workloads', mb(idle.rss), ''],
    [`VmRSS right after ${n} registrations`, mb(after.rss), `<= ${TARGET_MB}`],
    [`VmRSS after ${idleSecs} s idle`, mb(settled.rss), `<= ${TARGET_MB}`],
    ['VmHWM (peak)', mb(settled.hwm), ''],
  ]);
  resultWrite('agent-rss', {
    n, seconds,
    mb: { idle: idle.rss, after: after.rss, settled: settled.rss, peak: settled.hwm },
    target: { rssMB: TARGET_MB, met: after.rss <= TARGET_MB && settled.rss <= TARGET_MB },
  });
}

void benchMain(main);
