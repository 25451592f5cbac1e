// Real traffic between two network-namespace workloads routed through the host (client C -> host ->
// server S), in one run:
//   - bare: a plain veth pair per namespace, no programs, no firewall rules (the floor);
//   - kitnet: the same namespaces registered with an in-process agent (veth + tcx programs), the server
//     selected by a CiliumNetworkPolicy with N ingress allow rules: N-1 fromCIDR /32 peers and the
//     client's endpoint last (N policy entries and N-1 CIDR identities in ipcache);
//   - iptables-nft and iptables-legacy on the plain veths: N allow rules for N peers in a chain of our
//     own (KNB-<run>) jumped to from FORWARD, the matching rule last, then DROP to the server; with a
//     conntrack ESTABLISHED,RELATED accept as the first rule (as real firewalls have) and without it.
// Figures: new TCP connections/s (connect, then close with RST; bench/loadgen.c), UDP 1-byte
// request/response latency, TCP throughput (iperf3). Datapath overhead (issue item 3) is the
// kitnet N=10 row against bare.
//
//   node dist/bench/netpath.bench.js [N[,N...]=10,1000,10000,30000] [--secs=S] [--only=bare,kitnet,nft,legacy]
// Needs iptables (nft + legacy) and iperf3 (installed with apt-get when missing).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { daemonRun } from '../main/daemon.js';
import { ApiClient } from '../common/api-client.js';
import type { Workload } from '../common/schemas/workload.js';
import { datapathUnpinAll } from '../bpf/index.js';
import {
  MACHINE_LINE, REPO_ROOT, RUN_ID, aptEnsure, argsParse, benchMain, netnsAddMany, netnsDelMany, onCleanup, resultWrite, sh, sleep, table,
} from './lib.js';

interface Figures {
  connsPerS: number;
  connErrors: number;
  udpRrMeanUs: number;
  udpRrP99Us: number;
  tcpGbps: number;
}
interface Row extends Figures {
  variant: string;
  n: number;
  ctFirst: boolean | null;
}

const CHAIN = `KNB-${RUN_ID}`.slice(0, 28);
const PORT_TCP = 8080;
const PORT_UDP = 8081;
const PORT_IPERF = 5201;

/** The i-th fake peer address for the N-1 non-matching rules (172.16.0.0/12). */
const peer = (i: number) => `172.${16 + ((i >> 16) & 15)}.${(i >> 8) & 255}.${i & 255}`;

async function main(): Promise<void> {
  const args = argsParse();
  const sizes = args.sizes.length ? args.sizes : [10, 1000, 10_000, 30_000];
  const secs = Number(args.opts.secs ?? (args.quick ? 2 : 5));
  const only = new Set((args.opts.only ?? 'bare,kitnet,nft,legacy').split(','));
  console.log(`network path: N=${sizes.join(',')}, ${secs} s per figure; ${MACHINE_LINE()}`);
  await aptEnsure([{ cmd: 'iperf3', pkg: 'iperf3' }, { cmd: 'iptables-legacy', pkg: 'iptables' }]);

  const tmp = mkdtempSync(join(tmpdir(), 'kitnet-bench-np-'));
  onCleanup('tmp', () => rmSync(tmp, { recursive: true, force: true }));
  const loadgen = join(tmp, 'loadgen');
  await sh('cc', ['-O2', '-o', loadgen, join(REPO_ROOT, 'bench', 'loadgen.c')]);

  const nsC = `kb-np-${RUN_ID}-c`;
  const nsS = `kb-np-${RUN_ID}-s`;
  onCleanup('namespaces', () => netnsDelMany([nsC, nsS]));
  await netnsAddMany([nsC, nsS]);
  for (const ns of [nsC, nsS]) await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);

  // Servers in S, started once: they listen on any address and outlive topology changes.
  const servers: ChildProcess[] = [];
  onCleanup('servers', () => servers.forEach((p) => p.kill('SIGKILL')));
  const serve = (cmd: string, argv: string[]) => {
    const p = spawn('ip', ['netns', 'exec', nsS, cmd, ...argv], { stdio: 'ignore' });
    servers.push(p);
  };
  serve(loadgen, ['tcp-server', String(PORT_TCP)]);
  serve(loadgen, ['udp-server', String(PORT_UDP)]);
  serve('iperf3', ['-s', '-p', String(PORT_IPERF)]);
  await sleep(300);

  async function measure(serverIp: string): Promise<Figures> {
    const inC = (cmd: string, argv: string[]) => sh('ip', ['netns', 'exec', nsC, cmd, ...argv], { timeoutMs: (secs + 30) * 1000 });
    const kv = (s: string) => Object.fromEntries(s.trim().split(/\s+/).map((x) => x.split('=') as [string, string]));
    await inC(loadgen, ['tcp-conn', serverIp, String(PORT_TCP), '0.3']); // warm-up: neighbours, caches
    const c = kv(await inC(loadgen, ['tcp-conn', serverIp, String(PORT_TCP), String(secs)]));
    const u = kv(await inC(loadgen, ['udp-rr', serverIp, String(PORT_UDP), String(Math.max(1, secs / 2))]));
    let gbps = NaN;
    try {
      const j = JSON.parse(await inC('iperf3', ['-c', serverIp, '-p', String(PORT_IPERF), '-t', String(secs), '-J'])) as {
        end: { sum_received: { bits_per_second: number } };
      };
      gbps = j.end.sum_received.bits_per_second / 1e9;
    } catch (err) {
      console.error(`iperf3: ${(err as Error).message.slice(0, 200)}`);
    }
    return { connsPerS: Number(c.rate), connErrors: Number(c.errors), udpRrMeanUs: Number(u.mean_us), udpRrP99Us: Number(u.p99_us), tcpGbps: gbps };
  }

  const rows: Row[] = [];
  const report = (r: Row) => {
    rows.push(r);
    console.log(`  ${r.variant.padEnd(16)} N=${String(r.n).padEnd(6)} ct-first=${String(r.ctFirst).padEnd(5)} ${r.connsPerS.toFixed(0)} conn/s (${r.connErrors} err), UDP RR ${r.udpRrMeanUs.toFixed(1)} us (p99 ${r.udpRrP99Us.toFixed(1)}), ${r.tcpGbps.toFixed(2)} Gbit/s`);
  };

  // --- plain veth topology (bare and iptables) ---
  const C = { host: `knbc${RUN_ID}`.slice(0, 15), ip: '10.231.0.2', gw: '10.231.0.1' };
  const S = { host: `knbs${RUN_ID}`.slice(0, 15), ip: '10.231.1.2', gw: '10.231.1.1' };
  const plainUp = async () => {
    for (const [ns, e] of [[nsC, C], [nsS, S]] as const) {
      await sh('ip', ['link', 'add', e.host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      await sh('ip', ['addr', 'add', `${e.gw}/24`, 'dev', e.host]);
      await sh('ip', ['link', 'set', e.host, 'up']);
      await sh('ip', ['-n', ns, 'addr', 'add', `${e.ip}/24`, 'dev', 'eth0']);
      await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      await sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', e.gw]);
    }
    await sh('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  };
  const plainDown = async () => {
    for (const e of [C, S]) await sh('ip', ['link', 'del', e.host]).catch(() => undefined);
  };
  onCleanup('plain veths', plainDown);

  const backends = [
    { name: 'iptables-nft', cmd: 'iptables-nft', restore: 'iptables-nft-restore', key: 'nft' },
    { name: 'iptables-legacy', cmd: 'iptables-legacy', restore: 'iptables-legacy-restore', key: 'legacy' },
  ];
  const rulesRemove = async (cmd: string) => {
    while ((await sh(cmd, ['-D', 'FORWARD', '-j', CHAIN]).then(() => true, () => false)));
    await sh(cmd, ['-F', CHAIN]).catch(() => undefined);
    await sh(cmd, ['-X', CHAIN]).catch(() => undefined);
  };
  for (const b of backends) if (only.has(b.key)) onCleanup(`${b.name} rules`, () => rulesRemove(b.cmd));

  if (only.has('bare') || only.has('nft') || only.has('legacy')) {
    await plainUp();
    if (only.has('bare')) report({ variant: 'bare veth', n: 0, ctFirst: null, ...(await measure(S.ip)) });
  }

  // --- iptables on the plain topology ---
  for (const b of backends) {
    if (!only.has(b.key)) continue;
    for (const n of sizes) {
      for (const ctFirst of [true, false]) {
        await rulesRemove(b.cmd);
        const lines = ['*filter', `:${CHAIN} - [0:0]`];
        if (ctFirst) lines.push(`-A ${CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`);
        for (let i = 0; i < n - 1; i++) lines.push(`-A ${CHAIN} -s ${peer(i)}/32 -d ${S.ip}/32 -j ACCEPT`);
        lines.push(`-A ${CHAIN} -s ${C.ip}/32 -d ${S.ip}/32 -j ACCEPT`, `-A ${CHAIN} -d ${S.ip}/32 -j DROP`, `-I FORWARD 1 -j ${CHAIN}`, 'COMMIT', '');
        const t = performance.now();
        await sh(b.restore, ['--noflush'], { input: lines.join('\n'), timeoutMs: 600_000 });
        const loadMs = performance.now() - t;
        report({ variant: b.name, n, ctFirst, ...(await measure(S.ip)) });
        console.log(`    (rules loaded in ${loadMs.toFixed(0)} ms)`);
      }
    }
    await rulesRemove(b.cmd);
  }
  await plainDown();

  // --- kitnet: the same namespaces as workloads of an in-process agent ---
  if (only.has('kitnet')) {
    const dir = mkdtempSync(join(tmpdir(), 'kitnet-bench-np-agent-'));
    const pinRoot = `/sys/fs/bpf/kitnet-bench-np-${RUN_ID}`;
    const socket = join(dir, 'kitnet.sock');
    onCleanup('agent state', () => rmSync(dir, { recursive: true, force: true }));
    onCleanup('pins', () => datapathUnpinAll(pinRoot));
    const agent = await daemonRun({
      overrides: {
        stateDir: join(dir, 'state'), bpfPinRoot: pinRoot, logLevel: 'error', nodeName: 'bench', api: { socket },
        ipam: { ipv4Pool: '10.232.0.0/24', ipv6Pool: 'fd00:232::/64' }, datapath: { mode: 'veth' },
      },
    });
    onCleanup('agent', () => agent.stop());
    const api = new ApiClient({ socket });
    const wc = await api.call<Workload>('POST', '/v1/workloads', { name: 'client', namespace: 'benchnp', labels: { role: 'client' }, netns: `/var/run/netns/${nsC}` });
    const ws = await api.call<Workload>('POST', '/v1/workloads', { name: 'server', namespace: 'benchnp', labels: { role: 'server' }, netns: `/var/run/netns/${nsS}` });
    onCleanup('workloads', async () => {
      for (const w of [wc, ws]) await api.call('DELETE', `/v1/workloads/benchnp/${w.name}`).catch(() => undefined);
    });
    for (const n of sizes) {
      const policy = {
        apiVersion: 'cilium.io/v2',
        kind: 'CiliumNetworkPolicy',
        metadata: { name: 'bench-np', namespace: 'benchnp' },
        spec: {
          endpointSelector: { matchLabels: { role: 'server' } },
          ingress: [
            ...(n > 1 ? [{ fromCIDR: Array.from({ length: n - 1 }, (_, i) => `${peer(i)}/32`) }] : []),
            { fromEndpoints: [{ matchLabels: { role: 'client' } }] },
          ],
        },
      };
      const t = performance.now();
      await api.call('PUT', '/v1/policies', policy);
      const applyMs = performance.now() - t;
      const entries = agent.agent.kernel.datapath.policyList(ws.endpointId).length;
      report({ variant: 'kitnet (tcx)', n, ctFirst: null, ...(await measure(ws.ipv4)) });
      console.log(`    (policy applied in ${applyMs.toFixed(0)} ms, ${entries} entries for the server)`);
    }
    // The same with the agent's flow reader stopped: separates the datapath from the cost of reading
    // and enriching the flow events in the agent (same process, same 2 cores as the load generator).
    agent.agent.flows.stop();
    report({ variant: 'kitnet, no flow reader', n: sizes[sizes.length - 1]!, ctFirst: null, ...(await measure(ws.ipv4)) });
  }

  // --- tables ---
  const at = (v: string, n: number, ct: boolean | null) => rows.find((r) => r.variant === v && r.n === n && r.ctFirst === ct);
  const bare = rows.find((r) => r.variant === 'bare veth');
  const k0 = at('kitnet (tcx)', sizes[0]!, null);
  const fmt0 = (x: number | undefined, d = 0) => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));
  table(`New TCP connections/s (connect + RST), C -> host -> S — ${MACHINE_LINE()}`,
    ['N', 'kitnet', 'vs own N0', 'nft ct-first', 'nft no-ct', 'legacy ct-first', 'legacy no-ct', 'kitnet/nft(ct)', 'kitnet/legacy(ct)'],
    sizes.map((n) => {
      const k = at('kitnet (tcx)', n, null);
      const nf = at('iptables-nft', n, true);
      const lg = at('iptables-legacy', n, true);
      return [String(n), fmt0(k?.connsPerS), k && k0 ? `${((100 * k.connsPerS) / k0.connsPerS).toFixed(0)}%` : '-',
        fmt0(nf?.connsPerS), fmt0(at('iptables-nft', n, false)?.connsPerS), fmt0(lg?.connsPerS), fmt0(at('iptables-legacy', n, false)?.connsPerS),
        k && nf ? `${(k.connsPerS / nf.connsPerS).toFixed(1)}x` : '-', k && lg ? `${(k.connsPerS / lg.connsPerS).toFixed(1)}x` : '-'];
    }));
  table('UDP request/response mean (p99) us, and TCP throughput Gbit/s (iperf3)',
    ['variant', 'N', 'ct-first', 'conn/s', 'UDP RR us', 'UDP p99 us', 'Gbit/s'],
    rows.map((r) => [r.variant, String(r.n), r.ctFirst === null ? '' : String(r.ctFirst), fmt0(r.connsPerS), fmt0(r.udpRrMeanUs, 1), fmt0(r.udpRrP99Us, 1), fmt0(r.tcpGbps, 2)]));
  if (bare && k0) {
    table('Datapath overhead: kitnet programs vs the bare veth path (target >= 90%)', ['metric', 'bare', 'kitnet', 'ratio'], [
      ['TCP Gbit/s', fmt0(bare.tcpGbps, 2), fmt0(k0.tcpGbps, 2), `${((100 * k0.tcpGbps) / bare.tcpGbps).toFixed(0)}%`],
      ['connections/s', fmt0(bare.connsPerS), fmt0(k0.connsPerS), `${((100 * k0.connsPerS) / bare.connsPerS).toFixed(0)}%`],
      ['UDP RR/s (1/mean)', fmt0(1e6 / bare.udpRrMeanUs), fmt0(1e6 / k0.udpRrMeanUs), `${((100 * bare.udpRrMeanUs) / k0.udpRrMeanUs).toFixed(0)}%`],
    ]);
  }
  resultWrite('netpath', { sizes, secs, rows });
}

await benchMain(main);
