// Flow events are submitted without waking the reader; a BPF timer wakes it about a millisecond after
// the first event it has not seen (bpf/include/events.h). These tests check that the wakeup happens: an
// event written while the reader sleeps arrives on its own (no later event or poll needed), and events
// written while the reader is busy all arrive once it looks again. How long it takes is measured by
// bench/flow-latency.bench.ts, not asserted here. Real kernel, temporary pin root; the skb appears on `lo` (ifindex 1).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { FlowEvent, FlowReader, KitnetDatapath } from '../../bpf/index.js';
import { datapathLoad, datapathUnpinAll } from '../../bpf/index.js';
import { TCX_PASS } from '../../bpf/layout.gen.js';
import { ETH_P_IP, TCP, eth, ipv4, policyAllowAll, tcp } from './bpf-helpers.js';

const LO = 1;
const EP = { endpointId: 12, identity: 4101, ipv4: '10.252.0.2', ipv6: 'fd00:252::2', mac: '02:00:00:00:00:02', flags: 0 };
const REMOTE4 = '10.253.0.9';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('flow event wakeups (BPF_PROG_TEST_RUN)', { timeout: 60_000 }, () => {
  const pinRoot = `/sys/fs/bpf/kitnet-test-wakeup-${process.pid}`;
  let dp: KitnetDatapath;
  let reader: FlowReader;
  const got: FlowEvent[] = [];
  let port = 20_000;

  before(async () => {
    await datapathUnpinAll(pinRoot);
    dp = await datapathLoad({ pinRoot });
    dp.endpointUpsert(LO, EP);
    policyAllowAll(dp, EP.endpointId);
    reader = dp.flowsRead((evs) => got.push(...evs));
  });
  after(async () => {
    reader?.close();
    dp?.close();
    await datapathUnpinAll(pinRoot);
  });

  /** A new connection: one event (REPORT_NEW). */
  function syn(): number {
    const p = port++;
    const r = dp.testRun('from_workload', eth(ETH_P_IP, ipv4(EP.ipv4, REMOTE4, 6, tcp(p, 443, TCP.SYN))));
    assert.equal(r.retval, TCX_PASS);
    return p;
  }

  /** Whether the event arrives by the deadline (far beyond the ~4 ms wakeup: a lost wakeup never comes). */
  async function arrival(srcPort: number, timeoutMs: number): Promise<boolean> {
    const t0 = performance.now();
    while (performance.now() - t0 < timeoutMs) {
      if (got.some((e) => e.srcPort === srcPort)) return true;
      await sleep(1);
    }
    return false;
  }

  test('an event written while the reader sleeps reaches it on its own', async () => {
    for (let i = 0; i < 20; i++) {
      await sleep(i % 2 ? 30 : 3); // the reader idle for longer and shorter than the wakeup delay
      const p = syn();
      assert.ok(await arrival(p, 2000), `event ${i} never reached the reader`);
    }
  });

  test('events written while the reader is busy all arrive once it looks again', async () => {
    got.length = 0;
    const lostBefore = reader.lostEvents();
    const ports = new Set<number>();
    // The event loop is blocked for the whole burst: the reader cannot run until it ends.
    for (let i = 0; i < 500; i++) ports.add(syn());
    const t0 = performance.now();
    while (got.filter((e) => ports.has(e.srcPort)).length < ports.size && performance.now() - t0 < 5000) await sleep(2);
    assert.equal(got.filter((e) => ports.has(e.srcPort)).length, ports.size);
    assert.equal(reader.lostEvents() - lostBefore, 0n);
    // and the next lone event after the burst still gets its own wakeup
    const p = syn();
    assert.ok(await arrival(p, 2000), 'the event after the burst arrived');
  });
});
