// Hubble's gRPC API: flows per second streamed to one GetFlows --follow client, and the time from a
// packet's flow event to its arrival at that client (p50/p99). A real agent (in-process, own pin root)
// with two workloads; events are real datapath events (BPF_PROG_TEST_RUN of from_workload with TCP
// SYNs of new connections, one NEW event each), read by the agent's pipeline and sent over the agent's
// unix socket to a follower in its own process (bench/hubble-follower.ts, kitnet's grpc-js client).
//
// Throughput: for each offered rate, events are written every 10 ms for a few seconds; the follower
// reports what arrived and what it was told was lost (lost_events), and the kernel's EVENTS_LOST says
// what the ring buffer dropped. Latency: one SYN every 5 ms, every flow timed (its datapath timestamp
// to its arrival, same host clock).
//
//   node dist/bench/hubble.bench.js [rates=50000,100000,200000,400000] [--seconds=3] [--samples=1000]
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { ETH_P_IP, TCP, eth, ipv4, tcp } from '../test/root/bpf-helpers.js';
import { benchAgentPairStart } from './agent-pair.js';
import { MACHINE_LINE, argsParse, benchMain, fmt, resultWrite, sleep, stats, table } from './lib.js';

interface Report {
  flows: number;
  lost: number;
  latencyMs: number[];
}

/** The follower process and a way to ask it for its counts. */
function followerStart(target: string, every: number) {
  const script = fileURLToPath(new URL('./hubble-follower.js', import.meta.url));
  const child = spawn(process.execPath, [script, target, String(every)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const waiting: Array<(r: Report) => void> = [];
  createInterface({ input: child.stdout! }).on('line', (l) => waiting.shift()?.(JSON.parse(l) as Report));
  return {
    report: () => new Promise<Report>((resolve) => (waiting.push(resolve), child.stdin!.write('report\n'))),
    stop: () => (child.stdin!.end(), child.kill('SIGTERM')),
  };
}

async function main(): Promise<void> {
  const args = argsParse();
  const rates = args.sizes.length ? args.sizes : args.quick ? [50_000, 200_000] : [50_000, 100_000, 200_000, 400_000];
  const seconds = Number(args.opts.seconds ?? (args.quick ? 2 : 3));
  const samples = Number(args.opts.samples ?? (args.quick ? 300 : 1000));
  console.log(`Hubble gRPC follow: rates ${rates.join(', ')}/s for ${seconds} s each, ${samples} latency samples; ${MACHINE_LINE()}`);
  const { dir, daemon: agent, a, b } = await benchAgentPairStart({ tag: 'hb', ipv4Pool: '10.222.0.0/24', ipv6Pool: 'fd00:222::/64', overrides: { flows: { kernelRingBytes: 64 << 20 } } });
  const dp = agent.agent.kernel.datapath;
  const flows = agent.agent.flows;
  const ifindex = a.interfaces.host.ifindex!;
  let seq = 0;
  // A fresh 4-tuple per SYN: one NEW event each (source port x destination port cycle through 64M tuples).
  const generate = (k: number) => {
    for (let i = 0; i < k; i++, seq++) {
      const f = eth(ETH_P_IP, ipv4(a.ipv4, b.ipv4, 6, tcp(1024 + (seq % 64_000), 10_000 + (Math.floor(seq / 64_000) % 1000), TCP.SYN)), a.interfaces.workload.mac!, a.interfaces.host.mac!);
      dp.testRun('from_workload', f, { ifindex });
    }
  };
  const kernelLost = () => dp.metricsRead().EVENTS_LOST.packets;
  const target = `unix://${join(dir, 'hubble.sock')}`;

  const run = async (every: number, body: (f: ReturnType<typeof followerStart>) => Promise<unknown[]>) => {
    const f = followerStart(target, every);
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

  const rows: unknown[] = await run(16, async (f) => {
    const out = [];
    for (const rate of rates) {
      await f.report();
      const lost0 = kernelLost();
      const perTick = Math.round(rate / 100);
      const start = performance.now();
      let written = 0;
      // Ticks every 10 ms, catching up when a tick is late, so the offered rate holds on a loaded machine.
      // Written in slices of 500 with a turn of the event loop between them: the kernel writes events
      // while the agent runs, and so the serving (one thread with the generating) is not starved.
      while (performance.now() - start < seconds * 1000) {
        const due = (Math.floor((performance.now() - start) / 10) + 1) * perTick;
        while (written < due) {
          const k = Math.min(500, due - written);
          generate(k);
          written += k;
          await new Promise((r) => setImmediate(r));
        }
        await sleep(1);
      }
      const offeredS = (performance.now() - start) / 1000;
      // Until the follower has everything it will get: no change for 500 ms.
      let got: Report = { flows: 0, lost: 0, latencyMs: [] };
      for (let last = -1, still = 0; still < 5; ) {
        await sleep(100);
        const r = await f.report();
        got = { flows: got.flows + r.flows, lost: got.lost + r.lost, latencyMs: [...got.latencyMs, ...r.latencyMs] };
        still = got.flows + got.lost === last ? still + 1 : 0;
        last = got.flows + got.lost;
      }
      const deliveredS = (performance.now() - start) / 1000;
      const kLost = Number(kernelLost() - lost0);
      const lat = stats(got.latencyMs);
      out.push({ rate, written, offered: written / offeredS, received: got.flows, rate_received: got.flows / deliveredS, lost_follower: got.lost, lost_kernel: kLost, latency_p50_ms: lat.p50, latency_p99_ms: lat.p99 });
      console.log(`  offered ${fmt(written / offeredS)}/s: ${got.flows} of ${written} received, ${got.lost} reported lost to the follower, ${kLost} lost in the kernel ring; latency p50 ${fmt(lat.p50)} ms p99 ${fmt(lat.p99)} ms`);
      await sleep(200);
    }
    return out;
  });

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

  const r = rows as Array<Record<string, number>>;
  table(`Hubble GetFlows --follow to one client (own process, unix socket) — ${MACHINE_LINE()}`, ['offered/s', 'written', 'received', 'received/s', 'lost (follower queue)', 'lost (kernel ring)', 'latency p50 / p99 ms (loaded)'],
    r.map((x) => [fmt(x.offered), x.written!, x.received!, fmt(x.rate_received), x.lost_follower!, x.lost_kernel!, `${fmt(x.latency_p50_ms)} / ${fmt(x.latency_p99_ms)}`]));
  table('Packet (datapath event) to flow at the following client, 1 SYN every 5 ms', ['samples', 'p50 ms', 'p90 ms', 'p99 ms', 'max ms', 'target'], [[l.n, fmt(l.p50), fmt(l.p90), fmt(l.p99), fmt(l.max), 'p99 <= 50 ms']]);
  resultWrite('hubble', { rates: rows, latency: l });
}

await benchMain(main);
