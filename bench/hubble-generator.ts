// The Hubble bench's event generator in a worker thread: BPF_PROG_TEST_RUN of from_workload with one
// TCP SYN repeated (every run reports an event: flows.aggregation every-packet), a fresh 4-tuple per
// call, paced in 10 ms ticks for a given rate and time. On its own thread the kernel work of making
// events does not take the agent's thread, as the datapath's softirqs do not in production. The
// program's fd is the agent's (one process: descriptors are shared by threads).
//   main -> worker {rate, seconds}; worker -> main {generated}
import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../common/native.js';
import { ETH_P_IP, TCP, eth, ipv4, tcp } from '../test/root/bpf-helpers.js';

const { fd, ifindex, src, dst, srcMac, dstMac } = workerData as { fd: number; ifindex: number; src: string; dst: string; srcMac: string; dstMac: string };
const SKB_IFINDEX_OFFSET = 40;
const ctx = Buffer.alloc(192);
ctx.writeUInt32LE(ifindex, SKB_IFINDEX_OFFSET);
let seq = 0;

function generate(k: number): void {
  for (let left = k; left > 0; seq++) {
    const repeat = Math.min(500, left);
    const f = eth(ETH_P_IP, ipv4(src, dst, 6, tcp(1024 + (seq % 64_000), 20_000 + (Math.floor(seq / 64_000) % 1000), TCP.SYN)), srcMac, dstMac);
    try {
      native().progTestRun(fd, f, ctx, repeat);
    } catch (err) {
      // a signal (the profiler's) ends a repeated run early: what it wrote is counted by EVENTS_SENT
      if ((err as { code?: string }).code !== 'EINTR') throw err;
    }
    left -= repeat;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

parentPort!.on('message', async ({ rate, seconds }: { rate: number; seconds: number }) => {
  const perTick = rate / 100;
  const start = performance.now();
  let written = 0;
  // ticks of 10 ms, catching up when one is late, so the offered rate holds on a loaded machine
  while (performance.now() - start < seconds * 1000) {
    const due = Math.round((Math.floor((performance.now() - start) / 10) + 1) * perTick);
    if (due > written) {
      generate(due - written);
      written = due;
    }
    await sleep(1);
  }
  parentPort!.postMessage({ generated: written });
});
