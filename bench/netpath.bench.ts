// Real traffic between two network-namespace workloads routed through the host (client C -> host ->
// server S), in one run:
//   - bare: a plain veth pair per namespace, no programs, no firewall rules (the floor);
//   - kitnet: a second pair of namespaces registered with an in-process agent (veth + tcx programs),
//     the server selected by a CiliumNetworkPolicy with N ingress allow rules: N-1 fromCIDR /32 peers
//     and the client's endpoint last (N policy entries and N-1 CIDR identities in ipcache); at the
//     largest N also with the agent's flow reader stopped (the cost of reporting every connection);
//   - iptables-nft and iptables-legacy on the plain veths: N allow rules for N peers in a chain of our
//     own (KNB-<run>) jumped to from FORWARD, the matching rule last, then DROP to the server; with a
//     conntrack ESTABLISHED,RELATED accept as the first rule (as real firewalls have) and without it.
//     Rules are loaded only while their variant is measured.
// Figures: new TCP connections/s (connect, then close with RST; bench/loadgen.c), UDP 1-byte
// request/response latency, TCP throughput (iperf3).
// Variants are interleaved: each round measures every variant at every N in the same order (bare,
// kitnet, nft, legacy, ...), so that a change in the machine's load hits all of them; figures are the
// median (min-max) over rounds, ratios (kitnet/bare: the datapath overhead) are taken within each
// round and then summarised, and a ratio whose spread covers its target says so.
//
//   node dist/bench/netpath.bench.js [N[,N...]=10,1000,10000,30000] [--rounds=R (5)] [--secs=S (5)] [--only=bare,kitnet,nft,legacy] [--concurrency=C (1)] [--profile]
// --concurrency: connects in flight in the conn/s phase (loadgen tcp-conn's CONCURRENCY): 1, the default,
// is one blocking connect after the other, whose handshake wait bounds the rate; more keep the CPUs busy,
// so the flow reader's CPU shows in conn/s.
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
  MACHINE_LINE, REPO_ROOT, RUN_ID, aptEnsure, argsParse, benchMain, median, netnsAddMany, netnsDelMany, onCleanup, profiled, resultWrite, sh, sleep, table,
} from './lib.js';

interface Figures {
  connsPerS: number;
  connErrors: number;
  udpRrMeanUs: number;
  udpRrP99Us: number;
  tcpGbps: number;
  /** kitnet only: this process's CPU (the in-process agent: its flow reader) per connection, and the
   *  flow events the datapath wrote or tried to write per connection, during the conn/s phase. */
  agentCpuUsPerConn?: number;
  eventsPerConn?: number;
}
interface Row extends Figures {
  round: number;
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
  const rounds = Number(args.opts.rounds ?? (args.quick ? 3 : 5));
  if (!Number.isInteger(rounds) || rounds < 1) throw new Error(`--rounds: a whole number >= 1, not ${args.opts.rounds}`);
  const only = new Set((args.opts.only ?? 'bare,kitnet,nft,legacy').split(','));
  const concurrency = Number(args.opts.concurrency ?? 1);
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 1024) throw new Error(`--concurrency: a whole number from 1 to 1024, not ${args.opts.concurrency}`);
  console.log(`network path: N=${sizes.join(',')}, ${rounds} rounds, ${secs} s per figure, ${concurrency} connect(s) in flight; ${MACHINE_LINE()}`);
  await aptEnsure([{ cmd: 'iperf3', pkg: 'iperf3' }, { cmd: 'iptables-legacy', pkg: 'iptables' }]);

  const tmp = mkdtempSync(join(tmpdir(), 'kitnet-bench-np-'));
  onCleanup('tmp', () => rmSync(tmp, { recursive: true, force: true }));
  const loadgen = join(tmp, 'loadgen');
  await sh('cc', ['-O2', '-o', loadgen, join(REPO_ROOT, 'bench', 'loadgen.c')]);

  const nsC = `kb-np-${RUN_ID}-c`;
  const nsS = `kb-np-${RUN_ID}-s`;
  // kitnet's workloads: a second pair, up for the whole run beside the plain one
  const nsKC = `kb-np-${RUN_ID}-kc`;
  const nsKS = `kb-np-${RUN_ID}-ks`;
  onCleanup('namespaces', () => netnsDelMany([nsC, nsS]));
  await netnsAddMany([nsC, nsS]);
  for (const ns of [nsC, nsS]) await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);

  // Servers in each server namespace, started once: they listen on any address and outlive rule changes.
  const servers: ChildProcess[] = [];
  onCleanup('servers', () => servers.forEach((p) => p.kill('SIGKILL')));
  const serve = (ns: string, cmd: string, argv: string[]) => {
    servers.push(spawn('ip', ['netns', 'exec', ns, cmd, ...argv], { stdio: 'ignore' }));
  };
  const serverCommands: Array<[string, string[]]> = [
    [loadgen, ['tcp-server', String(PORT_TCP)]],
    [loadgen, ['udp-server', String(PORT_UDP)]],
    ['iperf3', ['-s', '-p', String(PORT_IPERF)]],
  ];
  for (const [cmd, argv] of serverCommands) serve(nsS, cmd, argv);

  let profileNext = args.opts.profile !== undefined;
  let readerOn = true;
  const profileReader = () => readerOn;
  async function measure(clientNs: string, serverIp: string, eventsWritten?: () => number): Promise<Figures> {
    const inC = (cmd: string, argv: string[]) => sh('ip', ['netns', 'exec', clientNs, cmd, ...argv], { timeoutMs: (secs + 30) * 1000 });
    const kv = (s: string) => Object.fromEntries(s.trim().split(/\s+/).map((x) => x.split('=') as [string, string]));
    await inC(loadgen, ['tcp-conn', serverIp, String(PORT_TCP), '0.3']); // warm-up: neighbours, caches
    const cpu0 = process.cpuUsage();
    const ev0 = eventsWritten?.() ?? 0;
    // --profile: the in-process agent during the first kitnet conn/s phase with its reader
    const profile = profileNext && eventsWritten !== undefined && profileReader();
    if (profile) profileNext = false;
    const c = kv(await profiled(profile, 'netpath-kitnet-conn', () => inC(loadgen, ['tcp-conn', serverIp, String(PORT_TCP), String(secs), String(concurrency)])));
    const cpu = process.cpuUsage(cpu0);
    const conns = Number(c.conns);
    const perConn = eventsWritten && conns > 0
      ? { agentCpuUsPerConn: (cpu.user + cpu.system) / conns, eventsPerConn: (eventsWritten() - ev0) / conns }
      : {};
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
    return { connsPerS: Number(c.rate), connErrors: Number(c.errors), udpRrMeanUs: Number(u.mean_us), udpRrP99Us: Number(u.p99_us), tcpGbps: gbps, ...perConn };
  }

  const rows: Row[] = [];
  const report = (r: Row) => {
    rows.push(r);
    const perConn = r.eventsPerConn === undefined ? '' : `; per connection: ${r.eventsPerConn.toFixed(2)} events, agent CPU ${r.agentCpuUsPerConn!.toFixed(2)} us`;
    console.log(`  r${r.round} ${r.variant.padEnd(22)} N=${String(r.n).padEnd(6)} ${r.connsPerS.toFixed(0)} conn/s (${r.connErrors} err), UDP RR ${r.udpRrMeanUs.toFixed(1)} us (p99 ${r.udpRrP99Us.toFixed(1)}), ${r.tcpGbps.toFixed(2)} Gbit/s${perConn}`);
  };

  // --- plain veth topology (bare and iptables) in its own pair of namespaces, up for the whole run ---
  const C = { host: `knbc${RUN_ID}`.slice(0, 15), ip: '10.231.0.2', gw: '10.231.0.1' };
  const S = { host: `knbs${RUN_ID}`.slice(0, 15), ip: '10.231.1.2', gw: '10.231.1.1' };
  onCleanup('plain veths', async () => {
    for (const e of [C, S]) await sh('ip', ['link', 'del', e.host]).catch(() => undefined);
  });
  for (const [ns, e] of [[nsC, C], [nsS, S]] as const) {
    await sh('ip', ['link', 'add', e.host, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
    await sh('ip', ['addr', 'add', `${e.gw}/24`, 'dev', e.host]);
    await sh('ip', ['link', 'set', e.host, 'up']);
    await sh('ip', ['-n', ns, 'addr', 'add', `${e.ip}/24`, 'dev', 'eth0']);
    await sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
    await sh('ip', ['-n', ns, 'route', 'add', 'default', 'via', e.gw]);
  }
  await sh('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);

  const backends = [
    { name: 'iptables-nft', cmd: 'iptables-nft', restore: 'iptables-nft-restore', key: 'nft' },
    { name: 'iptables-legacy', cmd: 'iptables-legacy', restore: 'iptables-legacy-restore', key: 'legacy' },
  ].filter((b) => only.has(b.key));
  const rulesRemove = async (cmd: string) => {
    while ((await sh(cmd, ['-D', 'FORWARD', '-j', CHAIN]).then(() => true, () => false)));
    await sh(cmd, ['-F', CHAIN]).catch(() => undefined);
    await sh(cmd, ['-X', CHAIN]).catch(() => undefined);
  };
  for (const b of backends) onCleanup(`${b.name} rules`, () => rulesRemove(b.cmd));
  /** Rules only while their variant is measured: a loaded conntrack rule would tax the others. */
  const rulesLoad = async (b: (typeof backends)[number], n: number, ctFirst: boolean) => {
    const lines = ['*filter', `:${CHAIN} - [0:0]`];
    if (ctFirst) lines.push(`-A ${CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT`);
    for (let i = 0; i < n - 1; i++) lines.push(`-A ${CHAIN} -s ${peer(i)}/32 -d ${S.ip}/32 -j ACCEPT`);
    lines.push(`-A ${CHAIN} -s ${C.ip}/32 -d ${S.ip}/32 -j ACCEPT`, `-A ${CHAIN} -d ${S.ip}/32 -j DROP`, `-I FORWARD 1 -j ${CHAIN}`, 'COMMIT', '');
    await sh(b.restore, ['--noflush'], { input: lines.join('\n'), timeoutMs: 600_000 });
  };

  // --- kitnet: a second pair of namespaces, workloads of an in-process agent, up for the whole run ---
  let kitnet: { setN: (n: number) => Promise<void>; server: Workload; readerStop: () => void; readerStart: () => void; eventsWritten: () => number } | undefined;
  if (only.has('kitnet')) {
    onCleanup('kitnet namespaces', () => netnsDelMany([nsKC, nsKS]));
    await netnsAddMany([nsKC, nsKS]);
    for (const ns of [nsKC, nsKS]) await sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
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
    const wc = await api.call<Workload>('POST', '/v1/workloads', { name: 'client', namespace: 'benchnp', labels: { role: 'client' }, netns: `/var/run/netns/${nsKC}` });
    const ws = await api.call<Workload>('POST', '/v1/workloads', { name: 'server', namespace: 'benchnp', labels: { role: 'server' }, netns: `/var/run/netns/${nsKS}` });
    onCleanup('workloads', async () => {
      for (const w of [wc, ws]) await api.call('DELETE', `/v1/workloads/benchnp/${w.name}`).catch(() => undefined);
    });
    for (const [cmd, argv] of serverCommands) serve(nsKS, cmd, argv);
    let applied = -1;
    kitnet = {
      server: ws,
      setN: async (n) => {
        if (n === applied) return;
        await api.call('PUT', '/v1/policies', {
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
        });
        applied = n;
      },
      // The agent's flow reader stopped: separates the datapath from the cost of reading and enriching
      // the flow events in the agent (same process, same 2 cores as the load generator).
      readerStop: () => {
        agent.agent.flows.stop();
        readerOn = false;
      },
      readerStart: () => {
        agent.agent.flows.start(agent.agent.kernel.datapath);
        readerOn = true;
      },
      // written + lost: what the datapath tried to report (without a reader the ring fills and the rest is lost)
      eventsWritten: () => {
        const m = agent.agent.kernel.datapath.metricsRead();
        return Number(m.EVENTS_SENT.packets + m.EVENTS_LOST.packets);
      },
    };
  }
  await sleep(300); // servers listening

  // --- rounds: every variant once per round and N, in the same order, so that drift in the machine's
  //     load hits all of them alike; ratios are taken within a round ---
  const nMax = sizes[sizes.length - 1]!;
  for (let round = 1; round <= rounds; round++) {
    console.log(`round ${round}/${rounds} (load ${MACHINE_LINE().split('load ')[1]})`);
    for (const n of sizes) {
      if (only.has('bare')) report({ round, variant: 'bare veth', n, ctFirst: null, ...(await measure(nsC, S.ip)) });
      if (kitnet) {
        await kitnet.setN(n);
        report({ round, variant: 'kitnet', n, ctFirst: null, ...(await measure(nsKC, kitnet.server.ipv4, kitnet.eventsWritten)) });
        if (n === nMax) {
          kitnet.readerStop();
          try {
            report({ round, variant: 'kitnet, no flow reader', n, ctFirst: null, ...(await measure(nsKC, kitnet.server.ipv4, kitnet.eventsWritten)) });
          } finally {
            kitnet.readerStart();
          }
        }
      }
      for (const ctFirst of [true, false]) {
        for (const b of backends) {
          await rulesLoad(b, n, ctFirst);
          try {
            report({ round, variant: b.name, n, ctFirst, ...(await measure(nsC, S.ip)) });
          } finally {
            await rulesRemove(b.cmd);
          }
        }
      }
    }
  }

  // --- summaries: median (min-max) over rounds per figure, and per-round ratios ---
  const series = (variant: string, n: number, ct: boolean | null) => rows.filter((r) => r.variant === variant && r.n === n && r.ctFirst === ct);
  const summary = (xs: number[]) => spreadOf(xs.filter((x) => Number.isFinite(x)));
  /** Per-round ratio a/b of one figure. */
  const ratio = (a: Row[], b: Row[], get: (r: Row) => number) =>
    summary(a.map((ra) => {
      const rb = b.find((x) => x.round === ra.round);
      return rb ? get(ra) / get(rb) : NaN;
    }));
  const conn = (r: Row) => r.connsPerS;
  const gbps = (r: Row) => r.tcpGbps;
  const rrRate = (r: Row) => 1e6 / r.udpRrMeanUs;
  const variants = [
    ['bare veth', null], ['kitnet', null], ['kitnet, no flow reader', null],
    ...backends.flatMap((b) => [[b.name, true], [b.name, false]] as const),
  ] as Array<readonly [string, boolean | null]>;
  table(`Figures per variant and N: median (min-max) over ${rounds} rounds — ${MACHINE_LINE()}`,
    ['variant', 'N', 'ct-first', 'conn/s', 'UDP RR mean us', 'TCP Gbit/s'],
    sizes.flatMap((n) => variants.flatMap(([v, ct]) => {
      const s = series(v, n, ct);
      if (!s.length) return [];
      return [[v, String(n), ct === null ? '' : String(ct), spreadText(summary(s.map(conn))), spreadText(summary(s.map((r) => r.udpRrMeanUs)), 1), spreadText(summary(s.map(gbps)), 2)]];
    })));
  const ratioRows: (string | number)[][] = [];
  const ratios: Record<string, Spread> = {};
  const ratioAdd = (name: string, n: number, target: number | undefined, s: Spread) => {
    ratios[`${name} N=${n}`] = s;
    ratioRows.push([name, String(n), `${pct(s.median)} (${pct(s.min)}-${pct(s.max)})`, target === undefined ? '' : `${pct(target)}`, spreadVerdict(s, target)]);
  };
  for (const n of sizes) {
    const k = series('kitnet', n, null);
    const bare = series('bare veth', n, null);
    if (k.length && bare.length) {
      ratioAdd('kitnet/bare conn/s', n, 0.9, ratio(k, bare, conn));
      ratioAdd('kitnet/bare TCP Gbit/s', n, 0.95, ratio(k, bare, gbps));
      ratioAdd('kitnet/bare UDP RR/s', n, 0.95, ratio(k, bare, rrRate));
    }
    for (const b of backends) {
      const ipt = series(b.name, n, true);
      if (k.length && ipt.length) ratioAdd(`kitnet/${b.name}(ct-first) conn/s`, n, undefined, ratio(k, ipt, conn));
    }
    const noReader = series('kitnet, no flow reader', n, null);
    if (k.length && noReader.length) ratioAdd('kitnet with/without flow reader conn/s', n, 0.95, ratio(k, noReader, conn));
  }
  table('Ratios, computed per round: median (min-max); target where the issue sets one', ['ratio', 'N', 'median (min-max)', 'target', 'what the spread allows'], ratioRows);
  // The reader's cost as CPU rather than as a difference of two noisy rates: this process's CPU during
  // the conn/s phase (the in-process agent; the harness only waits) per connection, and the agent's
  // share of a core at that rate. Flow events per connection: what the datapath wrote (or, without a
  // reader, tried to write).
  const med = (xs: number[]) => {
    const v = [...xs].sort((x, y) => x - y);
    return v.length ? `${v[(v.length - 1) >> 1]!.toFixed(2)} (${v[0]!.toFixed(2)}-${v[v.length - 1]!.toFixed(2)})` : '-';
  };
  const costRows = rows
    .filter((r) => r.eventsPerConn !== undefined)
    .reduce((acc, r) => acc.set(`${r.variant}\u0000${r.n}`, [...(acc.get(`${r.variant}\u0000${r.n}`) ?? []), r]), new Map<string, Row[]>());
  if (costRows.size) {
    table('Flow reporting per connection (conn/s phase): median (min-max) over rounds', ['variant', 'N', 'events / conn', 'agent CPU us / conn', 'agent CPU s/s'],
      [...costRows.values()].map((rs) => [rs[0]!.variant, String(rs[0]!.n), med(rs.map((r) => r.eventsPerConn!)),
        med(rs.map((r) => r.agentCpuUsPerConn!)), med(rs.map((r) => (r.agentCpuUsPerConn! * r.connsPerS) / 1e6))]));
  }
  resultWrite('netpath', { sizes, secs, rounds, concurrency, rows, ratios });
}

interface Spread {
  median: number;
  min: number;
  max: number;
  n: number;
}

function spreadOf(xs: number[]): Spread {
  return { median: median(xs), min: xs.length ? Math.min(...xs) : NaN, max: xs.length ? Math.max(...xs) : NaN, n: xs.length };
}

function spreadText(s: Spread, digits = 0): string {
  if (!s.n) return '-';
  return `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}-${s.max.toFixed(digits)})`;
}

const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(0)}%` : '-');

/**
 * What a ratio's spread over the rounds allows one to say against its target (or against 1, "no
 * difference"): met or missed in every round, or a spread wider than the difference it would claim.
 */
function spreadVerdict(s: Spread, target: number | undefined): string {
  if (!s.n) return '-';
  if (s.n < 3) return `only ${s.n} round(s): no claim`;
  const t = target ?? 1;
  if (s.min >= t) return target === undefined ? 'higher in every round' : 'met in every round';
  if (s.max < t) return target === undefined ? 'lower in every round' : 'missed in every round';
  return `spread (${pct(s.max - s.min)}) covers ${pct(t)}: not shown either way (median ${s.median >= t ? 'meets' : 'misses'})`;
}

await benchMain(main);
