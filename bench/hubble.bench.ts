// Hubble's gRPC API: flows per second streamed to one GetFlows --follow client, and the time from a
// packet's flow event to its arrival at that client (p50/p99). A real agent (in-process, own pin root)
// with two workloads; events are real datapath events (BPF_PROG_TEST_RUN of from_workload with a TCP
// SYN, `flows.aggregation: every-packet` so every run reports one; a run repeated up to 500 times per
// call, a fresh 4-tuple per call), read by the agent's pipeline and sent over the agent's unix socket
// to a follower in its own process (bench/hubble-follower.ts, kitnet's grpc-js client). The generator
// shares the agent's thread (the kernel runs the program in the caller's syscall): repeated runs
// keep its share small (~1 µs an event), where one syscall and frame per SYN capped the offer at
// 20-45k/s.
//
// Throughput: for each offered rate, events are written every 10 ms for a few seconds; the follower
// reports what arrived and what it was told was lost (lost_events), and the kernel's EVENTS_LOST says
// what the ring buffer dropped. Latency: one SYN every 5 ms, every flow timed (its datapath timestamp
// to its arrival, same host clock).
// Cost: the agent's thread busy time per event (the event loop utilization's active time over the
// phase, generating and serving) and the process CPU per event (every thread), which compare trees at
// a rate neither loses at, where received-of-written swings from run to run.
//
//   node dist/bench/hubble.bench.js [rates=50000,100000,200000,400000] [--seconds=3] [--samples=1000] [--rounds=1] [--label=NAME]
//                                   [--client=http2|grpc-js] [--generator=worker|main] [--profile] [--follow-queue=N] [--warmup=S]
//                                   [--warm-flows=N] [--timeline]
// --generator: the events are made on the agent's thread, in slices between its turns (main, default:
// the agent's thread pays for making them too, ~1 µs an event) or on a worker thread (worker);
// --rounds=R repeats the whole rate sweep R times; --label names the run in its rows (two trees
// compared run by run, bench/README.md); --client=grpc-js follows with kitnet's grpc-js client instead of node:http2;
// --follow-queue sets the agent's hubble.followQueue (flows a follower may fall behind; default the config's);
// --profile writes a CPU profile of the agent's thread during the sweep (bench/results/hubble-follow.cpuprofile);
// --warmup=S offers the first rate for S seconds before the sweep, not measured (0, the default: a fresh
// agent's first phase also pays V8's compiling of the pipeline and the first slabs);
// --timeline prints each phase per 100 ms: the agent thread's busy share, the events written, what the
// follower received and lost and its CPU time; --warm-flows sets the agent's hubble.warmFlows (made-up
// flows run through the flow path when it starts serving, api/hubble/warm.ts; 0 turns that off).
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ETH_P_IP, TCP, eth, ipv4, tcp } from '../test/root/bpf-helpers.js';
import { benchAgentPairStart } from './agent-pair.js';
import { launcherStart, type Launcher } from './launcher.js';
import { MACHINE_LINE, argsParse, benchMain, fmt, onCleanup, profiled, resultWrite, sleep, stats, table, threadSched, threadSchedSince } from './lib.js';

interface Row {
  round: number;
  variant: string;
  rate: number;
  written: number;
  offered: number;
  received: number;
  rate_received: number;
  lost_follower: number;
  lost_kernel: number;
  latency_p50_ms: number;
  latency_p99_ms: number;
  /** The agent's thread busy (event loop not waiting), per event written: generating, serving, writing. */
  thread_us_per_flow: number;
  /**
   * Of that, the time the thread ran on a CPU, per event; and the time it waited for one once woken
   * or was preempted, over the phase, ms (/proc/thread-self/schedstat). The busy time above also counts
   * the time the thread was preempted while busy: when it exceeds the time on a CPU, the machine took it.
   */
  thread_oncpu_us_per_flow: number;
  thread_wait_ms: number;
  /** The agent's process CPU (every thread, user + system), per event written. */
  cpu_us_per_flow: number;
  /** Minor page faults of the agent's process during the phase (~11-18 µs each on this VM). */
  page_faults: number;
  /** The follower process's CPU per flow it received, and its share of a core while the events were written. */
  follower_cpu_us_per_flow: number;
  follower_busy_offering: number;
}

interface Report {
  flows: number;
  lost: number;
  latencyMs: number[];
  /** the follower process's CPU time since its last report */
  cpuUs: number;
}

/** Adds b's counts to a (returned). */
function reportAdd(a: Report, b: Report): Report {
  a.flows += b.flows;
  a.lost += b.lost;
  for (const l of b.latencyMs) a.latencyMs.push(l);
  a.cpuUs += b.cpuUs;
  return a;
}

/** The follower process and a way to ask it for its counts. */
function followerStart(launcher: Launcher, target: string, every: number, client: string) {
  const script = fileURLToPath(new URL('./hubble-follower.js', import.meta.url));
  const child = launcher.spawn(process.execPath, [script, target, String(every), client]);
  const waiting: Array<(r: Report) => void> = [];
  child.on('line', (l) => waiting.shift()?.(JSON.parse(l) as Report));
  return {
    report: () => new Promise<Report>((resolve) => (waiting.push(resolve), child.write('report\n'))),
    stop: () => (child.end(), child.kill('SIGTERM')),
  };
}

/**
 * --timeline: every 100 ms of a phase, the agent thread's busy share, the events written so far, and
 * what the follower took in that window (its report resets its counts: the phase's totals still add up).
 */
function timelineStart(start: number, written: () => number, f: ReturnType<typeof followerStart>) {
  let elu = performance.eventLoopUtilization();
  let last = start;
  const pending: Array<Promise<string>> = [];
  const taken: Report = { flows: 0, lost: 0, latencyMs: [], cpuUs: 0 };
  return {
    tick(): void {
      if (performance.now() - last < 100) return;
      const busy = performance.eventLoopUtilization(elu).utilization;
      elu = performance.eventLoopUtilization();
      last = performance.now();
      const head = `    ${String(Math.round(last - start)).padStart(5)} ms: agent thread ${fmt(100 * busy)} % busy, ${written()} written; follower`;
      pending.push(
        f.report().then((r) => {
          reportAdd(taken, r);
          return `${head} received ${r.flows}, lost ${r.lost}, CPU ${fmt(r.cpuUs / 1000)} ms`;
        }),
      );
    },
    /** The lines, and what the follower reported to them (the phase's counts add it). */
    end: async (): Promise<{ text: string; taken: Report }> => ({ text: (await Promise.all(pending)).join('\n'), taken }),
  };
}

async function main(): Promise<void> {
  const args = argsParse();
  const rates = args.sizes.length ? args.sizes : args.quick ? [50_000, 200_000] : [50_000, 100_000, 200_000, 400_000];
  const seconds = Number(args.opts.seconds ?? (args.quick ? 2 : 3));
  const samples = Number(args.opts.samples ?? (args.quick ? 300 : 1000));
  const client = args.opts.client ?? 'http2';
  console.log(`Hubble gRPC follow: rates ${rates.join(', ')}/s for ${seconds} s each, ${samples} latency samples, generator on ${args.opts.generator === 'worker' ? 'a worker' : "the agent's"} thread, follower ${args.opts.client ?? 'http2'}, follow queue ${args.opts['follow-queue'] ?? 'the default'}; ${MACHINE_LINE()}`);
  // The follower starts from a helper started before the agent (launcher.ts: a fork from this process
  // once the agent is in it costs the agent a page fault per page it writes next).
  const launcher = launcherStart();
  onCleanup('launcher', () => launcher.stop());
  const { dir, daemon: agent, a, b } = await benchAgentPairStart({ tag: 'hb', ipv4Pool: '10.222.0.0/24', ipv6Pool: 'fd00:222::/64', overrides: { flows: { kernelRingBytes: 64 << 20, aggregation: 'every-packet' }, hubble: { ...(args.opts['follow-queue'] ? { followQueue: Number(args.opts['follow-queue']) } : {}), ...(args.opts['warm-flows'] ? { warmFlows: Number(args.opts['warm-flows']) } : {}) } } });
  const dp = agent.agent.kernel.datapath;
  const flows = agent.agent.flows;
  const ifindex = a.interfaces.host.ifindex!;
  let seq = 0;
  // k events: runs of one SYN, up to 500 per call, a fresh 4-tuple per call (every run reports: every-packet).
  const generate = (k: number) => {
    for (let left = k; left > 0; seq++) {
      const repeat = Math.min(500, left);
      const f = eth(ETH_P_IP, ipv4(a.ipv4, b.ipv4, 6, tcp(1024 + (seq % 64_000), 10_000 + (Math.floor(seq / 64_000) % 1000), TCP.SYN)), a.interfaces.workload.mac!, a.interfaces.host.mac!);
      try {
        dp.testRun('from_workload', f, { ifindex, repeat });
      } catch (err) {
        // a signal (the profiler's) ends a repeated run early: what it wrote is counted by EVENTS_SENT
        if ((err as { errnoName?: string }).errnoName !== 'EINTR') throw err;
      }
      left -= repeat;
    }
  };
  // The generator on the agent's thread, or with --generator=worker on its own (bench/hubble-generator.ts,
  // with the agent's program fd taken from the datapath object: private, a bench-only reach). On this
  // 2-core machine the worker takes the core the follower needs (bench/README.md, section 7), so the
  // default stays on the agent's thread.
  const onMain = args.opts.generator !== 'worker';
  const worker = onMain ? undefined : new Worker(fileURLToPath(new URL('./hubble-generator.js', import.meta.url)), {
    workerData: { fd: (dp as unknown as { obj: { progFds: Record<string, number> } }).obj.progFds.from_workload, ifindex, src: a.ipv4, dst: b.ipv4, srcMac: a.interfaces.workload.mac!, dstMac: a.interfaces.host.mac! },
  });
  if (worker) onCleanup('generator', () => worker.terminate());
  const offerOnWorker = (rate: number, s: number) =>
    new Promise<void>((resolve, reject) => (worker!.once('message', () => resolve()), worker!.once('error', reject), worker!.postMessage({ rate, seconds: s })));
  const kernelLost = () => dp.metricsRead().EVENTS_LOST.packets;
  const kernelSent = () => dp.metricsRead().EVENTS_SENT.packets;
  const target = `unix://${join(dir, 'hubble.sock')}`;

  const run = async (every: number, body: (f: ReturnType<typeof followerStart>) => Promise<unknown[]>) => {
    const f = followerStart(launcher, target, every, client);
    try {
      const before = flows.listenerCount('flow');
      for (let i = 0; flows.listenerCount('flow') === before; i++) {
        if (i > 500) throw new Error('the follower did not subscribe within 5 s');
        await sleep(10);
      }
      return await body(f);
    } finally {
      f.stop();
    }
  };

  const rounds = Number(args.opts.rounds ?? 1);
  const rows: unknown[] = await profiled(!!args.opts.profile, 'hubble-follow', () => run(16, async (f) => {
    const out = [];
    const variant = String(args.opts.label ?? 'run');
    const warmup = Number(args.opts.warmup ?? 0);
    if (!(warmup >= 0)) throw new Error(`--warmup=${args.opts.warmup}: seconds (0 or more)`);
    const phases: Array<{ round: number; rate: number; secs: number; measured: boolean }> = [];
    if (warmup > 0) phases.push({ round: -1, rate: rates[0]!, secs: warmup, measured: false });
    for (let round = 0; round < rounds; round++) for (const rate of rates) phases.push({ round, rate, secs: seconds, measured: true });
    for (const { round, rate, secs, measured } of phases) {
      await f.report();
      const lost0 = kernelLost();
      const sent0 = kernelSent();
      const perTick = Math.round(rate / 100);
      const elu0 = performance.eventLoopUtilization();
      const sched0 = threadSched();
      const cpu0 = process.cpuUsage();
      const faults0 = process.resourceUsage().minorPageFault;
      const start = performance.now();
      let written = 0;
      const timeline = args.opts.timeline ? timelineStart(start, () => Number(kernelSent() - sent0), f) : undefined;
      if (worker) await offerOnWorker(rate, secs);
      // Ticks every 10 ms, catching up when a tick is late, so the offered rate holds on a loaded machine.
      // Written in slices of 500 with a turn of the event loop between them: the kernel writes events
      // while the agent runs, and so the serving (one thread with the generating) is not starved.
      while (!worker && performance.now() - start < secs * 1000) {
        const due = (Math.floor((performance.now() - start) / 10) + 1) * perTick;
        while (written < due) {
          const k = Math.min(500, due - written);
          generate(k);
          written += k;
          await new Promise((r) => setImmediate(r));
        }
        await sleep(1);
        timeline?.tick();
      }
      const offeredS = (performance.now() - start) / 1000;
      const beforeEnd = timeline ? await timeline.end() : undefined;
      if (beforeEnd) console.log(beforeEnd.text);
      // the events the datapath wrote to the ring (exact, also when a run was cut short)
      written = Number(kernelSent() - sent0);
      // Until the follower has everything it will get: no change for 500 ms.
      // what the follower took while the events were written: its CPU then says whether it kept up
      let got: Report = await f.report();
      if (beforeEnd) got = reportAdd(beforeEnd.taken, got);
      const followerBusy = got.cpuUs / 1e6 / offeredS;
      for (let last = -1, still = 0; still < 5; ) {
        await sleep(100);
        const r = await f.report();
        got = reportAdd(got, r);
        still = got.flows + got.lost === last ? still + 1 : 0;
        last = got.flows + got.lost;
      }
      const deliveredS = (performance.now() - start) / 1000;
      const busyMs = performance.eventLoopUtilization(elu0).active;
      const sched = threadSchedSince(sched0);
      const cpu = process.cpuUsage(cpu0);
      const faults = process.resourceUsage().minorPageFault - faults0;
      const threadUs = (busyMs * 1000) / written;
      const cpuUs = (cpu.user + cpu.system) / written;
      const kLost = Number(kernelLost() - lost0);
      const lat = stats(got.latencyMs);
      if (measured) out.push({ round, variant, rate, written, offered: written / offeredS, received: got.flows, rate_received: got.flows / deliveredS, lost_follower: got.lost, lost_kernel: kLost, latency_p50_ms: lat.p50, latency_p99_ms: lat.p99, thread_us_per_flow: threadUs, thread_oncpu_us_per_flow: sched.runNs / 1000 / written, thread_wait_ms: sched.waitNs / 1e6, cpu_us_per_flow: cpuUs, page_faults: faults, follower_cpu_us_per_flow: got.cpuUs / Math.max(1, got.flows), follower_busy_offering: followerBusy });
      console.log(`  ${measured ? `round ${round}` : `warm-up (${secs} s, not measured)`} ${variant} offered ${fmt(written / offeredS)}/s: ${got.flows} of ${written} received, ${got.lost} reported lost to the follower, ${kLost} lost in the kernel ring; latency p50 ${fmt(lat.p50)} ms p99 ${fmt(lat.p99)} ms; agent thread ${fmt(threadUs)} µs/event (on a CPU ${fmt(sched.runNs / 1000 / written)}, waiting for one ${fmt(sched.waitNs / 1e6)} ms in the phase), CPU ${fmt(cpuUs)} µs/event, page faults ${faults}; follower CPU ${fmt(got.cpuUs / Math.max(1, got.flows))} µs/flow, ${fmt(100 * followerBusy)} % of a core while written`);
      await sleep(200);
    }
    return out;
  }));

  const latency = (await run(1, async (f) => {
    await f.report();
    for (let i = 0; i < samples; i++) {
      generate(1);
      await sleep(5);
    }
    await sleep(500);
    return (await f.report()).latencyMs;
  })) as number[];
  const l = stats(latency);

  table(`Hubble GetFlows --follow to one client (own process, ${client} over the unix socket) — ${MACHINE_LINE()}`, ['round', 'variant', 'set/s', 'offered/s', 'written', 'received', 'received/s', 'lost (follower queue)', 'lost (kernel ring)', 'latency p50 / p99 ms (loaded)', 'agent thread µs/event', 'of it on a CPU', 'agent thread waiting for a CPU, ms', 'agent CPU µs/event'],
    (rows as Row[]).map((x) => [x.round, x.variant, fmt(x.rate), fmt(x.offered), x.written, x.received, fmt(x.rate_received), x.lost_follower, x.lost_kernel, `${fmt(x.latency_p50_ms)} / ${fmt(x.latency_p99_ms)}`, fmt(x.thread_us_per_flow), fmt(x.thread_oncpu_us_per_flow), fmt(x.thread_wait_ms), fmt(x.cpu_us_per_flow)]));
  // per variant and rate: the median received/s over rounds (min-max)
  if (rounds > 1) {
    const groups = new Map<string, number[]>();
    for (const x of rows as Row[]) groups.set(`${x.variant} ${x.rate}`, [...(groups.get(`${x.variant} ${x.rate}`) ?? []), x.rate_received]);
    table('received/s, median (min-max) over rounds', ['variant', 'set/s', 'received/s'], [...groups].map(([k, v]) => {
      const [variant, rate] = k.split(' ');
      const st = stats(v);
      return [variant!, fmt(Number(rate)), `${fmt(st.p50)} (${fmt(st.min)}-${fmt(st.max)})`];
    }));
  }
  table('Packet (datapath event) to flow at the following client, 1 SYN every 5 ms', ['samples', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'target'], [[l.n, fmt(l.p50), fmt(l.p90), fmt(l.p99), fmt(l.max), 'p99 <= 50 ms']]);
  resultWrite('hubble', { rates: rows, latency: l });
}

await benchMain(main);
