import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import type { Datapath, FlowEvent, FlowReader } from '../../bpf/index.js';
import type { EndpointDirectory } from './directory.js';
import { flowEnrich } from './enrich.js';
import type { HubbleFlowRecord, HubbleLostEventsRecord, LostEventSource } from './hubble.js';
import { Ring } from './ring.js';

/** Sees every batch of decoded events (the metrics count them per batch, not per flow). */
export type FlowBatchObserver = (events: readonly FlowEvent[]) => void;

/**
 * Ring buffer -> enrichment -> in-memory ring of recent flows, plus an emitter for live followers.
 * Runs on the event loop: the datapath's reader wakes it when the kernel has written events.
 *
 * The hot path is kept cheap: enrichment is two directory lookups into shared endpoint objects and
 * one small record per event (LazyFlowRecord: Hubble's JSON, time string and uuid are made only when
 * a follower, a filter or a reader needs them); 'flow' is emitted only while someone follows;
 * counters are taken per batch by observers.
 */
export class FlowPipeline extends EventEmitter<{ flow: [HubbleFlowRecord]; lost: [HubbleLostEventsRecord] }> {
  readonly ring: Ring<HubbleFlowRecord>;
  private reader: FlowReader | undefined;
  private lostTimer: NodeJS.Timeout | undefined;
  private kernelLostSeen = 0n;
  private lostCheckedAt = 0;
  private readonly batchObservers = new Set<FlowBatchObserver>();
  processed = 0;
  /** Events lost, by where: the kernel ring buffer, or a follower's queue in the agent. */
  readonly lost: Record<LostEventSource, number> = { PERF_EVENT_RING_BUFFER: 0, OBSERVER_EVENTS_QUEUE: 0, HUBBLE_RING_BUFFER: 0 };

  constructor(
    private readonly directory: EndpointDirectory,
    private readonly nodeName: string,
    capacity: number,
    private readonly log: Logger,
  ) {
    super();
    this.setMaxListeners(0);
    this.ring = new Ring(capacity);
  }

  start(datapath: Datapath): void {
    this.reader = datapath.flowsRead((events) => this.batch(events));
    // Losses in the kernel come with no event of their own; look once a second.
    this.lostTimer = setInterval(() => this.kernelLostCheck(), 1000);
    this.lostTimer.unref();
    this.log.debug('flow pipeline reading the datapath ring buffer');
  }

  /** One wakeup's events (public for tests and benchmarks that feed events without a kernel). */
  batch(events: readonly FlowEvent[]): void {
    const dir = this.directory;
    const node = this.nodeName;
    const ring = this.ring;
    if (this.listenerCount('flow') === 0) {
      // Nobody follows: only the newest `capacity` events of the batch will stay in the ring, so only
      // those are enriched (a busy wakeup brings tens of thousands).
      const first = Math.max(0, events.length - ring.capacity);
      if (first > 0) ring.skip(first);
      for (let i = first; i < events.length; i++) ring.push(flowEnrich(events[i]!, dir, node));
    } else {
      for (const ev of events) {
        const rec = flowEnrich(ev, dir, node);
        ring.push(rec);
        this.emit('flow', rec);
      }
    }
    this.processed += events.length;
    for (const observe of this.batchObservers) observe(events);
    // Losses are counted by the kernel in a per-CPU map: read it at most every 100 ms from here
    // (the timer covers quiet periods).
    const now = performance.now();
    if (now - this.lostCheckedAt >= 100) {
      this.lostCheckedAt = now;
      this.kernelLostCheck();
    }
  }

  /** A flow record for an event, as batch() makes it, kept nowhere and sent to no one (api/hubble/warm.ts). */
  enrich(ev: FlowEvent): HubbleFlowRecord {
    return flowEnrich(ev, this.directory, this.nodeName);
  }

  /**
   * A flow that does not come from the datapath (the DNS proxy's L7 flows): into the same ring and to
   * the same followers, so every API shows it with the others.
   */
  push(rec: HubbleFlowRecord): void {
    this.ring.push(rec);
    if (this.listenerCount('flow') > 0) this.emit('flow', rec);
  }

  /**
   * A source of flows that does not come from the datapath and keeps them packed in the ring (see
   * Ring.packedSource): followers get the flow made from its payload at once, the ring keeps the payload.
   */
  packedSource(thaw: (payload: number) => HubbleFlowRecord): (payload: number) => void {
    const ringPush = this.ring.packedSource(thaw);
    return (payload) => {
      ringPush(payload);
      if (this.listenerCount('flow') > 0) this.emit('flow', thaw(payload));
    };
  }

  /** Adds an observer of every batch of events; returns the function that removes it. */
  batchObserve(fn: FlowBatchObserver): () => void {
    this.batchObservers.add(fn);
    return () => this.batchObservers.delete(fn);
  }

  private kernelLostCheck(): void {
    const total = this.reader?.lostEvents() ?? 0n;
    if (total <= this.kernelLostSeen) return;
    const delta = Number(total - this.kernelLostSeen);
    this.kernelLostSeen = total;
    this.lostRecord('PERF_EVENT_RING_BUFFER', delta);
  }

  /** Counts lost events and tells followers, as Hubble's `lost_events` records do. */
  lostRecord(source: LostEventSource, count: number): HubbleLostEventsRecord {
    this.lost[source] += count;
    const rec: HubbleLostEventsRecord = {
      lost_events: { source, num_events_lost: count, cpu: null },
      node_name: this.nodeName,
      time: new Date().toISOString(),
    };
    // A kernel loss is every follower's; a slow follower's, or a reader the ring overtook, only its own.
    if (source === 'PERF_EVENT_RING_BUFFER') this.emit('lost', rec);
    return rec;
  }

  lostEvents(): number {
    return this.lost.PERF_EVENT_RING_BUFFER + this.lost.OBSERVER_EVENTS_QUEUE + this.lost.HUBBLE_RING_BUFFER;
  }

  stop(): void {
    if (this.lostTimer) clearInterval(this.lostTimer);
    this.reader?.close();
    this.reader = undefined;
  }
}
