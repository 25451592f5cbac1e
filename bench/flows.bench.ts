// Flow pipeline: events decoded and enriched per second on one core (the agent's main thread) from the
// kernel ring buffer, and lost events counted. A real agent (in-process, own pin root) with two
// workloads; events are real datapath events: BPF_PROG_TEST_RUN of from_workload on the first
// workload's host device with TCP SYNs of new connections to the second (one NEW event each).
//
// Each cycle writes K events while the main thread is busy (the reader cannot run), then times how
// long the agent's FlowPipeline (ring buffer -> decode -> enrich with names/labels -> flow ring) takes
// to process them: that is the consumer's rate on one core. Three variants take turns, cycle by
// cycle: the pipeline as it is (records kept lazily, metrics counted per batch); the same with an idle
// follower attached (so every event is enriched, not only the newest ring-full of a big wakeup); and
// as a baseline, the old per-event work added back (every event built into Hubble's JSON object with
// time string and uuid, and counted in prom-client one flow at a time). A last phase overfills the
// ring buffer without reading and checks that every event is either processed or counted as lost.
//
//   node dist/bench/flows.bench.js [K events per cycle=40000] [--cycles=C] [--profile]
import type { HubbleFlowRecord } from '../agent/flows/hubble.js';
import { ETH_P_IP, TCP, eth, ipv4, tcp } from '../test/root/bpf-helpers.js';
import { benchAgentPairStart } from './agent-pair.js';
import { MACHINE_LINE, argsParse, benchMain, fmt, profiled, resultWrite, sleep, stats, table } from './lib.js';

async function main(): Promise<void> {
  const args = argsParse();
  const perCycle = args.sizes[0] ?? 40_000;
  const cycles = Number(args.opts.cycles ?? (args.quick ? 5 : 20));
  console.log(`flow pipeline: ${cycles} cycles x ${perCycle} events; ${MACHINE_LINE()}`);
  const { daemon: agent, a, b } = await benchAgentPairStart({ tag: 'fl', ipv4Pool: '10.221.0.0/24', ipv6Pool: 'fd00:221::/64' });
  const dp = agent.agent.kernel.datapath;
  const flows = agent.agent.flows;
  const ifindex = a.interfaces.host.ifindex!;
  const mac = a.interfaces.workload.mac!;
  const hostMac = a.interfaces.host.mac!;
  let port = 0;
  let seq = 0;
  const generate = (k: number) => {
    for (let i = 0; i < k; i++) {
      port = (port + 1) % 64_000;
      // a fresh 4-tuple per SYN (conntrack is flushed between phases): one NEW event each
      const f = eth(ETH_P_IP, ipv4(a.ipv4, b.ipv4, 6, tcp(1024 + port, 8000 + (Math.floor(seq++ / 64_000) % 1000), TCP.SYN)), mac, hostMac);
      dp.testRun('from_workload', f, { ifindex });
    }
  };
  const lostKernel = () => dp.metricsRead().EVENTS_LOST.packets;

  const metrics = agent.agent.metrics;
  const eager = (rec: HubbleFlowRecord) => {
    void rec.flow;
    metrics.flowObserve(rec);
  };
  // A follower that takes every record but reads nothing: every event is enriched (without one, a
  // wakeup with more events than the flow ring holds enriches only the newest ring-full).
  const idle = () => undefined;
  const variants = [
    { label: 'lazy pipeline', profile: 'flows-consume', listener: undefined },
    { label: 'lazy pipeline, idle follower', profile: 'flows-consume-followed', listener: idle },
    { label: 'eager per-event baseline', profile: 'flows-consume-eager', listener: eager },
  ] as const;
  /** Events per second of wall time, and per second of this process's CPU time (user + system). */
  const measured = variants.map(() => ({ rates: [] as number[], cpuRates: [] as number[] }));
  // Warm-up (JIT, maps), then the timed cycles, the variants taking turns so that the shared
  // machine's load swings hit them alike.
  dp.conntrackFlush();
  generate(2000);
  await sleep(200);
  const lost0 = lostKernel();
  for (let c = 0; c < cycles; c++) {
    for (const [i, v] of variants.entries()) {
      if (v.listener) flows.on('flow', v.listener);
      dp.conntrackFlush();
      const before = flows.processed;
      generate(perCycle);
      const target = before + perCycle;
      const cpu = process.cpuUsage();
      const t = performance.now();
      await profiled(args.opts.profile !== undefined && c === cycles - 1, v.profile, async () => {
        while (flows.processed < target && performance.now() - t < 10_000) await new Promise((r) => setImmediate(r));
      });
      const ms = performance.now() - t;
      const used = process.cpuUsage(cpu);
      const got = flows.processed - before;
      measured[i]!.rates.push(got / (ms / 1000));
      measured[i]!.cpuRates.push(got / ((used.user + used.system) / 1e6));
      if (v.listener) flows.off('flow', v.listener);
    }
  }
  for (const [i, v] of variants.entries()) {
    console.log(`  ${v.label}: median ${(stats(measured[i]!.rates).p50 / 1000).toFixed(0)}k events/s, ${(stats(measured[i]!.cpuRates).p50 / 1000).toFixed(0)}k per CPU-second`);
  }
  const [{ rates, cpuRates }, { rates: ratesFollowed, cpuRates: cpuRatesFollowed }, { rates: ratesEager, cpuRates: cpuRatesEager }] = measured as [
    (typeof measured)[number], (typeof measured)[number], (typeof measured)[number],
  ];
  const lostDuring = Number(lostKernel() - lost0);

  // Overload: more than the ring buffer holds, not read meanwhile: every event the program tried to
  // write is either processed (EVENTS_SENT) or counted lost (EVENTS_LOST).
  dp.conntrackFlush();
  const sentBefore = dp.metricsRead().EVENTS_SENT.packets;
  const lostBefore = lostKernel();
  const procBefore = flows.processed;
  const over = 250_000;
  generate(over);
  await sleep(1500);
  const sent = Number(dp.metricsRead().EVENTS_SENT.packets - sentBefore);
  const lostOver = Number(lostKernel() - lostBefore);
  const processedOver = flows.processed - procBefore;
  await sleep(1100); // the pipeline's once-a-second lost check
  const r = stats(rates);
  const re = stats(ratesEager);
  const rc = stats(cpuRates);
  const rce = stats(cpuRatesEager);
  const rf = stats(ratesFollowed);
  const rcf = stats(cpuRatesFollowed);
  table(`Flow pipeline (decode + enrich + flow ring + metrics), one core — ${MACHINE_LINE()}`, ['metric', 'value', 'target'], [
    ['events/s, median of cycles', r.p50, '>= 500k'],
    ['events/s, min .. max', `${(r.min / 1000).toFixed(0)}k .. ${(r.max / 1000).toFixed(0)}k`, ''],
    ['with an idle follower (every event enriched): events/s, median', rf.p50, ''],
    ['baseline, eager Hubble JSON + per-event metrics: events/s, median', re.p50, ''],
    ['baseline: min .. max', `${(re.min / 1000).toFixed(0)}k .. ${(re.max / 1000).toFixed(0)}k`, ''],
    ['speed-up, lazy / eager (medians, same run)', `${(r.p50 / re.p50).toFixed(1)}x`, ''],
    ['events per CPU-second of the process, median (lazy / idle follower / eager)', `${fmt(rc.p50)} / ${fmt(rcf.p50)} / ${fmt(rce.p50)}`, '>= 500k'],
    ['lost in timed cycles', lostDuring, '0'],
    ['overload: events written to the ring (EVENTS_SENT)', sent, ''],
    ['overload: events lost, ring full (EVENTS_LOST)', lostOver, ''],
    ['overload: processed by the pipeline', processedOver, `= ${sent}`],
    ['pipeline lost counter (lost_events records)', flows.lost.PERF_EVENT_RING_BUFFER, ''],
  ]);
  resultWrite('flows', {
    perCycle, cycles, rates, eventsPerSecond: r.p50, lostDuring,
    cpuRates, eventsPerCpuSecond: rc.p50,
    idleFollower: { rates: ratesFollowed, eventsPerSecond: rf.p50, cpuRates: cpuRatesFollowed, eventsPerCpuSecond: rcf.p50 },
    baselineEager: { rates: ratesEager, eventsPerSecond: re.p50, cpuRates: cpuRatesEager, eventsPerCpuSecond: rce.p50 },
    overload: { syns: over, sent, processed: processedOver, lost: lostOver, accounted: processedOver === sent },
    targets: {
      eventsPerSecond: { target: 500_000, value: r.p50, met: r.p50 >= 500_000 },
      eventsPerCpuSecond: { target: 500_000, value: rc.p50, met: rc.p50 >= 500_000 },
    },
  });
}

await benchMain(main);
