// Flow latency: how long a flow takes to reach the agent and a client. Moved here from the root tests
// (bpf-events-wakeup, metrics), which keep the functional half (the event arrives, the follower gets
// it) and no longer assert a figure. A real agent (in-process, own pin root) with two workloads.
//
//   wakeup     one datapath event (BPF_PROG_TEST_RUN of a TCP SYN on the first workload's host device)
//              written while the agent's reader sleeps, to the FlowPipeline's 'flow' event. Events are
//              submitted without waking the reader; a BPF timer wakes it ~1 ms after the first unseen
//              one (bpf/include/events.h). The reader idles alternately shorter (3 ms) and longer
//              (30 ms) than that delay before each event.
//   follow     a new `GET /v1/flows?follow=true&protocol=icmp` client on the unix socket, then one
//              `ping -c 1` between the workloads: from the ping's start to the first line the client
//              reads (includes starting ping in the namespace).
//
//   node dist/bench/flow-latency.bench.js [samples=200] [--quick]
import { spawn } from 'node:child_process';
import type { HubbleFlowRecord } from '../agent/flows/hubble.js';
import { ETH_P_IP, TCP, eth, ipv4, tcp } from '../test/root/bpf-helpers.js';
import { benchAgentPairStart } from './agent-pair.js';
import { MACHINE_LINE, argsParse, benchMain, resultWrite, sleep, stats, table } from './lib.js';

/** Resolves with the milliseconds until `arrived()` holds (polled every ms), or NaN after 5 s. */
async function waitMs(t0: number, arrived: () => boolean): Promise<number> {
  while (performance.now() - t0 < 5000) {
    if (arrived()) return performance.now() - t0;
    await sleep(1);
  }
  return NaN;
}

async function main(): Promise<void> {
  const args = argsParse();
  const samples = args.sizes[0] ?? (args.quick ? 40 : 200);
  console.log(`flow latency: ${samples} samples each; ${MACHINE_LINE()}`);
  const { daemon: agent, api, a, b, namespaces: names } = await benchAgentPairStart({ tag: 'lat', ipv4Pool: '10.222.0.0/24', ipv6Pool: 'fd00:222::/64' });

  // wakeup: datapath event -> the agent's flow pipeline
  const dp = agent.agent.kernel.datapath;
  const seen = new Set<number>();
  const onFlow = (r: HubbleFlowRecord) => {
    const p = (r.flow.l4?.TCP as { source_port?: number } | undefined)?.source_port;
    if (p !== undefined) seen.add(p);
  };
  agent.agent.flows.on('flow', onFlow);
  const idle: Record<'3 ms' | '30 ms', number[]> = { '3 ms': [], '30 ms': [] };
  for (let i = 0; i < samples; i++) {
    const pause = i % 2 ? '30 ms' : '3 ms';
    await sleep(pause === '3 ms' ? 3 : 30);
    const port = 20_000 + i;
    const frame = eth(ETH_P_IP, ipv4(a.ipv4, b.ipv4, 6, tcp(port, 443, TCP.SYN)), a.interfaces.workload.mac!, a.interfaces.host.mac!);
    const t0 = performance.now();
    dp.testRun('from_workload', frame, { ifindex: a.interfaces.host.ifindex! });
    idle[pause].push(await waitMs(t0, () => seen.has(port)));
  }
  agent.agent.flows.off('flow', onFlow);

  // follow: a new client's first flow
  const follow: number[] = [];
  const followSamples = Math.max(5, Math.floor(samples / 10));
  for (let i = 0; i < followSamples; i++) {
    const ac = new AbortController();
    let lines = 0;
    const streaming = api.stream('/v1/flows?follow=true&protocol=icmp', () => lines++, ac.signal).catch(() => undefined);
    await sleep(50); // the request reaches the agent before the ping starts
    const t0 = performance.now();
    const ping = spawn('ip', ['netns', 'exec', names[0]!, 'ping', '-c', '1', '-W', '1', b.ipv4], { stdio: 'ignore' });
    follow.push(await waitMs(t0, () => lines > 0));
    ac.abort();
    await streaming;
    await new Promise((r) => (ping.exitCode === null ? ping.once('exit', r) : r(undefined)));
  }

  const rows = [
    ...Object.entries(idle).map(([pause, v]) => {
      const s = stats(v);
      return [`wakeup, reader idle ${pause} before the event`, s.n, s.p50, s.p90, s.p99, s.max];
    }),
    (() => {
      const s = stats(follow);
      return ['follow: new client, ping -> first line', s.n, s.p50, s.p90, s.p99, s.max];
    })(),
  ];
  table(`Flow latency (ms) — ${MACHINE_LINE()}`, ['path', 'n', 'p50', 'p90', 'p99', 'max'], rows);
  resultWrite('flow-latency', { samples, wakeupMs: idle, followFirstFlowMs: follow });
}

await benchMain(main);
