import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { Status } from '../../common/schemas/status.js';
import type { Workload } from '../../common/schemas/workload.js';
import { AgentFixture } from '../helpers/fixture.js';
import { run, waitFor } from '../helpers/sys.js';

/**
 * Lost events are counted where they are lost: with a one-page kernel ring buffer and every packet
 * reported, a ping flood overruns the ring; the agent reports the loss in status, as `lost_events`
 * records on follow streams and in hubble_lost_events_total.
 */
describe('lost flow events with a tiny ring (root)', { timeout: 120_000 }, () => {
  const fx = new AgentFixture({
    tag: 'lost',
    ipv4Pool: '10.210.0.0/16',
    ipv6Pool: 'fd00:210::/64',
    namespaces: ['lost'],
    overrides: { flows: { ringCapacity: 64, aggregation: 'every-packet', kernelRingBytes: 4096 } },
  });
  const lines: string[] = [];
  const follow = new AbortController();
  let a: Workload;
  let b: Workload;
  let nsA: string;

  after(async () => {
    follow.abort();
    await fx.cleanup();
  });
  before(async () => {
    nsA = await fx.netns('a');
    const nsB = await fx.netns('b');
    await fx.start();
    a = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'a', namespace: 'lost', netns: `/var/run/netns/${nsA}` });
    b = await fx.api.call<Workload>('POST', '/v1/workloads', { name: 'b', namespace: 'lost', netns: `/var/run/netns/${nsB}` });
    void fx.api.stream('/v1/flows?follow=true', (l) => lines.push(l), follow.signal).catch(() => undefined);
  });

  test('a flood overruns the kernel ring; every place reports the loss', async () => {
    // Bursts of 64 echo requests at once: far more events than a 4 KiB ring holds between wakeups.
    await run('ip', ['netns', 'exec', nsA, 'ping', '-f', '-l', '64', '-c', '4000', '-q', b.ipv4], { timeoutMs: 60_000 }).catch(() => '');
    const status = await waitFor('lost events in status', async () => {
      const s = await fx.api.call<Status>('GET', '/v1/status');
      return s.counts.lostEvents > 0 ? s : undefined;
    });
    assert.ok(status.counts.flowsProcessed > 0, 'events were still processed');
    assert.ok(status.counts.flowsInRing <= 64, 'the agent ring keeps its configured capacity');
    const lost = await waitFor('a lost_events record on the follow stream', async () =>
      lines.map((l) => JSON.parse(l) as { lost_events?: { source: string; num_events_lost: number } }).find((r) => r.lost_events),
    );
    assert.equal(lost.lost_events!.source, 'PERF_EVENT_RING_BUFFER');
    assert.ok(lost.lost_events!.num_events_lost > 0);
    const metrics = await new Promise<string>((resolve, reject) => {
      let t = '';
      fx.api.stream('/metrics', (l) => (t += `${l}\n`)).then(() => resolve(t), reject);
    });
    const m = metrics.match(/^hubble_lost_events_total\{source="perf_event_ring_buffer"\} (\d+)/m);
    assert.ok(m && Number(m[1]) > 0, 'hubble_lost_events_total counts the kernel-side loss');
    assert.ok(a.ipv4);
  });
});
