// A follow stream's queueing (api/hubble/follow-stream.ts), against a stand-in for grpc-js's call that
// completes writes only when the test says so (pure logic; test/unit/hubble-server.test.ts runs the same
// class behind a real grpc-js server and client): flows are encoded only while the bytes in flight stay
// under the limit, in order; past the queue flows are dropped, counted and reported; a slab is written
// again only after every byte on it was sent; end() sends what waits first; close() sends nothing more.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import type { ServerWritableStream } from '@grpc/grpc-js';
import type { HubbleFlowRecord, HubbleLostEventsRecord } from '../../agent/flows/hubble.js';
import { FollowStream, type FollowItem } from '../../api/hubble/follow-stream.js';
import type { ByteWriter } from '../../api/hubble/byte-writer.js';

/** A record standing for a flow: only its number matters here. */
const rec = (seq: number) => ({ seq }) as unknown as HubbleFlowRecord;
const seqOf = (r: HubbleFlowRecord) => (r as unknown as { seq: number }).seq;

/** A call whose writes complete when release() says; it keeps what each write carried, as it was then. */
class HeldCall extends Writable {
  readonly sent: Buffer[] = [];
  /** Each write's bytes as they were when written, and the view the stream handed over. */
  readonly written: Array<{ copy: Buffer; view: Buffer }> = [];
  private held: Array<() => void> = [];
  constructor() {
    super({ objectMode: true });
  }
  override _write(chunk: Buffer, _enc: string, cb: () => void): void {
    this.written.push({ copy: Buffer.from(chunk), view: chunk });
    this.held.push(() => {
      this.sent.push(Buffer.from(chunk));
      cb();
    });
  }
  /** Completes up to n held writes (each lets the next buffered one through), then lets callbacks run. */
  async release(n = Infinity): Promise<number> {
    let done = 0;
    while (done < n) {
      const next = this.held.shift();
      if (!next) {
        await new Promise((r) => setImmediate(r));
        if (this.held.length === 0) break;
        continue;
      }
      next();
      done++;
      await new Promise((r) => setImmediate(r));
    }
    return done;
  }
}

/** Messages as the test encodes them: "f<seq>" for a flow, "lost <n>" for a lost-events record. */
function streamOf(call: HeldCall, opts: { queue: number; inflightBytes: number; pad?: number }) {
  const encoded: number[] = [];
  const lostCounts: number[] = [];
  const pad = 'x'.repeat(opts.pad ?? 0);
  const stream = new FollowStream(call as unknown as ServerWritableStream<unknown, unknown>, {
    queue: opts.queue,
    inflightBytes: opts.inflightBytes,
    encodeInto: (w: ByteWriter, r: HubbleFlowRecord) => {
      encoded.push(seqOf(r));
      w.reset().raw(Buffer.from(`f${seqOf(r)}${pad}`));
      w.finishFramed();
      return true;
    },
    encode: (item: FollowItem) => Buffer.from(`lost ${(item as HubbleLostEventsRecord).lost_events.num_events_lost}`),
    lostRecord: (count) => {
      lostCounts.push(count);
      return { lost_events: { source: 'OBSERVER_EVENTS_QUEUE', num_events_lost: count, cpu: null }, node_name: 'n', time: new Date(0).toISOString() };
    },
  });
  const texts = () => call.sent.map((b) => b.toString().replace(/x+$/, ''));
  return { stream, encoded, lostCounts, texts };
}

const turn = () => new Promise((r) => setImmediate(r));

test('flows wait unencoded while the bytes in flight are at the limit, and go out in order as writes complete', async () => {
  const call = new HeldCall();
  const { stream, encoded, texts } = streamOf(call, { queue: 10_000, inflightBytes: 200 });
  for (let i = 0; i < 1_000; i++) stream.offer(rec(i));
  await turn();
  // each message is 5 + 2-4 bytes: the limit lets ~25-30 through before the first write completes
  assert.ok(encoded.length >= 20 && encoded.length <= 40, `encoded ${encoded.length} before any write completed`);
  assert.equal(stream.behind, 1_000);
  await call.release();
  assert.deepEqual(texts(), Array.from({ length: 1_000 }, (_, i) => `f${i}`));
  assert.equal(stream.behind, 0);
});

test('past the queue, flows are dropped and counted, and the follower told before the next flow and once it caught up', async () => {
  const call = new HeldCall();
  const { stream, lostCounts, texts } = streamOf(call, { queue: 50, inflightBytes: 100 });
  for (let i = 0; i < 200; i++) stream.offer(rec(i));
  await turn();
  assert.equal(stream.behind, 50, 'as far behind as the queue');
  await call.release();
  // caught up: the 150 missed are reported though no flow came after
  assert.deepEqual(lostCounts, [150]);
  assert.deepEqual(texts(), [...Array.from({ length: 50 }, (_, i) => `f${i}`), 'lost 150']);
  // behind again: the report of what was missed goes before the next flow that finds room
  for (let i = 200; i < 260; i++) stream.offer(rec(i));
  await turn();
  // (without grpc-js's call a batch's messages are written one by one and count as sent with its last)
  while (stream.behind === 50) assert.equal(await call.release(1), 1);
  stream.offer(rec(300));
  await call.release();
  assert.deepEqual(texts().slice(51), [...Array.from({ length: 50 }, (_, i) => `f${200 + i}`), 'lost 10', 'f300']);
  assert.deepEqual(lostCounts, [150, 10]);
});

test('lost-events records offered (the kernel ring losses) are kept in order even with the queue full', async () => {
  const call = new HeldCall();
  const { stream, texts } = streamOf(call, { queue: 5, inflightBytes: 1 << 20 });
  for (let i = 0; i < 5; i++) stream.offer(rec(i));
  stream.offer({ lost_events: { source: 'PERF_EVENT_RING_BUFFER', num_events_lost: 7, cpu: null }, node_name: 'n', time: new Date(0).toISOString() });
  await call.release();
  assert.deepEqual(texts(), ['f0', 'f1', 'f2', 'f3', 'f4', 'lost 7']);
});

test('a slab is written again only after every byte written on it was sent', async () => {
  const call = new HeldCall();
  // ~300 bytes a message, up to 1 MB in flight: a 256 KB slab fills every ~870 messages, is left
  // with writes on it still in flight, and is taken again once they completed
  const { stream, texts } = streamOf(call, { queue: 100_000, inflightBytes: 1 << 20, pad: 290 });
  const total = 12_000;
  for (let i = 0; i < total; i++) {
    stream.offer(rec(i));
    if (i % 500 === 499) {
      await turn();
      await call.release(300);
    }
  }
  await call.release();
  assert.equal(call.sent.length, total);
  // what each write carried when it completed is what it carried when it was handed over
  call.written.forEach(({ copy }, i) => assert.ok(copy.equals(call.sent[i]!), `write ${i} changed while in flight`));
  assert.deepEqual(texts(), Array.from({ length: total }, (_, i) => `f${i}`));
  const slabs = new Set(call.written.map((w) => w.view.buffer));
  assert.ok(slabs.size <= 8, `the writer took its slabs again (${slabs.size} slabs for ${(total * 300) >> 10} KB)`);
});

test('end() sends everything that waits, past the in-flight limit, then ends the call; close() sends nothing more', async () => {
  const call = new HeldCall();
  const { stream, encoded } = streamOf(call, { queue: 1_000, inflightBytes: 50 });
  let finished = false;
  call.on('finish', () => (finished = true));
  for (let i = 0; i < 300; i++) stream.offer(rec(i));
  stream.end();
  stream.offer(rec(1_000)); // after end: not taken
  await turn();
  assert.equal(encoded.length, 300);
  await call.release();
  assert.equal(call.sent.length, 300);
  await turn();
  assert.ok(finished, 'the call ended');

  const call2 = new HeldCall();
  const s2 = streamOf(call2, { queue: 1_000, inflightBytes: 50 });
  for (let i = 0; i < 300; i++) s2.stream.offer(rec(i));
  await turn();
  const before = s2.encoded.length;
  s2.stream.close();
  s2.stream.offer(rec(1_000));
  await call2.release();
  await turn();
  assert.equal(s2.encoded.length, before, 'nothing encoded after close');
  assert.equal(call2.sent.length, before);
});
