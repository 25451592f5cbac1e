import type { ServerWritableStream } from '@grpc/grpc-js';
import type { HubbleFlowRecord, HubbleLostEventsRecord } from '../../agent/flows/hubble.js';
import { FramedBatch, serverStreamBatchWrites } from './batch-writes.js';
import { ByteWriter, FRAME_HEADER, SLAB_BYTES, slabAlloc } from './byte-writer.js';

/** What a follow stream sends: flows, and lost-events messages among them. */
export type FollowItem = HubbleFlowRecord | HubbleLostEventsRecord;

export interface FollowStreamOptions {
  /** Items the follower may fall behind (hubble.followQueue) before it loses flows. */
  queue: number;
  /** Bytes handed to HTTP/2 and not yet written to the socket beyond which encoding waits. */
  inflightBytes: number;
  /** A flow's message written into the framed writer (false: not a record the encoder takes; nothing written). */
  encodeInto(w: ByteWriter, r: HubbleFlowRecord): boolean;
  /** Any other item's message bytes (the library's encoding). */
  encode(item: FollowItem): Uint8Array;
  /** The lost-events record of `count` flows this stream dropped (it is counted where it is made). */
  lostRecord(count: number): HubbleLostEventsRecord;
}

/** Bytes in flight to one follower by default: ~6,500 flows, 30 ms of them at 200k/s. */
export const FOLLOW_INFLIGHT_BYTES = 4 << 20;

const QUEUE_INITIAL = 256;
/** Slabs kept for reuse: more than the in-flight bytes span, so that a steady stream allocates none. */
const SLABS_KEPT = 2 + FOLLOW_INFLIGHT_BYTES / SLAB_BYTES;

function isLost(item: FollowItem): item is HubbleLostEventsRecord {
  return (item as HubbleLostEventsRecord).lost_events !== undefined;
}

/**
 * One GetFlows --follow stream: the flows it is offered wait here as records, and are encoded only
 * when HTTP/2 has room for them (at most `inflightBytes` handed over and not yet written to the socket),
 * each turn's worth into the stream's own slab behind their gRPC frame headers and written as one
 * FramedBatch (batch-writes.ts). A follower that falls behind therefore holds records, not encoded
 * bytes, and the bytes that are encoded go out while the cache still has them (bench/README.md,
 * section 7). Past `queue` items behind (waiting or in flight), flows are dropped and counted, and the follower is told
 * with a lost-events message (OBSERVER_EVENTS_QUEUE) in their place as soon as there is room: before
 * the next flow, or once it has caught up. Lost-events messages it is offered (the kernel ring's) are
 * always kept: a few a second at most, and the follower must hear of them.
 */
export class FollowStream {
  private items: Array<FollowItem | undefined> = new Array<FollowItem | undefined>(QUEUE_INITIAL);
  private head = 0;
  private size = 0;
  private missed = 0;
  /** Bytes and items handed to HTTP/2 and not yet written to the socket. */
  private inflight = 0;
  private inflightItems = 0;
  private scheduled = false;
  private closed = false;
  private ending = false;
  /** Slabs the writer moved on from and whose bytes have all been written out, for it to take again. */
  private readonly slabsFree: Buffer[] = [];
  /** Batches in flight per slab, and the slab the writer writes into now. */
  private readonly slabWrites = new Map<Buffer, number>();
  private slabCurrent: Buffer | undefined;
  private readonly writer = new ByteWriter({ framed: true, slabs: (bytes) => (bytes <= SLAB_BYTES && this.slabsFree.pop()) || slabAlloc(bytes) });
  /** Whether the stream takes FramedBatch chunks (grpc-js's call as 1.14 has it). */
  private readonly batches: boolean;

  constructor(
    private readonly call: ServerWritableStream<unknown, unknown>,
    private readonly opts: FollowStreamOptions,
  ) {
    this.batches = serverStreamBatchWrites(call);
  }

  /** Items this follower is behind: waiting to be encoded, or handed to HTTP/2 and not yet written out. */
  get behind(): number {
    return this.size + this.inflightItems;
  }

  offer(item: FollowItem): void {
    if (this.closed || this.ending) return;
    if (!isLost(item)) {
      const room = this.opts.queue - this.behind - (this.missed > 0 ? 1 : 0);
      if (room < 1) {
        this.missed++;
        return;
      }
      if (this.missed > 0) this.missedReport();
    }
    this.push(item);
    this.schedule();
  }

  /** Sends what waits (however far past the in-flight limit), then ends the stream. */
  end(): void {
    if (this.closed || this.ending) return;
    this.ending = true;
    this.schedule();
  }

  /** Drops what waits; nothing more is sent (the call is over). */
  close(): void {
    this.closed = true;
    this.items = [];
    this.head = this.size = 0;
    this.slabsFree.length = 0;
  }

  private missedReport(): void {
    this.push(this.opts.lostRecord(this.missed));
    this.missed = 0;
  }

  private push(item: FollowItem): void {
    if (this.size === this.items.length) this.grow();
    this.items[(this.head + this.size) % this.items.length] = item;
    this.size++;
  }

  private grow(): void {
    const next = new Array<FollowItem | undefined>(this.items.length * 2);
    for (let i = 0; i < this.size; i++) next[i] = this.items[(this.head + i) % this.items.length];
    this.items = next;
    this.head = 0;
  }

  private shift(): FollowItem {
    const item = this.items[this.head]!;
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.items.length;
    this.size--;
    return item;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    // After the turn that offered: a wakeup's flows go out as one batch.
    queueMicrotask(this.flush);
  }

  private readonly flush = (): void => {
    this.scheduled = false;
    if (this.closed) return;
    const w = this.writer;
    const limit = this.ending ? Infinity : this.opts.inflightBytes;
    let slab: Buffer | undefined;
    let start = 0;
    let end = 0;
    let count = 0;
    while (this.inflight < limit) {
      if (this.size === 0) {
        // caught up: tell the follower what it missed even if no flow comes after
        if (this.missed === 0) break;
        this.missedReport();
      }
      const item = this.shift();
      if (isLost(item) || !this.opts.encodeInto(w, item)) {
        w.reset().raw(this.opts.encode(item));
        w.finishFramed();
      }
      this.inflight += w.frameEnd - w.frameStart;
      this.inflightItems++;
      if (w.frameSlab === slab && w.frameStart === end) {
        end = w.frameEnd;
        count++;
        continue;
      }
      if (slab) this.write(slab, start, end, count);
      if (w.frameSlab !== this.slabCurrent) {
        // the writer moved on (the batch on the slab it left, if any, is in flight now)
        const left = this.slabCurrent;
        this.slabCurrent = w.frameSlab;
        if (left && !this.slabWrites.has(left)) this.slabFree(left);
      }
      slab = w.frameSlab;
      start = w.frameStart;
      end = w.frameEnd;
      count = 1;
    }
    if (slab) this.write(slab, start, end, count);
    if (this.ending && this.size === 0) {
      this.closed = true;
      this.call.end();
    }
  };

  /** A slab back to the writer's pool: the writer left it and none of its bytes is in flight. */
  private slabFree(slab: Buffer): void {
    if (slab.length === SLAB_BYTES && this.slabsFree.length < SLABS_KEPT) this.slabsFree.push(slab);
  }

  private write(slab: Buffer, start: number, end: number, count: number): void {
    this.slabWrites.set(slab, (this.slabWrites.get(slab) ?? 0) + 1);
    const done = () => {
      this.inflight -= end - start;
      this.inflightItems -= count;
      // HTTP/2 calls back once the socket took the bytes: the slab may be written again
      const writes = this.slabWrites.get(slab)! - 1;
      if (writes > 0) this.slabWrites.set(slab, writes);
      else {
        this.slabWrites.delete(slab);
        if (slab !== this.slabCurrent) this.slabFree(slab);
      }
      if (!this.closed && (this.size > 0 || this.missed > 0)) this.schedule();
    };
    if (this.batches) {
      this.call.write(new FramedBatch(slab.subarray(start, end), count), done);
      return;
    }
    // A grpc-js whose call this does not know: each message on its own, grpc-js framing it.
    for (let off = start; off < end; ) {
      const len = slab.readUInt32BE(off + 1);
      const last = off + FRAME_HEADER + len >= end;
      this.call.write(slab.subarray(off + FRAME_HEADER, off + FRAME_HEADER + len), last ? done : undefined);
      off += FRAME_HEADER + len;
    }
  }
}
